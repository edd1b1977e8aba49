"""The caller's transaction is not ours.

A view under ``ATOMIC_REQUESTS``, an explicit ``transaction.atomic()`` block or
a task run in a transaction may call :func:`~django_token_rotation.get_access_token`.
The rotation the provider performs must survive that transaction's rollback,
and no worker may wait on locks that the transaction holds. So when the
caller is inside a transaction, the refresh runs on a short-lived helper
thread with its own autocommit connection to the same database
(:func:`outside`): the lease, the in-flight marker and the stored result are
committed at once, whatever the caller's transaction does afterwards. That
connection waits at most ``TOKEN_ROTATION_WAIT`` for a row lock.

SQLite has one writer at a time: while the caller's transaction is open, a
second connection can neither write (the caller holds the write lock and
waits for us) nor commit without invalidating the caller's snapshot. There
the provider is never called inside a transaction (:func:`can_write_beside`
is false): the engine hands out the current token while it is valid, else
raises ``TokenRefreshUnavailable`` with code ``in_transaction``.

Transactions opened by Django's test framework around each test
(``TestCase``) are not the caller's: they stand for autocommit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import DatabaseError, connections, transaction
from django.db.models import Model

from .conf import app_settings

T = TypeVar("T")

#: Database vendors whose second connection may write while the caller's
#: transaction is open (row-level locks, MVCC).
SECOND_WRITER = frozenset({"postgresql", "mysql", "oracle"})


def in_callers_transaction(alias: str) -> bool:
    """Whether the current thread's connection to ``alias`` is inside a
    transaction that its caller opened (not a test case's wrapper)."""
    connection = connections[alias]
    if not connection.in_atomic_block:
        # Autocommit turned off by hand (``set_autocommit(False)``).
        return connection.connection is not None and not connection.autocommit
    return any(not getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)


def can_write_beside(alias: str) -> bool:
    """Whether a second connection to ``alias`` can write while another
    connection's transaction is open."""
    return connections[alias].vendor in SECOND_WRITER


_helper = threading.local()


def on_helper() -> bool:
    """Whether this thread is a helper started by :func:`outside`."""
    return bool(getattr(_helper, "active", False))


def row_is_free(model: type[Model], alias: str, pk: Any) -> bool:
    """Whether no open transaction holds a lock on this row, checked without
    waiting (``SELECT ... FOR UPDATE NOWAIT``; the lock ends with the check).

    A helper asks before sending a refresh token: the caller's own transaction
    may hold the token's row (it saved the token), and the helper could then
    never store the answer."""
    try:
        with transaction.atomic(using=alias):
            list(
                model._default_manager.using(alias)
                .select_for_update(nowait=True)
                .filter(pk=pk)
                .values_list("pk")
            )
    except DatabaseError as exc:
        if is_lock_timeout(exc):
            return False
        raise
    return True


def outside(alias: str, function: Callable[[], T]) -> T:
    """Run ``function`` on a helper thread whose connection to ``alias`` is its
    own, in autocommit, and closed afterwards; return its result or raise its
    exception here."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        _helper.active = True
        try:
            set_lock_timeout(alias, app_settings.WAIT)
            outcome["result"] = function()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc
        finally:
            for connection in connections.all(initialized_only=True):
                connection.close()

    helper = threading.Thread(target=run, name="token-rotation-outside-transaction", daemon=True)
    helper.start()
    helper.join()
    if "error" in outcome:
        error: BaseException = outcome["error"]
        raise error
    result: T = outcome["result"]
    return result


def set_lock_timeout(alias: str, seconds: float) -> None:
    """Make this thread's connection to ``alias`` give up on a row lock after
    ``seconds`` instead of waiting for the holder's transaction to end."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET lock_timeout = %s", [f"{max(int(seconds * 1000), 1)}ms"])
        elif connection.vendor == "mysql":
            # Whole seconds, at least one (InnoDB's granularity).
            cursor.execute("SET SESSION innodb_lock_wait_timeout = %s", [max(round(seconds), 1)])


def is_lock_timeout(exc: DatabaseError) -> bool:
    """Whether ``exc`` is a lock wait that gave up (PostgreSQL ``lock_timeout``
    or ``NOWAIT``, InnoDB's lock wait timeout)."""
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) == "55P03" or getattr(cause, "pgcode", None) == "55P03":
        return True
    args = getattr(cause, "args", ()) or exc.args
    return bool(args) and args[0] in (1205, 3572)  # lock wait timeout, NOWAIT
