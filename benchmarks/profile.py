"""Where the background refresher's CPU goes: ``python -m benchmarks.profile``.

Refreshes ``--tokens`` due tokens with ``background.refresh_due`` in this process
(``--concurrency`` threads), against the benchmarks' own token endpoint and database
(PostgreSQL when it answers, else SQLite), after one warm-up run. Prints the CPU time
of this process per token without a profiler (median of ``--rounds``), the SQL
statements sent per token, then one run under ``cProfile`` timed by CPU time (waits on the
endpoint and the database count nothing): its top entries by own time and by
cumulative time. Built from the benchmarks' pieces: ``run.site()``,
``EndpointProcess``, ``background.prepare()`` and ``background.make_due()``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from typing import Any

from .common import median
from .endpoint import EndpointProcess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.02, help="Token endpoint (s).")
    parser.add_argument("--top", type=int, default=25, help="Entries of each profile listing.")
    parser.add_argument("--no-profile", action="store_true", help="CPU and statements only.")
    parser.add_argument(
        "--callers", metavar="REGEX", help="Also list who calls the functions matching REGEX."
    )
    parser.add_argument("--pg-name", default="token_rotation_profile")
    args = parser.parse_args(argv)

    from .run import site

    endpoint = EndpointProcess(args.latency)
    try:
        with site(args.pg_name, endpoint) as label:
            _profile(args, endpoint, label)
    finally:
        endpoint.stop()
    return 0


def _profile(args: argparse.Namespace, endpoint: EndpointProcess, label: str) -> None:
    from django.db import connection

    from django_token_rotation import background

    from .background import make_due, prepare

    prepare(args.tokens)
    statements = 0

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        nonlocal statements
        statements += 1
        return execute(sql, params, many, context)

    def one_run() -> tuple[float, int]:
        nonlocal statements
        make_due()
        endpoint.reset(args.latency)
        statements = 0
        started = time.process_time()
        with connection.execute_wrapper(count):
            report = background.refresh_due(concurrency=args.concurrency)
        cpu = time.process_time() - started
        if report.refreshed != args.tokens or endpoint.stats()["calls"] != args.tokens:
            raise RuntimeError(f"refreshed {report.refreshed} of {args.tokens}: {report.counts}")
        return cpu, statements

    one_run()  # warm-up: imports, connections, caches
    runs = [one_run() for _ in range(args.rounds)]
    cpu_ms = median([cpu * 1000 / args.tokens for cpu, _ in runs])
    # Statements are counted on this thread's connection (concurrency 1: all of them).
    per_token = median([n / args.tokens for _, n in runs])
    print(
        f"{label}, endpoint {args.latency * 1000:g} ms, {args.tokens} tokens, "
        f"concurrency {args.concurrency}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"CPU of this process per token, no profiler (median of {args.rounds}): {cpu_ms:.2f} ms"
        + (f"; SQL statements per token: {per_token:.2f}" if args.concurrency == 1 else "")
    )
    print(
        "BENCH "
        + json.dumps(
            {
                "name": "profile",
                "tokens": args.tokens,
                "concurrency": args.concurrency,
                "cpu_ms_per_token": round(cpu_ms, 3),
                "statements_per_token": round(per_token, 3) if args.concurrency == 1 else None,
            }
        )
    )
    if args.no_profile:
        return
    make_due()
    endpoint.reset(args.latency)
    # CPU time, not wall time: waiting on the endpoint and the database costs nothing.
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    background.refresh_due(concurrency=args.concurrency)
    profiler.disable()
    for order in ("tottime", "cumulative"):
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.strip_dirs().sort_stats(order).print_stats(args.top)
        print(f"\n-- under cProfile (CPU time), {args.tokens} tokens, by {order} --")
        print(stream.getvalue().split("\n", 4)[-1].strip("\n"))
    if args.callers:
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).strip_dirs().print_callers(args.callers)
        print(f"\n-- callers of {args.callers} --")
        print(stream.getvalue().strip("\n"))


if __name__ == "__main__":
    sys.exit(main())
