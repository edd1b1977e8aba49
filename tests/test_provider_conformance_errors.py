"""Providers' own error shapes, answered by a real HTTP server on 127.0.0.1.

A dead grant reported in a provider's words (often with HTTP 200) means "sign in
again"; a rate limit or an outage in the same words stays temporary. The shapes
are those of the providers' documentation, in each provider's registry entry
(``providers.registry``), and a site's ``TOKEN_ROTATION_PROVIDER_ERRORS``. An
error answer that says nothing (HTTP 4xx without an OAuth error: glewlwyd's
empty 400) is confirmed by one more call, then means "sign in again".

The tokens here belong to accounts of the named provider id (which selects the
registry entry), refreshed through the fake provider's app, whose token
endpoint is the scripted server.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken
from django.utils import timezone

from django_token_rotation import (
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    get_access_token,
    refresh,
)
from django_token_rotation.models import TokenState
from tests.helpers import MakeToken, stored
from tests.scripted_server import Reply, ScriptedServer, tokens

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
    "slack-unknown": (Reply(200, {"ok": False, "error": "no_idea"}), "unexpected_response"),
    # Twitch's shape with another message: a refusal that says nothing we know.
    "twitch-other": (
        Reply(400, {"status": 400, "message": "Something else"}),
        "refusal_unconfirmed",
    ),
}


def provider_of(case: str) -> str:
    return case.split("-")[0]


@pytest.mark.parametrize(("case", "reply"), DEAD_GRANTS.items(), ids=DEAD_GRANTS.keys())
def test_dead_grant_in_the_providers_words_means_sign_in_again(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    case: str,
    reply: Reply,
) -> None:
    token = make_token(provider=provider_of(case), app=fake_app)
    scripted.script(reply)
    with pytest.raises(ReauthenticationRequired) as caught:
        get_access_token(user, provider_of(case))
    assert caught.value.code in ("invalid_grant", "invalid_client")
    assert len(scripted.token_requests) == 1
    assert (stored(token).token, stored(token).token_secret) == ("old-access", "old-refresh")
    # Asked again: no second call to the provider, the user is sent to sign in.
    with pytest.raises(ReauthenticationRequired):
        get_access_token(user, provider_of(case))
    assert len(scripted.token_requests) == 1


@pytest.mark.parametrize(("case", "reply"), DEAD_GRANTS.items(), ids=DEAD_GRANTS.keys())
def test_a_providers_words_mean_nothing_at_another_provider(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, case: str, reply: Reply
) -> None:
    # GitHub's HTTP 200 "bad_refresh_token" at a provider that never said it.
    token = make_token(app=fake_app)
    scripted.script(reply)
    with pytest.raises(TokenRefreshUnavailable) as caught:
        refresh(token, force=True)
    assert caught.value.code in ("unexpected_response", "refusal_unconfirmed")


@pytest.mark.parametrize(("case", "expected"), TEMPORARY.items(), ids=TEMPORARY.keys())
def test_rate_limits_and_outages_in_the_providers_words_stay_temporary(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    case: str,
    expected: tuple[Reply, str],
) -> None:
    reply, code = expected
    token = make_token(provider=provider_of(case), app=fake_app)
    scripted.script(reply)
    with pytest.raises(TokenRefreshUnavailable) as caught:
        get_access_token(user, provider_of(case))
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

    token = make_token()
    scripted.script(tokens(**{key: "8726400"}))  # Intuit sends numbers; strings are accepted
    before = timezone.now()
    assert get_access_token(user, "fake") == "new-access"
    state = TokenState.objects.get(token=token)
    assert state.refresh_expires_at is not None
    seconds = (state.refresh_expires_at - before).total_seconds()
    assert 8726400 - 5 < seconds < 8726400 + 5


def test_slacks_user_token_type_is_a_bearer_token(scripted: ScriptedServer) -> None:
    from django_token_rotation import client
    from django_token_rotation.providers import registry

    slack = client.TokenEndpoint(
        url=scripted.token_url,
        client_id="c",
        client_secret="s",
        provider="slack",
        token_types=registry.entry("slack").token_types,
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


# -- error answers that say nothing -------------------------------------------------


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Moves Django's clock forward by hand (a back-off passes) instead of sleeping."""
    real = timezone.now
    offset = [0.0]
    monkeypatch.setattr(timezone, "now", lambda: real() + datetime.timedelta(seconds=offset[0]))

    def advance(seconds: float) -> None:
        offset[0] += seconds

    return advance


def sent_refresh_tokens(scripted: ScriptedServer) -> list[str]:
    return [request.form["refresh_token"] for request in scripted.token_requests]


