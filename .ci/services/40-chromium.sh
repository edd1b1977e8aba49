#!/usr/bin/env bash
# The browser tests (tests/test_admin_browser.py, tests/test_demo_browser.py)
# drive Debian's Chromium through Playwright (never `playwright install`).
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
command -v chromium >/dev/null 2>&1 || apt_install chromium
chromium --version 2>/dev/null
