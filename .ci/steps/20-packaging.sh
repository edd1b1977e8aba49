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
# The sdist is the source release: tests, docs and the example project, and the
# tests run from it (a part here, with the wheel and its [test] extra installed).
mkdir "$dist/sdist" && tar xzf "$dist"/*.tar.gz -C "$dist/sdist" --strip-components=1
for part in tests/conftest.py docs/conf.py example_project/settings.py; do
    [ -e "$dist/sdist/$part" ] || { echo "the sdist lacks $part"; exit 1; }
done
if python3 -m zipfile -l "$dist"/*.whl | grep -qE "^(tests|docs|example_project|benchmarks)/"; then
    echo "the wheel ships more than the package"; exit 1
fi
python3 -m venv "$dist/venv"
"$dist/venv/bin/python" -m pip install --quiet "$(ls "$dist"/*.whl)[test]"
(cd "$dist/sdist" && "$dist/venv/bin/python" -m pytest -q -p no:cacheprovider \
    tests/test_docs.py tests/test_migrations.py tests/test_checks.py tests/test_admin.py)
# The first-contact tests (a new startproject: migrate, check, runserver, a signed-in
# page) with the installed wheel as the project's interpreter.
TOKEN_ROTATION_TEST_PYTHON="$dist/venv/bin/python" .venv/bin/python -m pytest -p no:cacheprovider -q tests/test_first_contact.py
