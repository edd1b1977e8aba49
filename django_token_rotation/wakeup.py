"""Wake the single-flight's waiters in this process when a refresh lands.

A caller that finds another worker holding a token's lease waits until the
winner has stored its outcome, then re-reads the token. Threads of the
winner's own process need not poll for it:

* :func:`notify` is called by the winner once the outcome is stored and the
  lease released: it wakes this process's threads waiting for the token at
  once (one ``threading.Condition``);
* :func:`wait` blocks until such a wake-up for the token, or the timeout.

Waiters in other processes and on other hosts poll
(:mod:`.singleflight`); the engine neither listens nor notifies across
processes (docs/performance.rst says why). A wake-up is a hint, never a
promise: the caller always re-reads the token and waits with a timeout.

Usage in a wait loop::

    since = wakeup.version(token)    # before re-reading the token
    ...                              # re-read, re-check, try to claim
    wakeup.wait(token, since, poll)  # instead of time.sleep(poll)
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

#: (database alias, token id as text).
Key = tuple[str, str]

_changed = threading.Condition()
#: Each token's last wake-up: a number never given before (``_numbers``), so
#: that one forgotten and notified again still differs from any ``since``.
_versions: dict[Key, int] = {}
_numbers = itertools.count(1)
#: Tokens remembered at most: a long-lived process refreshes many tokens, and
#: one entry per token ever refreshed grew without end (and pinned the memory
#: around it). Past this, all are forgotten at once: a thread waiting then
#: wakes early and re-reads, and one about to wait may miss one wake-up and
#: poll instead (a wake-up is a hint).
MAX_REMEMBERED = 1024


def _key(token: Any) -> Key:
    return (token._state.db or "default", str(token.pk))


def version(token: Any) -> int:
    """This process's last wake-up for ``token`` (pass it to :func:`wait`); 0: none."""
    with _changed:
        return _versions.get(_key(token), 0)


def notify(token: Any) -> None:
    """Wake this process's threads waiting for ``token``."""
    key = _key(token)
    with _changed:
        if len(_versions) >= MAX_REMEMBERED and key not in _versions:
            _versions.clear()
        _versions[key] = next(_numbers)
        _changed.notify_all()


def wait(token: Any, since: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for a wake-up for ``token`` after ``since``
    (a :func:`version`). True if woken; returning early is always allowed."""
    key = _key(token)
    with _changed:
        return _changed.wait_for(lambda: _versions.get(key, 0) != since, timeout)


def _reset() -> None:
    """Forget every wake-up (tests)."""
    with _changed:
        _versions.clear()


def _after_fork_in_child() -> None:
    # A condition held by another thread at the fork would stay locked in the child.
    global _changed
    _changed = threading.Condition()


os.register_at_fork(after_in_child=_after_fork_in_child)
