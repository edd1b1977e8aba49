"""answers.interpret and answers.judge_error: what an answer leads to, before anything is
written. Pure functions, tested as tables; the writing is tested through the engine
(test_store.py, test_lost_rotation.py, test_rotation.py)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from django_token_rotation import answers, client
from django_token_rotation.exceptions import ReauthenticationRequired, TokenRefreshUnavailable
from django_token_rotation.idtoken import IdTokenRejected

NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC)
MALFORMED = TokenRefreshUnavailable("x", code="malformed_response")
DPOP = ReauthenticationRequired("x", code="unsupported_token_type")
MISMATCH = IdTokenRejected("x")
CLAIMS = {"sub": "user-1", "email": "a@example.com"}


def answer(**fields: Any) -> client.TokenResponse:
    return client.TokenResponse(**{"access_token": "new-access", **fields})


def outcome(**fields: Any) -> answers.Outcome:
    return answers.Outcome(**fields)


HOUR = NOW + datetime.timedelta(hours=1)
DAY = NOW + datetime.timedelta(days=1)

#: (answer, ID token verdict, previous lifetime) -> the outcome.
CASES: dict[str, tuple[client.TokenResponse, Any, float | None, answers.Outcome]] = {
    "rotated": (
        answer(refresh_token="new-refresh", expires_in=3600),
        None,
        None,
        outcome(
            access_token="new-access", refresh_token="new-refresh", expires_at=HOUR, rotated=True
        ),
    ),
    "kept (no refresh token in the answer)": (
        answer(expires_in=3600),
        None,
        None,
        outcome(access_token="new-access", refresh_token="sent", expires_at=HOUR),
    ),
    "kept (the same one again)": (
        answer(refresh_token="sent", expires_in=3600),
        None,
        None,
        outcome(access_token="new-access", refresh_token="sent", expires_at=HOUR),
    ),
    "no expires_in: the previous lifetime": (
        answer(refresh_token="new-refresh"),
        None,
        3600.0,
        outcome(
            access_token="new-access", refresh_token="new-refresh", expires_at=HOUR, rotated=True
        ),
    ),
    "no expires_in, nothing known": (
        answer(refresh_token="new-refresh"),
        None,
        None,
        outcome(access_token="new-access", refresh_token="new-refresh", rotated=True),
    ),
    "refresh token lifetime": (
        answer(refresh_token="new-refresh", expires_in=3600, refresh_expires_in=86400),
        None,
        None,
        outcome(
            access_token="new-access",
            refresh_token="new-refresh",
            expires_at=HOUR,
            refresh_expires_at=DAY,
            rotated=True,
        ),
    ),
    "verified ID token: its claims": (
        answer(refresh_token="new-refresh", expires_in=3600),
        CLAIMS,
        None,
        outcome(
            access_token="new-access",
            refresh_token="new-refresh",
            expires_at=HOUR,
            rotated=True,
            claims=CLAIMS,
        ),
    ),
    "access token unusable: the refresh token only": (
        answer(access_token="", refresh_token="new-refresh", refused=MALFORMED),
        None,
        None,
        outcome(refresh_token="new-refresh", rotated=True, error=MALFORMED),
    ),
    "not Bearer: the refresh token only, with its lifetime": (
        answer(
            access_token="", refresh_token="new-refresh", refresh_expires_in=86400, refused=DPOP
        ),
        None,
        None,
        outcome(refresh_token="new-refresh", refresh_expires_at=DAY, rotated=True, error=DPOP),
    ),
    "ID token of someone else: the new refresh token kept, blocked": (
        answer(refresh_token="new-refresh", expires_in=3600),
        MISMATCH,
        None,
        outcome(refresh_token="new-refresh", rotated=True, error=MISMATCH),
    ),
    "ID token of someone else, nothing rotated: a refusal of the one sent": (
        answer(expires_in=3600),
        MISMATCH,
        None,
        outcome(error=MISMATCH),
    ),
    "ID token of someone else, the same refresh token: a refusal of the one sent": (
        answer(refresh_token="sent", expires_in=3600),
        MISMATCH,
        None,
        outcome(error=MISMATCH),
    ),
}


@pytest.mark.parametrize(("given", "verdict", "previous", "expected"), CASES.values(), ids=CASES)
def test_interpret(
    given: client.TokenResponse, verdict: Any, previous: float | None, expected: answers.Outcome
) -> None:
    got = answers.interpret(
        given, "sent", id_token=verdict, now=NOW, previous_lifetime=previous, provider="p"
    )
    assert got == expected
    # A refresh token the provider issued is never dropped.
    if given.refresh_token and given.refresh_token != "sent":
        assert got.refresh_token == given.refresh_token


def test_interpret_reads_a_jwt_access_tokens_expiry() -> None:
    import jwt

    exp = int((NOW + datetime.timedelta(minutes=10)).timestamp())
    access = jwt.encode({"exp": exp}, "k" * 32, algorithm="HS256")
    got = answers.interpret(
        answer(access_token=access),
        "sent",
        id_token=None,
        now=NOW,
        previous_lifetime=3600,
        provider="p",
    )
    expected = NOW + datetime.timedelta(minutes=10)
    # Under USE_TZ = False the site's datetimes are naive local times.
    assert got.expires_at == (expected if settings.USE_TZ else timezone.make_naive(expected))


def test_an_outcome_never_shows_a_token() -> None:
    shown = repr(CASES["verified ID token: its claims"][3])
    assert "new-access" not in shown and "new-refresh" not in shown and "a@example" not in shown


U, C = answers.UNCONFIRMED, answers.CONFIRMED

#: (code, replay, the stored last error) -> the code recorded.
JUDGED = [
    ("invalid_grant", False, "", "invalid_grant"),
    ("invalid_grant", True, "", "lost_rotation"),
    ("invalid_client", True, "", "invalid_client"),
    ("id_token_invalid", True, "", "id_token_invalid"),
    (U, False, "", U),
    (U, False, "server_error", U),
    (U, False, U, C),
    (U, True, "", U),
    (U, True, U, "lost_rotation"),
]


@pytest.mark.parametrize(("code", "replay", "previous", "expected"), JUDGED)
def test_judge_error(code: str, replay: bool, previous: str, expected: str) -> None:
    assert answers.judge_error(code, replay=replay, previous_error=previous) == expected
