"""Benchmark 3: ``manage.py refresh_tokens`` over many due tokens, on PostgreSQL.

The command runs in a child process (``python -m django refresh_tokens``), as cron or a
systemd timer would run it; its wall time and peak resident memory (``wait4``'s
``ru_maxrss``) are measured from the outside.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .common import ROOT, delete_all_users, make_tokens
from .endpoint import EndpointProcess


@dataclass
class CommandRun:
    tokens: int
    concurrency: int
    seconds: float
    peak_rss_mb: float
    refreshed: int
    calls: int
    exit_status: int
    #: CPU milliseconds per token: the command's process, the token endpoint's, PostgreSQL's.
    cpu_command_ms: float
    cpu_endpoint_ms: float
    cpu_postgres_ms: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def ms_per_token(self) -> float:
        return self.seconds * 1000 / self.tokens if self.tokens else 0.0


def prepare(count: int) -> None:
    """Exactly ``count`` tokens, each with its refresh state (an installation in use)."""
    delete_all_users()
    make_tokens(count, expires_in=-60, prefix="cmd-", with_state=True)


def make_due() -> None:
    from allauth.socialaccount.models import SocialToken
    from django.utils import timezone

    from django_token_rotation.models import RefreshEvent, TokenState

    SocialToken.objects.update(expires_at=timezone.now() - datetime.timedelta(seconds=60))
    TokenState.objects.update(lease_id="", lease_expires_at=None, last_refreshed_at=None)
    RefreshEvent.objects.all().delete()


def cpu_seconds(pid: int | None, *, children: bool = False) -> float:
    """CPU time of a process (with ``children``: of its reaped children) from ``/proc``."""
    if pid is None:
        return math.nan
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    # Fields 14-17 of proc(5): utime stime cutime cstime; [0] here is field 3.
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def postmaster_pid() -> int | None:
    """The local PostgreSQL server's main process: exited backends' CPU adds up in it."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    try:
        return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None  # not on this machine


def run_command(
    count: int,
    concurrency: int,
    endpoint: EndpointProcess,
    env: dict[str, str],
    latency: float,
    postmaster: int | None,
) -> CommandRun:
    make_due()
    endpoint.reset(latency)
    endpoint_cpu = cpu_seconds(endpoint.process.pid)
    postgres_cpu = cpu_seconds(postmaster, children=True)
    command = [
        sys.executable,
        "-m",
        "django",
        "refresh_tokens",
        f"--concurrency={concurrency}",
        "--settings=benchmarks.settings",
    ]
    status, stdout, stderr, seconds, peak_kib, command_cpu = spawn_measured(
        command, {**env, "TOKEN_ROTATION_BENCH_VARIANT": "ours"}
    )
    endpoint_cpu = cpu_seconds(endpoint.process.pid) - endpoint_cpu
    postgres_cpu = cpu_seconds(postmaster, children=True) - postgres_cpu
    stats = endpoint.stats()
    match = re.search(r"Refreshed (\d+)", stdout)
    if status != 0 or match is None:
        raise RuntimeError(f"refresh_tokens exited {status}:\n{stdout[-1000:]}\n{stderr[-2000:]}")
    return CommandRun(
        tokens=count,
        concurrency=concurrency,
        seconds=seconds,
        peak_rss_mb=peak_kib / 1024,
        refreshed=int(match.group(1)),
        calls=int(stats["calls"]),
        exit_status=status,
        cpu_command_ms=command_cpu * 1000 / count,
        cpu_endpoint_ms=endpoint_cpu * 1000 / count,
        cpu_postgres_ms=postgres_cpu * 1000 / count,
    )


def spawn_measured(
    command: list[str], env: dict[str, str]
) -> tuple[int, str, str, float, float, float]:
    """Run ``command``: exit status, stdout, stderr, wall seconds, its own peak RSS in KiB
    and its CPU seconds (``wait4``: ``RUSAGE_CHILDREN`` would mix all children so far)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=err)
        _pid, wait_status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(wait_status)
        out.seek(0)
        err.seek(0)
        return (
            process.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
            seconds,
            float(usage.ru_maxrss),
            usage.ru_utime + usage.ru_stime,
        )


def startup_seconds(env: dict[str, str]) -> float:
    """Wall time of a run with nothing due: Python, Django and the command starting."""
    command = [sys.executable, "-m", "django", "refresh_tokens", "--settings=benchmarks.settings"]
    return spawn_measured(command, {**env, "TOKEN_ROTATION_BENCH_VARIANT": "ours"})[3]
