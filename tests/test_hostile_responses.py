"""Property-based tests: whatever a token endpoint answers, nothing escapes but our
documented exceptions, nothing stored changes unless the answer was valid, and
the classification is the documented one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_token_rotation import ReauthenticationRequired, TokenRefreshUnavailable, refresh
from django_token_rotation.client import (
    PERMANENT_ERRORS,
    TokenEndpoint,
    TokenResponse,
    parse_token_response,
)
from django_token_rotation.models import TokenState
from tests.helpers import MakeToken
from tests.scripted_server import Reply, ScriptedServer

ENDPOINT = TokenEndpoint(
    url="https://p.example/token", client_id="c", client_secret="s", provider="p"
)

TRANSIENT_CODES = {
    "refusal_unconfirmed",
    "timeout",
    "server_error",
    "rate_limited",
    "temporarily_unavailable",
    "malformed_response",
    "unexpected_response",
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
known_keys = st.sampled_from(
    [
        "access_token",
        "refresh_token",
        "expires_in",
        "refresh_expires_in",
        "token_type",
        "id_token",
        "error",
        "scope",
    ]
)
token_like = st.one_of(
    json_values,
    st.text(min_size=1, max_size=60),
    st.sampled_from(["Bearer", "bearer", "DPoP", "", "invalid_grant", "3600", "-1"]),
)
payloads = st.one_of(
    json_values,
    st.dictionaries(known_keys, token_like, max_size=8),
    st.dictionaries(known_keys | st.text(max_size=10), token_like, max_size=10),
)


def encode(payload: Any, how: str) -> tuple[str, bytes]:
    text = json.dumps(payload, allow_nan=True)
    if how == "json":
        return "application/json", text.encode()
    if how == "truncated":
        return "application/json", text.encode()[: max(1, len(text) // 2)]
    if how == "html":
        return "text/html", b"<html><body>" + text.encode() + b"</body></html>"
    if how == "latin1":
        return "application/json; charset=latin-1", text.encode("utf-8") + b"\xff\xfe"
    return "", text.encode()


bodies = st.tuples(payloads, st.sampled_from(["json", "truncated", "html", "latin1", "none"]))
statuses = st.sampled_from(
    [200, 201, 204, 301, 302, 307, 400, 401, 403, 404, 408, 429, 500, 502, 503]
)
raw_bytes = st.binary(max_size=200)


def expected_valid(status: int, content_type: str, body: bytes) -> bool:
    """An independent statement of what the client must accept."""
    if status not in (200, 201):
        return False
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(payload, dict) or "error" in payload and payload["error"] is not None:
        return False
    access = payload.get("access_token")
    if not isinstance(access, str) or not access.strip():
        return False
    refresh_token = payload.get("refresh_token")
    if refresh_token not in (None, "") and (
        not isinstance(refresh_token, str) or not refresh_token.strip()
    ):
        return False
    # An unusable id_token is ignored: the tokens are kept, its claims are not.
    token_type = payload.get("token_type")
    return token_type is None or (isinstance(token_type, str) and token_type.lower() == "bearer")


def classify(status: int, content_type: str, body: bytes) -> str:
    try:
        result = parse_token_response(ENDPOINT, status, content_type, body)
    except ReauthenticationRequired as exc:
        assert exc.code in PERMANENT_ERRORS | {"unsupported_token_type"}
        assert status < 500 and status != 429 and not 300 <= status < 400
        return "permanent"
    except TokenRefreshUnavailable as exc:
        assert exc.code in TRANSIENT_CODES, exc.code
        if status >= 500:
            assert exc.code in ("server_error", "temporarily_unavailable", "rate_limited")
        if status == 429:
            assert exc.code == "rate_limited"
        if status == 408:
            assert exc.code in (
                "timeout",
                "rate_limited",
                "server_error",
                "temporarily_unavailable",
            )
        if exc.code == "refusal_unconfirmed":
            # A refusal that says nothing: HTTP 4xx, never 408 or 429.
            assert 400 <= status < 500 and status not in (408, 429)
        return "transient"
    assert isinstance(result, TokenResponse)
    if result.refused is not None:
        # Refused for its access token; its new refresh token is kept.
        assert result.refresh_token and not result.access_token
        return "refresh_token_only"
    return "valid"


@settings(max_examples=1500, deadline=None)
@given(status=statuses, body=bodies)
def test_any_json_answer_is_classified_as_documented(status: int, body: tuple[Any, str]) -> None:
    content_type, raw = encode(*body)
    outcome = classify(status, content_type, raw)
    if body[1] == "json" or (body[1] == "none" and raw.lstrip()[:1] in (b"{", b"[")):
        assert (outcome == "valid") == expected_valid(status, content_type, raw)
    elif outcome == "valid":
        assert body[1] == "none" and expected_valid(status, content_type, raw)


@settings(max_examples=500, deadline=None)
@given(
    status=statuses,
    content_type=st.sampled_from(["", "application/json", "text/plain"]),
    raw=raw_bytes,
)
def test_any_bytes_are_classified_as_documented(status: int, content_type: str, raw: bytes) -> None:
    outcome = classify(status, content_type, raw)
    if outcome == "valid":
        assert expected_valid(status, content_type, raw)


# -- through the engine, over real HTTP ------------------------------------------------


@pytest.mark.django_db
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(status=statuses, body=bodies)
def test_stored_tokens_change_only_for_valid_answers(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    hidden_secrets: list[str],
    status: int,
    body: tuple[Any, str],
) -> None:
    token = SocialToken.objects.filter(account__provider="fake").first() or make_token()
    SocialToken.objects.filter(pk=token.pk).update(
        token="old-access", token_secret="old-refresh", expires_at=timezone.now()
    )
    TokenState.objects.all().delete()
    content_type, raw = encode(*body)
    scripted.script(Reply(status, raw, headers={"Content-Type": content_type}))
    token.refresh_from_db()

    try:
        refresh(token, force=True)
        outcome = "valid"
    except ReauthenticationRequired:
        outcome = "permanent"
    except TokenRefreshUnavailable:
        outcome = "transient"

    stored = SocialToken.objects.get(pk=token.pk)
    # HTTP 204 has no body: whatever the server writes after its headers never arrives.
    expected = classify(status, content_type, b"" if status == 204 else raw)
    if expected == "refresh_token_only":
        assert outcome in ("permanent", "transient")
        kept = json.loads(raw)["refresh_token"]
        assert (stored.token, stored.token_secret) == ("old-access", kept)
        return
    assert outcome == expected
    if outcome == "valid":
        payload = json.loads(raw)
        assert stored.token == payload["access_token"]
        assert stored.token_secret == (payload.get("refresh_token") or "old-refresh")
    else:
        assert (stored.token, stored.token_secret) == ("old-access", "old-refresh")
