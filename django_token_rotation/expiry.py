"""When a token expires and when it is due: pure arithmetic, no I/O.

Everything here works on values already in hand (a ``SocialToken``, its
``TokenState``, a token response); nothing reads or writes the database or the
network.
"""

from __future__ import annotations

import datetime
import random
from typing import TYPE_CHECKING

import jwt
from django.utils import timezone

from .conf import app_settings

if TYPE_CHECKING:
    from allauth.socialaccount.models import SocialToken

    from .models import TokenState


def now() -> datetime.datetime:
    return timezone.now()


def jwt_expiry(access_token: str) -> datetime.datetime | None:
    """The ``exp`` claim of a JWT access token, unverified: only a hint."""
    if access_token.count(".") != 2:
        return None
    try:
        claims = jwt.decode(access_token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    try:
        return datetime.datetime.fromtimestamp(exp, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def expiry(token: SocialToken, state: TokenState | None = None) -> datetime.datetime | None:
    """When ``token``'s access token expires, as well as it can be known.

    In order: ``expires_at`` (set from ``expires_in``), the access token's JWT
    ``exp``, ``TOKEN_ROTATION_DEFAULT_LIFETIME`` counted from the last refresh
    (or from when we first saw the token), else ``None``: never proactively.
    """
    stored: datetime.datetime | None = token.expires_at
    if stored is not None:
        return stored
    derived = jwt_expiry(token.token)
    if derived is not None:
        return derived
    lifetime = app_settings.DEFAULT_LIFETIME
    if lifetime and state is not None:
        base = state.last_refreshed_at or state.created_at
        return base + datetime.timedelta(seconds=lifetime)
    return None


def leeway(token: SocialToken, state: TokenState | None = None) -> float:
    """Seconds before expiry at which ``token`` counts as due.

    ``TOKEN_ROTATION_LEEWAY``, but never more than half of the token's lifetime
    when that is known: a provider issuing 30-second tokens must not make every
    call a refresh.
    """
    configured = app_settings.LEEWAY
    issued = state.last_refreshed_at if state is not None else None
    if issued is not None and token.expires_at is not None:
        lifetime: float = (token.expires_at - issued).total_seconds()
        if lifetime > 0:
            return min(configured, lifetime / 2)
    return configured


def due_at(token: SocialToken, state: TokenState | None = None) -> datetime.datetime | None:
    """When ``token`` becomes due for a refresh (``None``: never proactively)."""
    expires = expiry(token, state)
    if expires is None:
        return None
    return expires - datetime.timedelta(seconds=leeway(token, state))


def needs_refresh(
    token: SocialToken,
    state: TokenState | None = None,
    *,
    now: datetime.datetime | None = None,
) -> bool:
    """Whether ``token`` expires within the leeway (or has expired)."""
    due = due_at(token, state)
    return due is not None and (now or timezone.now()) >= due


def is_expired(
    token: SocialToken, state: TokenState | None = None, *, now: datetime.datetime | None = None
) -> bool:
    expires = expiry(token, state)
    return expires is not None and (now or timezone.now()) >= expires


def expires_at(
    expires_in: float | None, access_token: str, now: datetime.datetime
) -> datetime.datetime | None:
    """When a freshly issued access token expires: ``expires_in``, else its JWT
    ``exp``, else ``TOKEN_ROTATION_DEFAULT_LIFETIME`` from ``now``."""
    if expires_in is not None:
        return now + datetime.timedelta(seconds=expires_in)
    derived = jwt_expiry(access_token)
    if derived is not None:
        return derived
    lifetime = app_settings.DEFAULT_LIFETIME
    if lifetime:
        return now + datetime.timedelta(seconds=lifetime)
    return None


#: First step of the quick retries once the access token has expired.
EXPIRED_BACKOFF_FIRST = 0.5


def backoff(failures: int, *, expired: bool = False) -> float:
    """Seconds to wait after ``failures`` consecutive transient failures.

    While the access token still works: ``TOKEN_ROTATION_RETRY_BACKOFF``
    doubling up to ``TOKEN_ROTATION_RETRY_BACKOFF_MAX`` (gentle on the
    provider; nobody is stuck). Once it has expired every API call of the user
    fails: short steps (0.5, 1, 2 ... s up to ``TOKEN_ROTATION_EXPIRED_BACKOFF_MAX``),
    jittered between half and all of the step so that hosts do not retry in step.
    """
    exponent = min(max(failures, 1) - 1, 30)
    if expired:
        step = min(EXPIRED_BACKOFF_FIRST * 2.0**exponent, app_settings.EXPIRED_BACKOFF_MAX)
        return float(step * random.uniform(0.5, 1.0))
    return float(min(app_settings.RETRY_BACKOFF * 2**exponent, app_settings.RETRY_BACKOFF_MAX))


def retry_after_cap(*, expired: bool) -> float:
    """The longest ``Retry-After`` honoured: short once the token has expired."""
    return app_settings.RETRY_AFTER_MAX if expired else app_settings.RETRY_BACKOFF_MAX
