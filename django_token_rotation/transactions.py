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
(``TestCase``, pytest-django's ``django_db``) are not the caller's, and nothing
outside them can see the test's rows: inside one, the refresh runs on the
caller's own connection, as in autocommit (see docs/testing.rst).

Which database: every read the engine decides on and every write goes to
the database the router names for writing the token (:func:`database`), never
to a read replica's possibly stale copy. This is the one place that chooses it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from allauth.socialaccount.models import SocialToken
from django.db import DatabaseError, connections, router, transaction
from django.db.models import Model

from .conf import app_settings

T = TypeVar("T")

#: Database vendors whose second connection may write while the caller's
#: transaction is open (row-level locks, MVCC).
SECOND_WRITER = frozenset({"postgresql", "mysql", "oracle"})


def database(instance: Model | None = None) -> str:
    """The database the engine reads and writes tokens on: the one the
    router names for writing ``SocialToken`` (``instance``: a row at hand, as
    the router's hint). Read-your-writes: never a replica that may lag."""
    if instance is None:
        return router.db_for_write(SocialToken)
    return router.db_for_write(SocialToken, instance=instance)


def use_write_database(token: SocialToken) -> bool:
    """Move ``token`` (a row read from wherever the site read it) to
    :func:`database`, so every later read and write of the engine goes there.
    True when it came from another database (a replica): its values may be
    stale and must be read again before anything is decided on them."""
    alias = database(token)
    if token._state.db == alias:
        return False
    token._state.db = alias
    # Its state, if it was selected with it, is the replica's too.
    relation = SocialToken._meta.get_field("rotation_state")
    if relation.is_cached(token):
        relation.delete_cached_value(token)
    return True


def in_test_case(alias: str) -> bool:
    """Whether the connection to ``alias`` is inside a transaction that
    Django's test framework opened around a test (``TestCase``, pytest-django's
    ``django_db``): no other connection can see that test's rows."""
    return any(
        getattr(block, "_from_testcase", False) for block in connections[alias].atomic_blocks
    )


def in_callers_transaction(alias: str) -> bool:
    """Whether the current thread's connection to ``alias`` is inside a
    transaction that its caller opened (in a test case: never, see
    :func:`in_test_case`)."""
    connection = connections[alias]
    if not connection.in_atomic_block:
        # Autocommit turned off by hand (``set_autocommit(False)``).
        return connection.connection is not None and not connection.autocommit
    # A test case's transaction hides the test's rows from any helper
    # connection: the caller's own transaction is the only place to refresh.
    return not in_test_case(alias)


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
    own, in autocommit, waits at most ``TOKEN_ROTATION_WAIT`` for a row lock,
    and is closed afterwards; return its result or raise its exception here."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        _helper.active = True
        try:
            with bounded_lock_waits(alias, app_settings.WAIT):
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


@contextmanager
def bounded_lock_waits(alias: str, seconds: float) -> Iterator[None]:
    """Inside, this thread's statements on ``alias`` give up on a row lock after
    ``seconds`` instead of waiting for the holder's transaction to end (the
    helper of :func:`outside`). Nothing set on the connection outlives the
    block (pooled connections, pgbouncer):

    * PostgreSQL: each statement runs with ``SET LOCAL lock_timeout`` in its
      own transaction (or the one already open), which ends the setting;
    * MySQL/MariaDB: ``innodb_lock_wait_timeout`` for the session, put back to
      the server's default when the block ends.
    """
    connection = connections[alias]
    if connection.vendor == "postgresql":
        milliseconds = max(int(seconds * 1000), 1)
        with connection.execute_wrapper(_LocalLockTimeout(milliseconds)):
            yield
    elif connection.vendor == "mysql":
        with connection.cursor() as cursor:
            # Whole seconds, at least one (InnoDB's granularity).
            cursor.execute("SET SESSION innodb_lock_wait_timeout = %s", [max(round(seconds), 1)])
        try:
            yield
        finally:
            if connection.connection is not None:
                with connection.cursor() as cursor:
                    cursor.execute("SET SESSION innodb_lock_wait_timeout = DEFAULT")
    else:
        yield


@contextmanager
def bounded_busy_wait(alias: str, seconds: float) -> Iterator[None]:
    """SQLite: inside, a writer of this thread waits at most ``seconds`` for
    another connection's write lock (the busy timeout), until :func:`before_send`
    or the end of the block put the connection's own timeout back. Elsewhere:
    nothing (in autocommit, row locks are short)."""
    connection = connections[alias]
    if connection.vendor != "sqlite":
        yield
        return
    # On the driver's connection: a setting of this connection, no query.
    connection.ensure_connection()
    raw = connection.connection
    (before,) = raw.execute("PRAGMA busy_timeout").fetchone()
    raw.execute(f"PRAGMA busy_timeout = {max(int(seconds * 1000), 0)}")
    _bounded.busy_timeout = (alias, before)
    try:
        yield
    finally:
        before_send(alias)


_bounded = threading.local()


def before_send(alias: str) -> None:
    """Called right before a refresh token is sent: from now on the answer must
    be stored, so SQLite's writer waits the database's own busy timeout again
    (a lock wait bounded by :func:`bounded_busy_wait` would lose the answer).
    Elsewhere the bound stays: a row lock held for longer is the caller's own
    transaction's, which would never let go."""
    bounded = getattr(_bounded, "busy_timeout", None)
    if bounded is None or bounded[0] != alias:
        return
    _bounded.busy_timeout = None
    raw = connections[alias].connection
    if raw is not None:
        raw.execute(f"PRAGMA busy_timeout = {int(bounded[1])}")


class _LocalLockTimeout:
    """An execute wrapper: PostgreSQL's ``lock_timeout`` for one statement,
    set with ``SET LOCAL`` so that it ends with the statement's transaction."""

    def __init__(self, milliseconds: int) -> None:
        self.sql = f"SET LOCAL lock_timeout = {int(milliseconds)}"

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        connection = context["connection"]
        raw = context["cursor"].cursor
        if connection.in_atomic_block or not connection.get_autocommit():
            raw.execute(self.sql)
            return execute(sql, params, many, context)
        with transaction.atomic(using=connection.alias):
            raw.execute(self.sql)
            return execute(sql, params, many, context)


def is_lock_timeout(exc: DatabaseError) -> bool:
    """Whether ``exc`` is a lock wait that gave up (PostgreSQL ``lock_timeout``
    or ``NOWAIT``, InnoDB's lock wait timeout)."""
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) == "55P03" or getattr(cause, "pgcode", None) == "55P03":
        return True
    args = getattr(cause, "args", ()) or exc.args
    return bool(args) and args[0] in (1205, 3572)  # lock wait timeout, NOWAIT


def is_busy(exc: DatabaseError) -> bool:
    """Whether ``exc`` is SQLite's writer giving up on another connection's
    write lock (the busy timeout ran out)."""
    cause = exc.__cause__
    return isinstance(cause, sqlite3.OperationalError) and str(cause).startswith(
        "database is locked"
    )
