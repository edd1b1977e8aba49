"""The exceptions the engine raises, split into "sign in again" and "try later".

Every message is built from codes and ids only: no token value can reach an
exception message (and so a log line or an error page) through these classes.
"""

from __future__ import annotations

import datetime
import functools
import logging
import traceback
from collections.abc import Callable
from typing import ParamSpec, TypeVar


class TokenRotationError(Exception):
    """Base class: getting a valid access token failed.

    ``code`` is a short, stable string (``"invalid_grant"``, ``"timeout"`` ...)
    meant for logs, metrics and the admin. ``provider`` is the allauth provider
    id of the account, when known. Example::

        try:
            token = get_access_token(user, "google")
        except TokenRotationError as exc:
            logger.warning("No token for %s (%s)", exc.provider, exc.code)
            raise
    """

    #: Whether the user must sign in again (``True``) or a later call may work.
    permanent: bool = False
    default_code = "error"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        provider: str | None = None,
        token_id: int | None = None,
    ) -> None:
        self.code = code or self.default_code
        self.provider = provider
        self.token_id = token_id
        self.message = message or self.code
        super().__init__(self.message)

    def __str__(self) -> str:
        where = []
        if self.provider:
            where.append(f"provider={self.provider}")
        if self.token_id is not None:
            where.append(f"token_id={self.token_id}")
        suffix = f" ({', '.join(where)})" if where else ""
        return f"{self.message} [{self.code}]{suffix}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, provider={self.provider!r})"


class ReauthenticationRequired(TokenRotationError):
    """The user must sign in again: there is no usable token or the provider refused it.

    Its codes are the permanent ones of :data:`ERROR_CODES`. Example::

        try:
            token = get_access_token(request.user, "google")
        except ReauthenticationRequired:
            return redirect("socialaccount_connections")  # sign in again
    """

    permanent = True
    default_code = "reauthentication_required"


class ProviderNotRefreshable(ReauthenticationRequired):
    """The provider's tokens cannot be refreshed by this app (OAuth1, or a
    provider whose token exchange needs special code). Once such a token has
    expired the only way to a new one is to sign in again. Example::

        except ProviderNotRefreshable as exc:  # before ReauthenticationRequired
            messages.info(request, f"Please sign in with {exc.provider} again.")
    """

    default_code = "unsupported_provider"


class TokenRefreshUnavailable(TokenRotationError):
    """The provider is temporarily unavailable; try again later.

    Its codes are the transient ones of :data:`ERROR_CODES`. ``retry_at`` says
    when the next attempt will be made, when known. Example::

        except TokenRefreshUnavailable as exc:
            response = render(request, "try_later.html", status=503)
            if exc.retry_at:
                response["Retry-After"] = http_date(exc.retry_at.timestamp())
            return response
    """

    permanent = False
    default_code = "unavailable"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        provider: str | None = None,
        token_id: int | None = None,
        retry_at: datetime.datetime | None = None,
    ) -> None:
        super().__init__(message, code=code, provider=provider, token_id=token_id)
        self.retry_at = retry_at


class ImproperlyConfiguredProvider(ProviderNotRefreshable):
    """The provider or its app cannot be resolved through allauth."""

    default_code = "provider_not_configured"


