"""What the browser tests share: Debian's Chromium driven by Playwright.

Never ``playwright install``: the tests launch the system's Chromium through
``executable_path``. Where Chromium or Playwright is missing the tests skip
with the reason; under ``CI=true`` their absence fails the run (``.ci/run``
installs both).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import IN_CI

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("TOKEN_ROTATION_TEST_CHROMIUM", "/usr/bin/chromium")
# As root, in a sandbox without network: no sandboxing, no background traffic.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    return None


MISSING = _missing()


def requires_browser(what: str) -> pytest.MarkDecorator:
    """The module mark of a browser test: skip locally, fail in CI, when missing."""
    if MISSING and IN_CI:
        raise pytest.UsageError(f"{MISSING}, and CI=true: {what} must run in CI.")
    return pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
