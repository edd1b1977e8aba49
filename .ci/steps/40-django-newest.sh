#!/usr/bin/env bash
# The whole suite on the newest Django on Python 3.13 (nox session tests-3.13).
set -euo pipefail
.venv/bin/nox --non-interactive -s tests-3.13