#: THE table of error codes (``exc.code``, the admin's "last error", log lines):
#: code -> (permanent, what it means). A permanent code is raised as
#: :class:`ReauthenticationRequired` (the user must sign in again), a transient one
#: as :class:`TokenRefreshUnavailable`. docs/errors.rst lists the same codes
#: (tests/test_docs.py keeps the two, and the codes the package raises, in step).
ERROR_CODES: dict[str, tuple[bool, str]] = {
    # -- sign in again ------------------------------------------------------
    "no_token": (True, "the user has no stored token for this provider"),
    "no_refresh_token": (True, "the stored token has no refresh token"),
    "invalid_grant": (True, "the provider refused the refresh token (revoked, expired, reused)"),
    "invalid_client": (True, "the provider refused the client id or secret"),
    "unauthorized_client": (True, "the client may not use the refresh-token grant"),
    "invalid_scope": (True, "the provider refused the requested scope"),
    "unsupported_grant_type": (True, "the provider does not support refresh tokens"),
    "invalid_request": (True, "the provider called the request malformed"),
    "lost_rotation": (
        True,
        "the provider rotated the refresh token but its answer was never stored",
    ),
    "id_token_invalid": (
        True,
        "a refreshed OpenID Connect ID token, validly signed, names another issuer, audience or "
        "subject; its new refresh token is stored, blocked",
    ),
    "refusal_confirmed": (
        True,
        "the token endpoint refused the same refresh token twice with HTTP 4xx and no OAuth "
        "error (glewlwyd's empty HTTP 400)",
    ),
    "unsupported_provider": (True, "this provider's tokens cannot be refreshed by this app"),
    "provider_not_configured": (True, "the provider or its app cannot be resolved via allauth"),
    "insecure_endpoint": (True, "the provider's endpoint is not HTTPS (nor loopback)"),
    "unsupported_token_type": (
        True,
        "the provider issues tokens that are not Bearer tokens (DPoP, MAC); a new refresh "
        "token in the answer is stored",
    ),
    "reauthentication_required": (True, "the user must sign in again (no detail known)"),
    # -- try later ------------------------------------------------------------
    "timeout": (False, "the provider did not answer in time"),
    "connection_error": (False, "the provider could not be reached"),
    "server_error": (False, "the provider answered HTTP 5xx or server_error"),
    "rate_limited": (False, "HTTP 429 or slow_down: the provider asks to wait"),
    "temporarily_unavailable": (False, "the provider said temporarily_unavailable"),
    "malformed_response": (False, "the answer was not a usable token response"),
    "unexpected_response": (False, "a redirect or another unexpected answer"),
    "discovery_failed": (False, "the OpenID Connect discovery document could not be read"),
    "jwks_unavailable": (
        False,
        "the provider's signing keys (JWKS) could not be fetched, or none fits a refreshed ID "
        "token even after fetching them again; the tokens are stored, not the ID token's claims",
    ),
    "id_token_unverified": (
        False,
        "a refreshed ID token could not be verified (signature, times beyond "
        "TOKEN_ROTATION_ID_TOKEN_LEEWAY, claims missing); the tokens are stored, not its claims",
    ),
    "refusal_unconfirmed": (
        False,
        "the token endpoint answered HTTP 4xx (not 408, 429) without an OAuth error we know; "
        "the next attempt confirms it",
    ),
    "refresh_in_progress": (False, "another worker is refreshing and did not finish in time"),
    "backoff": (False, "an earlier attempt failed; waiting before the next one"),
    "in_transaction": (
        False,
        "the refresh could not be made safely inside the caller's open transaction",
    ),
    "database_locked": (
        False,
        "another transaction held the database's write lock (SQLite) for longer than "
        "TOKEN_ROTATION_WAIT; nothing sent",
    ),
    "lease_expired": (False, "the lease ran out before the refresh token was sent; nothing sent"),
    "database_error": (False, "the database failed while the refresh was stored"),
    "internal_error": (False, "an unexpected error (a bug); logged by type and place"),
    "unavailable": (False, "the provider is unavailable (no detail known)"),
}


P = ParamSpec("P")
R = TypeVar("R")


def contained(func: Callable[P, R]) -> Callable[P, R]:
    """For the public entry points: no traceback that leaves them reaches a frame
    that held a token.

    Django's DEBUG error page, and error trackers that record local variables,
    show every frame of a traceback. Our exceptions are re-raised with a
    traceback that starts here; anything unexpected (a bug, the database
    gone) is logged by type and place only and raised as
    ``TokenRefreshUnavailable("internal_error")``, without its chain.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except TokenRotationError as exc:
            raise exc.with_traceback(None) from None
        except Exception as exc:
            frames = traceback.extract_tb(exc.__traceback__)
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            logging.getLogger("django_token_rotation").error(
                "Unexpected %s in %s at %s; reported as internal_error.",
                type(exc).__name__,
                func.__qualname__,
                where,
            )
            raise TokenRefreshUnavailable(
                "An unexpected error occurred while handling a token.", code="internal_error"
            ) from None

    return wrapper
