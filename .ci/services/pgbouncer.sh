#!/usr/bin/env bash
# pgbouncer on 127.0.0.1:6432 in front of the local PostgreSQL (127.0.0.1:5432),
# in transaction pooling mode, as many production sites run it: every database
# name is passed through, any user is trusted (the PostgreSQL behind trusts
# 127.0.0.1). tests/test_pgbouncer.py runs the single-flight, the
# ATOMIC_REQUESTS rollbacks through it (docs/databases.rst).
# Idempotent: installs Debian's pgbouncer if missing, (re)writes its
# configuration, starts it unless it already answers.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"

pgbouncer_up() { pg_isready -q -h 127.0.0.1 -p 6432 -U postgres -d postgres; }

apt_install pgbouncer postgresql-client
PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"

dir=/etc/pgbouncer/token-rotation
mkdir -p "$dir" /var/log/postgresql /var/run/postgresql
chown postgres:postgres /var/log/postgresql /var/run/postgresql 2>/dev/null || true
cat >"$dir/pgbouncer.ini" <<'INI'
[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 6432
unix_socket_dir =
auth_type = trust
auth_file = /etc/pgbouncer/token-rotation/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = 40
; Django and psycopg send these at connect; pgbouncer cannot pass them on.
ignore_startup_parameters = extra_float_digits,options
admin_users = postgres
logfile = /var/log/postgresql/pgbouncer-token-rotation.log
pidfile = /var/run/postgresql/pgbouncer-token-rotation.pid
INI
printf '"postgres" ""\n' >"$dir/userlist.txt"
chown -R postgres:postgres "$dir"

pool_mode() {
    psql -h 127.0.0.1 -p 6432 -U postgres -d pgbouncer -Atc "SHOW CONFIG" 2>/dev/null |
        awk -F'|' '$1 == "pool_mode" { print $2 }'
}
if pgbouncer_up && [ "$(pool_mode)" != transaction ]; then
    # Debian's own service (session mode, its stock configuration) holds the port.
    echo "Stopping the pgbouncer that is not ours"
    service pgbouncer stop >/dev/null 2>&1 || true
    psql -h 127.0.0.1 -p 6432 -U postgres -d pgbouncer -c "SHUTDOWN" >/dev/null 2>&1 || true
    wait_for 10 bash -c '! pg_isready -q -h 127.0.0.1 -p 6432' || true
fi
if ! pgbouncer_up; then
    echo "pgbouncer is down; starting it"
    # pgbouncer refuses to run as root: -u switches to postgres.
    "$PGBOUNCER" -d -u postgres "$dir/pgbouncer.ini"
    wait_for 30 pgbouncer_up || true
fi
pg_isready -h 127.0.0.1 -p 6432 -U postgres -d postgres
test "$(pool_mode)" = transaction
echo "pgbouncer: pool_mode = transaction"
