"""The migrations this package ships describe its models exactly.

A model change without its migration reaches users as "Your models have changes
that are not yet reflected in a migration" on every ``migrate``, and a
migration they would have to write themselves inside an installed package.
"""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command


@pytest.mark.django_db  # makemigrations checks the applied history
def test_the_shipped_migrations_match_the_models() -> None:
    out = StringIO()
    # SystemExit(1) when a migration is missing; the dry run prints what it would be.
    try:
        call_command("makemigrations", "token_rotation", "--check", "--dry-run", stdout=out)
    except SystemExit:
        raise AssertionError(f"a migration is missing:\n{out.getvalue()}") from None
    assert "No changes detected" in out.getvalue()


def test_one_initial_migration_until_a_release_needs_more() -> None:
    """1.0.0 ships 0001_initial only (the development's 0001-0004 were squashed before
    any release); a later migration is added, never an edit of a released one."""
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    names = sorted(name for app, name in loader.disk_migrations if app == "token_rotation")
    assert names == ["0001_initial"]