BARE_REFUSALS = {
    "glewlwyd-empty-400": Reply(400, b""),
    "empty-401": Reply(401, b""),
    "empty-403": Reply(403, b""),
    "html-400": Reply(400, "<html><body>Bad Request</body></html>"),
    "json-without-error-400": Reply(400, {"status": "failed"}),
}


@pytest.mark.parametrize("reply", BARE_REFUSALS.values(), ids=BARE_REFUSALS.keys())
def test_a_refusal_that_says_nothing_twice_is_sign_in_again_after_exactly_two_calls(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    later: Callable[[float], None],
    reply: Reply,
) -> None:
    token = make_token()
    scripted.script(reply)
    with pytest.raises(TokenRefreshUnavailable) as first:
        get_access_token(user, "fake")
    assert first.value.code == "refusal_unconfirmed"
    assert not TokenState.objects.get().needs_reauth
    # Within the back-off: no call.
    with pytest.raises(TokenRefreshUnavailable):
        get_access_token(user, "fake")
    assert len(scripted.token_requests) == 1

    later(5)  # the back-off of an expired token is 0.5-1 s
    with pytest.raises(ReauthenticationRequired) as second:
        get_access_token(user, "fake")
    assert second.value.code == "refusal_confirmed"
    assert sent_refresh_tokens(scripted) == ["old-refresh", "old-refresh"]

    # Never a third call: the user is asked to sign in, however long we wait.
    for _ in range(3):
        later(3600)
        with pytest.raises(ReauthenticationRequired):
            get_access_token(user, "fake")
    assert len(scripted.token_requests) == 2
    state = TokenState.objects.get()
    assert state.needs_reauth and state.last_error == "refusal_confirmed"
    assert (stored(token).token, stored(token).token_secret) == ("old-access", "old-refresh")


def test_a_refusal_that_says_nothing_then_a_success_is_a_success(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    later: Callable[[float], None],
) -> None:
    make_token()
    scripted.script(Reply(400, b""), tokens(expires_in=60))
    with pytest.raises(TokenRefreshUnavailable):
        get_access_token(user, "fake")
    later(5)
    assert get_access_token(user, "fake") == "new-access"
    state = TokenState.objects.get()
    assert (state.last_error, state.needs_reauth) == ("", False)

    # The next empty 400, for the new refresh token, is unconfirmed again.
    scripted.script(Reply(400, b""))
    later(3600)
    with pytest.raises(TokenRefreshUnavailable) as again:
        get_access_token(user, "fake")
    assert again.value.code == "refusal_unconfirmed"
    assert sent_refresh_tokens(scripted) == ["new-refresh"]


STAY_TEMPORARY = {
    "408": (Reply(408, b""), "timeout"),
    "429": (Reply(429, b""), "rate_limited"),
    "500": (Reply(500, b""), "server_error"),
    "502-html": (Reply(502, "<html>Bad Gateway</html>"), "server_error"),
    "503": (Reply(503, b""), "server_error"),
}


@pytest.mark.parametrize(("reply", "code"), STAY_TEMPORARY.values(), ids=STAY_TEMPORARY.keys())
def test_timeouts_rate_limits_and_outages_stay_temporary_however_often(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    later: Callable[[float], None],
    reply: Reply,
    code: str,
) -> None:
    make_token()
    scripted.script(reply)
    for _ in range(3):
        with pytest.raises(TokenRefreshUnavailable) as caught:
            get_access_token(user, "fake")
        assert caught.value.code == code
        later(3600)
    assert len(scripted.token_requests) == 3
    assert not TokenState.objects.get().needs_reauth


def test_a_site_says_what_its_providers_empty_400_means(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any, settings: Any
) -> None:
    # glewlwyd 2.7.5: HTTP 400 and an empty body for a spent, revoked or unknown refresh token.
    settings.TOKEN_ROTATION_PROVIDER_ERRORS = {"glewlwyd": {"http:400:empty": "invalid_grant"}}
    make_token(provider="glewlwyd", app=fake_app)
    scripted.script(Reply(400, b""))
    with pytest.raises(ReauthenticationRequired) as caught:
        get_access_token(user, "glewlwyd")
    assert caught.value.code == "invalid_grant"
    assert len(scripted.token_requests) == 1
    # Only the empty one: a 400 with a body is still unconfirmed there.
    SocialToken.objects.update(token_secret="other-refresh")
    TokenState.objects.all().clear_failure()
    scripted.script(Reply(400, "<html>Bad Request</html>"))
    with pytest.raises(TokenRefreshUnavailable) as other:
        get_access_token(user, "glewlwyd")
    assert other.value.code == "refusal_unconfirmed"


