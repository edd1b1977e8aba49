"""The refresh engine.

One refresh per expiry, however many threads, processes and hosts ask at once:

1. Threads of one process queue on a per-token lock, so only one of them
   touches the database at a time.
2. Across processes and hosts, the right to refresh is a *lease* on the
   token's :class:`~django_token_rotation.models.TokenState` row, claimed with a
   conditional ``UPDATE ... WHERE lease is free or expired``. Exactly one
   caller's ``UPDATE`` matches; the others wait, re-reading the token until
   the winner has stored the new one. A worker that dies mid-refresh blocks the
   token only until its lease expires.
3. No transaction is held open across the HTTP call. The new token is written
   with a compare-and-swap on the refresh token that was sent, so an older
   answer can never overwrite a newer token.
4. ``invalid_grant`` for a refresh token that another worker has already
   rotated is our own race, not a revoked grant: the stored token is adopted.

Nothing here imports the request layer: it takes tokens, never requests.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import jwt
from allauth.socialaccount.models import SocialToken
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db import DatabaseError, transaction
from django.db.models import Case, F, Q, QuerySet, Value, When
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_variables

from . import client, idtoken, providers, signals
from .conf import app_settings
from .exceptions import (
    ProviderNotRefreshable,
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    TokenRotationError,
    contained,
)
from .models import TokenState

logger = logging.getLogger("django_token_rotation")

#: Transient failures after which the provider has certainly not rotated anything.
NOT_PROCESSED = frozenset({"rate_limited", "temporarily_unavailable"})

# --------------------------------------------------------------------------
# Expiry
# --------------------------------------------------------------------------


def _now() -> datetime.datetime:
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


def needs_refresh(
    token: SocialToken,
    state: TokenState | None = None,
    *,
    now: datetime.datetime | None = None,
) -> bool:
    """Whether ``token`` expires within the leeway (or has expired).

    The leeway is ``TOKEN_ROTATION_LEEWAY``, but never more than half of the
    token's lifetime when that is known: a provider issuing 30-second tokens
    must not make every call a refresh.
    """
    expires = expiry(token, state)
    if expires is None:
        return False
    now = now or _now()
    return now >= expires - datetime.timedelta(seconds=leeway(token, state))


def leeway(token: SocialToken, state: TokenState | None = None) -> float:
    """Seconds before expiry at which ``token`` counts as due."""
    configured = app_settings.LEEWAY
    issued = state.last_refreshed_at if state is not None else None
    if issued is not None and token.expires_at is not None:
        lifetime: float = (token.expires_at - issued).total_seconds()
        if lifetime > 0:
            return min(configured, lifetime / 2)
    return configured


def is_expired(token: SocialToken, state: TokenState | None = None) -> bool:
    expires = expiry(token, state)
    return expires is not None and _now() >= expires


def fingerprint(secret: str) -> str:
    """A keyed, truncated hash of a refresh token: tells two apart, reveals nothing."""
    return salted_hmac("django_token_rotation.fingerprint", secret, algorithm="sha256").hexdigest()[
        :32
    ]


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
    return _newest_first(account__user=user, account__provider=provider).first()


def _newest_first(**lookups: Any) -> QuerySet[SocialToken]:
    """Tokens with what the engine reads, the one that expires last (the newest) first."""
    tokens: QuerySet[SocialToken] = (
        SocialToken.objects.filter(**lookups)
        .select_related("account", "app", "rotation_state")
        .order_by(F("expires_at").desc(nulls_last=True), "-pk")
    )
    return tokens


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
    if state is None and token.expires_at is None and app_settings.DEFAULT_LIFETIME:
        # The default lifetime counts from when we first saw the token.
        state = _load_state(token)
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
    tokens = _newest_first(account__user_id=user_id).exclude(token_secret="")
    seen: set[str] = set()
    checks = []
    for token in tokens:
        provider = _provider_key(token)
        if provider in seen or (providers is not None and provider not in providers):
            continue
        seen.add(provider)
        check = _check(token)
        if check is not None:
            checks.append(check)
    return checks


def _check(token: SocialToken) -> TokenCheck | None:
    provider = _provider_key(token)
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
    expires = expiry(token, state)
    next_check: datetime.datetime | None = None
    if error is None and expires is not None:
        next_check = expires - datetime.timedelta(seconds=leeway(token, state))
        if unavailable is not None:
            # Due already: look again when the back-off allows a new attempt.
            next_check = unavailable.retry_at or _now() + datetime.timedelta(
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
    """
    return _Refresh(token, force=force).run()


