#!/usr/bin/env bash
# The whole suite on the lowest version of every runtime dependency that
# setup.cfg's install_requires admits (nox session minimum), and with
# USE_TZ = False: the two shapes that touch every module, in one run
# (`nox -s usetz_false` runs the latter alone).
set -euo pipefail
TOKEN_ROTATION_TEST_SHAPES=usetz_false .venv/bin/nox --non-interactive -s minimum
