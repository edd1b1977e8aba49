"""Where the engine's CPU goes: ``python -m benchmarks.profile [--path burst]``.

``--path background`` (the default): the background refresher. Refreshes ``--tokens``
due tokens with ``background.refresh_due`` in this process (``--concurrency``
threads), against the benchmarks' own token endpoint and database
(PostgreSQL when it answers, else SQLite), after one warm-up run. Prints the CPU time
of this process per token without a profiler (median of ``--rounds``), the SQL
statements sent per token, then one run under ``cProfile`` timed by CPU time (waits on the
endpoint and the database count nothing): its top entries by own time and by
cumulative time. Built from the benchmarks' pieces: ``run.site()``,
``EndpointProcess``, ``background.prepare()`` and ``background.make_due()``.

``--path burst``: the burst after expiry of ``benchmarks.burst`` (one user, one token,
many callers at once just after it expired), without gunicorn so that it can be
profiled. ``--processes`` forked processes of ``--threads`` threads each call, all at
the same instant (a start time shared by the processes, a barrier in each), what a page
request runs once its session's summary of the token has come due: the middleware's
``recheck`` calls ``rotation.check_user_tokens(user_id, TOKEN_ROTATION_PROVIDERS)``, and
so does each caller here (the session's reading and writing around it are left out). The
threads and their database connections live across the bursts, as a gunicorn worker's
threads do; ``--rounds`` bursts after one warm-up, each on a fresh expiry (the token's
``expires_at`` a second ago and its ``TokenState`` deleted, as ``benchmarks.burst``
does; ``--keep-state``: the state kept with its lease cleared, a token refreshed
before). Prints the CPU time of the processes per burst and per caller (each process's
``time.process_time`` around the bursts only), the winner's (the thread whose call made
the refresh) and the waiters' (``time.thread_time`` of each call), the SQL statements
per burst and per caller, and the refresh calls the endpoint received (exactly one per
burst, else it fails). Then ``--rounds`` more bursts under ``cProfile``: one profiler
per thread (``cProfile`` sees only the thread that enables it) timed by that thread's
CPU time (``time.thread_time``: a process's CPU time would charge each thread's
functions with its sibling threads' work), merged per process, then across processes.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import gc
import io
import json
import os
import pstats
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from statistics import mean
from typing import Any

from .common import median, percentile
from .endpoint import EndpointProcess


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--path", choices=("background", "burst"), default="background")
    parser.add_argument("--tokens", type=int, default=300, help="background: due tokens.")
    parser.add_argument("--concurrency", type=int, default=1, help="background: threads.")
    parser.add_argument("--processes", type=int, default=4, help="burst: forked processes.")
    parser.add_argument("--threads", type=int, default=16, help="burst: callers per process.")
    parser.add_argument(
        "--keep-state",
        action="store_true",
        help="burst: keep the token's TokenState (a token refreshed before).",
    )
    parser.add_argument("--rounds", type=int, help="Runs (background, 3) or bursts (burst, 5).")
    parser.add_argument(
        "--latency", type=float, help="Token endpoint (s): 0.02 (background), 0.05 (burst)."
    )
    parser.add_argument("--top", type=int, default=25, help="Entries of each profile listing.")
    parser.add_argument("--no-profile", action="store_true", help="CPU and statements only.")
    parser.add_argument(
        "--callers", metavar="REGEX", help="Also list who calls the functions matching REGEX."
    )
    parser.add_argument("--pg-name", default="token_rotation_profile")
    args = parser.parse_args(argv)
    burst = args.path == "burst"
    if args.rounds is None:
        args.rounds = 5 if burst else 3
    if args.latency is None:
        args.latency = 0.05 if burst else 0.02

    from .run import site

    endpoint = EndpointProcess(args.latency)
    try:
        with site(args.pg_name, endpoint) as label:
            (_burst if burst else _profile)(args, endpoint, label)
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


# -- the burst path -------------------------------------------------------------------

#: Seconds between sending a burst's start time and the burst: every process has
#: received it and released its threads to sleep until then.
START_DELAY = 0.3
#: Seconds a process's threads and main thread wait for one another at most.
BARRIER_TIMEOUT = 300.0


@dataclass
class Call:
    """One caller's call in one burst, as measured by its own thread."""

    cpu: float  # time.thread_time() of the call
    wall: float
    statements: int
    won: bool  # this call made the refresh (token_refreshed was sent on its thread)
    error: str | None


