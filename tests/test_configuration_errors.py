"""Resolution failures are configuration errors: one warning, a back-off
recorded on the token, shown in the admin; never an error per try."""

from __future__ import annotations

import datetime
import logging
from io import StringIO
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken
from django.core.management import call_command
from django.utils import timezone

from django_token_rotation import (
    ProviderNotRefreshable,
    TokenRefreshUnavailable,
    background,
    get_access_token,
    health,
    refresh,
    rotation,
)
from django_token_rotation.models import TokenState
from tests.helpers import MakeToken
from tests.scripted_server import ScriptedServer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def forget_warnings() -> None:
    rotation._left_alone.clear()


def test_a_missing_app_warns_once_backs_off_and_is_recorded(
    make_token: MakeToken, user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    token = make_token(provider="fake")  # no SocialApp for "fake"
    caplog.set_level(logging.INFO, logger="django_token_rotation")
    with pytest.raises(ProviderNotRefreshable) as first:
        get_access_token(user, "fake")
    assert first.value.code == "provider_not_configured"
    for _ in range(3):  # later tries wait for the back-off: no resolution, no log line
        with pytest.raises(TokenRefreshUnavailable) as later:
            get_access_token(user, "fake")
        assert later.value.code == "backoff"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "fake" in warnings[0].getMessage()

    state = TokenState.objects.get(token=token)
    assert (state.last_error, state.consecutive_failures, state.needs_reauth) == (
        "provider_not_configured",
        1,
        False,
    )
    assert state.next_retry_at is not None
    assert state.next_retry_at <= timezone.now() + datetime.timedelta(seconds=6)
    stored = SocialToken.objects.select_related("account", "rotation_state").get(pk=token.pk)
    assert health.status(stored) == health.Status.MISCONFIGURED
    matching = health.filter_by_status(SocialToken.objects.all(), health.Status.MISCONFIGURED)
    assert list(matching) == [stored]


def test_the_back_off_grows_and_refresh_now_retries_at_once(
    make_token: MakeToken, scripted: ScriptedServer, settings: Any
) -> None:
    token = make_token(provider="fake")
    for failures in (1, 2):
        TokenState.objects.filter(token=token).update(next_retry_at=None)
        token.refresh_from_db()
        with pytest.raises(ProviderNotRefreshable):
            refresh(token)
        state = TokenState.objects.get(token=token)
        assert state.consecutive_failures == failures
    assert state.next_retry_at is not None
    assert state.next_retry_at > timezone.now() + datetime.timedelta(seconds=9)

    # The site adds the app; "refresh now" (force) does not wait for the back-off.
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    SocialApp.objects.create(provider="fake", name="Fake", client_id="c", secret="s")
    token.refresh_from_db()
    refresh(token, force=True)
    state = TokenState.objects.get(token=token)
    assert (state.last_error, state.consecutive_failures, state.next_retry_at) == ("", 0, None)
    stored = SocialToken.objects.select_related("account", "rotation_state").get(pk=token.pk)
    assert health.status(stored) == health.Status.FRESH


def test_the_command_reports_a_configuration_error_not_a_sign_in(make_token: MakeToken) -> None:
    make_token(provider="fake")
    report = background.refresh_due()
    assert report.codes == {background.FAILED_TRANSIENTLY: {"provider_not_configured": 1}}
    assert report.failed_permanently == 0
    # The next run waits for the back-off; the command exits 0 (no user must sign in).
    out = StringIO()
    call_command("refresh_tokens", stdout=out)
    assert background.refresh_due().skipped == {"backoff": 1}
