"""Wake-ups of the single-flight's waiters (``django_token_rotation.wakeup``).

No test judges seconds: a waiter is given a timeout far longer than the test
(as if its poll interval were a minute) and the test checks that it was woken,
which only a wake-up can do before that timeout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from django.db import connections, transaction

from django_token_rotation import wakeup
from tests.helpers import ALIASES, ROOT, worker_env

#: Far longer than any of these tests: returning before it means "woken".
NEVER = 120.0


def token(pk: Any = 7, alias: str = "default") -> Any:
    return SimpleNamespace(pk=pk, _state=SimpleNamespace(db=alias))


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    wakeup._reset()
    yield
    wakeup._reset()


def test_a_thread_is_woken_by_a_notify_in_its_process(db: None) -> None:
    waiter_token = token()
    since = wakeup.version(waiter_token)
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(wakeup.wait(token(), since, NEVER)))
    waiter.start()
    wakeup.notify(token())
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert result == [True]


def test_a_notify_between_looking_and_waiting_is_not_lost(db: None) -> None:
    since = wakeup.version(token())
    wakeup.notify(token())  # lands after the waiter looked, before it waits
    assert wakeup.wait(token(), since, NEVER) is True


def test_only_the_tokens_own_waiters_wake(db: None) -> None:
    since = wakeup.version(token(1))
    wakeup.notify(token(2))
    assert wakeup.wait(token(1), since, 0.05) is False  # timed out: polling as before


def test_other_databases_than_postgresql_poll(db: None) -> None:
    wakeup.notify(token())  # no NOTIFY, no error
    assert wakeup.wait(token(), wakeup.version(token()), 0.01) is False
    assert not wakeup.listening("default")


@pytest.mark.postgres
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "atomic"])
def test_a_waiter_in_another_process_is_woken_by_notify(in_transaction: bool) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.wakeup_worker", "--token-id=4242", f"--timeout={NEVER}"],
        cwd=ROOT,
        env=worker_env("postgres"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "listening"
        if in_transaction:
            # The caller's open transaction (ATOMIC_REQUESTS) does not hold the wake-up back.
            with transaction.atomic(using="postgres"):
                wakeup.notify(token(4242, "postgres"))
                out, err = worker.communicate(timeout=60)
        else:
            wakeup.notify(token(4242, "postgres"))
            out, err = worker.communicate(timeout=60)
    finally:
        worker.kill()
    assert worker.returncode == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == {"woken": True, "version": 1}


@pytest.mark.postgres
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_the_listener_survives_the_loss_of_its_connection() -> None:
    assert wakeup._wait_until_listening("postgres", timeout=30)
    with connections["postgres"].cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query = %s",
            [f'LISTEN "{wakeup.CHANNEL}"'],
        )
        assert cursor.fetchone() == (True,)
    # Meanwhile waiters poll (a wait times out instead of hanging)...
    assert wakeup.wait(token(9, "postgres"), wakeup.version(token(9, "postgres")), 0.01) in (
        True,
        False,
    )
    # ... and the listener comes back: a notify wakes a waiter again.
    listener = wakeup._listeners["postgres"]
    assert listener is not None
    for _attempt in range(200):
        if listener.connected.wait(0.05) and wakeup.listening("postgres"):
            since = wakeup.version(token(9, "postgres"))
            # Our own notification reaches us through the listener, too.
            wakeup.notify(token(9, "postgres"))
            assert wakeup.wait(token(9, "postgres"), since, NEVER)
            break
    else:
        pytest.fail("the listener did not reconnect")


def test_a_forked_child_starts_its_own_listener() -> None:
    wakeup._listeners["somewhere"] = None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing inherited
        os.write(write, b"clean" if not wakeup._listeners else b"inherited")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 20) == b"clean"
