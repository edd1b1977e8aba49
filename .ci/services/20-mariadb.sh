#!/usr/bin/env bash
# MariaDB on 127.0.0.1:3306 (Debian's mariadb-server, REPEATABLE READ as shipped;
# root over TCP with no password, as on these machines). The MariaDB driver,
# mysqlclient (the `mariadb` extra), is built by pip against libmariadb-dev,
# found through pkg-config: the Makefile installs it when pkg-config finds it.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
mariadb_up() { mariadb -h 127.0.0.1 -P 3306 -uroot -e "SELECT 1" >/dev/null 2>&1; }
apt_install mariadb-server mariadb-client libmariadb-dev pkg-config
if ! mariadb_up; then
    echo "MariaDB is down; starting it"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
    (service mariadb start || service mysql start || \
        (mysqld_safe --bind-address=127.0.0.1 >/dev/null 2>&1 &)) || true
    wait_for 60 mariadb_up || true
fi
if ! mariadb_up && mariadb -uroot -e "SELECT 1" >/dev/null 2>&1; then
    # A fresh Debian install lets root in through the Unix socket only.
    mariadb -uroot -e "ALTER USER root@localhost IDENTIFIED VIA unix_socket \
        OR mysql_native_password USING PASSWORD(''); FLUSH PRIVILEGES;"
fi
# Time zone definitions, as Django asks of a MySQL/MariaDB site with USE_TZ = True
# (date lookups in the current zone, the admin's among them); Debian ships none.
if [ "$(mariadb -h 127.0.0.1 -P 3306 -uroot -N -e "SELECT COUNT(*) FROM mysql.time_zone_name")" = 0 ]; then
    echo "Loading MariaDB's time zone tables"
    mariadb-tzinfo-to-sql /usr/share/zoneinfo 2>/dev/null | mariadb -h 127.0.0.1 -P 3306 -uroot mysql
fi
mariadb -h 127.0.0.1 -P 3306 -uroot -e "SELECT VERSION()"
