"""The single-flight's own parts: queueing a process's threads, and waiting
for another worker's refresh.

The protocol itself (claim the lease, send, store, release) is
:class:`~django_token_rotation.rotation.Refresh`. Here:

1. Threads of one process queue on a per-token lock (:func:`process_turn`),
   so only one of them touches the database at a time; one that had to wait
   re-reads the token first (the thread before it has usually just refreshed it).
2. A caller that finds another worker holding the token's lease waits for a
   change (:func:`wait_for_change`): woken at once by a winner in its own
   process (:mod:`.wakeup`), re-reading every :data:`POLL_FIRST` to
   :data:`POLL_MAX` seconds otherwise (a winner in another process or on
   another host), never longer than ``TOKEN_ROTATION_WAIT``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from allauth.socialaccount.models import SocialToken

from . import store, wakeup
from .conf import app_settings
from .exceptions import TokenRefreshUnavailable

_process_locks: weakref.WeakValueDictionary[Any, threading.Lock] = weakref.WeakValueDictionary()
_process_locks_guard = threading.Lock()

#: Seconds a lease must outlive the deadline of the refresh (``TOKEN_ROTATION_TIMEOUT``,
#: shared by every HTTP call of it): the database writes before and after it.
#: Check ``token_rotation.E006`` holds ``TOKEN_ROTATION_LEASE`` to it.
LEASE_MARGIN = 2.0

#: Seconds between two re-reads of a waiter that no wake-up reached (first, and at most):
#: the bound on what a lost wake-up costs.
POLL_FIRST = 0.02
POLL_MAX = 0.1


def _process_lock(token: SocialToken) -> threading.Lock:
    key = (token._state.db, token.pk)
    with _process_locks_guard:
        lock = _process_locks.get(key)
        if lock is None:
            lock = threading.Lock()
            _process_locks[key] = lock
        return lock


@contextmanager
def process_turn(token: SocialToken, wait: float) -> Iterator[bool]:
    """This thread's turn at ``token`` among the threads of its process; yields
    whether it came at once (``False``: another thread held it, and has probably
    just refreshed the token). Raises after ``wait`` seconds in the queue."""
    lock = _process_lock(token)
    first = lock.acquire(blocking=False)
    if not first and not lock.acquire(timeout=wait):
        raise gave_up(token)
    try:
        yield first
    finally:
        lock.release()


def wait_for_change(token: SocialToken, since: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for another worker to change ``token``'s
    stored state (store a refresh, record a failure, release its lease) after
    ``since`` (a :func:`.wakeup.version` taken before the caller's last read).

    Returning early is always allowed: the caller re-reads and re-checks.
    """
    return wakeup.wait(token, since, timeout)


def gave_up(token: SocialToken) -> TokenRefreshUnavailable:
    return TokenRefreshUnavailable(
        f"Another worker is still refreshing this token after {app_settings.WAIT} s.",
        code="refresh_in_progress",
        provider=store.provider_key(token),
        token_id=token.pk,
    )
