#!/usr/bin/env bash
# PostgreSQL on 127.0.0.1:5432 (trust, user postgres, database `test`): its tests
# run in CI, never skipped (tests/conftest.py fails the run if it is unreachable).
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    apt_install postgresql postgresql-client
    echo "PostgreSQL is down; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start || true
    wait_for 30 pg_isready -q -h 127.0.0.1 -p 5432 || true
fi
pg_isready -h 127.0.0.1 -p 5432
