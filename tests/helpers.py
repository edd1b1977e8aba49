"""What several test modules share, defined once.

Constants (where the checkout is, which databases a test can run on), the
seeding of tokens on any database alias, the worker processes of the
concurrency tests, and small accessors. Fixtures live in ``tests/conftest.py``;
they use these too.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from allauth.socialaccount.models import SocialAccount, SocialApp, SocialToken
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.sessions.backends.base import SessionBase
from django.core.cache import cache
from django.core.management import call_command
from django.db import OperationalError, connections
from django.test import Client
from django.utils import timezone

from django_token_rotation import TokenRefreshUnavailable
from django_token_rotation.rotation import access_token_for
from tests.scripted_server import ScriptedServer

#: The checkout: the working directory of every subprocess the tests start.
ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: The token values and client secrets the fixtures create (no log may contain them).
SECRETS = ("old-access", "old-refresh", "new-access", "new-refresh", "fake-secret", "oidc-secret")

#: The ``make_token`` fixture's type.
MakeToken = Callable[..., SocialToken]


# -- databases --------------------------------------------------------------------

#: What "default" is: a SQLite file, or the server a shape makes it (TOKEN_ROTATION_TEST_SHAPES).
_DEFAULT_ID = {
    "sqlite3": "sqlite-file",
    "postgresql": "default-postgresql",
    "mysql": "default-mariadb",
}
DATABASES = [
    pytest.param(
        "default",
        id=_DEFAULT_ID.get(str(settings.DATABASES["default"]["ENGINE"]).split(".")[-1], "default"),
    ),
    pytest.param("postgres", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("postgres_rr", id="postgresql-repeatable-read", marks=pytest.mark.postgres),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]
# Every alias these tests may use (the server aliases exist only when they answer).
ALIASES = [
    alias
    for alias in ("default", "postgres", "postgres_rr", "mariadb")
    if alias in settings.DATABASES
]


def seed(
    alias: str,
    *,
    provider: str,
    app: SocialApp | None,
    expires_in: int = -5,
    username: str = "racer",
) -> Any:
    user = get_user_model().objects.db_manager(alias).create_user(username, "r@example.com", "pw")
    account = SocialAccount.objects.using(alias).create(
        user=user, provider=provider, uid=f"{username}-1"
    )
    SocialToken.objects.using(alias).create(
        account=account,
        app=app,
        token="old-access",
        token_secret="old-refresh",
        expires_at=timezone.now() + datetime.timedelta(seconds=expires_in),
    )
    return user


def seed_fake_app(alias: str, scripted: ScriptedServer, settings: Any) -> None:
    """One expired token of the ``fake`` provider on ``alias``, its app pointed at ``scripted``."""
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    app = SocialApp.objects.using(alias).create(
        provider="fake", name="F", client_id="c", secret="s"
    )
    seed(alias, provider="fake", app=app)


#: How many tokens ``seed_many`` stores.
TOKENS = 12


def seed_many(app: SocialApp) -> list[Any]:
    """``TOKENS`` users of the ``fake`` provider, each with an expired token."""
    users = []
    for i in range(TOKENS):
        user = get_user_model().objects.create_user(f"web{i}", f"w{i}@example.com", "pw")
        account = SocialAccount.objects.create(user=user, provider="fake", uid=f"web{i}")
        SocialToken.objects.create(
            account=account,
            app=app,
            token=f"old-access-{i}",
            token_secret=f"old-refresh-{i}",
            expires_at=timezone.now() - datetime.timedelta(seconds=5),
        )
        users.append(user)
    return users


def stored(token: SocialToken) -> SocialToken:
    """The token as the database has it now."""
    return SocialToken.objects.get(pk=token.pk)


def save_session(client: Client, session: SessionBase) -> None:
    """Save a session changed outside a request and hand it to ``client``: under
    signed-cookie sessions the cookie is the session, a new one at every save."""
    session.save()
    client.cookies[settings.SESSION_COOKIE_NAME] = str(session.session_key)


def access(alias: str) -> str:
    """``get_access_token`` for the one stored token of ``alias`` (which need not be
    the default database)."""
    return access_token_for(SocialToken.objects.using(alias).select_related("account").get())


def expire(alias: str) -> None:
    SocialToken.objects.using(alias).update(
        expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )


def timed(alias: str) -> tuple[float, str]:
    """How long one ``get_access_token`` took, and what it gave (a token or an error code)."""
    started = time.monotonic()
    try:
        outcome = access(alias)
    except TokenRefreshUnavailable as exc:
        outcome = exc.code
    return time.monotonic() - started, outcome


def table(name: str, alias: str = "default") -> str:
    """A table's name as ``alias``'s SQL writes it: in double quotes on SQLite and
    PostgreSQL, in backquotes on MariaDB. Tests that pick statements by their
    text match this, so they pick the same ones on every database."""
    return str(connections[alias].ops.quote_name(name))


def failing_token_writes(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    """A database execute wrapper under which every write of a SocialToken fails."""
    quoted = context["connection"].ops.quote_name(SocialToken._meta.db_table)
    if sql.startswith(f"UPDATE {quoted}"):
        raise OperationalError("disk I/O error (injected)")
    return execute(sql, params, many, context)


# -- the real provider (django-oauth-toolkit, the ``provider`` fixture) ----------------


def connect(alias: str, provider: Any, *, username: str = "alice") -> tuple[Any, SocialToken]:
    """What allauth stores after a sign-in at the provider, with the access token expired."""
    cache.clear()
    grant = provider.password_grant()
    app = SocialApp.objects.using(alias).create(
        provider="openid_connect",
        provider_id="dot",
        name="DOT",
        client_id=provider.client_id,
        secret=provider.client_secret,
        settings={"server_url": provider.server_url},
    )
    user = get_user_model().objects.db_manager(alias).create_user(username, "a@example.com", "x")
    # As allauth stores an OpenID Connect sign-in: uid = sub, claims in extra_data.
    claims = jwt.decode(grant["id_token"], options={"verify_signature": False})
    account = SocialAccount.objects.using(alias).create(
        user=user, provider="dot", uid=claims["sub"], extra_data={"id_token": claims}
    )
    token = SocialToken.objects.using(alias).create(
        account=account,
        app=app,
        token=grant["access_token"],
        token_secret=grant["refresh_token"],
        expires_at=timezone.now() - datetime.timedelta(seconds=1),
    )
    return user, token


def userinfo(provider: Any, access_token: str) -> int:
    """The status of the provider's userinfo endpoint for ``access_token``."""
    response = requests.get(
        f"{provider.server_url}/userinfo/",
        headers={"Authorization": f"Bearer {access_token}"},
        timeout=10,
    )
    return response.status_code


