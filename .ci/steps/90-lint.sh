#!/usr/bin/env bash
# ruff check, ruff format --check, mypy strict (nox session lint).
set -euo pipefail
.venv/bin/nox --non-interactive -s lint
