"""The stored token and its state: what the engine reads, and the outcome it writes.

An answer is first interpreted (:mod:`.answers`: pure functions of the answer
and what was sent), then its outcome written here: the new
token with a compare-and-swap on the refresh token that was sent, so an older
answer can never overwrite a newer token, and a refresh token the provider
issued is never dropped. The state changes themselves are
:class:`~django_token_rotation.models.TokenState` queryset methods; this module
decides which one an outcome calls, logs it and sends the signal.
"""

from __future__ import annotations

import datetime
import logging
from contextlib import nullcontext
from typing import Any

from allauth.socialaccount.models import SocialToken
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    IntegrityError,
    connections,
    models,
    transaction,
)
from django.db.models import F, QuerySet
from django.views.decorators.debug import sensitive_variables

from . import client, expiry, signals, transactions
from .answers import CONFIRMED, UNCONFIRMED, Outcome, Verdict, interpret, judge_error
from .exceptions import ReauthenticationRequired, TokenRefreshUnavailable, TokenRotationError
from .models import RefreshEvent, TokenState, TokenStateQuerySet, fingerprint
from .statements import Param, Statement

logger = logging.getLogger("django_token_rotation")

#: Transient failures after which the provider has certainly not rotated anything.
NOT_PROCESSED = frozenset({"rate_limited", "temporarily_unavailable"})


# -- reading ------------------------------------------------------------------


def provider_key(token: SocialToken) -> str:
    return str(token.account.provider)


def newest_first(**lookups: Any) -> QuerySet[SocialToken]:
    """Tokens with what the engine reads, the one that expires last (the newest) first."""
    tokens: QuerySet[SocialToken] = (
        SocialToken.objects.using(transactions.database())
        .filter(**lookups)
        .select_related("account", "app", "rotation_state")
        .order_by(F("expires_at").desc(nulls_last=True), "-pk")
    )
    return tokens


def state_of(token: SocialToken) -> TokenState | None:
    """The token's ``TokenState`` if it has one (no query when it was selected;
    else read from the token's write database, never a replica)."""
    relation = SocialToken._meta.get_field("rotation_state")
    if not relation.is_cached(token):
        state = states(token).filter(pk=token.pk).first()
        relation.set_cached_value(token, state)
    try:
        return token.rotation_state  # type: ignore[no-any-return]
    except TokenState.DoesNotExist:
        return None


def states(token: SocialToken) -> TokenStateQuerySet:
    """``TokenState`` rows in the token's own database (multi-database sites)."""
    return TokenState.objects.using(transactions.database(token))


def gone(token: SocialToken) -> ReauthenticationRequired:
    """The error for a token deleted meanwhile (the user disconnected the account,
    an admin removed it): there is nothing left to refresh."""
    return ReauthenticationRequired(
        "The token was deleted while it was being refreshed.",
        code="no_token",
        provider=provider_key(token),
        token_id=token.pk,
    )


def load_state(token: SocialToken) -> TokenState:
    try:
        state = states(token).for_token(token.pk)
    except IntegrityError:
        # The token row is gone: its state cannot be created.
        raise gone(token) from None
    token.rotation_state = state
    return state


def reload(token: SocialToken) -> TokenState:
    """Read the token's values and its state again, in one query."""
    try:
        fresh = (
            SocialToken.objects.using(token._state.db)
            .select_related("rotation_state")
            .only("token", "token_secret", "expires_at", "rotation_state")
            .get(pk=token.pk)
        )
    except SocialToken.DoesNotExist:
        raise gone(token) from None
    token.token, token.token_secret, token.expires_at = (
        fresh.token,
        fresh.token_secret,
        fresh.expires_at,
    )
    state = state_of(fresh)
    if state is None:
        return load_state(token)
    token.rotation_state = state
    return state


# -- writing the outcome --------------------------------------------------------


