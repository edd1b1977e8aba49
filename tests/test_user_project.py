"""A site's own test suite, with this app installed (issue #16, item 5; docs/testing.rst).

``django-admin startproject``, the README's settings, ``ATOMIC_REQUESTS =
True``, an in-house OpenID Connect provider played by a tiny HTTP server the
site's tests start themselves, an API view (exempt from the middleware) that
calls ``get_access_token``, one test module written with Django's
``TestCase`` and one with pytest-django's ``django_db``. The site's suite is
run as its developers run it, ``manage.py test`` and ``pytest``, as
subprocesses, on SQLite and on PostgreSQL: it must pass, and the test
database must be destroyed without a warning ("database ... is being accessed
by other users" was seen: the wake-up listener outlived the tests).

Inside the test's transaction the refresh must see the test's rows (a helper
connection would not: the user got ``no_token``).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from tests.test_first_contact import PYTHON, start_project, subprocess_env

FAKE_PROVIDER = '''\
"""The site's in-house OpenID Connect provider, as its tests play it: discovery
and a token endpoint that rotates refresh tokens, on 127.0.0.1."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


class FakeProvider:
    def __init__(self):
        self.refreshes = []  # the refresh tokens it was sent
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                base = provider.url
                self.answer({
                    "issuer": base,
                    "authorization_endpoint": base + "/authorize",
                    "token_endpoint": base + "/token",
                    "userinfo_endpoint": base + "/userinfo",
                })

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                provider.refreshes.append(form["refresh_token"][0])
                n = len(provider.refreshes)
                self.answer({
                    "access_token": f"new-access-{n}",
                    "refresh_token": f"new-refresh-{n}",
                    "token_type": "Bearer",
                    "expires_in": 3600,
                })

            def answer(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def sign_in(user, provider, *, expires_in):
    """Store what allauth stores after a sign-in at the in-house provider."""
    import datetime

    from allauth.socialaccount.models import SocialAccount, SocialApp, SocialToken
    from django.utils import timezone

    app = SocialApp.objects.create(
        provider="openid_connect",
        provider_id="inhouse",
        name="In-house",
        client_id="site-client",
        secret="site-secret",
        settings={"server_url": provider.url},
    )
    account = SocialAccount.objects.create(user=user, provider="inhouse", uid=user.username)
    return SocialToken.objects.create(
        app=app,
        account=account,
        token="old-access",
        token_secret="old-refresh",
        expires_at=timezone.now() + datetime.timedelta(seconds=expires_in),
    )
'''

API_VIEWS = """\
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse

from django_token_rotation import (
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    get_access_token,
)


@login_required
def token(request):
    try:
        return JsonResponse({"token": get_access_token(request.user, "inhouse")})
    except ReauthenticationRequired as exc:
        return JsonResponse({"error": exc.code}, status=401)
    except TokenRefreshUnavailable as exc:
        return JsonResponse({"error": exc.code}, status=503)
"""

TESTCASE_TESTS = """\
from allauth.socialaccount.models import SocialToken
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import TestCase

from django_token_rotation import get_access_token
from mysite.fake_provider import FakeProvider, sign_in


class TokenTests(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.provider = FakeProvider()
        cls.provider.start()
        cls.addClassCleanup(cls.provider.stop)

    def setUp(self):
        self.provider.refreshes.clear()
        self.user = get_user_model().objects.create_user("ann", password="pw")
        sign_in(self.user, self.provider, expires_in=-60)

    def test_the_api_view_refreshes_an_expired_token(self):
        self.client.force_login(self.user)
        response = self.client.get("/api/token/")
        self.assertEqual(response.json(), {"token": "new-access-1"})
        self.assertEqual(self.provider.refreshes, ["old-refresh"])
        self.assertEqual(SocialToken.objects.get().token_secret, "new-refresh-1")

    def test_get_access_token_in_the_tests_own_transaction(self):
        with transaction.atomic():
            self.assertEqual(get_access_token(self.user, "inhouse"), "new-access-1")
        self.assertEqual(get_access_token(self.user, "inhouse"), "new-access-1")
        self.assertEqual(self.provider.refreshes, ["old-refresh"])
"""

PYTEST_TESTS = """\
import pytest
from allauth.socialaccount.models import SocialToken
from django.db import transaction

from django_token_rotation import get_access_token
from mysite.fake_provider import FakeProvider, sign_in


@pytest.fixture
def provider():
    provider = FakeProvider()
    provider.start()
    yield provider
    provider.stop()


@pytest.fixture
def user(django_user_model, provider):
    user = django_user_model.objects.create_user("bob", password="pw")
    sign_in(user, provider, expires_in=-60)
    return user


@pytest.mark.django_db
def test_the_api_view_refreshes_an_expired_token(client, user, provider):
    client.force_login(user)
    assert client.get("/api/token/").json() == {"token": "new-access-1"}
    assert provider.refreshes == ["old-refresh"]
    assert SocialToken.objects.get().token_secret == "new-refresh-1"


@pytest.mark.django_db
def test_get_access_token_in_a_transaction(user, provider):
    with transaction.atomic():
        assert get_access_token(user, "inhouse") == "new-access-1"
    assert provider.refreshes == ["old-refresh"]


@pytest.mark.django_db(transaction=True)
def test_a_page_in_a_transactional_test(client, user, provider):
    # Not exempt: the middleware refreshes before the view's transaction starts.
    client.force_login(user)
    assert client.get("/token/").json() == {"token": "new-access-1"}
    assert client.get("/token/").json() == {"token": "new-access-1"}
    assert provider.refreshes == ["old-refresh"]
"""

#: What a test database that could not be destroyed leaves in the output.
WARNINGS = ("being accessed by other users", "Error when trying to teardown", "Traceback")


def user_project(where: Path, database: dict[str, Any] | None) -> Path:
    project = start_project(where, database)
    package = project / "mysite"
    (package / "fake_provider.py").write_text(FAKE_PROVIDER)
    (package / "api.py").write_text(API_VIEWS)
    (package / "test_tokens_testcase.py").write_text(TESTCASE_TESTS)
    (package / "test_tokens_pytest.py").write_text(PYTEST_TESTS)
    (package / "__init__.py").touch()
    with (package / "settings.py").open("a") as f:
        f.write(
            "\n# -- tests/test_user_project.py: the site's own shape --\n"
            'INSTALLED_APPS += ["allauth.socialaccount.providers.openid_connect"]\n'
            'DATABASES["default"]["ATOMIC_REQUESTS"] = True\n'
            "# The API authenticates on its own; its views call get_access_token.\n"
            'TOKEN_ROTATION_EXEMPT_PATHS = [r"^/api/"]\n'
        )
    with (package / "urls.py").open("a") as f:
        f.write(
            "\nfrom mysite import api\n\n"
            'urlpatterns += [path("api/token/", api.token), path("token/", api.token)]\n'
        )
    (project / "pytest.ini").write_text("[pytest]\nDJANGO_SETTINGS_MODULE = mysite.settings\n")
    return project


def run(project: Path, *command: str) -> str:
    env = subprocess_env()
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [PYTHON, *command],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output}"
    for warning in WARNINGS:
        assert warning not in output, f"{' '.join(command)}:\n{output}"
    return output


def its_own_suites(project: Path) -> None:
    out = run(project, "manage.py", "test", "mysite", "-v", "2")
    assert "Ran 2 tests" in out and "OK" in out, out
    assert "Destroying test database for alias 'default'" in out, out
    out = run(project, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rw")
    assert "5 passed" in out and "warnings summary" not in out, out


@pytest.mark.timeout(600)
def test_a_sites_own_suite_passes_on_sqlite(tmp_path: Path) -> None:
    its_own_suites(user_project(tmp_path, None))


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_a_sites_own_suite_passes_on_postgres(tmp_path: Path) -> None:
    pg = django_settings.PG
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": pg["HOST"],
        "PORT": pg["PORT"],
        "USER": pg["USER"],
        "PASSWORD": pg["PASSWORD"],
        # Only its test database is ever created ("test_" + this), and dropped.
        "NAME": f"site_{os.getpid()}_{uuid.uuid4().hex[:8]}",
    }
    its_own_suites(user_project(tmp_path, database))
