"""The benchmark, end to end with tiny sizes, so that it cannot rot.

It asserts the shape of the output and the burst's one-refresh invariant, never a
timing: speed is for ``python -m benchmarks.run`` to report, not for tests to judge.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers import ROOT, benchmark_env

# One worker runs the module (``--dist loadgroup``): the benchmark behind the
# ``output`` fixture is the slowest thing in the suite, and each worker that got a
# test of this module ran it again.
pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("benchmarks")]


@pytest.fixture(scope="module")
def output() -> str:
    pytest.importorskip("gunicorn", reason="the benchmark needs gunicorn (the test extra)")
    # Not measured by coverage: the benchmark's own timings, and its runtime, stay
    # what they are without --cov.
    env = benchmark_env()
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            f"--pg-name=token_rotation_bench_smoke_{os.getpid()}",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = run.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the run then stops its endpoint, servers and Celery workers
        # (subprocess.run's SIGKILL left them running after the test).
        run.terminate()
        try:
            stdout, stderr = run.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
            stdout, stderr = run.communicate()
        pytest.fail("the quick benchmark took over 200 s: " + stdout[-3000:] + stderr[-3000:])
    assert run.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout


def records(output: str, name: str) -> list[dict[str, Any]]:
    prefix = "BENCH "
    parsed = [
        json.loads(line[len(prefix) :]) for line in output.splitlines() if line.startswith(prefix)
    ]
    return [record for record in parsed if record["name"] == name]


def test_prints_the_three_tables(output: str) -> None:
    for heading in (
        "1. Per-request overhead",
        "in process (Django test client",
        "over HTTP (gunicorn",
        "2. Burst after expiry",
        "3. Background refresh",
        "Targets:",
    ):
        assert heading in output
    tables = output.split("BENCH ", 1)[0]
    # in process, the fast path (database sessions), over HTTP
    assert tables.count("(a) no token middleware") == 3
    assert tables.count("(b) naive") == 3  # in process, over HTTP, the burst
    assert tables.count("(c) TokenRefreshMiddleware") == 4  # all four tables


def test_machine_readable_lines(output: str) -> None:
    (machine,) = records(output, "machine")
    assert machine["command"].startswith("python -m benchmarks.run")
    overhead = records(output, "overhead")
    assert {(r["mode"], r["variant"]) for r in overhead} == {
        (mode, variant) for mode in ("in_process", "http") for variant in ("none", "naive", "ours")
    }
    assert all(r["errors"] == 0 and r["rps"] > 0 for r in overhead)
    assert records(output, "background")
    assert {r["id"] for r in records(output, "target")} >= {
        "overhead.queries",
        "overhead.beats_naive",
        "burst.one_refresh",
        "burst.no_errors",
    }


def test_the_token_middleware_adds_no_query(output: str) -> None:
    queries = {
        r["variant"]: r["queries_per_request"]
        for r in records(output, "overhead")
        if r["mode"] == "in_process"
    }
    assert queries["ours"] == queries["none"]
    assert queries["naive"] == queries["none"] + 1


def test_the_fast_path_table_adds_no_query_with_database_sessions(output: str) -> None:
    assert "the fresh-token fast path against its floor" in output
    fastpath = {r["variant"]: r for r in records(output, "fastpath")}
    assert set(fastpath) == {"bare", "read", "oidc", "ours"}
    assert all(r["errors"] == 0 and r["us_per_request"] > 0 for r in fastpath.values())
    assert fastpath["ours"]["queries_per_request"] == fastpath["bare"]["queries_per_request"]
    assert fastpath["read"]["added_over_floor_us"] == 0


def test_one_refresh_per_burst(output: str) -> None:
    ours, naive = (
        next(r for r in records(output, "burst") if r["variant"] == variant)
        for variant in ("ours", "naive")
    )
    assert ours["refresh_calls"] == [1]
    assert ours["errors"] == 0 and ours["rejected_replays"] == 0
    # The naive port refreshes once per request that saw the expired token.
    assert sum(naive["refresh_calls"]) >= 1


def test_background_refreshes_each_token_once(output: str) -> None:
    background = records(output, "background")
    if "skipped" in background[0]:
        pytest.skip(background[0]["skipped"])
    # Never two refresh calls for one token (the single-flight), and every token refreshed.
    assert all(max(r["calls"]) <= r["tokens"] for r in background), background
    assert all(r["all_refreshed_once"] for r in background), background
    assert all(r["tokens_per_s"] > 0 for r in background)
    commands = [r for r in background if r["runner"] == "command"]
    assert {r["concurrency"] for r in commands if r["processes"] == 1} == {1, 8, 32}
    assert {r["processes"] for r in commands} == {1, 2}
    celery = [r for r in background if r["celery"]]
    if celery:  # Redis answered
        assert {r["processes"] for r in celery} == {1, 2}
