"""Database routers of the test suite's site shapes (docs/databases.rst).

:class:`PrimaryReplicaRouter` is the router of Django's multiple-databases
guide: every read goes to a replica, every write to the primary. The replica
is a read-only connection to the primary's own database (``TEST: {"MIRROR":
...}``, as Django's testing docs show), so a write that strays to it fails
loudly instead of landing: PostgreSQL ``default_transaction_read_only``,
MariaDB ``SET SESSION TRANSACTION READ ONLY``, SQLite ``PRAGMA query_only``.

:class:`AllOn` puts every model (allauth's, ours, auth's) on one database
that need not be ``default``.
"""

from __future__ import annotations

from typing import Any

from django.db import connections


def read_only_replica(primary: dict[str, Any], mirror: str) -> dict[str, Any]:
    """Settings of a read-only replica of the database of ``primary`` (its
    settings), which is the alias ``mirror``."""
    replica = {key: value for key, value in primary.items() if key != "TEST"}
    options = dict(replica.get("OPTIONS") or {})
    engine = str(replica["ENGINE"])
    if engine.endswith("postgresql"):
        options["options"] = "-c default_transaction_read_only=on"
    elif engine.endswith("mysql"):
        options["init_command"] = "SET SESSION TRANSACTION READ ONLY"
    elif engine.endswith("sqlite3"):
        options["init_command"] = "PRAGMA query_only = 1"
        # The same file: a view's transaction on the "replica" would hold a read
        # lock that keeps every writer of the request from committing.
        replica["ATOMIC_REQUESTS"] = False
    replica["OPTIONS"] = options
    replica["TEST"] = {"MIRROR": mirror}
    return replica


class PrimaryReplicaRouter:
    """Reads from ``replica``, writes to ``primary`` (Django's guide).

    Inside a ``TestCase`` (a transaction the test framework opened on the
    primary) the replica cannot see the test's rows, real replicas no more
    than this one: there reads go to the primary, as docs/testing.rst tells
    sites to do. Transactional tests (``transaction=True``, which the database
    tests of this suite are) read from the replica.
    """

    def __init__(self, primary: str = "default", replica: str = "replica") -> None:
        self.primary = primary
        self.replica = replica

    def _elsewhere(self, hints: dict[str, Any]) -> bool:
        """A row of another database altogether (the suite's ``postgres`` and
        ``mariadb`` aliases, used explicitly): not this router's business."""
        instance = hints.get("instance")
        db = getattr(getattr(instance, "_state", None), "db", None)
        return db is not None and db not in (self.primary, self.replica)

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        if self._elsewhere(hints):
            return None
        blocks = connections[self.primary].atomic_blocks
        if any(getattr(block, "_from_testcase", False) for block in blocks):
            return self.primary
        return self.replica

    def db_for_write(self, model: Any, **hints: Any) -> str | None:
        if self._elsewhere(hints):
            return None
        return self.primary

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return db != self.replica


class AllOn:
    """Every model on ``alias``, for reading and writing."""

    def __init__(self, alias: str) -> None:
        self.alias = alias

    def db_for_read(self, model: Any, **hints: Any) -> str:
        return self.alias

    def db_for_write(self, model: Any, **hints: Any) -> str:
        return self.alias

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True
