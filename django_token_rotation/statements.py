"""Conditional ``UPDATE`` statements compiled once, run many times.

The ORM builds and compiles a queryset's SQL anew on every call: filters,
expressions, lookups, quoting. For the engine's state changes (the claim, the
last check before sending, the new token, its bookkeeping), run once each per
refresh, that was most of the refresher's own CPU time (docs/performance.rst).

A :class:`Statement` is written with the ORM as before, with a :class:`Param`
wherever a value goes. It is compiled by the ORM once per database alias; each
run binds the values (prepared for the database by their field, as the ORM
prepares them) and executes the same SQL text on the alias' connection, inside
``transaction.mark_for_rollback_on_error`` as ``QuerySet.update()`` does. The
SQL is the ORM's own, on every database.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connections, models, router, transaction
from django.db.models import Expression, QuerySet
from django.db.models.sql import UpdateQuery


def _write_alias(rows: QuerySet[Any]) -> str:
    """The database ``rows.update()`` would write to (``rows.db`` is the read
    database of a queryset not yet marked for writing)."""
    alias: str | None = getattr(rows, "_db", None)
    return alias or str(router.db_for_write(rows.model, **getattr(rows, "_hints", {})))


class Param(Expression):
    """A named value, bound when the statement runs."""

    def __init__(self, name: str, output_field: models.Field[Any, Any]) -> None:
        super().__init__(output_field=output_field)
        self.name = name

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, Any]:
        return "%s", (self,)


#: What a statement is built from: the model's rows in one database, filtered,
#: and the values to set (:class:`Param` where they vary).
Build = Callable[[QuerySet[Any]], tuple[QuerySet[Any], dict[str, Any]]]


class Statement:
    """One ``UPDATE``, built by ``build`` from the rows it is run on."""

    def __init__(self, build: Build) -> None:
        self.build = build
        self._compiled: dict[tuple[str, str], tuple[str, tuple[Any, ...]]] = {}
        self._lock = threading.Lock()

    def compile(self, rows: QuerySet[Any]) -> tuple[str, tuple[Any, ...]]:
        """The SQL and its parameters (values, and :class:`Param` to bind) for
        ``rows`` (the model's queryset on one database): compiled once per
        database for the model's unfiltered rows, else each time."""
        alias = _write_alias(rows)
        unfiltered = not rows.query.where.children
        key = (alias, connections[alias].vendor)
        compiled = self._compiled.get(key) if unfiltered else None
        if compiled is None:
            built, values = self.build(rows)
            query: Any = built.query.chain(UpdateQuery)
            query.add_update_values(values)
            query.clear_select_clause()
            sql, params = query.get_compiler(alias).as_sql()
            compiled = (sql, tuple(params))
            if unfiltered:
                with self._lock:
                    self._compiled[key] = compiled
        return compiled

    def run(self, rows: QuerySet[Any], **values: Any) -> int:
        """Execute on ``rows`` with ``values`` bound; the number of rows matched."""
        sql, template = self.compile(rows)
        alias = _write_alias(rows)
        connection = connections[alias]
        params = [
            p.output_field.get_db_prep_value(values[p.name], connection)
            if isinstance(p, Param)
            else p
            for p in template
        ]
        with transaction.mark_for_rollback_on_error(using=alias), connection.cursor() as cursor:
            cursor.execute(sql, params)
            return int(cursor.rowcount)
