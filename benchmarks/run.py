"""Run the benchmarks: ``python -m benchmarks.run`` (``--quick`` for the smoke sizes).

Prints three tables, the targets met or missed, then one ``BENCH {json}`` line per figure.
Every figure of a table is measured in the same run, side by side; throughputs and
latencies are medians over interleaved rounds, ratios the median of same-round ratios.
Only 127.0.0.1 is contacted: gunicorn servers, a token endpoint, PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .common import LABELS, VARIANTS, fmt, machine, median, table
from .endpoint import EndpointProcess

FULL: dict[str, Any] = {
    "rounds": 7,
    "inprocess_rounds": 30,
    "inprocess_requests": 300,
    "fastpath_rounds": 7,
    "fastpath_requests": 2000,
    "http_workers": 3,
    "http_clients": 6,
    "http_seconds": 2.0,
    "burst_clients": 64,
    "burst_workers": 4,
    "burst_threads": 16,
    "burst_rounds": 3,
    "command_tokens": "1000,10000",
    "command_rounds": 3,
}
QUICK: dict[str, Any] = {
    "rounds": 2,
    "inprocess_rounds": 3,
    "inprocess_requests": 50,
    "fastpath_rounds": 2,
    "fastpath_requests": 100,
    "http_workers": 1,
    "http_clients": 2,
    "http_seconds": 0.3,
    "burst_clients": 8,
    "burst_workers": 2,
    "burst_threads": 4,
    "burst_rounds": 1,
    "command_tokens": "20,60",
    "command_rounds": 1,
}
#: Sizes above this run once (10,000 tokens at concurrency 1 take minutes).
ROUNDS_UP_TO = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: the smoke run.")
    parser.add_argument("--rounds", type=int, help="Interleaved rounds of benchmark 1, HTTP.")
    parser.add_argument("--inprocess-rounds", type=int, help="... in process.")
    parser.add_argument("--inprocess-requests", type=int, help="Requests per stack per round.")
    parser.add_argument("--fastpath-rounds", type=int, help="Interleaved rounds, fast path.")
    parser.add_argument("--fastpath-requests", type=int, help="... requests per stack per round.")
    parser.add_argument("--http-workers", type=int, help="gunicorn sync workers per stack.")
    parser.add_argument("--http-clients", type=int, help="Concurrent HTTP clients.")
    parser.add_argument("--http-seconds", type=float, help="Seconds per stack per round.")
    parser.add_argument("--burst-clients", type=int, help="Concurrent clients of the burst.")
    parser.add_argument("--burst-workers", type=int, help="gunicorn worker processes.")
    parser.add_argument("--burst-threads", type=int, help="Threads per gunicorn worker.")
    parser.add_argument("--burst-latency", type=float, default=0.05, help="Token endpoint (s).")
    parser.add_argument("--burst-rounds", type=int, help="Bursts per stack.")
    parser.add_argument("--command-tokens", help="Comma-separated token counts.")
    parser.add_argument("--command-concurrency", default="1,8,32", help="Comma-separated.")
    parser.add_argument(
        "--command-processes",
        default="2",
        help="Comma-separated --processes values run at the top concurrency split among them.",
    )
    parser.add_argument(
        "--celery-workers",
        default="1,2",
        help="Comma-separated Celery worker process counts ('' for none; needs Redis).",
    )
    parser.add_argument("--celery-batch", type=int, default=50, help="Tokens per batch task.")
    parser.add_argument(
        "--celery-concurrency", type=int, default=16, help="Threads per batch task."
    )
    parser.add_argument("--command-latency", type=float, default=0.02, help="Token endpoint (s).")
    parser.add_argument("--command-rounds", type=int, help=f"Rounds for <= {ROUNDS_UP_TO} tokens.")
    parser.add_argument(
        "--only",
        choices=["overhead", "fastpath", "burst", "background"],
        action="append",
        help="Repeatable; fastpath is the second table of overhead, alone.",
    )
    parser.add_argument(
        "--pg-name",
        default="token_rotation_bench",
        help="PostgreSQL database to create (dropped first, and at the end).",
    )
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# -- the database -----------------------------------------------------------------


def _pg() -> dict[str, Any]:
    env = os.environ.get
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": env("TOKEN_ROTATION_TEST_PG_HOST", "127.0.0.1"),
        "PORT": env("TOKEN_ROTATION_TEST_PG_PORT", "5432"),
        "USER": env("TOKEN_ROTATION_TEST_PG_USER", "postgres"),
        "PASSWORD": env("TOKEN_ROTATION_TEST_PG_PASSWORD", ""),
    }


def _pg_reachable(pg: dict[str, Any]) -> bool:
    try:
        with socket.create_connection((pg["HOST"], int(pg["PORT"])), timeout=0.5):
            return True
    except OSError:
        return False


def _pg_admin(pg: dict[str, Any], *statements: str) -> None:
    import psycopg

    with psycopg.connect(
        host=pg["HOST"],
        port=pg["PORT"],
        user=pg["USER"],
        password=pg["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    ) as conn:
        for statement in statements:
            conn.execute(statement)


@contextmanager
def database(name: str) -> Iterator[tuple[dict[str, Any], str]]:
    """The benchmark's own database: PostgreSQL when it answers, else a SQLite file."""
    pg = _pg()
    if _pg_reachable(pg):
        quoted = '"' + name.replace('"', '""') + '"'
        _pg_admin(pg, f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)", f"CREATE DATABASE {quoted}")
        try:
            yield {**pg, "NAME": name}, "PostgreSQL"
        finally:
            _pg_admin(pg, f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        return
    path = Path(tempfile.gettempdir()) / f"{name}.sqlite3"
    path.unlink(missing_ok=True)
    try:
        yield {"ENGINE": "django.db.backends.sqlite3", "NAME": str(path)}, "SQLite"
    finally:
        path.unlink(missing_ok=True)


@contextmanager
def site(name: str, endpoint: EndpointProcess) -> Iterator[str]:
    """Django set up in this process on the benchmark's own database ``name`` (see
    :func:`database`; its label is yielded), migrated, with ``endpoint`` as every
    app's token endpoint (``benchmarks.settings`` reads both from the environment,
    which the processes the benchmark starts inherit)."""
    with database(name) as (db, label):
        os.environ["TOKEN_ROTATION_BENCH_DB"] = json.dumps(db)
        os.environ["TOKEN_ROTATION_BENCH_TOKEN_URL"] = endpoint.token_url
        os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", verbosity=0, interactive=False)
        try:
            yield label
        finally:
            connections.close_all()


# -- output -------------------------------------------------------------------------

Lines = list[str]


def bench(records: list[dict[str, Any]], name: str, **fields: Any) -> None:
    records.append({"name": name, **fields})


def target(
    records: list[dict[str, Any]], verdicts: Lines, key: str, met: bool, detail: str
) -> None:
    verdicts.append(f"  [{'met' if met else 'MISSED'}] {detail}")
    bench(records, "target", id=key, met=met, detail=detail)


def report_overhead(
    results: dict[str, Any], mode: str, records: list[dict[str, Any]]
) -> tuple[str, dict[str, dict[str, float]]]:
    from .overhead import ratios

    rows = []
    all_ratios: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        result = results[variant]
        r = ratios(results, variant)
        all_ratios[variant] = r
        queries = "-" if result.queries is None else str(result.queries)
        rows.append(
            [
                LABELS[variant],
                fmt(result.rps(), 0),
                fmt(r["rps"], 3),
                fmt(result.p50_ms(), 3),
                fmt(r["p50"], 3),
                fmt(result.p99_ms(), 3),
                fmt(r["p99"], 3),
                queries,
                str(result.errors()),
            ]
        )
        bench(
            records,
            "overhead",
            mode=mode,
            variant=variant,
            rps=round(result.rps(), 1),
            p50_ms=round(result.p50_ms(), 4),
            p99_ms=round(result.p99_ms(), 4),
            rps_ratio=round(r["rps"], 4),
            p50_ratio=round(r["p50"], 4),
            p99_ratio=round(r["p99"], 4),
            queries_per_request=result.queries,
            errors=result.errors(),
            rounds=len(result.rounds),
        )
    headers = ["stack", "req/s", "x (a)", "p50 ms", "x (a)", "p99 ms", "x (a)", "queries", "errors"]
    return table(headers, rows), all_ratios


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # As an exception, so that every ``finally`` stops what the run started (its
    # endpoint, servers and Celery workers): a plain SIGTERM would leave them running.
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    sections = set(args.only or ["overhead", "burst", "background"])
    records: list[dict[str, Any]] = []
    verdicts: Lines = []
    out: Lines = []
    started = time.monotonic()
    command = "python -m benchmarks.run" + (" " + " ".join(argv or sys.argv[1:])).rstrip()

    endpoint = EndpointProcess(args.burst_latency)
    try:
        with site(args.pg_name, endpoint) as db_label:
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            from django.db import connection

            about = {**machine(), "database": db_label}
            if db_label == "SQLite":
                import sqlite3

                about["database"] = f"SQLite {sqlite3.sqlite_version}"
            else:
                with connection.cursor() as cursor:
                    cursor.execute("SHOW server_version")
                    about["database"] = f"PostgreSQL {cursor.fetchone()[0]}"
            bench(records, "machine", command=command, **about)
            out.append(
                f"django-token-rotation benchmarks: {about['cpu']}, {about['cores']} cores, "
                f"Python {about['python']}, Django {about['django']}, {about['database']}"
            )
            out.append(f"$ {command}")

            if "overhead" in sections:
                _overhead(args, env, out, records, verdicts)
            elif "fastpath" in sections:
                from .common import make_tokens

                users = make_tokens(1, expires_in=24 * 3600, prefix="fast-", with_state=False)
                _fastpath(args, users[0], out, records, verdicts)
            if "burst" in sections:
                _burst(args, env, endpoint, out, records, verdicts)
            if "background" in sections:
                _background(args, env, endpoint, db_label, out, records, verdicts)
    finally:
        endpoint.stop()

    out.append("")
    out.append("Targets:")
    out.extend(verdicts)
    out.append(f"Total time: {time.monotonic() - started:.0f} s")
    print("\n".join(out))
    print()
    for record in records:
        print("BENCH " + json.dumps(record, sort_keys=False))
    return 0


def _overhead(
    args: argparse.Namespace,
    env: dict[str, str],
    out: Lines,
    records: list[dict[str, Any]],
    verdicts: Lines,
) -> None:
    from .common import make_tokens
    from .overhead import in_process, middleware_alone, over_http

    users = make_tokens(
        max(args.http_clients, 100), expires_in=24 * 3600, prefix="user-", with_state=False
    )
    out.append("")
    out.append(
        "1. Per-request overhead: a login-required page, signed-in user with a fresh token "
        "(signed-cookie sessions; medians of interleaved rounds a, b, c, a, b, c...; "
        "x (a): median of the same-round ratios to (a))"
    )
    results, cookies = in_process(
        users[0], requests_per_round=args.inprocess_requests, rounds=args.inprocess_rounds
    )
    text, r_in = report_overhead(results, "in_process", records)
    out.append(
        f"   in process (Django test client, {args.inprocess_rounds} rounds of "
        f"{args.inprocess_requests} requests per stack)"
    )
    out.append(text)
    alone = middleware_alone(users[0], cookies, 200 if args.quick else 5000)
    share = alone["ours"] / (results["none"].p50_ms() * 1000)
    out.append(
        f"   the token middleware alone, per request (best of 5 loops): (b) {alone['naive']:.1f} "
        f"us, (c) {alone['ours']:.1f} us = {share:.1%} of (a)'s median request"
    )
    bench(
        records,
        "middleware_alone",
        naive_us=round(alone["naive"], 2),
        ours_us=round(alone["ours"], 2),
        ours_share_of_request=round(share, 4),
    )
    _fastpath(args, users[0], out, records, verdicts)
    q = {v: results[v].queries for v in VARIANTS}
    target(
        records,
        verdicts,
        "overhead.queries",
        q["ours"] == q["none"],
        f"(c) adds 0 queries per request: (a) {q['none']}, (b) {q['naive']}, (c) {q['ours']}",
    )
    within = r_in["ours"]["rps"] >= 0.97 and r_in["ours"]["p50"] <= 1.03
    target(
        records,
        verdicts,
        "overhead.in_process_within_3pct",
        within,
        f"(c) within 3% of (a) in process: req/s ratio {r_in['ours']['rps']:.3f} (>= 0.970), "
        f"median latency ratio {r_in['ours']['p50']:.3f} (<= 1.030); middleware alone "
        f"{share:.1%} of a request",
    )
    http = over_http(
        users,
        env,
        workers=args.http_workers,
        clients=args.http_clients,
        seconds=args.http_seconds,
        rounds=args.rounds,
    )
    text, r_http = report_overhead(http, "http", records)
    out.append("")
    out.append(
        f"   over HTTP (gunicorn, {args.http_workers} sync workers per stack; "
        f"{args.http_clients} client threads, {args.http_seconds:g} s per stack per round; "
        "queries: as in process)"
    )
    out.append(text)
    in_beats = r_in["ours"]["rps"] > r_in["naive"]["rps"]
    http_beats = r_http["ours"]["rps"] > r_http["naive"]["rps"]
    target(
        records,
        verdicts,
        "overhead.beats_naive",
        in_beats and http_beats,
        f"(c) beats (b): req/s ratio to (a) in process {r_in['ours']['rps']:.3f} vs "
        f"{r_in['naive']['rps']:.3f}, over HTTP {r_http['ours']['rps']:.3f} vs "
        f"{r_http['naive']['rps']:.3f}",
    )


def _fastpath(
    args: argparse.Namespace,
    user_id: int,
    out: Lines,
    records: list[dict[str, Any]],
    verdicts: Lines,
) -> None:
    from .fastpath import STACK_LABELS, added, alone, side_by_side

    results = side_by_side(
        user_id, requests_per_round=args.fastpath_requests, rounds=args.fastpath_rounds
    )
    out.append("")
    out.append(
        f"   the fresh-token fast path against its floor (Django test client, database "
        f"sessions, {args.fastpath_rounds} rounds of {args.fastpath_requests} requests per "
        "stack taking turns in blocks of 100; a round's figure is its median request; "
        "+us and x: medians of same-round differences and ratios)"
    )
    rows = []
    for name, stack in results.items():
        over_bare, x_bare = added(results, name, "bare")
        over_floor, x_floor = added(results, name, "read")
        rows.append(
            [
                STACK_LABELS[name],
                fmt(stack.us(), 1),
                fmt(over_bare, 1),
                fmt(x_bare, 4),
                fmt(over_floor, 1),
                fmt(x_floor, 4),
                str(stack.queries),
                str(stack.errors),
            ]
        )
        bench(
            records,
            "fastpath",
            variant=name,
            us_per_request=round(stack.us(), 2),
            added_us=round(over_bare, 2),
            ratio=round(x_bare, 5),
            added_over_floor_us=round(over_floor, 2),
            ratio_to_floor=round(x_floor, 5),
            queries_per_request=stack.queries,
            errors=stack.errors,
            rounds=len(stack.per_request),
        )
    headers = ["stack", "us/req", "+us (a)", "x (a)", "+us (f)", "x (f)", "queries", "errors"]
    out.append(table(headers, rows))
    solo = alone(user_id, 2000 if args.quick else 100_000)
    out.append(
        "   each middleware alone, per request (session loaded; best of 5 loops): "
        + ", ".join(f"{STACK_LABELS[name][:3]} {us:.2f} us" for name, us in solo.items())
    )
    bench(records, "fastpath_alone", **{f"{name}_us": round(us, 3) for name, us in solo.items()})
    ours_over_floor, _ = added(results, "ours", "read")
    target(
        records,
        verdicts,
        "fastpath.queries",
        results["ours"].queries == results["bare"].queries,
        f"fast path adds 0 queries (database sessions): (a) {results['bare'].queries}, "
        f"(c) {results['ours'].queries}",
    )
    target(
        records,
        verdicts,
        "fastpath.floor",
        solo["ours"] - solo["read"] <= 3,
        f"fast path within 3 us of the one-session-read floor, middleware alone: (c) "
        f"{solo['ours']:.2f} us - (f) {solo['read']:.2f} us = "
        f"{solo['ours'] - solo['read']:+.2f} us (whole requests: {ours_over_floor:+.1f} us, "
        "within this machine's noise)",
    )


def _burst(
    args: argparse.Namespace,
    env: dict[str, str],
    endpoint: EndpointProcess,
    out: Lines,
    records: list[dict[str, Any]],
    verdicts: Lines,
) -> None:
    from .burst import burst

    latency_ms = args.burst_latency * 1000
    limit = latency_ms + 150
    out.append("")
    out.append(
        f"2. Burst after expiry: {args.burst_clients} clients at once, one user's expired "
        f"token, gunicorn {args.burst_workers} workers x {args.burst_threads} threads, "
        f"token endpoint {latency_ms:g} ms ({args.burst_rounds} bursts per stack; latency: "
        "medians over bursts)"
    )
    rows = []
    control_p99 = 0.0
    for variant, expire in (("ours", False), ("ours", True), ("naive", True)):
        result = burst(
            variant,
            endpoint,
            env,
            clients=args.burst_clients,
            workers=args.burst_workers,
            threads=args.burst_threads,
            latency=args.burst_latency,
            rounds=args.burst_rounds,
            expire=expire,
        )
        if not expire:
            control_p99 = result.p99_ms()
        rejected = sum(r.rejected for r in result.rounds)
        errors = sum(r.errors for r in result.rounds)
        label = LABELS[variant] if expire else "control: (c), token fresh, no refresh"
        rows.append(
            [
                label,
                " ".join(str(c) for c in result.calls()),
                str(rejected),
                str(errors),
                fmt(result.p50_ms(), 0),
                fmt(result.p99_ms(), 0),
                fmt(result.p99_ms() - control_p99, 0) if expire else "-",
                fmt(result.max_p99_ms(), 0),
            ]
        )
        bench(
            records,
            "burst",
            variant=variant if expire else "ours_control",
            clients=args.burst_clients,
            workers=args.burst_workers,
            threads=args.burst_threads,
            endpoint_latency_ms=latency_ms,
            refresh_calls=result.calls(),
            rejected_replays=rejected,
            errors=errors,
            p50_ms=round(result.p50_ms(), 1),
            p99_ms=round(result.p99_ms(), 1),
            p99_added_over_control_ms=round(result.p99_ms() - control_p99, 1) if expire else 0.0,
            max_p99_ms=round(result.max_p99_ms(), 1),
        )
        if variant == "ours" and expire:
            once = all(r.calls == 1 and r.refresh_count == 1 for r in result.rounds)
            target(
                records,
                verdicts,
                "burst.one_refresh",
                once,
                f"burst: exactly 1 refresh call per burst: {result.calls()}",
            )
            target(
                records,
                verdicts,
                "burst.no_errors",
                errors == 0 and rejected == 0,
                f"burst: 0 errors ({errors}) and 0 replayed refresh tokens ({rejected})",
            )
            target(
                records,
                verdicts,
                "burst.p99",
                result.p99_ms() <= limit,
                f"burst: p99 {result.p99_ms():.0f} ms <= endpoint {latency_ms:g} + 150 = "
                f"{limit:g} ms (worst burst {result.max_p99_ms():.0f} ms; the same burst "
                f"without a refresh: p99 {control_p99:.0f} ms)",
            )
            added = result.p99_ms() - control_p99
            target(
                records,
                verdicts,
                "burst.p99_added",
                added <= latency_ms + 20,
                f"burst: p99 added by the refresh (vs the control) {added:.0f} ms <= endpoint "
                f"{latency_ms:g} + 20 = {latency_ms + 20:g} ms",
            )
    headers = [
        "stack",
        "refresh calls",
        "replays refused",
        "errors",
        "p50 ms",
        "p99 ms",
        "p99 added",
        "worst p99",
    ]
    out.append(table(headers, rows))


def _background(
    args: argparse.Namespace,
    env: dict[str, str],
    endpoint: EndpointProcess,
    db_label: str,
    out: Lines,
    records: list[dict[str, Any]],
    verdicts: Lines,
) -> None:
    from .background import (
        CommandRun,
        postmaster_pid,
        prepare,
        run_celery,
        run_command,
        startup,
    )

    sizes = [int(n) for n in args.command_tokens.split(",") if n]
    levels = [int(n) for n in args.command_concurrency.split(",") if n]
    top = max(levels)
    # (runner, processes, concurrency per process)
    configs = [("command", 1, level) for level in levels]
    configs += [
        ("command", p, max(1, top // p))
        for p in (int(n) for n in args.command_processes.split(",") if n)
        if p > 1
    ]
    celery_workers = [int(n) for n in args.celery_workers.split(",") if n]
    latency_ms = args.command_latency * 1000
    out.append("")
    out.append(
        f"3. Background refresh: manage.py refresh_tokens (threads, --processes) and Celery "
        f"workers over due tokens, token endpoint {latency_ms:g} ms, {db_label} (medians of "
        f"{args.command_rounds} interleaved rounds up to {ROUNDS_UP_TO:,} tokens, one run above)"
    )
    if db_label != "PostgreSQL":
        reason = "PostgreSQL is not reachable at 127.0.0.1:5432 (TOKEN_ROTATION_TEST_PG_*)"
        out.append(f"   skipped: {reason}")
        bench(records, "background", skipped=reason)
        return
    celery_note = ""
    if celery_workers and not _redis_reachable():
        celery_note = "Celery skipped: Redis is not reachable at 127.0.0.1:6379"
        celery_workers = []
    postmaster = postmaster_pid()
    runs: dict[tuple[int, str, int, int], list[CommandRun]] = {}
    for size in sizes:
        prepare(size)
        for _ in range(args.command_rounds if size <= ROUNDS_UP_TO else 1):
            for _runner, processes, level in configs:
                run = run_command(
                    size, level, processes, endpoint, env, args.command_latency, postmaster
                )
                runs.setdefault((size, "command", processes, level), []).append(run)
        for workers in celery_workers:
            worker = _celery_worker(workers, env)
            try:
                for _ in range(args.command_rounds if size <= ROUNDS_UP_TO else 1):
                    run = run_celery(
                        size,
                        worker,
                        endpoint,
                        args.command_latency,
                        postmaster,
                        batch_size=args.celery_batch,
                        concurrency=args.celery_concurrency,
                    )
                    key = (size, "celery", workers, args.celery_concurrency)
                    runs.setdefault(key, []).append(run)
            finally:
                worker.stop()
    started = [startup(env) for _ in range(3)]  # every token is fresh now
    startup_s = median([seconds for seconds, _ in started])
    startup_cpu = median([cpu for _, cpu in started])
    rows = []
    summary: dict[tuple[int, str, int, int], dict[str, float]] = {}
    for (size, runner, processes, level), measured in runs.items():
        figures = {
            "seconds": median([r.seconds for r in measured]),
            "tokens_per_s": median([r.tokens_per_s for r in measured]),
            "ms_per_token": median([r.ms_per_token for r in measured]),
            "peak_rss_mb": median([r.peak_rss_mb for r in measured]),
            "cpu_command_ms": median([r.cpu_command_ms for r in measured]),
            "cpu_endpoint_ms": median([r.cpu_endpoint_ms for r in measured]),
            "cpu_postgres_ms": median([r.cpu_postgres_ms for r in measured]),
        }
        # The refresher's CPU per token: the command's without its start-up (a run
        # with nothing due), the Celery workers' as measured (already running).
        figures["cpu_ms_per_token"] = figures["cpu_command_ms"] - (
            startup_cpu * 1000 / size if runner == "command" else 0.0
        )
        summary[(size, runner, processes, level)] = figures
        ok = all(r.refreshed == size and r.calls == size for r in measured)
        label = (
            f"command, {processes} process{'es' if processes > 1 else ''}"
            if runner == "command"
            else f"celery, {processes} worker process{'es' if processes > 1 else ''}"
        )
        rows.append(
            [
                f"{size:,}",
                label,
                str(level),
                fmt(figures["seconds"], 2),
                fmt(figures["tokens_per_s"], 0),
                fmt(figures["ms_per_token"], 2),
                fmt(figures["peak_rss_mb"], 1),
                fmt(figures["cpu_command_ms"], 2),
                fmt(figures["cpu_ms_per_token"], 2),
                fmt(figures["cpu_endpoint_ms"], 2),
                fmt(figures["cpu_postgres_ms"], 2),
                "yes" if ok else "NO",
            ]
        )
        bench(
            records,
            "background",
            runner=runner,
            celery=runner == "celery",
            tokens=size,
            processes=processes,
            concurrency=level,
            rounds=len(measured),
            **{k: round(v, 3) for k, v in figures.items() if not math.isnan(v)},
            all_refreshed_once=ok,
            refreshed=[r.refreshed for r in measured],
            calls=[r.calls for r in measured],
        )
    headers = [
        "tokens",
        "runner",
        "threads/process",
        "seconds",
        "tokens/s",
        "ms/token",
        "peak RSS MB",
        "CPU ms/token: refresher",
        "without start-up",
        "endpoint",
        "PostgreSQL",
        "each once",
    ]
    out.append(table(headers, rows))
    out.append(
        f"   (command wall time and CPU include its start-up: {startup_s:.2f} s, "
        f"{startup_cpu * 1000:.0f} ms of CPU with nothing due; Celery: "
        f"from sending the sweep to the last batch's result, workers already running, "
        f"{args.celery_batch} tokens per batch task; {_cores()} cores shared by the "
        "refreshers, PostgreSQL, Redis and the endpoint)"
    )
    if celery_note:
        out.append(f"   {celery_note}")
    bench(
        records,
        "background_startup",
        seconds=round(startup_s, 3),
        cpu_ms=round(startup_cpu * 1000, 1),
    )
    configurations = sorted({key[1:] for key in summary})
    slowest = {c: min(summary[(s, *c)]["tokens_per_s"] for s in sizes) for c in configurations}
    best = max(configurations, key=lambda c: slowest[c])
    runner, processes, level = best
    target(
        records,
        verdicts,
        "background.throughput",
        slowest[best] >= 400,
        f"background: >= 400 tokens/s in the best configuration ({runner}, {processes} "
        f"process(es) x {level} threads): "
        + ", ".join(f"{s:,}: {summary[(s, *best)]['tokens_per_s']:.0f}" for s in sizes),
    )
    cpu = {s: summary[(s, *best)]["cpu_ms_per_token"] for s in sizes}
    target(
        records,
        verdicts,
        "background.cpu",
        max(cpu.values()) <= 2.0,
        "background: refresher CPU <= 2 ms per token (start-up excluded) in the best "
        "configuration: " + ", ".join(f"{s:,}: {ms:.2f} ms" for s, ms in cpu.items()),
    )
    commands = [c for c in configurations if c[0] == "command"]
    for celery in (c for c in configurations if c[0] == "celery" and c[1] == 2):
        ratios = {
            s: summary[(s, *celery)]["tokens_per_s"]
            / max(summary[(s, *c)]["tokens_per_s"] for c in commands)
            for s in sizes
        }
        target(
            records,
            verdicts,
            "background.celery_within_25pct",
            min(ratios.values()) >= 0.75,
            "background: Celery, 2 worker processes, within 25% of the command's best "
            "tokens/s (ratio >= 0.75): " + ", ".join(f"{s:,}: {x:.2f}" for s, x in ratios.items()),
        )
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        per_token = [
            summary[(large, *c)]["ms_per_token"] / summary[(small, *c)]["ms_per_token"]
            for c in commands
        ]
        memory = [
            summary[(large, *c)]["peak_rss_mb"] / summary[(small, *c)]["peak_rss_mb"]
            for c in commands
        ]
        names = [f"p={p} c={lv}" for _r, p, lv in commands]
        target(
            records,
            verdicts,
            "background.flat_time",
            max(per_token) <= 1.25,
            f"background: time per token flat from {small:,} to {large:,} (ratio <= 1.25): "
            + ", ".join(f"{n}: {x:.2f}" for n, x in zip(names, per_token, strict=True)),
        )
        target(
            records,
            verdicts,
            "background.flat_memory",
            max(memory) <= 1.25,
            f"background: peak memory flat from {small:,} to {large:,} (ratio <= 1.25): "
            + ", ".join(f"{n}: {x:.2f}" for n, x in zip(names, memory, strict=True)),
        )


def _redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


def _celery_worker(processes: int, env: dict[str, str]) -> Any:
    """A worker on this run's own Redis database and queue, once it answers a ping."""
    import random
    import uuid

    from .background import CeleryWorker

    if "TOKEN_ROTATION_BENCH_CELERY_QUEUE" not in os.environ:
        # Read by benchmarks.celery_app, here and in the workers.
        os.environ["TOKEN_ROTATION_BENCH_CELERY_BROKER"] = (
            f"redis://127.0.0.1:6379/{random.randint(1, 15)}"
        )
        os.environ["TOKEN_ROTATION_BENCH_CELERY_QUEUE"] = (
            f"token-rotation-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
    from .celery_app import app

    worker = CeleryWorker(
        processes,
        {**env, **os.environ},
        os.environ["TOKEN_ROTATION_BENCH_CELERY_BROKER"],
        os.environ["TOKEN_ROTATION_BENCH_CELERY_QUEUE"],
    )
    for _ in range(120):
        if app.control.ping(destination=[worker.name], timeout=0.5):
            break
    else:
        worker.stop()
        raise RuntimeError("the Celery worker did not start")
    return worker


def _cores() -> int:
    return os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
