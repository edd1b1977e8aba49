#!/usr/bin/env bash
# The whole suite once with USE_TZ = False (nox session usetz_false).
set -euo pipefail
.venv/bin/nox --non-interactive -s usetz_false
