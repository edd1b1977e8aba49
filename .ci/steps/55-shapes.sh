#!/usr/bin/env bash
# The `shapes` subset once per shape of tests/settings.py (nox session shapes):
# ATOMIC_REQUESTS, CONN_MAX_AGE, the psycopg pool, every session backend, a
# custom user model with a UUID key, PostgreSQL or MariaDB as the default
# database, and those together; a pass count per shape at the end.
set -euo pipefail
.venv/bin/nox --non-interactive -s shapes
