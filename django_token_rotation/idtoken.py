"""Validation of ID tokens returned by a refresh (OpenID Connect Core 1.0, 12.2).

A refreshed ID token must be signed by the provider (its JWKS), and carry the
same ``iss``, the client in ``aud`` and the same ``sub`` as at sign-in. A
mismatch means the grant no longer belongs to the account it is stored on: a
security event, and a permanent failure.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import jwt
from allauth.socialaccount.models import SocialToken

from . import client
from .conf import app_settings
from .exceptions import ReauthenticationRequired, TokenRefreshUnavailable

security_log = logging.getLogger("django_token_rotation.security")

#: Asymmetric algorithms only: an ID token "signed" with the client secret
#: (HS256) or not at all ("none") is not accepted on refresh.
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]

_jwks_clients: dict[str, jwt.PyJWKClient] = {}
_jwks_lock = threading.Lock()


def _jwks_client(uri: str) -> jwt.PyJWKClient:
    with _jwks_lock:
        jwks = _jwks_clients.get(uri)
        if jwks is None:
            jwks = jwt.PyJWKClient(
                uri,
                cache_keys=True,
                lifespan=app_settings.DISCOVERY_CACHE_SECONDS,
                timeout=app_settings.TIMEOUT,
            )
            _jwks_clients[uri] = jwks
        return jwks


class IdTokenRejected(ReauthenticationRequired):
    """A refreshed ID token failed validation: the user must sign in again."""

    default_code = "id_token_invalid"


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

    Raises :class:`IdTokenRejected` (permanent) when it does not, and
    :class:`TokenRefreshUnavailable` when the provider's keys cannot be fetched.
    """
    assert endpoint.jwks_uri is not None and endpoint.issuer is not None
    provider = endpoint.provider
    client.require_secure(endpoint.jwks_uri, provider=provider)
    left = client.remaining()
    if left is not None and left <= 0:
        raise TokenRefreshUnavailable(
            "No time left of this refresh's deadline to fetch the signing keys (JWKS).",
            code="jwks_unavailable",
            provider=provider,
            token_id=token.pk,
        )
    jwks = _jwks_client(endpoint.jwks_uri)
    # The fetch (when the keys are not cached) stays within the refresh's deadline.
    jwks.timeout = app_settings.TIMEOUT if left is None else min(left, app_settings.TIMEOUT)
    try:
        key = jwks.get_signing_key_from_jwt(id_token)
    except jwt.PyJWKClientConnectionError:
        raise TokenRefreshUnavailable(
            "The provider's signing keys (JWKS) could not be fetched.",
            code="jwks_unavailable",
            provider=provider,
            token_id=token.pk,
        ) from None
    except (jwt.PyJWKClientError, jwt.PyJWTError) as exc:
        raise _rejected(token, provider, f"no usable signing key ({type(exc).__name__})") from None
    try:
        claims: dict[str, Any] = jwt.decode(
            id_token,
            key.key,
            algorithms=ALGORITHMS,
            audience=endpoint.client_id,
            issuer=endpoint.issuer,
            leeway=60,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except jwt.PyJWTError as exc:
        raise _rejected(token, provider, type(exc).__name__) from None
    subject = expected_subject(token)
    if subject is not None and claims.get("sub") != subject:
        raise _rejected(token, provider, "'sub' differs from the signed-in account")
    return claims


def _rejected(token: SocialToken, provider: str, why: str) -> IdTokenRejected:
    security_log.warning(
        "Security: the ID token refreshed for token %s of provider %s was rejected: %s. "
        "The refreshed tokens are discarded; the user must sign in again.",
        token.pk,
        provider,
        why,
    )
    return IdTokenRejected(
        f"The refreshed ID token was rejected: {why}.",
        provider=provider,
        token_id=token.pk,
    )
