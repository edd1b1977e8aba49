"""The engine: get a valid access token, refreshing it through the single-flight.

* :mod:`.expiry` says when a token is due (pure arithmetic);
* :mod:`.singleflight` makes sure one caller per expiry holds the lease and
  the others wait for its result;
* the lease holder (:func:`_refresh_holding`, here) re-checks, sends the
  refresh token (:mod:`.client`) and hands the answer to :mod:`.store`, which
  writes it with a compare-and-swap on the refresh token that was sent;
* every state change is a :class:`~django_token_rotation.models.TokenState`
  method.

``invalid_grant`` for a refresh token that another worker has already rotated
is our own race, not a revoked grant: the stored token is adopted. Nothing
here imports the request layer: it takes tokens, never requests.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from allauth.socialaccount.models import SocialToken
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db import DatabaseError
from django.views.decorators.debug import sensitive_variables

from . import client, idtoken, providers, store, transactions
from . import expiry as expiry_module
from .conf import app_settings
from .exceptions import (
    ImproperlyConfiguredProvider,
    ProviderNotRefreshable,
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    TokenRotationError,
    contained,
)
from .expiry import due_at, expiry, is_expired, jwt_expiry, leeway, needs_refresh
from .models import fingerprint, refresh_blocker, refused
from .singleflight import Flight
from .store import NOT_PROCESSED, state_of

logger = logging.getLogger("django_token_rotation")

# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


def find_token(user: AbstractBaseUser | AnonymousUser | Any, provider: str) -> SocialToken | None:
    """The user's stored token at ``provider`` (an allauth provider id).

    Settings-configured apps store tokens with ``app=NULL``, which the
    ``unique_together(app, account)`` constraint does not deduplicate: when
    there are several rows, the one that expires last (the newest) wins.
    """
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return store.newest_first(account__user=user, account__provider=provider).first()


@contained
def get_access_token(user: AbstractBaseUser | AnonymousUser | Any, provider: str) -> str:
    """A valid access token for ``user`` at ``provider``, refreshed first if due.

    Raises :class:`ReauthenticationRequired` when the user must sign in again,
    :class:`TokenRefreshUnavailable` when the provider is temporarily
    unavailable *and* the current access token has expired.
    """
    token = find_token(user, provider)
    if token is None:
        raise ReauthenticationRequired(
            f"No stored token for this user at provider {provider!r}.",
            code="no_token",
            provider=provider,
        )
    return access_token_for(token)


@contained
@sensitive_variables()
def access_token_for(token: SocialToken) -> str:
    """:func:`get_access_token` for a ``SocialToken`` already in hand."""
    state = store.state_of(token)
    if needs_refresh(token, state):
        try:
            refresh(token)
        except ReauthenticationRequired as exc:
            if not isinstance(exc, ProviderNotRefreshable) or is_expired(token):
                raise
        except TokenRefreshUnavailable:
            # A transient failure never costs the user a token that still works.
            if is_expired(token):
                raise
    return str(token.token)


@dataclass(frozen=True)
class TokenCheck:
    """The outcome of :func:`check_user_tokens` for one token. No token value."""

    provider: str
    token_id: int
    expires_at: datetime.datetime | None
    #: When this token must be looked at again (``None``: not until something changes).
    next_check: datetime.datetime | None
    #: Set when the user must sign in again at this provider.
    error: ReauthenticationRequired | None = None
    #: Set when a refresh failed for now; the current token may still be valid.
    unavailable: TokenRefreshUnavailable | None = None


@contained
def check_user_tokens(user_id: Any, providers: Collection[str] | None = None) -> list[TokenCheck]:
    """Refresh the user's due tokens; say when each must be looked at next.

    Covers every stored token with a refresh token (one per provider: the
    newest), or only those of ``providers``. Tokens of providers that cannot
    be refreshed are left out. This is the request layer's one entry point.
    """
    tokens = store.newest_first(account__user_id=user_id).exclude(token_secret="")
    seen: set[str] = set()
    checks = []
    for token in tokens:
        provider = store.provider_key(token)
        if provider in seen or (providers is not None and provider not in providers):
            continue
        seen.add(provider)
        check = _check(token)
        if check is not None:
            checks.append(check)
    return checks


def _check(token: SocialToken) -> TokenCheck | None:
    provider = store.provider_key(token)
    state = store.state_of(token)
    error = unavailable = None
    if needs_refresh(token, state):
        try:
            refresh(token)
        except ProviderNotRefreshable:
            return None
        except ReauthenticationRequired as exc:
            error = exc
        except TokenRefreshUnavailable as exc:
            unavailable = exc
        state = store.state_of(token)
    expires = expiry(token, state)
    next_check: datetime.datetime | None = None
    if error is None and expires is not None:
        next_check = due_at(token, state)
        if unavailable is not None:
            # Due already: look again when the back-off allows a new attempt.
            next_check = unavailable.retry_at or expiry_module.now() + datetime.timedelta(
                seconds=app_settings.RETRY_BACKOFF
            )
    return TokenCheck(
        provider=provider,
        token_id=token.pk,
        expires_at=expires,
        next_check=next_check,
        error=error,
        unavailable=unavailable,
    )


@contained
@sensitive_variables()
def refresh(token: SocialToken, force: bool = False) -> SocialToken:
    """Refresh ``token`` now if it is due (always, with ``force``); return it updated.

    Goes through the single-flight: if another thread, process or host is
    already refreshing this token, waits for it and returns its result.

    Inside the caller's transaction the refresh is committed on a connection
    of its own (see :mod:`.transactions`); where the database cannot do that
    (SQLite), it raises ``TokenRefreshUnavailable("in_transaction")`` instead
    of calling the provider.
    """
    if transactions.use_write_database(token):
        store.reload(token)  # read from a replica: decide on the written values
    alias = transactions.database(token)
    if transactions.in_callers_transaction(alias):
        if not transactions.can_write_beside(alias):
            raise TokenRefreshUnavailable(
                "The token cannot be refreshed inside a transaction on this database; "
                "refresh it before the transaction starts (the middleware does).",
                code="in_transaction",
                provider=store.provider_key(token),
                token_id=token.pk,
            )
        try:
            return transactions.outside(
                alias, lambda: Flight(token, force=force).run(_refresh_holding)
            )
        except DatabaseError as exc:
            if not transactions.is_lock_timeout(exc):
                raise
            # A row the refresh needs is locked by an open transaction (perhaps
            # the caller's own) for longer than TOKEN_ROTATION_WAIT.
            raise TokenRefreshUnavailable(
                "A row the refresh needs is locked by an open transaction.",
                code="in_transaction",
                provider=store.provider_key(token),
                token_id=token.pk,
            ) from None
    try:
        with transactions.bounded_busy_wait(alias, app_settings.WAIT):
            return Flight(token, force=force).run(_refresh_holding)
    except DatabaseError as exc:
        if not transactions.is_busy(exc):
            raise
        raise TokenRefreshUnavailable(
            "Another transaction held the database's write lock for longer than "
            "TOKEN_ROTATION_WAIT.",
            code="database_locked",
            provider=store.provider_key(token),
            token_id=token.pk,
        ) from None


#: Seconds after its refresh during which a token an API refuses is not refreshed
#: again: a refusal so soon is not about the token's age (a wrong audience or
#: scope, an API that refuses every token), and would cost a refresh per request.
REFUSED_SOON_AFTER_REFRESH = 30.0


@contained
@sensitive_variables()
def refresh_if_current(token: SocialToken, rejected_access: str) -> SocialToken:
    """An API refused ``rejected_access``: refresh ``token`` now, unless the stored
    access token is no longer that one (another caller refreshed meanwhile: the
    stored one is returned, refreshed first only if due).

    The fence of the authorized HTTP clients (:mod:`.http`): however many callers
    see the same 401 at once, one refresh. A recorded back-off or refusal is
    respected (unlike ``refresh(force=True)``), and a token refreshed less than
    :data:`REFUSED_SOON_AFTER_REFRESH` seconds ago is returned as it is.
    """
    state = store.reload(token)
    if token.token != rejected_access:
        access_token_for(token)
        return token
    Flight(token, force=False).check_blocked(state)
    refreshed_at = state.last_refreshed_at
    if refreshed_at is not None and expiry_module.now() - refreshed_at < datetime.timedelta(
        seconds=REFUSED_SOON_AFTER_REFRESH
    ):
        logger.warning(
            "An API refused token %s of provider %s within %d s of its refresh; "
            "not refreshing it again so soon.",
            token.pk,
            store.provider_key(token),
            REFUSED_SOON_AFTER_REFRESH,
        )
        return token
    return refresh(token, force=True)


# --------------------------------------------------------------------------
# What the lease holder does
# --------------------------------------------------------------------------


@sensitive_variables()
def _refresh_holding(flight: Flight) -> SocialToken:
    token = flight.token
    try:
        # Re-read after winning: another worker may have finished between
        # our last look and our claim (unless the claim checked that it did not).
        state = flight.read_as_claimed or store.reload(token)
        if flight.settled(state):
            return token
        flight.check_blocked(state)
        sent = token.token_secret
        # One deadline for every HTTP call of this refresh (discovery, token, JWKS).
        with client.deadline(app_settings.TIMEOUT):
            return _send_and_store(flight, state, sent)
    except ImproperlyConfiguredProvider as exc:
        # A configuration error: one warning, and a back-off recorded on the
        # token (its admin status), not a resolution on every request.
        _stamp(exc, token)
        _log_left_alone(exc)
        store.record_configuration_error(token, exc)
        raise
    except ProviderNotRefreshable as exc:
        _log_left_alone(exc)
        raise
    except TokenRotationError as exc:
        _stamp(exc, token)
        raise


@sensitive_variables()
def _send_and_store(flight: Flight, state: Any, sent: str) -> SocialToken:
    token = flight.token
    endpoint = providers.resolve(token)
    client.require_secure(endpoint.url, provider=endpoint.provider)
    alias = transactions.database(token)
    if transactions.on_helper() and not transactions.row_is_free(SocialToken, alias, token.pk):
        # An open transaction (perhaps the caller's own) holds the token's row:
        # the answer could not be stored, so the refresh token is not sent.
        raise TokenRefreshUnavailable(
            "The token's row is locked by an open transaction; not refreshing now.",
            code="in_transaction",
            provider=store.provider_key(token),
            token_id=token.pk,
        )
    sent_fingerprint = fingerprint(sent)
    # An earlier attempt with this very refresh token never stored its
    # outcome (see TokenState.inflight_fingerprint).
    replay = state.inflight_fingerprint == sent_fingerprint
    # The lease is renewed now, by the database's clock, for longer than what is
    # left of the deadline: no other worker can send this refresh token while
    # ours may still be in flight. A lease that already ran out is not ours.
    # (A claim as read marked it already, a moment ago, for as long.)
    if flight.read_as_claimed is None and not store.states(token).mark_in_flight(
        token.pk, sent_fingerprint, lease_id=flight.lease_id, lease_seconds=app_settings.LEASE
    ):
        raise TokenRefreshUnavailable(
            "This worker's lease ran out before the refresh was sent; not sending it.",
            code="lease_expired",
            provider=store.provider_key(token),
            token_id=token.pk,
        )
    transactions.before_send(alias)
    started = time.monotonic()
    flight.sent = True
    try:
        answer = client.refresh_token_grant(endpoint, sent)
    except TokenRotationError as exc:
        return _refused(token, exc, sent, replay, started)
    verdict = _checked_id_token(token, endpoint, answer)
    if store.store_answer(
        token,
        answer,
        sent,
        lease_id=flight.lease_id,
        elapsed=time.monotonic() - started,
        id_token=verdict,
        replay=replay,
    ):
        flight.released = True
    return token


def _refused(
    token: SocialToken,
    exc: TokenRotationError,
    sent: str,
    replay: bool,
    started: float,
) -> SocialToken:
    """Record the provider's error answer and raise it, or adopt the token that
    another worker stored meanwhile."""
    error = store.record_error(token, exc, sent, replay=replay, elapsed=time.monotonic() - started)
    if error is None:
        return token
    raise error


@sensitive_variables()
def _checked_id_token(
    token: SocialToken, endpoint: client.TokenEndpoint, answer: client.TokenResponse
) -> dict[str, Any] | ReauthenticationRequired | None:
    """The claims of a refreshed OpenID Connect ID token (OIDC Core 12.2), or
    the rejection; ``None`` when there is none to check."""
    if not (answer.id_token and endpoint.jwks_uri and endpoint.issuer):
        return None
    try:
        return idtoken.validate(token, endpoint, answer.id_token)
    except idtoken.IdTokenRejected as exc:
        return exc
    except TokenRefreshUnavailable as exc:
        # The tokens came from the token endpoint itself over TLS: keep
        # them (the old refresh token may already be spent); only the
        # stored claims are not updated.
        logger.warning(
            "The ID token refreshed for token %s of provider %s was not checked (%s); "
            "the account's claims are left as they were.",
            token.pk,
            endpoint.provider,
            exc.code,
        )
        return None


def _stamp(exc: TokenRotationError, token: SocialToken) -> None:
    if exc.token_id is None:
        exc.token_id = token.pk
    if exc.provider is None:
        exc.provider = store.provider_key(token)


_left_alone: set[str] = set()


def _log_left_alone(exc: ProviderNotRefreshable) -> None:
    key = f"{exc.provider}:{exc.code}"
    if key in _left_alone:
        return
    _left_alone.add(key)
    logger.warning("Leaving tokens of provider %s alone: %s", exc.provider, exc.message)


__all__ = [
    "NOT_PROCESSED",
    "TokenCheck",
    "access_token_for",
    "check_user_tokens",
    "due_at",
    "expiry",
    "find_token",
    "fingerprint",
    "get_access_token",
    "is_expired",
    "jwt_expiry",
    "leeway",
    "needs_refresh",
    "refresh",
    "refresh_blocker",
    "refresh_if_current",
    "refused",
    "state_of",
]