@dataclass
class Burst:
    cpu: float  # the processes' CPU time, summed
    calls: list[Call]
    endpoint_calls: int
    rejected: int
    #: CPU time of the processes' garbage collections (in the calls' threads), and
    #: how many of them were full (generation 2) collections.
    gc_cpu: float = 0.0
    full_collections: int = 0


class _Caller:
    """The threads of one forked process; the parent drives them through a pipe."""

    def __init__(self, user_id: int, threads: int) -> None:
        self.user_id = user_id
        self.threads = threads
        # A thread that fails outside its call breaks the barriers (after the timeout):
        # the process then exits, and the parent fails on the closed pipe.
        self.start = threading.Barrier(threads + 1, timeout=BARRIER_TIMEOUT)
        self.done = threading.Barrier(threads + 1, timeout=BARRIER_TIMEOUT)
        #: (start time, profiled) of the coming burst; ``None``: the threads end.
        self.order: tuple[float, bool] | None = None
        self.calls: list[Call | None] = [None] * threads
        self.profilers = [cProfile.Profile(time.thread_time) for _ in range(threads)]
        self.local = threading.local()

    def serve(self, pipe: Connection) -> None:
        from django_token_rotation.signals import token_refreshed

        def won(**kwargs: Any) -> None:
            self.local.won = True

        token_refreshed.connect(won, weak=False, dispatch_uid="benchmarks.profile.won")
        collecting = threading.local()
        collected = [0.0, 0]  # CPU seconds, full collections

        def garbage(phase: str, info: dict[str, Any]) -> None:
            # Called on the collecting thread, before and after each collection.
            if phase == "start":
                collecting.started = time.thread_time()
            else:
                collected[0] += time.thread_time() - collecting.started
                collected[1] += info["generation"] == 2

        gc.callbacks.append(garbage)
        workers = [
            threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(self.threads)
        ]
        for worker in workers:
            worker.start()
        while True:
            message = pipe.recv()
            if message[0] == "burst":
                self.order = (message[1], message[2])
                before = list(collected)
                started = time.process_time()
                self.start.wait()
                self.done.wait()
                cpu = time.process_time() - started
                gc_cpu, full = collected[0] - before[0], int(collected[1] - before[1])
                pipe.send((cpu, self.calls, gc_cpu, full))
            elif message[0] == "dump":
                stats = pstats.Stats(self.profilers[0])
                for profiler in self.profilers[1:]:
                    stats.add(profiler)
                stats.dump_stats(message[1])
                pipe.send(None)
            else:
                self.order = None
                self.start.wait()
                for worker in workers:
                    worker.join()
                pipe.send(None)
                return

    def run(self, i: int) -> None:
        from django.db import connection

        from django_token_rotation import rotation
        from django_token_rotation.conf import app_settings

        statements = 0

        def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            nonlocal statements
            statements += 1
            return execute(sql, params, many, context)

        while True:
            self.start.wait()
            if self.order is None:
                connection.close()
                return
            start_at, profiled = self.order
            profiler = self.profilers[i] if profiled else None
            statements, error = 0, None
            self.local.won = False
            time.sleep(max(0.0, start_at - time.time()))
            with connection.execute_wrapper(count):
                wall, cpu = time.perf_counter(), time.thread_time()
                if profiler is not None:
                    profiler.enable()
                try:
                    checks = rotation.check_user_tokens(self.user_id, app_settings.PROVIDERS)
                except Exception as exc:  # reported by the parent, which then fails
                    error = type(exc).__name__
                else:
                    if len(checks) != 1 or checks[0].error or checks[0].unavailable:
                        error = f"{len(checks)} checks: " + ", ".join(
                            str(c.error or c.unavailable or "") for c in checks
                        )
                finally:
                    if profiler is not None:
                        profiler.disable()
                cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            self.calls[i] = Call(cpu, wall, statements, bool(self.local.won), error)
            self.done.wait()


#: Whether each thread can have a cProfile profiler of its own (one at a time per
#: process from Python 3.12: "Another profiling tool is already active").
THREADS_PROFILED_APART = sys.version_info < (3, 12)


