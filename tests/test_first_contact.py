"""A brand-new project, set up exactly as the README says, run as a user runs it.

``django-admin startproject`` in a temporary folder, the README's marked code
blocks (``<!-- first-contact: FILE -->``) written into it as they are, then
``manage.py migrate``, ``check``, ``shell`` and ``runserver`` as subprocesses:
no pytest-django database, no ``call_command``, so the system checks run as
they do for users (the first release crashed ``migrate`` on every new project).

``TOKEN_ROTATION_TEST_PYTHON`` runs the project with another interpreter: CI
points it at a clean virtualenv where the built wheel is installed (not
editable), so the same tests are the wheel's smoke test.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: ``<!-- first-contact: NAME -->`` then a fenced code block.
BLOCK = re.compile(r"<!-- first-contact: (?P<name>\S+) -->\n```\w*\n(?P<code>.*?)\n```", re.S)

#: The interpreter of the new project (see the module docstring).
PYTHON = os.environ.get("TOKEN_ROTATION_TEST_PYTHON") or sys.executable

#: The README promises that a new project works before any secret is set: the
#: provider's client id and secret are never in the projects' environment.
SECRETS = ("GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET")


def readme_blocks() -> dict[str, str]:
    blocks = {m["name"]: m["code"] + "\n" for m in BLOCK.finditer(README.read_text())}
    assert set(blocks) >= {
        "settings.py",
        "urls.py",
        "views.py",
        "templates/prompt.html",
        "templates/sign_in_again.html",
    }, "the README lost a marked block the first-contact test needs"
    return blocks


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_") and k not in SECRETS}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def manage(project: Path, *args: str, check: bool = True, timeout: float = 180) -> str:
    """``python manage.py ARGS`` in the project; its output (stdout and stderr)."""
    result = subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=project,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    if check:
        assert result.returncode == 0, f"manage.py {' '.join(args)} failed:\n{output}"
    return output


def start_project(
    where: Path, database: dict[str, Any] | None = None, *, skip: tuple[str, ...] = ()
) -> Path:
    """``django-admin startproject mysite``, then the README's Installation and Quick start
    (but the blocks named in ``skip``)."""
    project = where / "site"
    project.mkdir()
    subprocess.run(
        [PYTHON, "-m", "django", "startproject", "mysite", str(project)],
        check=True,
        env=subprocess_env(),
        timeout=60,
    )
    blocks = readme_blocks()
    package = project / "mysite"
    settings_py = package / "settings.py"
    settings_py.write_text(settings_py.read_text() + "\n" + blocks["settings.py"])
    urls_py = package / "urls.py"
    if "urls.py" not in skip:
        urls_py.write_text(urls_py.read_text() + "\n" + blocks["urls.py"])
    else:
        urls_py.write_text(urls_py.read_text().replace("import path", "import include, path"))
    templates = package / "templates"
    templates.mkdir()
    for name, code in blocks.items():
        if name.startswith("templates/"):
            (package / name).write_text(code)
    # The README's view as written, plus the pages this test needs around it.
    (package / "views.py").write_text(blocks["views.py"])
    (package / "first_contact.py").write_text(FIRST_CONTACT_VIEWS)
    (templates / "page.html").write_text(
        "<html><body><h1>first contact</h1>\n"
        '{% include "prompt.html" %}\n'
        "<p>error={{ session.error }}</p></body></html>\n"
    )
    (templates / "try_later.html").write_text("try later\n")
    (templates / "calendar.html").write_text("calendar\n")
    with settings_py.open("a") as f:
        f.write(
            "\n# -- tests/test_first_contact.py: the test's own pages and database --\n"
            'INSTALLED_APPS += ["mysite"]  # its templates/\n'
            'ALLOWED_HOSTS = ["127.0.0.1", "localhost"]\n'
        )
        if database is not None:
            f.write(f"DATABASES = {{'default': {database!r}}}\n")
    with urls_py.open("a") as f:
        f.write(
            "\nfrom mysite import first_contact, views\n\n"
            "urlpatterns += [\n"
            '    path("page/", first_contact.page),\n'
            '    path("calendar/", views.calendar),\n'
            "]\n"
        )
    return project


FIRST_CONTACT_VIEWS = """\
from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def page(request):
    return render(request, "page.html")
"""


# -- databases -------------------------------------------------------------------


@pytest.fixture
def empty_postgres() -> Iterator[dict[str, Any]]:
    """A brand-new, empty PostgreSQL database (created for this test, dropped after)."""
    import psycopg

    pg = django_settings.PG
    name = f"first_contact_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conninfo = (
        f"host={pg['HOST']} port={pg['PORT']} user={pg['USER']} "
        f"password='{pg['PASSWORD']}' dbname={pg['NAME']}"
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {
            "ENGINE": "django.db.backends.postgresql",
            "HOST": pg["HOST"],
            "PORT": pg["PORT"],
            "USER": pg["USER"],
            "PASSWORD": pg["PASSWORD"],
            "NAME": name,
        }
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate_and_check(project: Path) -> None:
    # On the empty database: the database-tagged checks must not crash.
    out = manage(project, "check", "--database", "default")
    assert "no issues" in out, out
    out = manage(project, "migrate")
    assert "Applying token_rotation." in out, out
    assert "Applying socialaccount." in out, out
    out = manage(project, "check", "--database", "default")
    assert "no issues" in out, out


def test_the_project_imports_the_installed_package(tmp_path: Path) -> None:
    """Not the checkout: the project's folder is all that is on its path."""
    project = start_project(tmp_path)
    out = manage(project, "shell", "-c", "import django_token_rotation as m; print(m.__file__)")
    location = Path(out.strip().splitlines()[-1]).resolve()
    if sys.executable != PYTHON:  # the wheel in a clean venv
        assert "site-packages" in location.parts, location
        assert ROOT not in location.parents, location
    templates = location.parent / "templates" / "token_rotation" / "reauth_prompt.html"
    assert templates.exists(), "the templates are not installed"


