"""The engine: get a valid access token, refreshing it when it is due.

One refresh is the life of one :class:`Refresh`, read top to bottom below:

1. **claim** the token's lease (a compare-and-swap on its state, as the caller
   read it), or find that another worker refreshed it meanwhile, or wait for
   the one holding it (:mod:`.singleflight`: a per-process lock, and the
   waiting);
2. **send** the refresh token (:mod:`.client`, under one deadline); the last
   step before the request is written renews the lease and marks the refresh
   token in flight, only while the lease is ours by the database's clock;
3. **store** the answer (:mod:`.store`, a compare-and-swap on the refresh
   token sent), or record the failure;
4. **release** the lease (unless storing the answer released it) and wake
   whoever waits.

Each step returns (or raises) its outcome and the next one decides from it.
``invalid_grant`` for a refresh token that another worker has already rotated
is our own race, not a revoked grant: the stored token is adopted. Nothing
here imports the request layer: it takes tokens, never requests.
"""

from __future__ import annotations

import datetime
import logging
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from allauth.socialaccount.models import SocialToken
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db import DatabaseError
from django.views.decorators.debug import sensitive_variables

from . import client, expiry, idtoken, providers, singleflight, store, transactions, wakeup, wire
from .conf import app_settings
from .exceptions import (
    ImproperlyConfiguredProvider,
    ProviderNotRefreshable,
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    TokenRotationError,
    contained,
)
from .expiry import due_at, is_expired, needs_refresh
from .models import (
    BACKOFF,
    NO_REFRESH_TOKEN,
    SIGN_IN_REQUIRED,
    TokenState,
    fingerprint,
    refresh_blocker,
)
from .store import provider_key, state_of

logger = logging.getLogger("django_token_rotation")

#: Seconds a helper looks again at a token row another transaction holds before
#: it concludes that the holder is its own caller's transaction.
ROW_LOCK_PATIENCE = 0.5


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
    state = state_of(token)
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
        provider = provider_key(token)
        if provider in seen or (providers is not None and provider not in providers):
            continue
        seen.add(provider)
        check = _check(token)
        if check is not None:
            checks.append(check)
    return checks