# -- processes ----------------------------------------------------------------------

#: The concurrency tests' callers: PROCESSES worker processes of THREADS threads each.
PROCESSES = 4
THREADS = 8


def worker_env(alias: str, **extra: str) -> dict[str, str]:
    """The environment of a worker process that must use database ``alias``."""
    db = dict(connections[alias].settings_dict)
    db.pop("TEST", None)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "TOKEN_ROTATION_TEST_WORKER_DB": json.dumps(db, default=str),
    }
    env.update(extra)
    return env


def start_workers(
    count: int,
    *,
    alias: str,
    user_id: int,
    provider: str,
    threads: int,
    env: dict[str, str],
    start_at: float | None = None,
) -> list[subprocess.Popen[str]]:
    """``count`` worker processes whose threads all start at ``start_at`` (a
    ``time.time()`` value); without one, at one instant just after every worker
    has set Django up (``ready_workers``)."""
    if start_at is not None:
        return [
            _worker(alias, user_id, provider, threads, env, f"--start-at={start_at}")
            for _ in range(count)
        ]
    workers = ready_workers(
        count, alias=alias, user_id=user_id, provider=provider, threads=threads, env=env
    )
    release(workers, time.time() + 0.2)
    return workers


def ready_workers(
    count: int, *, alias: str, user_id: int, provider: str, threads: int, env: dict[str, str]
) -> list[subprocess.Popen[str]]:
    """``count`` worker processes, returned once each has set Django up (seconds
    on a loaded machine); their threads wait for ``release``."""
    workers = [
        _worker(alias, user_id, provider, threads, env, "--wait-for-start") for _ in range(count)
    ]
    for worker in workers:
        assert worker.stdout is not None
        worker.stdout.readline()  # "ready"; "" if it exited (collect() reports it)
    return workers


def release(workers: list[subprocess.Popen[str]], start_at: float) -> None:
    """Start the threads of ``ready_workers`` at ``start_at`` (a ``time.time()`` value)."""
    for worker in workers:
        assert worker.stdin is not None
        try:
            worker.stdin.write(f"{start_at}\n")
            worker.stdin.flush()
        except BrokenPipeError:
            pass  # it exited: collect() reports it


def _worker(
    alias: str, user_id: int, provider: str, threads: int, env: dict[str, str], start: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.concurrency_worker",
            f"--user-id={user_id}",
            f"--provider={provider}",
            f"--threads={threads}",
            start,
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def collect(workers: list[subprocess.Popen[str]], timeout: float = 120) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for worker in workers:
        out, err = worker.communicate(timeout=timeout)
        assert worker.returncode == 0, err[-3000:]
        results.extend(json.loads(out.strip().splitlines()[-1])["results"])
    return results


def call_refresh_tokens(*args: str) -> tuple[str, str]:
    """``manage.py refresh_tokens *args`` in this process: (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    call_command("refresh_tokens", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def unmeasured(env: dict[str, str]) -> dict[str, str]:
    """``env`` without what makes coverage measure a Python subprocess (setup.cfg's
    ``patch = subprocess`` under ``--cov``): for the subprocesses that run no code
    the floor is about, or run so much that tracing them would cost more than it
    shows (the benchmark, a nested pytest run, pip)."""
    return {
        k: v
        for k, v in env.items()
        if k not in ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")
    }


def benchmark_env() -> dict[str, str]:
    """The environment to run ``python -m benchmarks.<module>`` in from the tests:
    unmeasured, the checkout importable, and the benchmark's own settings."""
    env = unmeasured({**os.environ, "PYTHONPATH": str(ROOT)})
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server the test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(process: subprocess.Popen[Any], url: str, name: str) -> None:
    """Wait (30 s at most) until the server ``process`` answers ``url``/health/."""
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, f"{name} exited"
        try:
            if requests.get(f"{url}/health/", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{name} did not start"
        time.sleep(0.1)