def test_migrate_and_check_on_an_empty_sqlite_file(tmp_path: Path) -> None:
    project = start_project(tmp_path)
    assert not (project / "db.sqlite3").exists()
    migrate_and_check(project)
    assert (project / "db.sqlite3").exists()


@pytest.mark.postgres
def test_migrate_and_check_on_an_empty_postgres_database(
    tmp_path: Path, empty_postgres: dict[str, Any]
) -> None:
    project = start_project(tmp_path, database=empty_postgres)
    migrate_and_check(project)


@pytest.mark.postgres
def test_check_on_an_unreachable_database_does_not_crash(tmp_path: Path) -> None:
    """A database that does not exist: the checks report, never raise."""
    pg = dict(django_settings.PG)
    pg.pop("TEST", None)
    pg["NAME"] = f"no_such_database_{uuid.uuid4().hex[:8]}"
    project = start_project(tmp_path, database=pg)
    out = manage(project, "check", "--database", "default", check=False)
    assert "Traceback" not in out, out


def test_check_tells_a_newcomer_who_forgot_allauths_urls(tmp_path: Path) -> None:
    project = start_project(tmp_path, skip=("urls.py",))
    out = manage(project, "check")
    assert "token_rotation.W008" in out, out
    assert 'include("allauth.urls")' in out


# -- a real server and a signed-in request ----------------------------------------


def wait_for(port: int, server: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited: {server.communicate()[0]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the server did not start")


SIGN_IN = """\
import datetime
from allauth.socialaccount.models import SocialAccount, SocialToken
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.db import SessionStore
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django_token_rotation.models import TokenState

user = get_user_model().objects.create_user("newcomer", "newcomer@example.com", "pw")
account = SocialAccount.objects.create(user=user, provider="google", uid="g-1")
token = SocialToken.objects.create(
    account=account, token="first-contact-access", token_secret="first-contact-refresh",
    expires_at=timezone.now() - datetime.timedelta(minutes=5),
)
# Google refused this refresh token earlier (recorded as the engine records it),
# so nothing asks Google again: the user must sign in again.
TokenState.objects.create(
    token=token, needs_reauth=True, last_error="invalid_grant", last_error_at=timezone.now(),
    failed_fingerprint=salted_hmac(
        "django_token_rotation.fingerprint", "first-contact-refresh", algorithm="sha256"
    ).hexdigest()[:32],
)
session = SessionStore()
session[SESSION_KEY] = str(user.pk)
session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
session[HASH_SESSION_KEY] = user.get_session_auth_hash()
session.create()
print("SESSION=" + session.session_key)
"""


def serve_and_sign_in(project: Path) -> None:
    import requests

    manage(project, "migrate")
    out = manage(project, "check")
    assert "no issues" in out, out
    [session_key] = re.findall(r"SESSION=(\w+)", manage(project, "shell", "-c", SIGN_IN))
    port = free_port()
    server = subprocess.Popen(
        [PYTHON, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=project,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(port, server)
        base = f"http://127.0.0.1:{port}"
        # allauth's URLs are routed: the sign-in page answers.
        assert requests.get(f"{base}/accounts/login/", timeout=30).status_code == 200
        cookies = {"sessionid": session_key}
        page = requests.get(f"{base}/page/", cookies=cookies, timeout=30, allow_redirects=False)
        assert page.status_code == 200, page.text[:2000]
        # The README's snippet rendered the prompt: a POST form to Google's login URL.
        assert "error=RefreshAccessTokenError" in page.text
        assert "token-rotation-reauth" in page.text
        assert re.search(r'<form[^>]+method="post"[^>]+/accounts/google/login/', page.text)
        assert "first-contact-access" not in page.text
        # The README's Usage view, executed as written.
        calendar = requests.get(
            f"{base}/calendar/", cookies=cookies, timeout=30, allow_redirects=False
        )
        assert calendar.status_code == 401, calendar.text[:2000]
        assert re.search(r'<form method="post" action="/accounts/google/login/', calendar.text)
        assert "csrfmiddlewaretoken" in calendar.text
        # Signed out: the page sends to the login page, no prompt.
        anonymous = requests.get(f"{base}/page/", timeout=30, allow_redirects=False)
        assert anonymous.status_code == 302
    finally:
        server.terminate()
        try:
            server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


def test_a_new_project_serves_the_prompt_on_sqlite(tmp_path: Path) -> None:
    serve_and_sign_in(start_project(tmp_path))


@pytest.mark.postgres
def test_a_new_project_serves_the_prompt_on_postgres(
    tmp_path: Path, empty_postgres: dict[str, Any]
) -> None:
    serve_and_sign_in(start_project(tmp_path, database=empty_postgres))
