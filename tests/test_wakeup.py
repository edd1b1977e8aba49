"""Wake-ups of the single-flight's waiters in their own process
(``django_token_rotation.wakeup``).

No test judges seconds: a waiter is given a timeout far longer than the test
(as if its poll interval were a minute) and the test checks that it was woken,
which only a wake-up can do before that timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from django_token_rotation import wakeup

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


def test_a_process_remembers_a_bounded_number_of_tokens(db: None) -> None:
    """One entry per token ever refreshed grew without end in a long-lived process.
    Past MAX_REMEMBERED all are forgotten; a waiter that looked before that still
    wakes on its token's next notify (versions are never given twice)."""
    since = wakeup.version(token(0))
    wakeup.notify(token(0))
    looked = wakeup.version(token(0))
    assert looked != since
    for pk in range(1, 3 * wakeup.MAX_REMEMBERED):
        wakeup.notify(token(pk))
    assert len(wakeup._versions) <= wakeup.MAX_REMEMBERED
    wakeup.notify(token(0))  # forgotten, then notified again
    assert wakeup.wait(token(0), looked, NEVER) is True
