#!/usr/bin/env bash
# The newest django-allauth, pre-releases included and our ceiling ignored
# (nox session allauth_pre): the suite runs when it is newer than the version
# setup.cfg admits, which 40-django-newest.sh has just tested.
set -euo pipefail
ALLAUTH_PRE_ONLY_NEWER=1 .venv/bin/nox --non-interactive -s allauth_pre
