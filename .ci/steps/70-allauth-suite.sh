#!/usr/bin/env bash
# django-allauth's own test suite, with this app installed as the README says.
#
# Gets the sdist of the django-allauth version in `make test`'s .venv (else the
# one `pip install .` picks), and runs its tests (its "regular" project, the one its pytest.ini names)
# under .ci/allauth_suite/token_rotation_allauth_settings.py: allauth's own
# settings plus the README's lines (app, middleware, context processor). Every
# test must pass. In its own virtualenv (.venv-allauth), so that allauth's test
# dependencies (DRF, django-ninja, python3-saml, ...) never leak into ours.
# ALLAUTH_SUITE_WITHOUT_APP=1 runs allauth's settings unchanged (the baseline);
# ALLAUTH_SUITE_WORKERS sets xdist's workers (2; 0 runs in one process).
# Measured on the 2-core machine (django-allauth 65.22.1): 2,519 passed, 1
# skipped; 170 s with 2 workers on a quiet machine (370 s under load), 485 s in
# one process; plus about a minute to make the virtualenv the first time.
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"
venv="${ALLAUTH_SUITE_VENV:-$root/.venv-allauth}"
# The interpreter and the django-allauth version of `make test`'s .venv when there is one.
python=python3
pinned=()
if [ -x "$root/.venv/bin/python" ]; then
    python="$("$root/.venv/bin/python" -c 'import sys; print(sys._base_executable)')"
    pinned=("django-allauth==$("$root/.venv/bin/python" -c \
        'import importlib.metadata as m; print(m.version("django-allauth"))')")
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e "$root" "${pinned[@]}"
version="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("django-allauth"))')"
echo "== django-allauth $version: its own test suite, with django-token-rotation installed"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$venv/bin/python" -m pip download --quiet --no-deps --no-binary :all: \
    "django-allauth==$version" -d "$work"
tar xzf "$work/django_allauth-$version.tar.gz" -C "$work"
src="$work/django_allauth-$version"
# allauth's test dependencies (its requirements-dev.txt, less the linters and docs),
# and the extras its "regular" project installs; xdist to use both cores.
"$venv/bin/python" -m pip install --quiet \
    "django-allauth[headless,socialaccount,mfa,idp-oidc,openid,steam,saml]==$version" \
    "pytest>=7.4" "pytest-asyncio==1.3.0" "pytest-django>=4.5.2" pytest-xdist \
    "Pillow>=9.0" "djangorestframework>=3.15.2,<4" \
    "django-ninja>=1.3.0,<2" "pyyaml>=6.0.2,<7" "psycopg[binary]>=3.2.10"

settings=token_rotation_allauth_settings
if [ "${ALLAUTH_SUITE_WITHOUT_APP:-}" = 1 ]; then
    settings=tests.projects.regular.settings
fi
cd "$src"
start=$(date +%s)
PYTHONPATH="$root/.ci/allauth_suite" DJANGO_SETTINGS_MODULE="$settings" \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "${ALLAUTH_SUITE_WORKERS:-2}" \
    --ds="$settings" "$@"
echo "== django-allauth's suite took $(( $(date +%s) - start )) s"
