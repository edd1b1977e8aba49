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
# plugin and the SQLite schema it is seeded from.
for needed in /usr/lib/glewlwyd/plugin/libprotocol_oidc.so \
    /usr/share/doc/glewlwyd/database/init.sqlite3.sql.gz; do
    [ -e "$needed" ] || { echo "glewlwyd package lacks $needed"; exit 1; }
done
