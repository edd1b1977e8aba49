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
    #: Processes: ``--processes`` of the command, or Celery worker processes.
    processes: int
    seconds: float
    peak_rss_mb: float
    refreshed: int
    calls: int
    exit_status: int
    #: CPU milliseconds per token: the command's process (its start-up included) or the
    #: Celery workers', the token endpoint's, PostgreSQL's.
    cpu_command_ms: float
    cpu_endpoint_ms: float
    cpu_postgres_ms: float
    #: ``command`` (manage.py refresh_tokens) or ``celery`` (the sweep task and workers).
    runner: str = "command"

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


def server_cpu_seconds(postmaster: int | None) -> float:
    """CPU time of the PostgreSQL server's processes: the exited backends' (reaped
    by the postmaster) and the living ones' (connections still open: a Celery
    worker's kept threads keep theirs). A difference of two readings counts each
    backend once, whether it ended in between or not."""
    if postmaster is None:
        return math.nan
    total = cpu_seconds(postmaster, children=True)
    for children in Path(f"/proc/{postmaster}/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:
            continue
        for pid in pids:
            used = cpu_seconds(int(pid))
            if not math.isnan(used):
                total += used
    return total


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
    processes: int,
    endpoint: EndpointProcess,
    env: dict[str, str],
    latency: float,
    postmaster: int | None,
) -> CommandRun:
    make_due()
    endpoint.reset(latency)
    endpoint_cpu = cpu_seconds(endpoint.process.pid)
    postgres_cpu = server_cpu_seconds(postmaster)
    command = [
        sys.executable,
        "-m",
        "django",
        "refresh_tokens",
        f"--concurrency={concurrency}",
        f"--processes={processes}",
        "--settings=benchmarks.settings",
    ]
    status, stdout, stderr, seconds, peak_kib, command_cpu = spawn_measured(
        command, {**env, "TOKEN_ROTATION_BENCH_VARIANT": "ours"}
    )
    endpoint_cpu = cpu_seconds(endpoint.process.pid) - endpoint_cpu
    postgres_cpu = server_cpu_seconds(postmaster) - postgres_cpu
    stats = endpoint.stats()
    match = re.search(r"Refreshed (\d+)", stdout)
    if status != 0 or match is None:
        raise RuntimeError(f"refresh_tokens exited {status}:\n{stdout[-1000:]}\n{stderr[-2000:]}")
    return CommandRun(
        tokens=count,
        concurrency=concurrency,
        processes=processes,
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


def startup(env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU seconds of a run with nothing due: Python, Django and the
    command starting, and its one query for due tokens."""
    command = [sys.executable, "-m", "django", "refresh_tokens", "--settings=benchmarks.settings"]
    measured = spawn_measured(command, {**env, "TOKEN_ROTATION_BENCH_VARIANT": "ours"})
    return measured[3], measured[5]


class CeleryWorker:
    """A real Celery worker (prefork, ``processes`` processes) on the benchmark's own
    Redis database and queue, started before the timed sweeps and stopped after."""

    def __init__(self, processes: int, env: dict[str, str], broker: str, queue: str) -> None:
        self.processes = processes
        self.name = f"bench-{os.getpid()}-{processes}-{time.monotonic_ns()}@localhost"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "benchmarks.celery_app",
                "worker",
                "--pool=prefork",
                f"--concurrency={processes}",
                "--loglevel=WARNING",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                f"--queues={queue}",
                f"--hostname={self.name}",
            ],
            cwd=ROOT,
            env={
                **env,
                "TOKEN_ROTATION_BENCH_VARIANT": "ours",
                "TOKEN_ROTATION_BENCH_CELERY_BROKER": broker,
                "TOKEN_ROTATION_BENCH_CELERY_QUEUE": queue,
            },
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def cpu_seconds(self) -> float:
        """The worker's CPU and its (living) children's, from /proc."""
        total = cpu_seconds(self.process.pid)
        for child in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            for pid in child.read_text().split():
                total += cpu_seconds(int(pid))
        return total

    def stop(self) -> None:
        import signal

        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.log.close()


def run_celery(
    count: int,
    worker: CeleryWorker,
    endpoint: EndpointProcess,
    latency: float,
    postmaster: int | None,
    *,
    batch_size: int,
    concurrency: int,
) -> CommandRun:
    """One sweep through Celery: the sweep task fans the due tokens out as batch
    tasks; timed from sending the sweep until every batch has reported."""
    from celery.result import AsyncResult

    from django_token_rotation import tasks

    make_due()
    endpoint.reset(latency)
    endpoint_cpu = cpu_seconds(endpoint.process.pid)
    postgres_cpu = server_cpu_seconds(postmaster)
    worker_cpu = worker.cpu_seconds()
    started = time.perf_counter()
    sweep = tasks.refresh_due_tokens.apply_async(
        kwargs={"batch_size": batch_size, "concurrency": concurrency}
    )
    fanned = sweep.get(timeout=600)
    refreshed = 0
    for task_id in fanned["ids"]:
        refreshed += AsyncResult(task_id).get(timeout=600)["counts"].get("refreshed", 0)
    seconds = time.perf_counter() - started
    worker_cpu = worker.cpu_seconds() - worker_cpu
    endpoint_cpu = cpu_seconds(endpoint.process.pid) - endpoint_cpu
    postgres_cpu = server_cpu_seconds(postmaster) - postgres_cpu
    stats = endpoint.stats()
    return CommandRun(
        tokens=count,
        concurrency=concurrency,
        processes=worker.processes,
        seconds=seconds,
        peak_rss_mb=math.nan,
        refreshed=refreshed,
        calls=int(stats["calls"]),
        exit_status=0,
        cpu_command_ms=worker_cpu * 1000 / count,
        cpu_endpoint_ms=endpoint_cpu * 1000 / count,
        cpu_postgres_ms=postgres_cpu * 1000 / count,
        runner="celery",
    )
