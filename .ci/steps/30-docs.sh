#!/usr/bin/env bash
# The manual: Sphinx, warnings are errors (make docs).
set -euo pipefail
make docs
