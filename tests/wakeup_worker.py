"""A waiter in another process, for tests/test_wakeup.py.

Sets Django up on the database the parent gives it (``TOKEN_ROTATION_TEST_WORKER_DB``),
starts listening, prints ``listening``, then waits up to ``--timeout`` seconds for a
wake-up for token ``--token-id`` and prints one JSON line: whether it was woken.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from types import SimpleNamespace


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--token-id", required=True)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django_token_rotation import wakeup

    token = SimpleNamespace(pk=args.token_id, _state=SimpleNamespace(db="default"))
    since = wakeup.version(token)
    if not wakeup._wait_until_listening("default", timeout=30):
        print(json.dumps({"error": "never listening"}), flush=True)
        sys.exit(1)
    print("listening", flush=True)
    woken = wakeup.wait(token, since, args.timeout)
    print(json.dumps({"woken": woken, "version": wakeup.version(token)}), flush=True)


if __name__ == "__main__":
    main()
