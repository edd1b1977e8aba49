"""Validation of ID tokens returned by a refresh (OpenID Connect Core 1.0, 12.2).

A refreshed ID token must be signed by the provider (its JWKS), and carry the
same ``iss``, the client in ``aud`` and the same ``sub`` as at sign-in. A
*validated* mismatch (a good signature on another ``iss``, ``aud`` or ``sub``)
means the grant no longer belongs to the account it is stored on: a security
event, and a permanent failure (:class:`IdTokenRejected`).

Anything else that keeps an ID token from being verified (the keys cannot be
fetched, an unknown ``kid`` even after fetching them again, a bad signature,
times outside ``TOKEN_ROTATION_ID_TOKEN_LEEWAY``, missing claims) is
:class:`IdTokenUnverified`: the tokens came from the token endpoint itself over
TLS and are kept, only the account's stored claims are not updated.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import jwt
from allauth.socialaccount.models import SocialToken

from . import client, wire
from .conf import app_settings
from .exceptions import ReauthenticationRequired, TokenRefreshUnavailable

security_log = logging.getLogger("django_token_rotation.security")

#: Asymmetric algorithms only: an ID token "signed" with the client secret
#: (HS256) or not at all ("none") is not accepted on refresh.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]

#: Each JWKS URI's keys, when they were fetched and when an unknown ``kid`` last
#: made us fetch them again (``time.monotonic()``).
_key_sets: dict[str, tuple[jwt.PyJWKSet, float, float]] = {}
_key_sets_lock = threading.Lock()
#: An unknown ``kid`` fetches the keys again (the provider rotated its keys), at
#: most once per this many seconds per URI: forged ``kid`` values cannot turn
#: refreshes into a stream of requests to the provider.
REFETCH_INTERVAL = 60.0


def _key_set(uri: str, provider: str, *, refetch: bool = False) -> jwt.PyJWKSet:
    """The provider's signing keys, cached ``DISCOVERY_CACHE_SECONDS``.

    Fetched with :func:`client.fetch_json`: the refresh's deadline bounds the
    whole answer (a JWKS endpoint that drips its body cannot hold a request), and
    the body-size cap applies.
    """
    now = time.monotonic()
    refetched = -REFETCH_INTERVAL
    with _key_sets_lock:
        cached = _key_sets.get(uri)
    if cached is not None:
        keys, fetched, refetched = cached
        fresh = now - fetched < app_settings.DISCOVERY_CACHE_SECONDS
        if fresh and (not refetch or now - refetched < REFETCH_INTERVAL):
            return keys
    if refetch:
        refetched = now
    try:
        document = client.fetch_json(
            uri, provider=provider, what="the signing keys (JWKS)", code="jwks_unavailable"
        )
        keys = jwt.PyJWKSet.from_dict(document)
    except TokenRefreshUnavailable as exc:
        raise TokenRefreshUnavailable(
            f"The provider's signing keys (JWKS) could not be fetched ({exc.code}).",
            code="jwks_unavailable",
            provider=provider,
        ) from None
    except jwt.PyJWKSetError:
        raise TokenRefreshUnavailable(
            "The provider's signing keys (JWKS) hold no usable key.",
            code="jwks_unavailable",
            provider=provider,
        ) from None
    with _key_sets_lock:
        _key_sets[uri] = (keys, now, refetched)
    return keys


def _signing_key(uri: str, provider: str, id_token: str) -> jwt.PyJWK:
    """The key of ``id_token``'s ``kid`` (the only key when it names none).

    Raises :class:`IdTokenUnverified` (``jwks_unavailable``) when no key fits,
    even after fetching the keys again (at most once a minute).
    """
    kid = jwt.get_unverified_header(id_token).get("kid")
    keys = _key_set(uri, provider)
    for attempt in range(2):
        usable = [key for key in keys.keys if key.public_key_use in (None, "sig")]
        if kid is None and len(usable) == 1:
            return usable[0]
        for key in usable:
            if kid is not None and key.key_id == kid:
                return key
        if attempt == 0:
            keys = _key_set(uri, provider, refetch=True)
    raise IdTokenUnverified(
        "No published signing key fits the refreshed ID token (an unknown 'kid').",
        code="jwks_unavailable",
        provider=provider,
    )


class IdTokenRejected(ReauthenticationRequired):
    """A refreshed ID token, validly signed, names another issuer, audience or
    subject: the user must sign in again."""

    default_code = "id_token_invalid"


class IdTokenUnverified(TokenRefreshUnavailable):
    """A refreshed ID token could not be verified; its claims are not used, the
    tokens of the answer are kept."""

    default_code = "id_token_unverified"


def expected_subject(token: SocialToken) -> str | None:
    """The ``sub`` the account was signed in with, when it is known."""
    account = token.account
    extra = account.extra_data if isinstance(account.extra_data, dict) else {}
    stored = extra.get("id_token")
    subject = stored.get("sub") if isinstance(stored, dict) else None
    if isinstance(subject, str):
        return subject
    app = token.app
    uid_field = app.settings.get("uid_field", "sub") if app is not None else "sub"
    return str(account.uid) if uid_field == "sub" else None


def validate(token: SocialToken, endpoint: client.TokenEndpoint, id_token: str) -> dict[str, Any]:
    """The claims of ``id_token`` once it passed every check of OIDC Core 12.2.

    Raises :class:`IdTokenRejected` (permanent) for a validated mismatch of
    ``iss``, ``aud`` or ``sub``, and :class:`IdTokenUnverified` (keep the
    tokens, not the claims) when it cannot be verified.
    """
    assert endpoint.jwks_uri is not None and endpoint.issuer is not None
    provider = endpoint.provider
    client.require_secure(endpoint.jwks_uri, provider=provider)
    left = wire.remaining()
    if left is not None and left <= 0:
        raise IdTokenUnverified(
            "No time left of this refresh's deadline to fetch the signing keys (JWKS).",
            code="jwks_unavailable",
            provider=provider,
            token_id=token.pk,
        )
    try:
        with wire.deadline(app_settings.TIMEOUT):  # within the refresh's, if one runs
            key = _signing_key(endpoint.jwks_uri, provider, id_token)
        # The signature first: only a signed token can be a validated mismatch.
        claims: dict[str, Any] = jwt.decode(
            id_token,
            key.key,
            algorithms=ALGORITHMS,
            options={
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "verify_aud": False,
                "verify_iss": False,
            },
        )
    except IdTokenUnverified:
        raise _unverified(token, provider, "an unknown 'kid'", "jwks_unavailable") from None
    except TokenRefreshUnavailable as exc:  # the keys could not be fetched
        raise IdTokenUnverified(
            exc.message, code=exc.code, provider=provider, token_id=token.pk
        ) from None
    except (jwt.PyJWKClientError, jwt.PyJWTError) as exc:
        raise _unverified(token, provider, type(exc).__name__) from None
    mismatch = _mismatch(claims, endpoint, expected_subject(token))
    if mismatch:
        raise _rejected(token, provider, mismatch)
    try:
        jwt.decode(
            id_token,
            key.key,
            algorithms=ALGORITHMS,
            audience=endpoint.client_id,
            issuer=endpoint.issuer,
            leeway=app_settings.ID_TOKEN_LEEWAY,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except jwt.PyJWTError as exc:
        raise _unverified(token, provider, type(exc).__name__) from None
    return claims


def _mismatch(claims: dict[str, Any], endpoint: client.TokenEndpoint, subject: str | None) -> str:
    """What a validly signed token names differently from the sign-in ("" if nothing)."""
    if "iss" in claims and claims["iss"] != endpoint.issuer:
        return "'iss' differs from the provider's issuer"
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if "aud" in claims and endpoint.client_id not in audiences:
        return "'aud' does not name this client"
    if subject is not None and "sub" in claims and claims["sub"] != subject:
        return "'sub' differs from the signed-in account"
    return ""


def _rejected(token: SocialToken, provider: str, why: str) -> IdTokenRejected:
    security_log.warning(
        "Security: the ID token refreshed for token %s of provider %s was rejected: %s. "
        "Its new refresh token is kept for the record, blocked; the user must sign in again.",
        token.pk,
        provider,
        why,
    )
    return IdTokenRejected(
        f"The refreshed ID token was rejected: {why}.",
        provider=provider,
        token_id=token.pk,
    )


def _unverified(
    token: SocialToken, provider: str, why: str, code: str = "id_token_unverified"
) -> IdTokenUnverified:
    security_log.warning(
        "Security: the ID token refreshed for token %s of provider %s could not be "
        "verified: %s. The tokens are kept; the account's claims are not updated.",
        token.pk,
        provider,
        why,
    )
    return IdTokenUnverified(
        f"The refreshed ID token could not be verified: {why}.",
        code=code,
        provider=provider,
        token_id=token.pk,
    )
