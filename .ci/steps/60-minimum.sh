#!/usr/bin/env bash
# The whole suite on the lowest version of every runtime dependency that
# setup.cfg's install_requires admits (nox session minimum).
set -euo pipefail
.venv/bin/nox --non-interactive -s minimum
