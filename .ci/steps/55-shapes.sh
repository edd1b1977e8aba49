#!/usr/bin/env bash
# The `shapes` subset once per shape of tests/settings.py (nox session shapes):
# a read replica, ATOMIC_REQUESTS, CONN_MAX_AGE, the psycopg pool, signed-cookie
# and cache sessions, a custom user model with a UUID key, PostgreSQL and
# MariaDB as the default database; each runs the parts of the subset it can
# change (noxfile.SHAPE_MARKS). cached_db sessions and postgres_site (those
# together) run on request: `nox -s shapes -- cached_db_sessions postgres_site`.
# A pass count and the seconds per shape at the end.
set -euo pipefail
.venv/bin/nox --non-interactive -s shapes
