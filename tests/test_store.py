"""Never throw away a refresh token the provider issued.

An answer refused for its access token (a non-Bearer type, a missing,
malformed or oversized access token) that carries a new refresh token still
stores that refresh token: at a rotating provider the one sent is spent, and
the next attempt must send the new one. Against the scripted server, which
records what each attempt sent.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken

from django_token_rotation import (
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    client,
    refresh,
    signals,
    store,
)
from django_token_rotation.exceptions import ERROR_CODES
from django_token_rotation.models import TokenState, fingerprint
from tests.helpers import MakeToken, failing_token_writes, stored
from tests.scripted_server import Reply, ScriptedServer, oauth_error, tokens

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("hidden_secrets")]

UNUSABLE_ACCESS_TOKENS = {
    "missing": {"refresh_token": "new-refresh", "expires_in": 3600},
    "not_a_string": {"access_token": 5, "refresh_token": "new-refresh"},
    "blank": {"access_token": "   ", "refresh_token": "new-refresh"},
    "oversized": {"access_token": "a" * (17 * 1024), "refresh_token": "new-refresh"},
    "token_type_not_a_string": {
        "access_token": "new-access",
        "token_type": ["Bearer"],
        "refresh_token": "new-refresh",
    },
}


@pytest.mark.parametrize("body", UNUSABLE_ACCESS_TOKENS.values(), ids=UNUSABLE_ACCESS_TOKENS)
def test_a_malformed_access_token_keeps_the_new_refresh_token(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, body: dict[str, Any]
) -> None:
    token = make_token()
    # A rotating provider: the first refresh token is spent by the first answer.
    scripted.script(Reply(200, body), tokens(access="good-access", refresh="newer-refresh"))
    with pytest.raises(TokenRefreshUnavailable) as caught:
        refresh(token, force=True)
    assert caught.value.code == "malformed_response"
    assert "new refresh token in the answer was stored" in str(caught.value)
    assert (stored(token).token, stored(token).token_secret) == ("old-access", "new-refresh")
    state = TokenState.objects.get(token=token)
    assert (state.last_error, state.needs_reauth) == ("malformed_response", False)
    assert state.next_retry_at is not None
    assert state.inflight_fingerprint == ""  # the sent one's answer is accounted for

    refresh(token, force=True)  # the next attempt sends the new one, not the spent one
    assert [r.form["refresh_token"] for r in scripted.token_requests] == [
        "old-refresh",
        "new-refresh",
    ]
    assert (stored(token).token, stored(token).token_secret) == ("good-access", "newer-refresh")


def test_a_non_bearer_token_is_a_permanent_error_that_keeps_the_refresh_token(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    assert ERROR_CODES["unsupported_token_type"][0] is True
    token = make_token()
    scripted.script(
        tokens(token_type="DPoP", refresh_token_expires_in=86400), tokens(access="good-access")
    )
    with pytest.raises(ReauthenticationRequired) as caught:
        refresh(token, force=True)
    assert caught.value.code == "unsupported_token_type"
    assert (stored(token).token, stored(token).token_secret) == ("old-access", "new-refresh")
    state = TokenState.objects.get(token=token)
    # Recorded against the refresh token stored now: it blocks further attempts.
    assert state.needs_reauth and state.failed_fingerprint == fingerprint("new-refresh")
    assert state.refresh_expires_at is not None and state.last_attempt_at is not None
    assert state.refresh_expires_at > state.last_attempt_at + datetime.timedelta(hours=23)
    with pytest.raises(ReauthenticationRequired):
        refresh(token, force=True)
    assert len(scripted.token_requests) == 1

    # The admin's "clear error" (the site fixed its client): retried with the kept one.
    TokenState.objects.filter(token=token).clear_failure()
    token.refresh_from_db()
    refresh(token, force=True)
    assert scripted.token_requests[-1].form["refresh_token"] == "new-refresh"
    assert stored(token).token == "good-access"


def test_without_a_new_refresh_token_nothing_is_stored(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    token = make_token()
    scripted.script(tokens(token_type="MAC", refresh=None))
    with pytest.raises(ReauthenticationRequired) as caught:
        refresh(token, force=True)
    assert caught.value.code == "unsupported_token_type"
    assert (stored(token).token, stored(token).token_secret) == ("old-access", "old-refresh")

    scripted.script(Reply(200, {"refresh_token": ""}))  # an empty one is no refresh token
    TokenState.objects.filter(token=token).clear_failure()
    token.refresh_from_db()
    with pytest.raises(TokenRefreshUnavailable) as transient:
        refresh(token, force=True)
    assert transient.value.code == "malformed_response"
    assert stored(token).token_secret == "old-refresh"


def test_an_unusable_refresh_token_still_discards_the_answer(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    token = make_token()
    scripted.script(Reply(200, {"access_token": "x", "refresh_token": 7}))
    with pytest.raises(TokenRefreshUnavailable):
        refresh(token, force=True)
    assert (stored(token).token, stored(token).token_secret) == ("old-access", "old-refresh")


def test_a_newer_token_stored_meanwhile_wins(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    token = make_token()
    refused = TokenRefreshUnavailable("x", code="malformed_response")
    answer = client.TokenResponse(access_token="", refresh_token="ours", refused=refused)
    SocialToken.objects.filter(pk=token.pk).update(token_secret="theirs", token="their-access")
    written = store.store_answer(token, answer, "old-refresh", lease_id="x", elapsed=0)
    assert written is False  # and nothing raised: the newer token is adopted
    assert (token.token, token.token_secret) == ("their-access", "theirs")
    assert stored(token).token_secret == "theirs"


def test_a_refused_grant_is_still_a_refusal(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    # An error body is never mistaken for an answer with a refresh token.
    token = make_token()
    scripted.script(oauth_error("invalid_grant"))
    with pytest.raises(ReauthenticationRequired) as caught:
        refresh(token, force=True)
    assert caught.value.code == "invalid_grant"
    assert stored(token).token_secret == "old-refresh"


def test_a_database_failure_while_keeping_it_is_a_lost_rotation_later(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    from django.db import connection

    token = make_token()
    scripted.script(tokens(token_type="DPoP"), oauth_error("invalid_grant"))
    with (
        connection.execute_wrapper(failing_token_writes),
        pytest.raises(TokenRefreshUnavailable) as first,
    ):
        refresh(token, force=True)
    assert first.value.code == "database_error"
    assert stored(token).token_secret == "old-refresh"  # nothing half-written
    token.refresh_from_db()
    with pytest.raises(ReauthenticationRequired) as second:
        refresh(token, force=True)
    assert second.value.code == "lost_rotation"


ODD_BUT_USABLE = {
    "id_token_a_number": {"id_token": 5},
    "id_token_over_16_kib": {"id_token": "e" * (17 * 1024)},
    "id_token_a_list": {"id_token": ["a.b.c"]},
    "scope_a_number": {"scope": 7},
    "scope_a_dict": {"scope": {"read": True}},
    "scope_oversized": {"scope": "read " * 20_000},
    "other_field_oversized": {"x_debug": "d" * 100_000},
    "expires_in_junk": {"expires_in": "soon"},
}


@pytest.mark.parametrize("extra", ODD_BUT_USABLE.values(), ids=ODD_BUT_USABLE)
def test_odd_fields_beside_good_tokens_lose_nothing(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, extra: dict[str, Any]
) -> None:
    token = make_token()
    scripted.script(tokens(**extra))
    refresh(token, force=True)
    assert (stored(token).token, stored(token).token_secret) == ("new-access", "new-refresh")
    assert not TokenState.objects.get(token=token).last_error


def test_an_unusable_id_token_at_an_openid_provider_keeps_the_tokens_not_the_claims(
    make_oidc_app: Any, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    from allauth.socialaccount.models import SocialAccount

    token = make_token(provider="scripted", app=make_oidc_app(), uid="user-1")
    SocialAccount.objects.filter(pk=token.account_id).update(
        extra_data={"id_token": {"sub": "user-1", "email": "old@example.com"}}
    )
    scripted.script(tokens(id_token="e" * (17 * 1024)))
    refresh(token, force=True)
    assert (stored(token).token, stored(token).token_secret) == ("new-access", "new-refresh")
    account = SocialAccount.objects.get(pk=token.account_id)
    assert account.extra_data["id_token"]["email"] == "old@example.com"


def test_a_receiver_that_raises_is_logged_and_the_refresh_stands(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    caplog: pytest.LogCaptureFixture,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """A site's receiver of ``token_refreshed`` fails: the new tokens stay, and
    our log names the exception's type only. (Django's ``send_robust`` also logs
    the receiver's exception, message and traceback, on ``django.dispatch``.)"""
    calls = []

    def failing_receiver(sender: Any, **kwargs: Any) -> None:
        calls.append(kwargs["token"].pk)
        raise ValueError("the site's receiver failed")

    token = make_token()
    signals.token_refreshed.connect(failing_receiver)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            refresh(token, force=True)
    finally:
        signals.token_refreshed.disconnect(failing_receiver)
    assert calls == [token.pk]
    assert (stored(token).token, stored(token).token_secret) == ("new-access", "new-refresh")
    ours = [r for r in caplog.records if r.name == "django_token_rotation"]
    errors = [r for r in ours if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "raised ValueError" in errors[0].getMessage()
    assert "receiver failed" not in errors[0].getMessage() and errors[0].exc_info is None