@sensitive_variables()
def store_answer(
    token: SocialToken,
    answer: client.TokenResponse,
    sent: str,
    *,
    lease_id: str,
    elapsed: float,
    id_token: Verdict = None,
    replay: bool = False,
) -> bool:
    """Interpret a successful answer and write its outcome. Returns whether the
    new tokens were written with their bookkeeping (which released the lease);
    raises the outcome's error once what must be kept is written. When another
    worker stored a newer token meanwhile, ``token`` is reloaded and nothing is
    written."""
    outcome = interpret(
        answer,
        sent,
        id_token=id_token,
        now=expiry.now(),
        previous_lifetime=expiry.lifetime(token, state_of(token)),
        provider=provider_key(token),
    )
    if outcome.refresh_token is None:
        assert outcome.error is not None
        error = record_error(token, outcome.error, sent, replay=replay, elapsed=elapsed)
        if error is not None:
            raise error
        return False
    if outcome.access_token is None:
        assert outcome.error is not None
        error = _write_refresh_token(token, outcome, sent, elapsed=elapsed)
        if error is not None:
            raise error
        return False
    return _write_tokens(token, outcome, sent, lease_id=lease_id, elapsed=elapsed)


#: The new tokens, written only where the refresh token sent is still stored.
_WRITE_TOKENS = Statement(
    lambda rows: (
        rows.filter(
            pk=Param("token_id", models.BigIntegerField()),
            token_secret=Param("sent", models.TextField()),
        ),
        {
            "token": Param("token", models.TextField()),
            "token_secret": Param("token_secret", models.TextField()),
            "expires_at": Param("expires_at", models.DateTimeField()),
        },
    )
)


@sensitive_variables()
def _write_tokens(
    token: SocialToken, outcome: Outcome, sent: str, *, lease_id: str, elapsed: float
) -> bool:
    """Write the new tokens with a compare-and-swap on the refresh token sent."""
    assert outcome.access_token is not None and outcome.refresh_token is not None
    values = {
        "token": outcome.access_token,
        "token_secret": outcome.refresh_token,
        "expires_at": outcome.expires_at,
    }
    now = expiry.now()
    written = 0
    # Inside a transaction here only in a test case's wrapper (see
    # transactions.py): a savepoint keeps that usable after an error.
    in_block = connections[token._state.db or DEFAULT_DB_ALIAS].in_atomic_block
    try:
        # Compare-and-swap on the refresh token we sent: if another worker
        # stored a newer token meanwhile, ours is stale. Its own statement, not
        # one transaction with the bookkeeping below: the token is what must
        # not be lost, and the lease (released only by the bookkeeping) keeps
        # everyone else away until both are written.
        with transaction.atomic(using=token._state.db) if in_block else nullcontext():
            written = _WRITE_TOKENS.run(
                SocialToken.objects.using(token._state.db), token_id=token.pk, sent=sent, **values
            )
            if written:
                recorded = states(token).record_success(
                    token.pk,
                    lease_id=lease_id,
                    at=now,
                    refresh_expires_at=outcome.refresh_expires_at,
                )
                if outcome.claims is not None:
                    store_claims(token, outcome.claims)
                send_on_commit(
                    signals.token_refreshed,
                    token=token,
                    provider=provider_key(token),
                    outcome=RefreshEvent.Outcome.REFRESHED,
                    code=None,
                    rotated=outcome.rotated,
                    duration=elapsed,
                )
    except DatabaseError:
        if written and not in_block:
            # The token is stored; its bookkeeping (refresh count, cleared
            # failures, the lease) is not: the lease runs out on its own.
            logger.error(
                "Stored the refreshed token %s of provider %s, but not its refresh state "
                "(database error).",
                token.pk,
                provider_key(token),
            )
            token.token, token.token_secret, token.expires_at = values.values()
            return False
        raise _answer_lost(token, "the refreshed token", "The refreshed token") from None
    if not written:
        reload(token)
        logger.warning(
            "Token %s of provider %s was replaced while our refresh was in flight; "
            "keeping the stored one.",
            token.pk,
            provider_key(token),
        )
        return False
    # What was just written, without reading it back.
    token.token, token.token_secret, token.expires_at = values.values()
    state = state_of(token)
    if state is not None:
        for name, value in recorded.items():
            setattr(state, name, value)
        state.refresh_count += 1
        state.lease_id, state.lease_expires_at = "", None
    logger.info(
        "Refreshed token %s of provider %s in %.0f ms (%s).",
        token.pk,
        provider_key(token),
        elapsed * 1000,
        "refresh token rotated" if outcome.rotated else "refresh token kept",
    )
    return True


