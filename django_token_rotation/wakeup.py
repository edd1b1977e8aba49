"""Wake the single-flight's waiters when a refresh lands, instead of letting them poll.

A caller that finds another worker holding a token's lease waits until the
winner has stored its outcome, then re-reads the token. Polling the database
every 20-100 ms makes every waiter late by up to a poll interval. Here:

* :func:`notify` is called by the winner once the outcome is stored and the
  lease released. It wakes the threads of this process at once (one
  ``threading.Condition``), and on PostgreSQL sends ``NOTIFY`` on the channel
  :data:`CHANNEL` with the token's id, for the other processes and hosts.
* :func:`wait` blocks until such a wake-up for the token, or the timeout. On
  PostgreSQL each process keeps one dedicated listening connection (a daemon
  thread, started by the first wait), which turns notifications into the same
  in-process wake-up.

A wake-up is a hint, never a promise: the caller always re-reads the token and
waits with a timeout, so a lost notification (the listening connection
dropped, ``NOTIFY`` sent inside a transaction that commits later, another
database than PostgreSQL) only costs what polling costs. The listener
reconnects on its own, backing off up to :data:`RECONNECT_MAX` seconds.

Before it counts as listening, the listener sends itself a probe ``NOTIFY``
from another connection. Behind a transaction-pooling proxy (pgbouncer's
``pool_mode = transaction``) a ``LISTEN`` stays on a server connection that
goes back to the pool, and the probe never arrives: the listener says so in
one log line and stops for good; waiters poll (docs/databases.rst).

No connection of ours outlives a test database: :func:`stop` closes them all,
and is called whenever Django opens its "no database" connection, which it
does before it creates or drops a test database (docs/testing.rst).

Usage in a wait loop::

    since = wakeup.version(token)    # before re-reading the token
    ...                              # re-read, re-check, try to claim
    wakeup.wait(token, since, poll)  # instead of time.sleep(poll)
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from typing import Any

from django.db import connections

logger = logging.getLogger("django_token_rotation")

#: The PostgreSQL ``LISTEN``/``NOTIFY`` channel; the payload is the token's id.
CHANNEL = "django_token_rotation"
#: Longest pause (seconds) between two attempts to (re)open the listening connection.
RECONNECT_MAX = 30.0
#: Seconds the listener waits for its own probe ``NOTIFY`` before it concludes
#: that notifications cannot reach it (a transaction-pooling proxy).
PROBE_TIMEOUT = 5.0
#: Payloads of probes start with this (token ids are numbers).
PROBE_PREFIX = "probe-"

#: (database alias, token id as text): the same for the id a waiter holds and
#: the payload a notification carries.
Key = tuple[str, str]

_changed = threading.Condition()
_versions: dict[Key, int] = {}
_listeners: dict[str, _Listener | None] = {}
_listeners_guard = threading.Lock()


def _key(token: Any) -> Key:
    return (token._state.db or "default", str(token.pk))


def version(token: Any) -> int:
    """How many wake-ups this process has seen for ``token`` (pass it to :func:`wait`)."""
    with _changed:
        return _versions.get(_key(token), 0)


def _bump(key: Key) -> None:
    with _changed:
        _versions[key] = _versions.get(key, 0) + 1
        _changed.notify_all()


def notify(token: Any, *, processes: bool = True) -> None:
    """Wake everyone waiting for ``token``: in this process, and on PostgreSQL
    (unless ``processes`` is false: nobody there can be waiting) in others."""
    alias, pk = _key(token)
    _bump((alias, pk))
    connection = connections[alias]
    if not processes or connection.vendor != "postgresql":
        return
    try:
        if not connection.in_atomic_block:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, pk])
        else:
            # Sent inside the caller's transaction, NOTIFY would wait for its
            # commit (the end of an ATOMIC_REQUESTS view): use a connection of our own.
            _notify_outside(alias, pk)
    except Exception as exc:  # a hint only: the waiters' polling covers it
        logger.debug("NOTIFY for token %s failed (%s); waiters will poll.", pk, type(exc).__name__)


_notifiers: dict[str, Any] = {}
_notifiers_guard = threading.Lock()


def _notify_outside(alias: str, pk: str) -> None:
    with _notifiers_guard:
        notifier = _notifiers.get(alias)
        if notifier is None or notifier.closed:
            notifier = _notifiers[alias] = _connect(alias)
        try:
            notifier.execute("SELECT pg_notify(%s, %s)", [CHANNEL, pk])
        except Exception:
            _notifiers.pop(alias, None)
            with contextlib.suppress(Exception):
                notifier.close()
            raise


def _connect(alias: str) -> Any:
    """A new autocommit driver connection to ``alias``, outside Django's management."""
    wrapper: Any = connections.create_connection(alias)
    connection = wrapper.Database.connect(**wrapper.get_connection_params())
    connection.autocommit = True
    return connection


def listen(token: Any) -> None:
    """Start listening for ``token``'s database, if this process does not yet:
    called as soon as a caller may have to wait, so that the listening
    connection is up before the winner's ``NOTIFY`` (a dictionary look-up
    once it is)."""
    _ensure_listener(_key(token)[0])