def _serve(pipe: Connection, user_id: int, threads: int) -> None:
    _Caller(user_id, threads).serve(pipe)


def _burst(args: argparse.Namespace, endpoint: EndpointProcess, label: str) -> None:
    import multiprocessing

    from allauth.socialaccount.models import SocialToken
    from django.db import connections
    from django.utils import timezone

    from django_token_rotation.models import TokenState

    from .common import delete_all_users, make_tokens

    delete_all_users()
    (user_id,) = make_tokens(1, expires_in=3600, prefix="profile-burst-", with_state=True)
    token_id = SocialToken.objects.get(account__user_id=user_id).pk
    callers = args.processes * args.threads
    # Forked before this process holds a connection: no child shares its socket.
    connections.close_all()
    context = multiprocessing.get_context("fork")
    pipes: list[Connection] = []
    processes = []
    for _ in range(args.processes):
        parent, child = context.Pipe()
        process = context.Process(target=_serve, args=(child, user_id, args.threads))
        process.start()
        child.close()
        pipes.append(parent)
        processes.append(process)

    def expire() -> None:
        if args.keep_state:
            TokenState.objects.filter(token_id=token_id).update(lease_id="", lease_expires_at=None)
        else:  # a token as first stored, as in benchmarks.burst
            TokenState.objects.filter(token_id=token_id).delete()
        SocialToken.objects.filter(pk=token_id).update(
            expires_at=timezone.now() - datetime.timedelta(seconds=1)
        )
        endpoint.reset(args.latency)

    def one_burst(profiled: bool = False) -> Burst:
        expire()
        start_at = time.time() + START_DELAY
        for pipe in pipes:
            pipe.send(("burst", start_at, profiled))
        burst = Burst(0.0, [], 0, 0)
        for pipe in pipes:
            cpu, calls, gc_cpu, full = pipe.recv()
            burst.cpu += cpu
            burst.calls += calls
            burst.gc_cpu += gc_cpu
            burst.full_collections += full
        stats = endpoint.stats()
        burst.endpoint_calls, burst.rejected = int(stats["calls"]), int(stats["rejected"])
        calls = burst.calls
        errors = [call.error for call in calls if call.error]
        winners = sum(call.won for call in calls)
        if burst.endpoint_calls != 1 or burst.rejected or errors or winners != 1:
            raise RuntimeError(
                f"a burst of {callers} callers: {burst.endpoint_calls} refresh calls at the "
                f"endpoint ({burst.rejected} rejected), {winners} winners, "
                f"{len(errors)} errors {sorted(set(errors))[:3]}; expected 1, 1, 0"
            )
        return burst

    try:
        one_burst()  # warm-up: imports, connections, compiled statements
        bursts = [one_burst() for _ in range(args.rounds)]
        _report_bursts(args, label, callers, bursts)
        if not args.no_profile and not THREADS_PROFILED_APART:
            print(
                "\nNo profile of the burst: on Python 3.12 and newer, cProfile runs on "
                "sys.monitoring, which allows one profiler per process and mixes its "
                "threads' calls; run the burst's profile on Python 3.11."
            )
        elif not args.no_profile:
            profiled = [one_burst(profiled=True) for _ in range(args.rounds)]
            _print_profiles(args, pipes, callers, profiled)
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
                pipe.recv()
        for process in processes:
            process.join(30)
            if process.exitcode is None:
                process.kill()
                process.join()