@sensitive_variables()
def _write_refresh_token(
    token: SocialToken, outcome: Outcome, sent: str, *, elapsed: float
) -> TokenRotationError | None:
    """The answer is refused (``outcome.error``) but carries a new refresh token:
    store that one (the one sent may be spent at a rotating provider), keep the
    access token, and record the error. Returns the error to raise, or ``None``
    when another worker stored a newer token meanwhile (``token`` is reloaded)."""
    new_secret, error = outcome.refresh_token, outcome.error
    assert new_secret is not None and error is not None
    try:
        with transaction.atomic(using=token._state.db):
            written = (
                SocialToken.objects.using(token._state.db)
                .filter(pk=token.pk, token_secret=sent)
                .update(token_secret=new_secret)
            )
            if written:
                states(token).record_new_refresh_token(
                    token.pk, refresh_expires_at=outcome.refresh_expires_at
                )
    except DatabaseError:
        raise _answer_lost(token, "the new refresh token of token", "The refresh token") from None
    if not written:
        reload(token)
        return None
    token.token_secret = new_secret
    logger.warning(
        "Provider %s answered the refresh of token %s with an unusable answer (%s); "
        "its new refresh token was stored.",
        provider_key(token),
        token.pk,
        error.code,
    )
    error.message += " The new refresh token in the answer was stored."
    if isinstance(error, ReauthenticationRequired):
        # Recorded against the refresh token stored now, so that it blocks
        # further attempts (and the admin's "clear error" retries with it).
        _record_permanent(token, error, new_secret, elapsed=elapsed)
    elif isinstance(error, TokenRefreshUnavailable):
        record_transient(token, error, elapsed=elapsed)
    return error


@sensitive_variables()
def record_error(
    token: SocialToken, exc: TokenRotationError, sent: str, *, replay: bool, elapsed: float
) -> TokenRotationError | None:
    """The provider answered the refresh of ``sent`` with an error (or refused
    its answer's ID token). Records it and returns the error to raise, or
    ``None`` when another worker rotated the token meanwhile (``token`` now
    holds it)."""
    if not isinstance(exc, ReauthenticationRequired) and exc.code != UNCONFIRMED:
        assert isinstance(exc, TokenRefreshUnavailable)
        record_transient(token, exc, elapsed=elapsed)
        return exc
    state = reload(token)
    if token.token_secret != sent:
        # Someone else rotated the token after we read it: the provider
        # refused a refresh token that is no longer ours to use.
        logger.info(
            "Provider %s refused an already-rotated refresh token of token %s; "
            "adopting the stored token.",
            provider_key(token),
            token.pk,
        )
        return None
    code = judge_error(exc.code, replay=replay, previous_error=state.last_error)
    if code == UNCONFIRMED:
        assert isinstance(exc, TokenRefreshUnavailable)
        # Not processed, unless the refresh token sent may have been spent by
        # an earlier attempt whose answer was lost (then the confirming retry
        # is still a replay).
        record_transient(token, exc, elapsed=elapsed, not_processed=not replay)
        return exc
    if code == "lost_rotation":
        exc = ReauthenticationRequired(
            "The refresh token had been sent before by an attempt whose answer was never "
            "stored (a worker died or a database write failed); the provider rotated it "
            "and the new one is lost: the user must sign in again.",
            code="lost_rotation",
            provider=provider_key(token),
            token_id=token.pk,
        )
        logger.error(
            "Lost rotation for token %s of provider %s: an earlier refresh reached the "
            "provider but its answer was never stored.",
            token.pk,
            provider_key(token),
        )
    elif code == CONFIRMED:
        exc = ReauthenticationRequired(
            "The token endpoint refused this refresh token twice without saying why "
            "(HTTP 4xx without an OAuth error): the user must sign in again.",
            code=CONFIRMED,
            provider=provider_key(token),
            token_id=token.pk,
        )
    assert isinstance(exc, ReauthenticationRequired)
    _record_permanent(token, exc, sent, elapsed=elapsed)
    return exc


