"""What a token endpoint's answer leads to, before anything is written: pure.

:func:`interpret` turns a successful answer (and the verdict on its ID token)
into an :class:`Outcome`: what to write, and the error to record. A refresh
token the provider issued is never dropped. :func:`judge_error` says what an
error answer is recorded as. Nothing here reads or writes the database or the
network; :mod:`.store` writes the outcome.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from django.views.decorators.debug import sensitive_variables

from . import client, expiry
from .exceptions import ReauthenticationRequired, TokenRotationError

#: The transient code of a refusal that says nothing (HTTP 4xx without an OAuth
#: error we know); the same answer again for the same refresh token is
#: :data:`CONFIRMED`, permanent.
UNCONFIRMED = "refusal_unconfirmed"
CONFIRMED = "refusal_confirmed"

#: An ID token verdict: its claims, the validated mismatch, or ``None`` (no ID
#: token, or one that could not be verified: its claims are not used).
Verdict = dict[str, Any] | ReauthenticationRequired | None


@dataclass(frozen=True)
class Outcome:
    """What one successful answer leads to, before anything is written.

    ``access_token`` ``None``: the stored access token is kept and only
    ``refresh_token`` is written (the answer was refused for its access token,
    or its ID token names someone else). ``refresh_token`` ``None``: nothing is
    written, the refresh token that was sent is refused with ``error``.
    """

    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: datetime.datetime | None = None
    refresh_expires_at: datetime.datetime | None = None
    rotated: bool = False
    claims: dict[str, Any] | None = field(default=None, repr=False)
    #: Recorded and raised once the rest is written.
    error: TokenRotationError | None = None


@sensitive_variables()
def interpret(
    answer: client.TokenResponse,
    sent: str,
    *,
    id_token: Verdict,
    now: datetime.datetime,
    previous_lifetime: float | None,
    provider: str,
) -> Outcome:
    """What to write for a successful answer to the refresh of ``sent``: pure.

    A refresh token the provider issued is never dropped: an answer refused for
    its access token, or whose ID token names another account, still has its new
    refresh token written (blocked, with the error, in the second case).
    """
    refresh_expires_at = (
        now + datetime.timedelta(seconds=answer.refresh_expires_in)
        if answer.refresh_expires_in
        else None
    )
    rotated = answer.refresh_token is not None and answer.refresh_token != sent
    if answer.refused is not None or isinstance(id_token, ReauthenticationRequired):
        error = answer.refused or id_token
        assert isinstance(error, TokenRotationError)
        if answer.refresh_token is None or (not rotated and answer.refused is None):
            return Outcome(error=error)  # nothing new: the refresh token sent is refused
        return Outcome(
            refresh_token=answer.refresh_token,
            refresh_expires_at=refresh_expires_at,
            rotated=rotated,
            error=error,
        )
    # An answer without expires_in (and an opaque access token) keeps the
    # lifetime of the token it replaces, else the provider's or the default one.
    expires_at = expiry.expires_at(
        answer.expires_in,
        answer.access_token,
        now,
        previous=previous_lifetime,
        provider=provider,
    )
    return Outcome(
        access_token=answer.access_token,
        refresh_token=answer.refresh_token or sent,
        expires_at=expires_at,
        refresh_expires_at=refresh_expires_at,
        rotated=rotated,
        claims=id_token if isinstance(id_token, dict) else None,
    )


def judge_error(code: str, *, replay: bool, previous_error: str) -> str:
    """The code an error answer to the refresh of the stored token is recorded
    as: pure. A refusal that says nothing is confirmed by the next one (at most
    one confirming retry); a refusal of a refresh token whose earlier answer was
    lost is a lost rotation."""
    if code == UNCONFIRMED:
        if previous_error != UNCONFIRMED:
            return UNCONFIRMED
        code = CONFIRMED
    if replay and code in ("invalid_grant", CONFIRMED):
        return "lost_rotation"
    return code
