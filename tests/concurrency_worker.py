"""A worker process of the concurrency tests.

Run by the tests as ``python -m tests.concurrency_worker``; it sets Django up
on the database the parent gives it (``TOKEN_ROTATION_TEST_WORKER_DB``), then
starts ``--threads`` threads that all call ``get_access_token`` at the same
instant (``--start-at``, a ``time.time()`` value, or with ``--wait-for-start``
the one the parent sends once every worker is set up) and prints one JSON
line: the outcome of each call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--user-id", type=int, required=True)
    parser.add_argument("--provider", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument(
        "--wait-for-start",
        action="store_true",
        help="print 'ready' once set up, then read the --start-at value from stdin",
    )
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()

    from django.contrib.auth import get_user_model
    from django.db import connections, transaction

    from django_token_rotation import TokenRotationError, get_access_token

    if os.environ.get("TOKEN_ROTATION_TEST_DIE_AFTER_ANSWER"):
        # Fault injection: the process dies between the provider's answer and
        # the database write, as a worker killed at the worst moment would.
        import signal

        from django_token_rotation import client

        real_grant = client.refresh_token_grant

        def grant_then_die(*a: Any, **kw: Any) -> Any:
            real_grant(*a, **kw)
            os.kill(os.getpid(), signal.SIGKILL)

        client.refresh_token_grant = grant_then_die

    if os.environ.get("TOKEN_ROTATION_TEST_SLOW_DNS"):
        # Fault injection at the resolver's boundary (no DNS server can be made
        # to stall here): "name=seconds" stalls that name, then it is 127.0.0.1.
        import socket

        slow_name, seconds = os.environ["TOKEN_ROTATION_TEST_SLOW_DNS"].split("=")
        real_getaddrinfo = socket.getaddrinfo

        def stalling_getaddrinfo(host: Any, *a: Any, **kw: Any) -> Any:
            if host == slow_name:
                time.sleep(float(seconds))
                host = "127.0.0.1"
            return real_getaddrinfo(host, *a, **kw)

        socket.getaddrinfo = stalling_getaddrinfo

    user = get_user_model().objects.get(pk=args.user_id)
    connections.close_all()
    if args.wait_for_start:
        # The parent starts every worker's threads at one instant once all are set up.
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        args.start_at = float(sys.stdin.readline())
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def call() -> None:
        delay = args.start_at - time.time()
        if delay > 0:
            time.sleep(delay)
        started = time.monotonic()
        try:
            if os.environ.get("TOKEN_ROTATION_TEST_ATOMIC"):
                # As in a view under ATOMIC_REQUESTS that then fails: roll back.
                with transaction.atomic():
                    outcome: dict[str, Any] = {"token": get_access_token(user, args.provider)}
                    transaction.set_rollback(True)
            else:
                outcome = {"token": get_access_token(user, args.provider)}
        except TokenRotationError as exc:
            outcome = {"error": exc.code, "permanent": exc.permanent}
        except Exception as exc:  # reported to the parent, which fails the test
            outcome = {"error": f"unexpected {type(exc).__name__}: {exc}"}
        finally:
            connections.close_all()
        outcome["took"] = time.monotonic() - started
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=call) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sys.stdout.write(json.dumps({"pid": os.getpid(), "results": results}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
