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
from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
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
        value = datetime.datetime.fromtimestamp(exp, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return None
    # Under USE_TZ = False Django's datetimes (SocialToken.expires_at, timezone.now())
    # are naive local times: compare like with like.
    return value if settings.USE_TZ else timezone.make_naive(value)


#: A lifetime inferred from a stored expiry shorter than this is not trusted
#: (an account saved long after its sign-in would make it look short).
MIN_INFERRED_LIFETIME = 60
#: A lifetime longer than this is junk, not a lifetime (as in :mod:`.client`).
MAX_LIFETIME = 366 * 24 * 3600


def issued_at(token: SocialToken, state: TokenState | None = None) -> datetime.datetime | None:
    """When the stored access token was issued, as well as it can be known.

    The later of our last refresh and the last sign-in (allauth saves the
    account, whose ``last_login`` it stamps, and then its token at every
    sign-in); else when we first saw the token.
    """
    known = []
    if state is not None and state.last_refreshed_at is not None:
        known.append(state.last_refreshed_at)
    try:
        signed_in = token.account.last_login
    except ObjectDoesNotExist:  # an unsaved token without its account
        signed_in = None
    if signed_in is not None:
        known.append(signed_in)
    if known:
        return max(known)
    return state.created_at if state is not None else None


def assumed_lifetime(provider: str) -> float | None:
    """Seconds an access token of ``provider`` is assumed to live when nothing
    says: the provider's documented default (its :mod:`.providers.registry`
    entry), else ``TOKEN_ROTATION_DEFAULT_LIFETIME``."""
    from .providers.registry import entry

    return entry(provider).lifetime or app_settings.DEFAULT_LIFETIME


def lifetime(token: SocialToken, state: TokenState | None = None) -> float | None:
    """The stored access token's lifetime in seconds, when its expiry is known
    (``expires_at`` or its JWT ``exp``) and so is when it was issued: what a
    refresh answer without ``expires_in`` carries forward."""
    known = token.expires_at or jwt_expiry(token.token)
    issued = issued_at(token, state)
    if known is None or issued is None:
        return None
    seconds = (known - issued).total_seconds()
    if not MIN_INFERRED_LIFETIME <= seconds <= MAX_LIFETIME:
        return None
    return seconds


def expiry(token: SocialToken, state: TokenState | None = None) -> datetime.datetime | None:
    """When ``token``'s access token expires, as well as it can be known.

    In order: ``expires_at`` (set from ``expires_in``), the access token's JWT
    ``exp``, the assumed lifetime (:func:`assumed_lifetime`: the provider's
    default, else ``TOKEN_ROTATION_DEFAULT_LIFETIME``) counted from when it was
    issued (:func:`issued_at`), else ``None``: never proactively. Tokens that
    allauth stored at sign-in (no ``TokenState`` yet) count from the sign-in.
    """
    stored: datetime.datetime | None = token.expires_at
    if stored is not None:
        return stored
    derived = jwt_expiry(token.token)
    if derived is not None:
        return derived
    assumed = assumed_lifetime(str(token.account.provider))
    base = issued_at(token, state) if assumed else None
    if assumed and base is not None:
        return base + datetime.timedelta(seconds=assumed)
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
    expires_in: float | None,
    access_token: str,
    now: datetime.datetime,
    *,
    previous: float | None = None,
    provider: str = "",
) -> datetime.datetime | None:
    """When a freshly issued access token expires: ``expires_in``, else its JWT
    ``exp``, else the ``previous`` token's lifetime carried forward (see
    :func:`lifetime`), else :func:`assumed_lifetime` from ``now``; ``None``
    when nothing is known."""
    if expires_in is not None:
        return now + datetime.timedelta(seconds=expires_in)
    derived = jwt_expiry(access_token)
    if derived is not None:
        return derived
    seconds = previous or assumed_lifetime(provider)
    if seconds:
        return now + datetime.timedelta(seconds=seconds)
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