@sensitive_variables()
def _record_permanent(
    token: SocialToken, exc: ReauthenticationRequired, secret: str, *, elapsed: float
) -> None:
    """The refresh token ``secret`` (the stored one) is refused: sign-in required."""
    states(token).record_refusal(token.pk, sent_fingerprint=fingerprint(secret), code=exc.code)
    state = state_of(token)
    if state is not None:
        state.refresh_from_db()
    logger.warning(
        "Provider %s refused the refresh of token %s (%s): the user must sign in again.",
        provider_key(token),
        token.pk,
        exc.code,
    )
    send_on_commit(
        signals.token_refresh_failed,
        token=token,
        provider=provider_key(token),
        outcome=RefreshEvent.Outcome.FAILED_PERMANENT,
        code=exc.code,
        permanent=True,
        retry_at=None,
        duration=elapsed,
    )


def record_transient(
    token: SocialToken,
    exc: TokenRefreshUnavailable,
    *,
    elapsed: float,
    not_processed: bool | None = None,
) -> None:
    """A transient failure: set the back-off (at least the provider's
    ``Retry-After``) on ``exc`` and in the state. ``not_processed`` (default:
    from the code, :data:`NOT_PROCESSED`): the provider certainly did not
    rotate anything."""
    state = load_state(token)
    failures = state.consecutive_failures + 1
    now = expiry.now()
    expired = expiry.is_expired(token, state, now=now)
    retry_at = now + datetime.timedelta(seconds=expiry.backoff(failures, expired=expired))
    if exc.retry_at is not None:
        # The provider's Retry-After, up to a cap (short once the token has expired).
        cap = now + datetime.timedelta(seconds=expiry.retry_after_cap(expired=expired))
        retry_at = max(retry_at, min(exc.retry_at, cap))
    exc.retry_at = retry_at
    states(token).record_transient(
        token.pk,
        code=exc.code,
        failures=failures,
        retry_at=retry_at,
        not_processed=exc.code in NOT_PROCESSED if not_processed is None else not_processed,
    )
    logger.warning(
        "Refresh of token %s of provider %s failed (%s, attempt %d); next attempt after %s.",
        token.pk,
        provider_key(token),
        exc.code,
        failures,
        retry_at.isoformat(timespec="seconds"),
    )
    send_on_commit(
        signals.token_refresh_failed,
        token=token,
        provider=provider_key(token),
        outcome=RefreshEvent.Outcome.FAILED_TRANSIENT,
        code=exc.code,
        permanent=False,
        retry_at=retry_at,
        duration=elapsed,
    )


def record_configuration_error(token: SocialToken, exc: TokenRotationError) -> None:
    """The provider or its app cannot be resolved (``provider_not_configured``,
    ``insecure_endpoint``): nothing was sent. Recorded on the token with the
    gentle back-off (a person fixes a configuration; the admin's "refresh now"
    retries at once), so that it is not resolved again on every request."""
    state = load_state(token)
    failures = state.consecutive_failures + 1
    retry_at = expiry.now() + datetime.timedelta(seconds=expiry.backoff(failures))
    states(token).record_transient(
        token.pk, code=exc.code, failures=failures, retry_at=retry_at, not_processed=True
    )
    state.consecutive_failures, state.last_error, state.next_retry_at = failures, exc.code, retry_at


def store_claims(token: SocialToken, claims: dict[str, Any]) -> None:
    """Keep the account's ID token claims current, where allauth keeps them."""
    account = token.account
    extra = account.extra_data if isinstance(account.extra_data, dict) else {}
    if extra and "id_token" not in extra:
        return  # allauth < 65.11 layout: the claims are mixed with userinfo
    extra = {**extra, "id_token": claims}
    type(account).objects.using(token._state.db).filter(pk=account.pk).update(extra_data=extra)
    account.extra_data = extra


def send_on_commit(signal: Any, **kwargs: Any) -> None:
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


def _answer_lost(token: SocialToken, logged: str, told: str) -> TokenRefreshUnavailable:
    """A provider's answer the database failed to store: logged (what, never the
    token) and returned as the ``database_error`` the caller raises."""
    logger.error(
        f"Could not store {logged} %s of provider %s (database error); "
        "the provider's answer is lost.",
        token.pk,
        provider_key(token),
    )
    return TokenRefreshUnavailable(
        f"{told} could not be stored.",
        code="database_error",
        provider=provider_key(token),
        token_id=token.pk,
    )