# --------------------------------------------------------------------------
# Single-flight
# --------------------------------------------------------------------------

_process_locks: weakref.WeakValueDictionary[Any, threading.Lock] = weakref.WeakValueDictionary()
_process_locks_guard = threading.Lock()


def _process_lock(token: SocialToken) -> threading.Lock:
    key = (token._state.db, token.pk)
    with _process_locks_guard:
        lock = _process_locks.get(key)
        if lock is None:
            lock = threading.Lock()
            _process_locks[key] = lock
        return lock


def state_of(token: SocialToken) -> TokenState | None:
    """The token's ``TokenState`` if it has one (no query when it was selected)."""
    try:
        return token.rotation_state  # type: ignore[no-any-return]
    except TokenState.DoesNotExist:
        return None


def _states(token: SocialToken) -> QuerySet[TokenState]:
    """``TokenState`` rows in the token's own database (multi-database sites)."""
    return TokenState.objects.using(token._state.db)


def _load_state(token: SocialToken) -> TokenState:
    state, _created = _states(token).get_or_create(token_id=token.pk)
    token.rotation_state = state
    return state


def _reload(token: SocialToken) -> TokenState:
    """Read the token's values and its state again, in one query."""
    fresh = (
        SocialToken.objects.using(token._state.db)
        .select_related("rotation_state")
        .only("token", "token_secret", "expires_at", "rotation_state")
        .get(pk=token.pk)
    )
    token.token, token.token_secret, token.expires_at = (
        fresh.token,
        fresh.token_secret,
        fresh.expires_at,
    )
    state = state_of(fresh)
    if state is None:
        return _load_state(token)
    token.rotation_state = state
    return state


def refused(token: SocialToken, state: TokenState | None) -> bool:
    """Whether the provider refused the refresh token that is stored now."""
    return (
        state is not None
        and state.needs_reauth
        and bool(token.token_secret)
        and state.failed_fingerprint == fingerprint(token.token_secret)
    )


def _reauth_from_state(token: SocialToken, state: TokenState) -> ReauthenticationRequired:
    return ReauthenticationRequired(
        "The provider refused this refresh token earlier; the user must sign in again.",
        code=state.last_error or "invalid_grant",
        provider=token.account.provider,
        token_id=token.pk,
    )


def _provider_key(token: SocialToken) -> str:
    return str(token.account.provider)


