"""The token list in a real browser: headless Chromium (Debian's ``chromium``)
driven by Playwright logs into the admin of a live server and reads the list.

Skipped, with the reason, where Chromium or Playwright is missing; under
``CI=true`` their absence fails the run instead (``.ci/run`` installs both).
Screenshots at 1280 px (the token list, a token's page, the refresh history)
are saved under ``test-artifacts/``; ``make screenshots`` (which sets
``TOKEN_ROTATION_UPDATE_SCREENSHOT=1``) also copies them to ``docs/admin-*.png``,
the pictures of docs/admin.rst.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
from typing import Any

import pytest
from allauth.socialaccount.models import SocialAccount, SocialToken
from django.contrib.auth import get_user_model
from django.utils import timezone

from django_token_rotation.models import RefreshEvent, TokenState, fingerprint
from tests.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, ROOT, requires_browser

DOCS = ROOT / "docs"

pytestmark = requires_browser("the admin browser test")

ACCESS = "browser-access-" + "a" * 40
REFRESH = "browser-refresh-" + "b" * 40


def _seed() -> None:
    User = get_user_model()
    User.objects.create_superuser("operator", "op@example.com", "operator-password")
    now = timezone.now()
    hour_ago = now - datetime.timedelta(minutes=59)
    rows: list[tuple[str, str, float, dict[str, Any]]] = [
        (
            "ada",
            "google",
            2900,
            {
                "refresh_count": 12,
                "last_refreshed_at": now,
                "refresh_expires_at": now + datetime.timedelta(days=30),
            },
        ),
        ("grace", "google", 40, {"refresh_count": 3, "last_refreshed_at": hour_ago}),
        ("alan", "keycloak", -180, {"refresh_count": 1}),
        (
            "barbara",
            "keycloak",
            -20,
            {
                "consecutive_failures": 2,
                "last_error": "server_error",
                "next_retry_at": now + datetime.timedelta(seconds=20),
            },
        ),
        ("edsger", "google", -7200, {"needs_reauth": True, "last_error": "invalid_grant"}),
        ("margaret", "github", 6 * 3600, {}),
    ]
    for i, (name, provider, expires_in, state) in enumerate(rows):
        user = User.objects.create_user(name, f"{name}@example.com", "pw")
        account = SocialAccount.objects.create(user=user, provider=provider, uid=name)
        token = SocialToken.objects.create(
            account=account,
            token=f"{ACCESS}{i}",
            token_secret="" if provider == "github" else f"{REFRESH}{i}",
            expires_at=now + datetime.timedelta(seconds=expires_in),
        )
        if state.get("needs_reauth"):
            state["failed_fingerprint"] = fingerprint(token.token_secret)
        if state:
            TokenState.objects.create(token=token, **state)
            RefreshEvent.objects.create(token=token, at=now, outcome="refreshed", duration=0.2)


@pytest.fixture
def server(django_db_setup: None, live_server: Any) -> Any:
    """The live server, started after the test database exists: started first,
    it would share the main thread's SQLite connection with its request threads."""
    return live_server


@pytest.mark.django_db(transaction=True)
def test_operator_sees_the_token_list(server: Any) -> None:
    from playwright.sync_api import sync_playwright

    _seed()  # all database work before Playwright starts its event loop
    ada = _pk("ada")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "admin-token-list.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            # A 1280 px screen with the admin's navigation sidebar open (its default).
            page = browser.new_page(viewport={"width": 1280, "height": 640})
            page.goto(f"{server.url}/admin/login/?next=/admin/socialaccount/socialtoken/")
            page.fill("#id_username", "operator")
            page.fill("#id_password", "operator-password")
            page.click("input[type=submit]")
            page.wait_for_selector("#result_list")
            text = page.inner_text("#result_list")
            html = page.content()
            # Every column is on screen: no horizontal scroll hides the last ones.
            overflow = page.evaluate(
                "() => { const r = document.querySelector('.results');"
                " return r.scrollWidth - r.clientWidth; }"
            )
            rights = page.eval_on_selector_all(
                "#result_list thead th", "ths => ths.map(th => th.getBoundingClientRect().right)"
            )
            headers = page.inner_text("#result_list thead")
            page.screenshot(path=str(shot))
            page.goto(f"{server.url}/admin/socialaccount/socialtoken/?status=sign_in_required")
            filtered = page.inner_text("#result_list")

            # A token's page: the masked tokens, its state, its history.
            page.goto(f"{server.url}/admin/socialaccount/socialtoken/{ada}/change/")
            token_page = page.inner_text("#content")
            page.screenshot(path=str(ARTIFACTS / "admin-token-page.png"), full_page=True)

            # The refresh history fits 1280 px: no sideways scroll, each time on one line.
            page.goto(f"{server.url}/admin/token_rotation/refreshevent/")
            page.wait_for_selector("#result_list")
            history_overflow = page.evaluate(
                "() => { const r = document.querySelector('.results');"
                " return r.scrollWidth - r.clientWidth; }"
            )
            history_rights = page.eval_on_selector_all(
                "#result_list th, #result_list td",
                "cells => cells.map(c => c.getBoundingClientRect().right)",
            )
            # Lines each time takes (one line box per line of an inline span).
            time_lines = page.eval_on_selector_all(
                "#result_list tbody .field-at_display span",
                "spans => spans.map(s => s.getClientRects().length)",
            )
            history_headers = page.inner_text("#result_list thead")
            history_title = page.inner_text("#content h1")
            page.screenshot(path=str(ARTIFACTS / "admin-refresh-history.png"))
        finally:
            browser.close()

    assert overflow <= 0, f"the token list scrolls sideways by {overflow} px at 1280 px"
    assert max(rights) <= 1280, rights
    for header in ("STATUS", "ACCESS TOKEN EXPIRES", "LAST ERROR", "REFRESH TOKEN EXPIRES"):
        assert header in headers.upper()
    for label in ("fresh", "expiring soon", "expired", "refresh failing (transient)"):
        assert label in text
    assert "sign-in required" in text and "no refresh token" in text
    assert "invalid_grant" in text and "server_error" in text
    assert "edsger" in filtered and "ada" not in filtered
    assert ACCESS not in html and REFRESH not in html
    assert shot.stat().st_size > 10_000
    assert "…" in token_page and ACCESS not in token_page
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", token_page)
    assert "200 ms" in token_page  # durations in ms

    assert history_overflow <= 0, f"the history scrolls sideways by {history_overflow} px"
    assert max(history_rights) <= 1280, history_rights
    assert time_lines and set(time_lines) == {1}, time_lines
    assert "DURATION" in history_headers.upper()
    assert "refresh event" in history_title.lower()

    if os.environ.get("TOKEN_ROTATION_UPDATE_SCREENSHOT") == "1":
        for name in ("admin-token-list.png", "admin-token-page.png", "admin-refresh-history.png"):
            shutil.copyfile(ARTIFACTS / name, DOCS / name)


def _pk(username: str) -> int:
    return int(SocialToken.objects.get(account__uid=username).pk)
