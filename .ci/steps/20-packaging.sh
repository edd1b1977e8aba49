#!/usr/bin/env bash
# Packaging: sdist + wheel without warnings, twine check, and the wheel in a
# clean venv as a new project's interpreter (tests/test_first_contact.py).
set -euo pipefail
dist="$(mktemp -d)"
trap 'rm -rf "$dist"' EXIT
# Byte-compiling is part of a normal build: let it run (its absence is a warning).
env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -m build --outdir "$dist" . >"$dist/build.log" 2>&1 \
    || { cat "$dist/build.log"; exit 1; }
if grep -iE "warning|would be ignored" "$dist/build.log"; then
    echo "python -m build printed warnings (above)"; exit 1
fi
.venv/bin/twine check --strict "$dist"/*.tar.gz "$dist"/*.whl
if tar tzf "$dist"/*.tar.gz | grep -q "/tests/"; then
    echo "the sdist ships tests without what they need to run"; exit 1
fi
python3 -m venv "$dist/venv"
"$dist/venv/bin/python" -m pip install --quiet "$dist"/*.whl "psycopg[binary]>=3.1"
# The first-contact tests (a new startproject: migrate, check, runserver, a signed-in
# page) with the installed wheel as the project's interpreter.
TOKEN_ROTATION_TEST_PYTHON="$dist/venv/bin/python" .venv/bin/python -m pytest -p no:cacheprovider -q tests/test_first_contact.py