def _check(token: SocialToken) -> TokenCheck | None:
    provider = provider_key(token)
    state = state_of(token)
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
        state = state_of(token)
    expires = expiry.expiry(token, state)
    next_check: datetime.datetime | None = None
    if error is None and expires is not None:
        next_check = due_at(token, state)
        if unavailable is not None:
            # Due already: look again when the back-off allows a new attempt.
            next_check = unavailable.retry_at or expiry.now() + datetime.timedelta(
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

    If another thread, process or host is already refreshing this token, waits
    for it and returns its result.

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
            raise _in_transaction(
                token,
                "The token cannot be refreshed inside a transaction on this database; "
                "refresh it before the transaction starts (the middleware does).",
            )
        try:
            return transactions.outside(alias, lambda: Refresh(token, force=force).run())
        except DatabaseError as exc:
            if not transactions.is_lock_timeout(exc):
                raise
            # A row the refresh needs is locked by an open transaction (perhaps
            # the caller's own) for longer than TOKEN_ROTATION_WAIT.
            raise _in_transaction(
                token, "A row the refresh needs is locked by an open transaction."
            ) from None
    try:
        with transactions.bounded_busy_wait(alias, app_settings.WAIT):
            return Refresh(token, force=force).run()
    except DatabaseError as exc:
        if not transactions.is_busy(exc):
            raise
        raise TokenRefreshUnavailable(
            "Another transaction held the database's write lock for longer than "
            "TOKEN_ROTATION_WAIT.",
            code="database_locked",
            provider=provider_key(token),
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
    Refresh(token, force=False).check_blocked(state)
    refreshed_at = state.last_refreshed_at
    if refreshed_at is not None and expiry.now() - refreshed_at < datetime.timedelta(
        seconds=REFUSED_SOON_AFTER_REFRESH
    ):
        logger.warning(
            "An API refused token %s of provider %s within %d s of its refresh; "
            "not refreshing it again so soon.",
            token.pk,
            provider_key(token),
            REFUSED_SOON_AFTER_REFRESH,
        )
        return token
    return refresh(token, force=True)


def _in_transaction(token: SocialToken, message: str) -> TokenRefreshUnavailable:
    return TokenRefreshUnavailable(
        message, code="in_transaction", provider=provider_key(token), token_id=token.pk
    )


# --------------------------------------------------------------------------
# One refresh: claim, send, store, release
# --------------------------------------------------------------------------


class Refresh:
    """One caller's refresh of one token."""

    def __init__(self, token: SocialToken, *, force: bool) -> None:
        self.token = token
        self.force = force
        #: What the caller saw: a change means someone refreshed meanwhile.
        self.seen_access = token.token
        #: Set by a successful claim.
        self.lease_id = ""
        #: The state as it was when the lease was claimed (the claim checked it is current).
        self.state: TokenState | None = None

    @sensitive_variables()
    def run(self) -> SocialToken:
        token = self.token
        # While the caller's token still works nobody waits for another
        # worker's refresh: the current token is good enough.
        patient = self.force or is_expired(token, state_of(token))
        wait = app_settings.WAIT if patient else 0.0
        ends = time.monotonic() + wait
        with singleflight.process_turn(token, wait) as first:
            if not self.claim(first, ends):
                return token
            released = False
            try:
                released = self.send_and_store()
            finally:
                if not released:
                    self.release()
                # This process's waiters at once; other processes poll
                # (docs/performance.rst: LISTEN/NOTIFY did not earn its connection).
                wakeup.notify(token)
        return token

    # -- 1. claim ------------------------------------------------------------

    def claim(self, first: bool, ends: float) -> bool:
        """Win the lease (``True``), or find the refresh done by someone else
        (``False``). Raises when the provider must not be called now, or when
        the worker holding the lease does not finish by ``ends``."""
        token = self.token
        state = state_of(token)
        # A caller first in its process claims on what it read: the claim
        # checks that the token and its state are still as read. Otherwise
        # (or when that fails) it re-reads, and waits while another holds it.
        if first and state is not None and self.claimable(state) and self.take(state):
            return True
        poll = singleflight.POLL_FIRST
        while True:
            # Taken before the read: a wake-up landing between the read and
            # the wait is not lost.
            since = wakeup.version(token)
            state = store.reload(token)
            if not self.claimable(state):
                return False
            if self.take(state):
                return True
            left = ends - time.monotonic()
            if left <= 0:
                raise singleflight.gave_up(token)
            singleflight.wait_for_change(token, since, min(poll, left))
            poll = min(poll * 1.3, singleflight.POLL_MAX)

    def claimable(self, state: TokenState) -> bool:
        """Whether this caller still wants a refresh, given ``state`` as read:
        ``False`` when someone refreshed meanwhile; raises when the recorded
        state says not to call the provider now."""
        token = self.token
        if token.token != self.seen_access:
            # Someone else refreshed since the caller looked: that is the
            # refresh this caller wanted.
            if self.force or not is_expired(token, state):
                return False
        elif not self.force and not needs_refresh(token, state):
            return False
        self.check_blocked(state)
        return True

    def check_blocked(self, state: TokenState) -> None:
        """Raise when the recorded state says not to call the provider now."""
        token = self.token
        why = refresh_blocker(token, state, force=self.force)
        if why == SIGN_IN_REQUIRED:
            raise ReauthenticationRequired(
                "The provider refused this refresh token earlier; the user must sign in again.",
                code=state.last_error or "invalid_grant",
                provider=provider_key(token),
                token_id=token.pk,
            )
        if why == NO_REFRESH_TOKEN:
            raise ReauthenticationRequired(
                "The token has no refresh token; the user must sign in again.",
                code="no_refresh_token",
                provider=provider_key(token),
                token_id=token.pk,
            )
        if why == BACKOFF:
            raise TokenRefreshUnavailable(
                f"A recent refresh failed ({state.last_error or 'unknown'}); "
                "the next attempt waits for its back-off.",
                code="backoff",
                provider=provider_key(token),
                token_id=token.pk,
                retry_at=state.next_retry_at,
            )

    def take(self, state: TokenState) -> bool:
        """The lease, if it is free and the token and ``state`` are still as read."""
        token = self.token
        lease_id = uuid.uuid4().hex
        states = store.states(token)
        try:
            if transactions.on_helper():
                claimed = self._take_beside_the_caller(state, lease_id)
            else:
                claimed = states.claim_as_read(
                    token.pk,
                    lease_id,
                    app_settings.LEASE,
                    seen=state,
                    access=token.token,
                    refresh=token.token_secret,
                )
        except DatabaseError as exc:
            # Someone else's open transaction holds the row: not ours to wait for.
            # Or, under REPEATABLE READ, another worker changed it since our snapshot
            # (40001): the same as losing the claim, the loop reads again.
            if transactions.is_lock_timeout(exc) or transactions.is_serialization_failure(exc):
                return False
            raise
        if claimed:
            self.lease_id, self.state = lease_id, state
        return claimed

    def _take_beside_the_caller(self, state: TokenState, lease_id: str) -> bool:
        """:meth:`take` on the helper of a caller's transaction, which may hold
        the token's row: the claim as read would wait to read that row (MariaDB),
        so the lease is claimed on its own and the token re-read after. A row the
        caller holds could not take the answer: then nothing is sent."""
        token = self.token
        states = store.states(token)
        if not states.claim_lease(token.pk, lease_id, app_settings.LEASE):
            return False
        seen = (token.token, token.token_secret, _version(state))
        try:
            now = store.reload(token)
            if (token.token, token.token_secret, _version(now)) != seen:
                states.release_lease(token.pk, lease_id)
                return False
            # The caller's own transaction holds the row until it ends; another
            # worker's write holds it for milliseconds (on MariaDB the INSERT of a
            # TokenState locks its token's row in share mode): look again briefly.
            alias = transactions.database(token)
            patience = time.monotonic() + min(app_settings.WAIT, ROW_LOCK_PATIENCE)
            while not transactions.row_is_free(SocialToken, alias, token.pk):
                if time.monotonic() >= patience:
                    raise _in_transaction(
                        token,
                        "The token's row is locked by an open transaction; not refreshing now.",
                    )
                time.sleep(0.02)
        except BaseException:
            states.release_lease(token.pk, lease_id)
            raise
        return True

    # -- 2. send and 3. store -------------------------------------------------

    @sensitive_variables()
    def send_and_store(self) -> bool:
        """Send the refresh token and store the outcome. Returns whether the
        lease was released along with the stored answer."""
        token = self.token
        try:
            # One deadline for every HTTP call of this refresh (discovery, token, JWKS).
            with wire.deadline(app_settings.TIMEOUT):
                endpoint = providers.resolve(token)
                client.require_secure(endpoint.url, provider=endpoint.provider)
                return self._send_and_store(endpoint)
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
    def _send_and_store(self, endpoint: client.TokenEndpoint) -> bool:
        token, state = self.token, self.state
        assert state is not None
        sent = token.token_secret
        sent_fingerprint = fingerprint(sent)
        # An earlier attempt with this very refresh token never stored its
        # outcome (see TokenState.inflight_fingerprint).
        replay = state.inflight_fingerprint == sent_fingerprint
        started = time.monotonic()
        try:
            answer = client.refresh_token_grant(
                endpoint, sent, before_send=self.last_check(sent_fingerprint)
            )
        except TokenRotationError as exc:
            if exc.code == "lease_expired":
                raise  # nothing was sent: nothing to record
            return self.failed(exc, sent, replay, started)
        return store.store_answer(
            token,
            answer,
            sent,
            lease_id=self.lease_id,
            elapsed=time.monotonic() - started,
            id_token=_checked_id_token(token, endpoint, answer),
            replay=replay,
        )

    def last_check(self, sent_fingerprint: str) -> wire.BeforeSend:
        """What runs when the connection is up, immediately before the refresh
        token is written: one conditional ``UPDATE`` that marks it in flight and
        renews the lease for ``TOKEN_ROTATION_LEASE`` (longer than what is left
        of the deadline, check E006), only if the lease is still ours and
        unexpired by the database's clock. Otherwise another worker may be
        sending this refresh token already: ours is not sent."""
        token = self.token

        def check(left: float) -> None:
            if not store.states(token).mark_in_flight(
                token.pk,
                sent_fingerprint,
                lease_id=self.lease_id,
                lease_seconds=max(app_settings.LEASE, left + singleflight.LEASE_MARGIN),
            ):
                raise TokenRefreshUnavailable(
                    "This worker's lease ran out before the refresh was sent; not sending it.",
                    code="lease_expired",
                    provider=provider_key(token),
                    token_id=token.pk,
                )
            transactions.before_send(transactions.database(token))

        return check

    def failed(self, exc: TokenRotationError, sent: str, replay: bool, started: float) -> bool:
        """Record the provider's error answer (or the failure to get one) and
        raise it, or adopt the token that another worker stored meanwhile."""
        error = store.record_error(
            self.token, exc, sent, replay=replay, elapsed=time.monotonic() - started
        )
        if error is not None:
            raise error
        return False

    # -- 4. release ----------------------------------------------------------

    def release(self) -> None:
        token = self.token
        try:
            store.states(token).release_lease(token.pk, self.lease_id)
        except DatabaseError as exc:
            # The lease runs out on its own; the caller's outcome stands.
            logger.error(
                "Could not release the lease on token %s (%s); it expires in %s s.",
                token.pk,
                type(exc).__name__,
                app_settings.LEASE,
            )


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


def _version(state: TokenState) -> tuple[int, int, str]:
    """What every attempt changes (see ``TokenStateQuerySet.claim_as_read``)."""
    return (state.refresh_count, state.consecutive_failures, state.inflight_fingerprint)


def _stamp(exc: TokenRotationError, token: SocialToken) -> None:
    if exc.token_id is None:
        exc.token_id = token.pk
    if exc.provider is None:
        exc.provider = provider_key(token)


_left_alone: set[str] = set()


def _log_left_alone(exc: ProviderNotRefreshable) -> None:
    key = f"{exc.provider}:{exc.code}"
    if key in _left_alone:
        return
    _left_alone.add(key)
    logger.warning("Leaving tokens of provider %s alone: %s", exc.provider, exc.message)