@pytest.mark.parametrize(
    "value",
    [
        "invalid_grant",
        {"glewlwyd": "invalid_grant"},
        {"glewlwyd": {"http:400:empty": "sign_in_again"}},
        {"glewlwyd": {400: "invalid_grant"}},
    ],
)
def test_a_bad_provider_errors_setting_is_reported_by_the_checks(settings: Any, value: Any) -> None:
    from django_token_rotation.checks import check_setup

    settings.TOKEN_ROTATION_PROVIDER_ERRORS = value
    messages = [m for m in check_setup() if "PROVIDER_ERRORS" in m.msg]
    assert [m.id for m in messages] == ["token_rotation.E005"]


@pytest.mark.parametrize("shape", ["HTTP:400", "http:40:empty", "message:Invalid token", "a b"])
def test_a_shape_no_answer_can_match_is_a_warning(settings: Any, shape: str) -> None:
    from django_token_rotation.checks import check_provider_errors

    settings.TOKEN_ROTATION_PROVIDER_ERRORS = {"in_house": {shape: "invalid_grant"}}
    assert [m.id for m in check_provider_errors()] == ["token_rotation.W010"]


def test_every_shape_of_the_registry_and_the_glewlwyd_example_can_match(settings: Any) -> None:
    from django_token_rotation.checks import check_provider_errors
    from django_token_rotation.providers.registry import ENTRIES, SHAPE

    for provider_id, known in ENTRIES.items():
        for shape in known.errors:
            assert SHAPE.fullmatch(shape), (provider_id, shape)
    settings.TOKEN_ROTATION_PROVIDER_ERRORS = {"glewlwyd": {"http:400:empty": "invalid_grant"}}
    assert check_provider_errors() == []


HTML = ("text/html", b"<html><body>Bad Request</body></html>")
EMPTY = ("", b"")
GLEWLWYD = {"http:400:empty": "invalid_grant"}

#: (the provider's error shapes, status, (content type, body)) -> the code it is reported as.
SHAPES: dict[str, tuple[dict[str, str], int, tuple[str, bytes], str]] = {
    "empty 400, no rule": ({}, 400, EMPTY, "refusal_unconfirmed"),
    "empty 400, glewlwyd's rule": (GLEWLWYD, 400, EMPTY, "invalid_grant"),
    "HTML 400, glewlwyd's rule (empty only)": (GLEWLWYD, 400, HTML, "refusal_unconfirmed"),
    "empty 401, glewlwyd's rule (400 only)": (GLEWLWYD, 401, EMPTY, "refusal_unconfirmed"),
    "HTML 400, a rule for any 400": ({"http:400": "invalid_grant"}, 400, HTML, "invalid_grant"),
    "an OAuth error wins over the status rule": (
        {"http:400": "invalid_grant"},
        400,
        ("application/json", b'{"error": "invalid_client"}'),
        "invalid_client",
    ),
    "5xx stays temporary whatever a rule says": (
        {"http:503:empty": "invalid_grant"},
        503,
        EMPTY,
        "server_error",
    ),
    "429 stays temporary whatever a rule says": (
        {"http:429:empty": "invalid_grant"},
        429,
        EMPTY,
        "rate_limited",
    ),
    "408 is a timeout": ({}, 408, EMPTY, "timeout"),
    "a rule may say later": (
        {"http:400:empty": "temporarily_unavailable"},
        400,
        EMPTY,
        "temporarily_unavailable",
    ),
    "an error code renamed": (
        {"bad_refresh_token": "invalid_grant"},
        200,
        ("application/json", b'{"error": "bad_refresh_token"}'),
        "invalid_grant",
    ),
    "an unknown error code at 200": (
        {},
        200,
        ("application/json", b'{"error": "bad_refresh_token"}'),
        "unexpected_response",
    ),
}


@pytest.mark.parametrize(("shapes", "status", "answer", "expected"), SHAPES.values(), ids=SHAPES)
def test_error_shapes_as_a_table(
    shapes: dict[str, str], status: int, answer: tuple[str, bytes], expected: str
) -> None:
    from django_token_rotation.client import TokenEndpoint, parse_token_response
    from django_token_rotation.exceptions import TokenRotationError

    endpoint = TokenEndpoint(
        url="https://p.example/token", client_id="c", client_secret="s", provider="p", errors=shapes
    )
    with pytest.raises(TokenRotationError) as caught:
        parse_token_response(endpoint, status, *answer)
    assert caught.value.code == expected
    assert caught.value.permanent == (expected in ("invalid_grant", "invalid_client"))
