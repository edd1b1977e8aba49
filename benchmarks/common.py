"""What the three benchmarks share: statistics, the gunicorn servers, the data they make."""

from __future__ import annotations

import datetime
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import requests

ROOT = Path(__file__).resolve().parent.parent

#: The three middleware stacks measured side by side (``benchmarks.settings``).
VARIANTS = ("none", "naive", "ours")
LABELS = {
    "none": "(a) no token middleware",
    "naive": "(b) naive: DB lookup per request",
    "ours": "(c) TokenRefreshMiddleware",
}


# -- statistics ---------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; ``nan`` for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i])
            for i, cell in enumerate(cells)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


# -- servers ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Gunicorn:
    """``benchmarks.wsgi`` served by gunicorn on 127.0.0.1 with one of the three stacks."""

    def __init__(self, variant: str, *, workers: int, threads: int, env: dict[str, str]) -> None:
        self.variant = variant
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "benchmarks.wsgi:application",
            f"--bind=127.0.0.1:{self.port}",
            f"--workers={workers}",
            "--preload",
            "--keep-alive=60",
            "--backlog=2048",
            "--log-level=warning",
        ]
        if threads > 1:
            command += ["--worker-class=gthread", f"--threads={threads}"]
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**env, "TOKEN_ROTATION_BENCH_VARIANT": variant},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if requests.get(f"{self.url}/health/", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        self.log.seek(0)
        raise RuntimeError(
            f"gunicorn ({self.variant}) did not start:\n{self.log.read().decode()[-2000:]}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


# -- data -----------------------------------------------------------------------


def make_tokens(count: int, *, expires_in: float, prefix: str, with_state: bool) -> list[int]:
    """``count`` users, each with one ``bench`` account and token; the users' ids."""
    from allauth.socialaccount.models import SocialAccount, SocialToken
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from django_token_rotation.models import TokenState

    User = get_user_model()
    expires_at = timezone.now() + datetime.timedelta(seconds=expires_in)
    user_ids: list[int] = []
    step = 1000
    for start in range(0, count, step):
        names = [f"{prefix}{i}" for i in range(start, min(count, start + step))]
        users = User.objects.bulk_create([User(username=name) for name in names])
        accounts = SocialAccount.objects.bulk_create(
            [SocialAccount(user=user, provider="bench", uid=user.username) for user in users]
        )
        tokens = SocialToken.objects.bulk_create(
            [
                SocialToken(
                    account=account,
                    token=f"access-{os.urandom(12).hex()}",
                    token_secret=f"refresh-{os.urandom(12).hex()}",
                    expires_at=expires_at,
                )
                for account in accounts
            ]
        )
        if with_state:
            TokenState.objects.bulk_create([TokenState(token=token) for token in tokens])
        user_ids += [user.pk for user in users]
    return user_ids


def delete_all_users() -> None:
    from django.contrib.auth import get_user_model

    get_user_model().objects.all().delete()  # cascades to accounts, tokens, states, events


def session_cookie(user_id: int) -> str:
    """A signed-cookie session in which ``user_id`` is signed in (what login() stores)."""
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.sessions.backends.signed_cookies import SessionStore

    user = get_user_model().objects.get(pk=user_id)
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    key = session.session_key
    assert key is not None
    return key


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import django

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu or "unknown",
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "django": django.__version__,
        "platform": sys.platform,
    }