class _Refresh:
    """One caller's attempt to get ``token`` refreshed."""

    POLL_FIRST = 0.02
    POLL_MAX = 0.1

    def __init__(self, token: SocialToken, *, force: bool) -> None:
        self.token = token
        self.force = force
        self.replay = False
        self.lease_id = ""
        # Set when the lease was released along with the stored outcome.
        self.released = False
        # What the caller saw: a change of either means someone refreshed.
        self.seen_access = token.token

    # -- checks made before every claim, and after winning one -------------

    def _settled(self, state: TokenState) -> bool:
        """True when there is nothing (left) to do for this caller."""
        if self.token.token != self.seen_access:
            # Someone else refreshed since the caller looked: that is the
            # refresh this caller wanted.
            return self.force or not is_expired(self.token, state)
        return not self.force and not needs_refresh(self.token, state)

    def _check_blocked(self, state: TokenState) -> None:
        """Raise when a recorded failure says not to call the provider now."""
        token = self.token
        if refused(token, state):
            raise _reauth_from_state(token, state)
        if not self.force and state.next_retry_at is not None and _now() < state.next_retry_at:
            raise TokenRefreshUnavailable(
                f"A recent refresh failed ({state.last_error or 'unknown'}); "
                "the next attempt waits for its back-off.",
                code="backoff",
                provider=_provider_key(token),
                token_id=token.pk,
                retry_at=state.next_retry_at,
            )

    # -- the loop ------------------------------------------------------------

    @method_decorator(sensitive_variables())
    def run(self) -> SocialToken:
        token = self.token
        wait = app_settings.WAIT
        deadline = time.monotonic() + wait
        lock = _process_lock(token)
        if not lock.acquire(timeout=wait):
            raise self._gave_up()
        try:
            # The common case is a lone caller: claim at once, and read the token
            # and its state only after winning (_refresh_holding re-checks).
            if state_of(token) is not None:
                lease = self._claim()
                if lease is not None:
                    return self._refresh_holding(lease)
            poll = self.POLL_FIRST
            while True:
                state = _reload(token)
                if self._settled(state):
                    return token
                self._check_blocked(state)
                lease = self._claim()
                if lease is not None:
                    return self._refresh_holding(lease)
                if time.monotonic() + poll > deadline:
                    raise self._gave_up()
                time.sleep(poll)
                poll = min(poll * 1.3, self.POLL_MAX)
        finally:
            lock.release()

    def _gave_up(self) -> TokenRefreshUnavailable:
        return TokenRefreshUnavailable(
            f"Another worker is still refreshing this token after {app_settings.WAIT} s.",
            code="refresh_in_progress",
            provider=_provider_key(self.token),
            token_id=self.token.pk,
        )

    def _claim(self) -> str | None:
        lease_id = uuid.uuid4().hex
        now = _now()
        claimed = (
            _states(self.token)
            .filter(pk=self.token.pk)
            .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=now))
            .update(
                lease_id=lease_id,
                lease_expires_at=now + datetime.timedelta(seconds=app_settings.LEASE),
            )
        )
        return lease_id if claimed else None

    def _release(self, lease_id: str) -> None:
        if self.released:
            return
        _states(self.token).filter(pk=self.token.pk, lease_id=lease_id).update(
            lease_id="", lease_expires_at=None
        )

    @method_decorator(sensitive_variables())
    def _refresh_holding(self, lease_id: str) -> SocialToken:
        token = self.token
        self.lease_id = lease_id
        try:
            # Re-read after winning: another worker may have finished between
            # our last look and our claim.
            state = _reload(token)
            if self._settled(state):
                return token
            self._check_blocked(state)
            sent = token.token_secret
            if not sent:
                raise ReauthenticationRequired(
                    "The token has no refresh token; the user must sign in again.",
                    code="no_refresh_token",
                    provider=_provider_key(token),
                    token_id=token.pk,
                )
            endpoint = providers.resolve(token)
            client.require_secure(endpoint.url, provider=endpoint.provider)
            sent_fingerprint = fingerprint(sent)
            # An earlier attempt with this very refresh token never stored its
            # outcome (see TokenState.inflight_fingerprint).
            self.replay = state.inflight_fingerprint == sent_fingerprint
            _states(token).filter(pk=token.pk).update(
                inflight_fingerprint=sent_fingerprint, inflight_since=_now()
            )
            started = time.monotonic()
            try:
                answer = client.refresh_token_grant(endpoint, sent)
            except ReauthenticationRequired as exc:
                return self._refused_by_provider(exc, sent, elapsed=time.monotonic() - started)
            except TokenRefreshUnavailable as exc:
                self._record_transient(exc, elapsed=time.monotonic() - started)
                raise
            claims = self._checked_id_token(endpoint, answer)
            if isinstance(claims, ReauthenticationRequired):
                return self._refused_by_provider(claims, sent, elapsed=time.monotonic() - started)
            self._store(answer, sent, elapsed=time.monotonic() - started, claims=claims)
            return token
        except ProviderNotRefreshable as exc:
            _log_left_alone(exc)
            raise
        except TokenRotationError as exc:
            _stamp(exc, token)
            raise
        finally:
            self._release(lease_id)

    @method_decorator(sensitive_variables())
    def _checked_id_token(
        self, endpoint: client.TokenEndpoint, answer: client.TokenResponse
    ) -> dict[str, Any] | ReauthenticationRequired | None:
        """The claims of a refreshed OpenID Connect ID token (OIDC Core 12.2), or
        the rejection; ``None`` when there is none to check."""
        if not (answer.id_token and endpoint.jwks_uri and endpoint.issuer):
            return None
        try:
            return idtoken.validate(self.token, endpoint, answer.id_token)
        except idtoken.IdTokenRejected as exc:
            return exc
        except TokenRefreshUnavailable as exc:
            # The tokens came from the token endpoint itself over TLS: keep
            # them (the old refresh token may already be spent); only the
            # stored claims are not updated.
            logger.warning(
                "The ID token refreshed for token %s of provider %s was not checked (%s); "
                "the account's claims are left as they were.",
                self.token.pk,
                endpoint.provider,
                exc.code,
            )
            return None

    # -- outcomes ------------------------------------------------------------

    @method_decorator(sensitive_variables())
    def _store(
        self,
        answer: client.TokenResponse,
        sent: str,
        *,
        elapsed: float,
        claims: dict[str, Any] | None = None,
    ) -> None:
        token = self.token
        now = _now()
        new_secret = answer.refresh_token or sent
        expires_at = _expires_at(answer, now)
        refresh_expires_at = (
            now + datetime.timedelta(seconds=answer.refresh_expires_in)
            if answer.refresh_expires_in
            else None
        )
        rotated = answer.refresh_token is not None and answer.refresh_token != sent
        try:
            with transaction.atomic(using=token._state.db):
                # Compare-and-swap on the refresh token we sent: if another
                # worker stored a newer token meanwhile, ours is stale.
                written = (
                    SocialToken.objects.using(token._state.db)
                    .filter(pk=token.pk, token_secret=sent)
                    .update(
                        token=answer.access_token, token_secret=new_secret, expires_at=expires_at
                    )
                )
                if written:
                    outcome: dict[str, Any] = {
                        "last_refreshed_at": now,
                        "last_attempt_at": now,
                        "refresh_expires_at": refresh_expires_at,
                        "consecutive_failures": 0,
                        "last_error": "",
                        "next_retry_at": None,
                        "needs_reauth": False,
                        "failed_fingerprint": "",
                        "inflight_fingerprint": "",
                        "inflight_since": None,
                    }
                    ours = Q(lease_id=self.lease_id)
                    _states(token).filter(pk=token.pk).update(
                        **outcome,
                        refresh_count=F("refresh_count") + 1,
                        # The lease goes in the same statement (if it is still ours).
                        lease_id=Case(When(ours, then=Value("")), default=F("lease_id")),
                        lease_expires_at=Case(
                            When(ours, then=Value(None)), default=F("lease_expires_at")
                        ),
                    )
                    self.released = True
                    if claims is not None:
                        _store_claims(token, claims)
                    _send_on_commit(
                        signals.token_refreshed,
                        token=token,
                        provider=_provider_key(token),
                        rotated=rotated,
                        duration=elapsed,
                    )
        except DatabaseError:
            logger.error(
                "Could not store the refreshed token %s of provider %s (database error); "
                "the provider's answer is lost.",
                token.pk,
                _provider_key(token),
                exc_info=False,
            )
            raise TokenRefreshUnavailable(
                "The refreshed token could not be stored.",
                code="database_error",
                provider=_provider_key(token),
                token_id=token.pk,
            ) from None
        if written:
            # What was just written, without reading it back.
            token.token, token.token_secret, token.expires_at = (
                answer.access_token,
                new_secret,
                expires_at,
            )
            state = state_of(token)
            if state is not None:
                for name, value in outcome.items():
                    setattr(state, name, value)
                state.refresh_count += 1
                state.lease_id, state.lease_expires_at = "", None
        else:
            _reload(token)
        if written:
            logger.info(
                "Refreshed token %s of provider %s in %.0f ms (%s).",
                token.pk,
                _provider_key(token),
                elapsed * 1000,
                "refresh token rotated" if rotated else "refresh token kept",
            )
        else:
            logger.warning(
                "Token %s of provider %s was replaced while our refresh was in flight; "
                "keeping the stored one.",
                token.pk,
                _provider_key(token),
            )

    @method_decorator(sensitive_variables())
    def _refused_by_provider(
        self, exc: ReauthenticationRequired, sent: str, *, elapsed: float
    ) -> SocialToken:
        token = self.token
        state = _reload(token)
        if token.token_secret != sent:
            # Someone else rotated the token after we read it: the provider
            # refused a refresh token that is no longer ours to use.
            logger.info(
                "Provider %s refused an already-rotated refresh token of token %s; "
                "adopting the stored token.",
                _provider_key(token),
                token.pk,
            )
            return token
        if exc.code == "invalid_grant" and self.replay:
            exc = ReauthenticationRequired(
                "The refresh token had been sent before by an attempt whose answer was never "
                "stored (a worker died or a database write failed); the provider rotated it "
                "and the new one is lost: the user must sign in again.",
                code="lost_rotation",
                provider=_provider_key(token),
                token_id=token.pk,
            )
            logger.error(
                "Lost rotation for token %s of provider %s: an earlier refresh reached the "
                "provider but its answer was never stored.",
                token.pk,
                _provider_key(token),
            )
        now = _now()
        _states(token).filter(pk=token.pk).update(
            needs_reauth=True,
            failed_fingerprint=fingerprint(sent),
            inflight_fingerprint="",
            inflight_since=None,
            last_error=exc.code,
            last_error_at=now,
            last_attempt_at=now,
            consecutive_failures=F("consecutive_failures") + 1,
            next_retry_at=None,
        )
        state.refresh_from_db()
        logger.warning(
            "Provider %s refused the refresh of token %s (%s): the user must sign in again.",
            _provider_key(token),
            token.pk,
            exc.code,
        )
        _send_on_commit(
            signals.token_refresh_failed,
            token=token,
            provider=_provider_key(token),
            code=exc.code,
            permanent=True,
            retry_at=None,
            duration=elapsed,
        )
        raise exc

    def _record_transient(self, exc: TokenRefreshUnavailable, *, elapsed: float) -> None:
        token = self.token
        state = _load_state(token)
        failures = state.consecutive_failures + 1
        now = _now()
        backoff = min(
            app_settings.RETRY_BACKOFF * 2 ** min(failures - 1, 30),
            app_settings.RETRY_BACKOFF_MAX,
        )
        retry_at = now + datetime.timedelta(seconds=backoff)
        if exc.retry_at is not None:
            retry_at = max(retry_at, exc.retry_at)
        exc.retry_at = retry_at
        # The provider said it did not act on the request: no rotation to lose.
        not_processed = {"inflight_fingerprint": "", "inflight_since": None}
        _states(token).filter(pk=token.pk).update(
            **(not_processed if exc.code in NOT_PROCESSED else {}),
            consecutive_failures=failures,
            last_error=exc.code,
            last_error_at=now,
            last_attempt_at=now,
            next_retry_at=retry_at,
        )
        logger.warning(
            "Refresh of token %s of provider %s failed (%s, attempt %d); next attempt after %s.",
            token.pk,
            _provider_key(token),
            exc.code,
            failures,
            retry_at.isoformat(timespec="seconds"),
        )
        _send_on_commit(
            signals.token_refresh_failed,
            token=token,
            provider=_provider_key(token),
            code=exc.code,
            permanent=False,
            retry_at=retry_at,
            duration=elapsed,
        )