def _report_bursts(args: argparse.Namespace, label: str, callers: int, bursts: list[Burst]) -> None:
    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.2f} ms"

    cpu = median([b.cpu for b in bursts])
    winner = [next(c for c in b.calls if c.won) for b in bursts]
    waiters = [[c for c in b.calls if not c.won] for b in bursts]
    waiter_cpu = median([sum(c.cpu for c in w) / len(w) for w in waiters]) if callers > 1 else 0
    threads_cpu = median([sum(c.cpu for c in b.calls) for b in bursts])
    statements = median([sum(c.statements for c in b.calls) for b in bursts])
    waiter_statements = (
        median([sum(c.statements for c in w) / len(w) for w in waiters]) if callers > 1 else 0
    )
    # Waiters by the statements their call sent: a waiter that queued behind another
    # thread of its process (the tokens' read, one re-read), a poller (its process's
    # first thread: re-reads and claims until the winner is done), a late caller (the
    # tokens' read only: the refresh was already stored).
    spread: dict[int, list[float]] = {}
    for w in waiters:
        for call in w:
            spread.setdefault(call.statements, []).append(call.cpu)
    walls = sorted(c.wall for b in bursts for c in b.calls)
    print(
        f"{label}, endpoint {args.latency * 1000:g} ms, {args.processes} processes x "
        f"{args.threads} threads = {callers} callers, "
        f"{'state kept' if args.keep_state else 'first expiry (state deleted)'}, "
        f"{args.rounds} bursts after a warm-up, load average {os.getloadavg()[0]:.1f}"
    )
    full = sum(b.full_collections for b in bursts)
    print(
        f"CPU per burst, the processes, no profiler (median): {ms(cpu)}; "
        f"per caller: {ms(cpu / callers)}; mean per burst {ms(mean([b.cpu for b in bursts]))}, "
        f"of which garbage collection {ms(mean([b.gc_cpu for b in bursts]))} "
        f"({full} full collection{'s' if full != 1 else ''} in all)"
    )
    winner_cpu = median([c.cpu for c in winner])
    print(
        f"  in the calls: {ms(threads_cpu)} (the rest: barriers, the processes' main "
        f"threads, the deadline's watchdog); the winner's call {ms(winner_cpu)}, "
        f"a waiter's {ms(waiter_cpu)} (mean)"
    )
    print(
        f"SQL statements per burst: {statements:g}; the winner's "
        f"{median([c.statements for c in winner]):g}, a waiter's {waiter_statements:.2f} (mean)"
    )
    print(
        f"  waiters of the {len(bursts)} bursts by their statements (count x median CPU): "
        + "; ".join(f"{n}: {len(spread[n])} x {ms(median(spread[n]))}" for n in sorted(spread))
    )
    print(
        f"Refresh calls at the endpoint per burst: {[b.endpoint_calls for b in bursts]}; "
        f"call wall time p50 {ms(percentile(walls, 50))}, max {ms(walls[-1])}"
    )
    print(
        "BENCH "
        + json.dumps(
            {
                "name": "profile_burst",
                "processes": args.processes,
                "threads": args.threads,
                "callers": callers,
                "keep_state": args.keep_state,
                "cpu_ms_per_burst": round(cpu * 1000, 3),
                "cpu_ms_per_caller": round(cpu * 1000 / callers, 3),
                "winner_cpu_ms": round(winner_cpu * 1000, 3),
                "waiter_cpu_ms": round(waiter_cpu * 1000, 3),
                "statements_per_burst": statements,
                "statements_per_waiter": round(waiter_statements, 3),
                "refresh_calls": [b.endpoint_calls for b in bursts],
            }
        )
    )


def _print_profiles(
    args: argparse.Namespace, pipes: list[Connection], callers: int, bursts: list[Burst]
) -> None:
    with tempfile.TemporaryDirectory(prefix="token-rotation-profile-") as directory:
        paths = [os.path.join(directory, f"{i}.prof") for i in range(len(pipes))]
        for pipe, path in zip(pipes, paths, strict=True):
            pipe.send(("dump", path))
            pipe.recv()
        total = sum(c.cpu for b in bursts for c in b.calls)
        for order in ("tottime", "cumulative"):
            stream = io.StringIO()
            stats = pstats.Stats(paths[0], stream=stream)
            for path in paths[1:]:
                stats.add(path)
            stats.strip_dirs().sort_stats(order).print_stats(args.top)
            print(
                f"\n-- under cProfile (each thread's CPU time), {len(bursts)} "
                f"burst{'s' if len(bursts) != 1 else ''} of "
                f"{callers} callers ({total * 1000 / len(bursts):.1f} ms per burst in the "
                f"calls), by {order} --"
            )
            print(stream.getvalue().split("\n", 4)[-1].strip("\n"))
        if args.callers:
            stream = io.StringIO()
            stats = pstats.Stats(paths[0], stream=stream)
            for path in paths[1:]:
                stats.add(path)
            stats.strip_dirs().print_callers(args.callers)
            print(f"\n-- callers of {args.callers} --")
            print(stream.getvalue().strip("\n"))


if __name__ == "__main__":
    sys.exit(main())
