"""Providers' own error shapes, answered by a real HTTP server on 127.0.0.1.

A dead grant reported in a provider's words (often with HTTP 200) means "sign in
again"; a rate limit or an outage in the same words stays temporary. The shapes
are those of the providers' documentation (client.PROVIDER_ERRORS).
"""

from __future__ import annotations

from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp

from django_token_rotation import (
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    get_access_token,
)
from tests.helpers import MakeToken, stored
from tests.scripted_server import Reply, ScriptedServer

pytestmark = pytest.mark.django_db

DEAD_GRANTS = {
    "github": Reply(
        200,
        {
            "error": "bad_refresh_token",
            "error_description": "The refresh token passed is incorrect or expired.",
        },
    ),
    "github-credentials": Reply(200, {"error": "incorrect_client_credentials"}),
    "slack": Reply(200, {"ok": False, "error": "invalid_refresh_token"}),
    "slack-revoked": Reply(200, {"ok": False, "error": "token_revoked"}),
    "twitch": Reply(400, {"status": 400, "message": "Invalid refresh token"}),
    "facebook": Reply(
        400, {"error": {"message": "Error validating access token", "code": 190, "type": "x"}}
    ),
    "strava": Reply(
        400,
        {
            "message": "Bad Request",
            "errors": [{"resource": "RefreshToken", "field": "refresh_token", "code": "invalid"}],
        },
    ),
    # GitHub's form-encoded answer (no Accept: application/json honoured).
    "github-form": Reply(
        200,
        b"error=bad_refresh_token&error_description=expired",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
}

TEMPORARY = {
    "slack-ratelimited": (Reply(200, {"ok": False, "error": "ratelimited"}), "rate_limited"),
    "slack-internal": (Reply(200, {"ok": False, "error": "internal_error"}), "server_error"),
    "facebook-rate": (Reply(400, {"error": {"code": 4, "type": "x"}}), "rate_limited"),
    "facebook-down": (
        Reply(400, {"error": {"code": 2, "type": "x"}}),
        "temporarily_unavailable",
    ),
    "unknown-200-error": (Reply(200, {"ok": False, "error": "no_idea"}), "unexpected_response"),
    "twitch-other": (
        Reply(400, {"status": 400, "message": "Something else"}),
        "unexpected_response",
    ),
}


@pytest.mark.parametrize("reply", DEAD_GRANTS.values(), ids=DEAD_GRANTS.keys())
def test_dead_grant_in_the_providers_words_means_sign_in_again(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any, reply: Reply
) -> None:
    token = make_token()
    scripted.script(reply)
    with pytest.raises(ReauthenticationRequired) as caught:
        get_access_token(user, "fake")
    assert caught.value.code in ("invalid_grant", "invalid_client")
    assert len(scripted.token_requests) == 1
    assert (stored(token).token, stored(token).token_secret) == ("old-access", "old-refresh")
    # Asked again: no second call to the provider, the user is sent to sign in.
    with pytest.raises(ReauthenticationRequired):
        get_access_token(user, "fake")
    assert len(scripted.token_requests) == 1


@pytest.mark.parametrize(("reply", "code"), TEMPORARY.values(), ids=TEMPORARY.keys())
def test_rate_limits_and_outages_in_the_providers_words_stay_temporary(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    reply: Reply,
    code: str,
) -> None:
    token = make_token()
    scripted.script(reply)
    with pytest.raises(TokenRefreshUnavailable) as caught:
        get_access_token(user, "fake")
    assert caught.value.code == code
    assert stored(token).token_secret == "old-refresh"


# -- refresh-token expiry under every name -------------------------------------


@pytest.mark.parametrize(
    "key", ["refresh_expires_in", "refresh_token_expires_in", "x_refresh_token_expires_in"]
)
def test_refresh_token_expiry_is_stored_under_every_name(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any, key: str
) -> None:
    from django.utils import timezone

    from django_token_rotation.models import TokenState
    from tests.scripted_server import tokens

    token = make_token()
    scripted.script(tokens(**{key: "8726400"}))  # Intuit sends numbers; strings are accepted
    before = timezone.now()
    assert get_access_token(user, "fake") == "new-access"
    state = TokenState.objects.get(token=token)
    assert state.refresh_expires_at is not None
    seconds = (state.refresh_expires_at - before).total_seconds()
    assert 8726400 - 5 < seconds < 8726400 + 5


def test_slacks_user_token_type_is_a_bearer_token(scripted: ScriptedServer) -> None:
    from django_token_rotation import client, providers
    from tests.scripted_server import tokens

    slack = client.TokenEndpoint(
        url=scripted.token_url,
        client_id="c",
        client_secret="s",
        provider="slack",
        token_types=providers.quirks("slack").token_types,
    )
    scripted.script(tokens(access="xoxe.xoxp-new", refresh="xoxe-1-new", token_type="user"))
    assert client.refresh_token_grant(slack, "xoxe-1-old").refresh_token == "xoxe-1-new"
    # Elsewhere a non-Bearer token is refused; its new refresh token is kept.
    other = client.TokenEndpoint(
        url=scripted.token_url, client_id="c", client_secret="s", provider="other"
    )
    answer = client.refresh_token_grant(other, "xoxe-1-old")
    assert answer.refused is not None
    assert answer.refused.code == "unsupported_token_type"
    assert (answer.access_token, answer.refresh_token) == ("", "xoxe-1-new")
