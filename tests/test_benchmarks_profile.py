"""``python -m benchmarks.profile`` (both paths) and ``benchmarks.layers``, with tiny sizes,
so that they cannot rot.

It asserts the shape of the output and the burst's one refresh, never a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers import ROOT, benchmark_env

pytestmark = pytest.mark.timeout(120)


def profile(*args: str, module: str = "benchmarks.profile") -> str:
    """The profiler's output; it fails the test when the run fails."""
    pytest.importorskip("psycopg", reason="the benchmarks need psycopg (the bench extra)")
    # Not measured by coverage (as the benchmark's smoke test): the profiler's
    # processes run the engine, whose coverage the other tests measure.
    env = benchmark_env()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            module,
            *args,
            f"--pg-name=token_rotation_profile_smoke_{os.getpid()}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run.stdout


def record(output: str, name: str) -> dict[str, Any]:
    (line,) = [line for line in output.splitlines() if line.startswith("BENCH ")]
    parsed: dict[str, Any] = json.loads(line[len("BENCH ") :])
    assert parsed["name"] == name
    return parsed


def test_the_burst_path_makes_one_refresh_per_burst() -> None:
    output = profile("--path=burst", "--processes=2", "--threads=3", "--rounds=2", "--no-profile")
    bench = record(output, "profile_burst")
    assert bench["callers"] == 6
    assert bench["refresh_calls"] == [1, 1]
    assert bench["cpu_ms_per_burst"] > 0 and bench["cpu_ms_per_caller"] > 0
    assert bench["winner_cpu_ms"] > 0 and bench["waiter_cpu_ms"] > 0
    # The winner's statements are the most; every caller reads its tokens at least.
    assert bench["statements_per_burst"] >= 6 + 4
    assert "Refresh calls at the endpoint per burst: [1, 1]" in output
    assert "under cProfile" not in output


def test_the_burst_path_under_cprofile() -> None:
    output = profile(
        "--path=burst",
        "--processes=2",
        "--threads=3",
        "--rounds=1",
        "--keep-state",
        "--top=5",
        "--callers=reload",
    )
    assert record(output, "profile_burst")["refresh_calls"] == [1]
    if sys.version_info >= (3, 12):
        # One cProfile profiler per process at most (sys.monitoring): said, not attempted.
        assert "No profile of the burst: on Python 3.12 and newer" in output
        assert "under cProfile" not in output
        return
    for order in ("tottime", "cumulative"):
        assert "1 burst of 6 callers" in output and f"by {order} --" in output
    # The engine's entry point, profiled in every caller's thread of both processes
    # (the warm-up burst and the measured one are not profiled).
    cumulative = output.split("by cumulative --", 1)[1]
    assert "rotation.py" in cumulative and "(check_user_tokens)" in cumulative
    assert "-- callers of reload --" in output


def test_the_background_path() -> None:
    output = profile("--tokens=5", "--rounds=1", "--top=5")
    bench = record(output, "profile")
    assert bench["tokens"] == 5 and bench["cpu_ms_per_token"] > 0
    assert "5 tokens, by cumulative --" in output


def test_the_layers() -> None:
    output = profile("--calls=3", "--rounds=1", module="benchmarks.layers")
    records = [
        json.loads(line[len("BENCH ") :])
        for line in output.splitlines()
        if line.startswith("BENCH ")
    ]
    http = {r["layer"] for r in records if r["name"] == "layers_http"}
    assert http == {
        "http.client",
        "urllib3",
        "requests send",
        "requests request",
        "app, kept session",
        "app, one-off session",
    }
    assert all(r["cpu_ms"] > 0 for r in records)
    if "PostgreSQL" in output.splitlines()[0]:
        sql = {r["layer"] for r in records if r["name"] == "layers_sql"}
        assert "Statement.run" in sql and "re-read (store.reload)" in sql