def _store_claims(token: SocialToken, claims: dict[str, Any]) -> None:
    """Keep the account's ID token claims current, where allauth keeps them."""
    account = token.account
    extra = account.extra_data if isinstance(account.extra_data, dict) else {}
    if extra and "id_token" not in extra:
        return  # allauth < 65.11 layout: the claims are mixed with userinfo
    extra = {**extra, "id_token": claims}
    type(account).objects.using(token._state.db).filter(pk=account.pk).update(extra_data=extra)
    account.extra_data = extra


def _expires_at(answer: client.TokenResponse, now: datetime.datetime) -> datetime.datetime | None:
    if answer.expires_in is not None:
        return now + datetime.timedelta(seconds=answer.expires_in)
    derived = jwt_expiry(answer.access_token)
    if derived is not None:
        return derived
    lifetime = app_settings.DEFAULT_LIFETIME
    if lifetime:
        return now + datetime.timedelta(seconds=lifetime)
    return None


def _stamp(exc: TokenRotationError, token: SocialToken) -> None:
    if exc.token_id is None:
        exc.token_id = token.pk
    if exc.provider is None:
        exc.provider = _provider_key(token)


_left_alone: set[str] = set()


def _log_left_alone(exc: ProviderNotRefreshable) -> None:
    key = f"{exc.provider}:{exc.code}"
    if key in _left_alone:
        return
    _left_alone.add(key)
    logger.warning("Leaving tokens of provider %s alone: %s", exc.provider, exc.message)


def _send_on_commit(signal: Any, **kwargs: Any) -> None:
    token: SocialToken = kwargs["token"]

    def send() -> None:
        for receiver, result in signal.send_robust(sender=SocialToken, **kwargs):
            if isinstance(result, Exception):
                logger.error(
                    "Receiver %r of a token rotation signal raised %s.",
                    receiver,
                    type(result).__name__,
                )

    transaction.on_commit(send, using=token._state.db)


__all__ = [
    "TokenCheck",
    "access_token_for",
    "check_user_tokens",
    "expiry",
    "find_token",
    "get_access_token",
    "jwt_expiry",
    "needs_refresh",
    "refresh",
]
