#!/usr/bin/env bash
# Debian's glewlwyd (OpenID Connect provider with one-use refresh tokens), the
# second real provider of the test suite (tests/test_glewlwyd.py). Installed
# only: each pytest worker starts its own glewlwyd on a free port with a
# throw-away SQLite database (tests/glewlwyd/fixture.py), so nothing runs here.
# The packaged service is left alone (policy-rc.d may keep it stopped).
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
apt_install glewlwyd
echo "glewlwyd $(glewlwyd --version)"
# What the fixture needs from the package: the server, its OpenID Connect
# plugin and a SQLite schema to seed from (tests/glewlwyd/fixture.py: SCHEMAS).
[ -e /usr/lib/glewlwyd/plugin/libprotocol_oidc.so ] \
    || { echo "the glewlwyd package lacks its OpenID Connect plugin"; exit 1; }
schema=""
for candidate in /usr/share/doc/glewlwyd/database/init.sqlite3.sql.gz \
    /usr/share/doc/glewlwyd/database/init.sqlite3.sql \
    /usr/share/dbconfig-common/data/glewlwyd/install/sqlite3; do
    [ -e "$candidate" ] && { schema="$candidate"; break; }
done
[ -n "$schema" ] || { echo "the glewlwyd package lacks its SQLite schema"; exit 1; }
echo "glewlwyd schema: $schema"