def wait(token: Any, since: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for a wake-up for ``token`` after ``since``
    (a :func:`version`). True if woken; returning early is always allowed."""
    key = _key(token)
    _ensure_listener(key[0])
    with _changed:
        return _changed.wait_for(lambda: _versions.get(key, 0) != since, timeout)


def listening(alias: str = "default") -> bool:
    """Whether this process has a live listening connection to ``alias``."""
    listener = _listeners.get(alias)
    return listener is not None and listener.connected.is_set()


def _ensure_listener(alias: str) -> None:
    if alias in _listeners:
        return
    with _listeners_guard:
        if alias in _listeners:
            return
        listener = _Listener(alias) if _can_listen(alias) else None
        if listener is not None:
            listener.start()
        _listeners[alias] = listener  # None: this database is polled


def _can_listen(alias: str) -> bool:
    if connections[alias].vendor != "postgresql":
        return False
    try:
        import psycopg
    except ImportError:  # psycopg2: LISTEN needs a different loop; poll instead
        return False
    major, minor = (int(part) for part in psycopg.__version__.split(".")[:2])
    return (major, minor) >= (3, 2)  # notifies(timeout=...)


class NotificationsDoNotArrive(Exception):
    """The listener's probe ``NOTIFY`` never reached it."""


class _Listener(threading.Thread):
    """One dedicated autocommit connection per database that ``LISTEN``s on :data:`CHANNEL`."""

    def __init__(self, alias: str) -> None:
        super().__init__(name=f"token-rotation-listen-{alias}", daemon=True)
        self.alias = alias
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self.connection: Any = None

    def run(self) -> None:
        pause = 0.5
        while not self.stopping.is_set():
            try:
                self._listen()
                pause = 0.5
            except NotificationsDoNotArrive:
                logger.warning(
                    "Token wake-ups from database %r are off: a NOTIFY did not reach the "
                    "listening connection within %s s (a transaction-pooling proxy such as "
                    "pgbouncer?). Waiters poll.",
                    self.alias,
                    PROBE_TIMEOUT,
                )
                self._close()
                return
            except Exception as exc:
                logger.warning(
                    "Token wake-ups from database %r are off (%s); waiters poll meanwhile.",
                    self.alias,
                    type(exc).__name__,
                )
            finally:
                self.connected.clear()
                self._close()
            self.stopping.wait(pause)
            pause = min(pause * 2, RECONNECT_MAX)

    def _listen(self) -> None:
        self.connection = _connect(self.alias)
        self.connection.execute(f'LISTEN "{CHANNEL}"')
        self._probe()
        self.connected.set()
        while not self.stopping.is_set():
            for note in self.connection.notifies(timeout=1.0):
                if not note.payload.startswith(PROBE_PREFIX):
                    _bump((self.alias, note.payload))
            # A dead connection raises from notifies(); an idle one just times out.
            if self.connection.closed:
                raise ConnectionError("the listening connection closed")

    def _probe(self) -> None:
        """Raise :class:`NotificationsDoNotArrive` unless a ``NOTIFY`` sent from
        another connection reaches this one."""
        payload = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        sender = _connect(self.alias)
        try:
            sender.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])
        finally:
            sender.close()
        deadline = time.monotonic() + PROBE_TIMEOUT
        while (left := deadline - time.monotonic()) > 0 and not self.stopping.is_set():
            for note in self.connection.notifies(timeout=left):
                if note.payload == payload:
                    return
                if not note.payload.startswith(PROBE_PREFIX):
                    _bump((self.alias, note.payload))
        if not self.stopping.is_set():
            raise NotificationsDoNotArrive

    def _close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self._close()


def stop() -> None:
    """Close every connection of this module (the listeners and the notifiers);
    the next wait opens what it needs again."""
    with _listeners_guard:
        for listener in _listeners.values():
            if listener is not None:
                listener.stop()
        _listeners.clear()
    with _notifiers_guard:
        for notifier in _notifiers.values():
            with contextlib.suppress(Exception):
                notifier.close()
        _notifiers.clear()


def _reset() -> None:
    """Stop the listeners and forget every wake-up (tests)."""
    stop()
    with _changed:
        _versions.clear()


def _after_fork_in_child() -> None:
    # The listening thread does not survive a fork (a prefork server or Celery
    # worker started after a wait): the child starts its own on its first wait.
    global _changed, _listeners_guard, _notifiers_guard
    _changed = threading.Condition()
    _listeners_guard = threading.Lock()
    _notifiers_guard = threading.Lock()
    _listeners.clear()
    _notifiers.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _wait_until_listening(alias: str, timeout: float) -> bool:
    """Start the listener of ``alias`` and wait until it listens (tests, warm-up)."""
    _ensure_listener(alias)
    listener = _listeners.get(alias)
    deadline = time.monotonic() + timeout
    while listener is not None and time.monotonic() < deadline:
        if listener.connected.wait(0.05):
            return True
    return False
