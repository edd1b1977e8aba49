"""The demo, end to end, in a real browser: headless Chromium (Debian's ``chromium``)
driven by Playwright, against ``example_project/run_demo.py`` started on free ports.

It does what the README promises a visitor: sign in through the provider's own
login and consent pages, wait past the access token's expiry, load a page and
call the API (the token rotated, no prompt), revoke the grant with the button,
load a page (the "sign in again" prompt), press the prompt's button and sign in
again (prompt gone). allauth's own pages (sign-in, "cancelled") wear the demo's
layout. Screenshots of each state, at 1280 px, go to ``test-artifacts/demo-*.png``;
``make screenshots`` also copies those the manual shows to ``docs/``.

Skipped, with the reason, where Chromium or Playwright is missing; under
``CI=true`` their absence fails the run instead (``.ci/run`` installs both).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT, requires_browser
from tests.test_demo import DEMO_USER, Demo, running_demo

if TYPE_CHECKING:
    from playwright.sync_api import Page

# The site refreshes a token 10 s (TOKEN_ROTATION_LEEWAY) before it expires:
# 20 s tokens are due 10 s after they are issued, and expired 10 s later.
ACCESS_TOKEN_SECONDS = 20
TIMEOUT_MS = 30_000

#: The screenshots docs/demo.rst shows (``make screenshots`` copies them there).
IN_THE_MANUAL = ("home", "allauth-cancelled", "signed-in", "reauth-prompt")

pytestmark = requires_browser("the demo's browser test")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    with running_demo(tmp_path, ACCESS_TOKEN_SECONDS) as handle:
        yield handle


class Shots:
    """Numbered screenshots: ``test-artifacts/demo-01-home.png``..."""

    def __init__(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        for old in ARTIFACTS.glob("demo-*.png"):
            old.unlink()
        self.taken: list[Path] = []

    def __call__(self, page: Page, name: str) -> None:
        path = ARTIFACTS / f"demo-{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        if name in IN_THE_MANUAL and os.environ.get("TOKEN_ROTATION_UPDATE_SCREENSHOT") == "1":
            shutil.copyfile(path, ROOT / "docs" / f"demo-{name}.png")


def _ms(page: Page, selector: str) -> float:
    """A deadline the dashboard shows (``data-ms``), in epoch seconds."""
    value = page.get_attribute(selector, "data-ms")
    assert value, f"no {selector} on {page.url}"
    return int(value) / 1000


def _wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def _no_token_shown(page: Page, demo: Demo) -> None:
    html = page.content()
    for secret in demo.stored_tokens():
        assert secret not in html, f"a whole token is shown on {page.url}"


def _consent(page: Page, demo: Demo, shots: Shots | None = None) -> None:
    """On the provider's consent page: allow, and land on the site's dashboard."""
    page.wait_for_url(f"{demo.provider_url}/o/authorize/**")
    assert "Token rotation demo site" in page.inner_text("body")
    if shots:
        shots(page, "provider-consent")
    page.click("input[name=allow]")
    page.wait_for_url(f"{demo.site_url}/dashboard/")


@pytest.mark.timeout(240)
def test_visitor_signs_in_sees_rotation_revokes_and_signs_in_again(demo: Demo) -> None:
    from playwright.sync_api import sync_playwright

    shots = Shots()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()

            # Home: what the demo is, the credentials, the sign-in button.
            page.goto(f"{demo.site_url}/")
            assert "demo / demo-password" in page.inner_text("#credentials")
            shots(page, "home")

            # allauth's own pages wear the demo's layout (its header, a card), not
            # allauth's bare HTML: the sign-in page and "sign-in cancelled".
            for name, path in (
                ("allauth-login", "/accounts/login/"),
                ("allauth-cancelled", "/accounts/3rdparty/login/cancelled/"),
            ):
                page.goto(f"{demo.site_url}{path}")
                assert "Token rotation demo" in page.inner_text("header"), path
                assert page.locator("#allauth-page h1").count() == 1, path
                assert "Menu:" not in page.inner_text("body"), path  # allauth's bare layout
                shots(page, name)
            page.goto(f"{demo.site_url}/")

            # The provider's real login page, then its consent page.
            page.click("#signin-form button")
            page.wait_for_url(f"{demo.provider_url}/accounts/login/**")
            username, password = DEMO_USER
            page.fill("input[name=username]", username)
            page.fill("input[name=password]", password)
            shots(page, "provider-login")
            page.click("#login-form input[type=submit]")
            _consent(page, demo, shots)

            # Signed in: the token's masked tail, its expiry counting down, no refresh yet.
            assert "Signed in as demo" in page.inner_text("header")
            first_tail = page.inner_text("#token-tail")
            assert re.fullmatch(r"…\S{4}", first_tail)
            assert page.inner_text("#refresh-count") == "0"
            assert page.locator("#no-history").is_visible()
            page.wait_for_function(
                "document.querySelector('.countdown').textContent.startsWith('in ')"
            )
            _no_token_shown(page, demo)
            shots(page, "signed-in")

            # Past the access token's expiry: a page load rotates it, no prompt.
            _wait_until(_ms(page, "#expires-at") + 0.5)
            page.goto(f"{demo.site_url}/dashboard/")
            assert page.inner_text("#refresh-count") == "1"
            second_tail = page.inner_text("#token-tail")
            assert second_tail != first_tail
            assert page.locator("#session-error").count() == 0
            assert "refreshed" in page.inner_text("#history")
            # The API button: the rotated token works, and is not refreshed again.
            page.click("#call-api-form button")
            page.wait_for_selector("#api-result")
            assert json.loads(page.inner_text("#userinfo"))["preferred_username"] == "demo"
            assert page.inner_text("#refresh-count") == "1"
            assert page.inner_text("#token-tail") == second_tail
            assert page.locator("#session-error").count() == 0
            _no_token_shown(page, demo)
            shots(page, "rotated-api-call")

            # "Revoke my grant at the provider": the site does not know yet.
            page.click("#revoke-form button")
            page.wait_for_selector("#revoked")
            assert page.locator("#session-error").count() == 0
            assert page.inner_text("#token-tail") == second_tail
            due = _ms(page, "#due-at")
            shots(page, "revoked")
            # The provider already refuses the access token.
            page.click("#call-api-form button")
            page.wait_for_selector("#api-error")
            assert "HTTP 401" in page.inner_text("#api-error")

            # Once the token is due, a page load (the dashboard reloads itself)
            # refreshes, gets invalid_grant, and shows the prompt.
            page.wait_for_selector(
                "#session-error", timeout=int((due - time.time()) * 1000) + TIMEOUT_MS
            )
            page.goto(f"{demo.site_url}/")  # another page load: still there
            page.wait_for_url(f"{demo.site_url}/dashboard/")
            prompt = page.inner_text("#session-error")
            assert "Your sign-in with Demo provider has expired" in prompt
            assert "invalid_grant" in page.inner_text("#history")
            assert page.locator("#revoke-form").count() == 0
            shots(page, "reauth-prompt")

            # The prompt's button: through the provider (still signed in there:
            # straight to consent) and back to the dashboard, prompt gone.
            page.click(".token-rotation-reauth__button")
            _consent(page, demo)
            assert page.locator("#session-error").count() == 0
            assert page.inner_text("#token-tail") not in (first_tail, second_tail)
            page.click("#call-api-form button")
            page.wait_for_selector("#api-result")
            assert json.loads(page.inner_text("#userinfo"))["preferred_username"] == "demo"
            assert page.locator("#session-error").count() == 0
            _no_token_shown(page, demo)
            shots(page, "signed-in-again")

            # The admin (another browser context: its own session), token list and history.
            admin = browser.new_context(viewport={"width": 1400, "height": 700}).new_page()
            admin.add_init_script("localStorage.setItem('django.admin.navSidebarIsOpen', 'false')")
            admin.goto(f"{demo.site_url}/admin/socialaccount/socialtoken/")
            admin.fill("#id_username", "admin")
            admin.fill("#id_password", "admin-password")
            admin.click("input[type=submit]")
            admin.wait_for_selector("#result_list")
            assert "demo" in admin.inner_text("#result_list")
            _no_token_shown(admin, demo)
            shots(admin, "admin-tokens")
        finally:
            browser.close()

    output = demo.output()
    assert output.count("Refreshed token") == 1, output
    assert all(shot.stat().st_size > 5_000 for shot in shots.taken)
