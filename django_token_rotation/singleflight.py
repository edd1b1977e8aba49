"""The single-flight: one refresh per expiry across threads, processes and hosts.

1. Threads of one process queue on a per-token lock, so only one of them
   touches the database at a time.
2. Across processes and hosts, the right to refresh is a *lease* on the
   token's :class:`~django_token_rotation.models.TokenState` row, claimed with a
   conditional ``UPDATE ... WHERE lease is free or expired``
   (:meth:`~django_token_rotation.models.TokenStateQuerySet.claim_lease`).
   Exactly one caller's ``UPDATE`` matches; the others wait
   (:func:`_wait_for_change`), re-reading the token until the winner has
   stored the new one. A worker that dies mid-refresh blocks the token only
   until its lease expires.
3. The winner wakes the waiters when it is done (:mod:`.wakeup`: at once in
   its own process, by ``NOTIFY`` on PostgreSQL in the others). A wake-up is a
   hint: waiters still re-read the token at least every :data:`POLL_MAX`
   seconds, so a lost one costs what polling costs, never more than
   ``TOKEN_ROTATION_WAIT``.

What the lease holder does is the caller's business (:mod:`.rotation`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from allauth.socialaccount.models import SocialToken
from django.db import DatabaseError

from . import expiry, store, transactions, wakeup
from .conf import app_settings
from .exceptions import ReauthenticationRequired, TokenRefreshUnavailable
from .models import BACKOFF, NO_REFRESH_TOKEN, SIGN_IN_REQUIRED, TokenState, refresh_blocker

logger = logging.getLogger("django_token_rotation")

_process_locks: weakref.WeakValueDictionary[Any, threading.Lock] = weakref.WeakValueDictionary()
_process_locks_guard = threading.Lock()

#: Seconds a lease must outlive the deadline of the refresh (``TOKEN_ROTATION_TIMEOUT``,
#: shared by every HTTP call of it): the database writes before and after it.
#: Check ``token_rotation.E006`` holds ``TOKEN_ROTATION_LEASE`` to it.
LEASE_MARGIN = 2.0

#: Seconds between two re-reads of a waiter that no wake-up reached (first, and at most):
#: the bound on what a lost wake-up costs.
POLL_FIRST = 0.02
POLL_MAX = 0.1


def _process_lock(token: SocialToken) -> threading.Lock:
    key = (token._state.db, token.pk)
    with _process_locks_guard:
        lock = _process_locks.get(key)
        if lock is None:
            lock = threading.Lock()
            _process_locks[key] = lock
        return lock


def _wait_for_change(token: SocialToken, since: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for another worker to change ``token``'s
    stored state (store a refresh, record a failure, release its lease) after
    ``since`` (a :func:`.wakeup.version` taken before the caller's last read).

    Returning early is always allowed: the caller re-reads and re-checks.
    """
    return wakeup.wait(token, since, timeout)


class Flight:
    """One caller's attempt to get ``token`` refreshed."""

    def __init__(self, token: SocialToken, *, force: bool) -> None:
        self.token = token
        self.force = force
        self.lease_id = ""
        # Set when the lease was released along with the stored outcome.
        self.released = False
        # The state as read with the token, when the claim checked that both are
        # still current and marked the refresh in flight (:meth:`claim_as_read`):
        # the holder neither re-reads nor marks again.
        self.read_as_claimed: TokenState | None = None
        # Set just before the refresh token is sent.
        self.sent = False
        # What the caller saw: a change means someone refreshed meanwhile.
        self.seen_access = token.token

    # -- checks made before every claim, and after winning one -------------

    def settled(self, state: TokenState) -> bool:
        """True when there is nothing (left) to do for this caller."""
        if self.token.token != self.seen_access:
            # Someone else refreshed since the caller looked: that is the
            # refresh this caller wanted.
            return self.force or not expiry.is_expired(self.token, state)
        return not self.force and not expiry.needs_refresh(self.token, state)

    def check_blocked(self, state: TokenState) -> None:
        """Raise when the recorded state says not to call the provider now."""
        token = self.token
        why = refresh_blocker(token, state, force=self.force)
        if why == SIGN_IN_REQUIRED:
            raise ReauthenticationRequired(
                "The provider refused this refresh token earlier; the user must sign in again.",
                code=state.last_error or "invalid_grant",
                provider=store.provider_key(token),
                token_id=token.pk,
            )
        if why == NO_REFRESH_TOKEN:
            raise ReauthenticationRequired(
                "The token has no refresh token; the user must sign in again.",
                code="no_refresh_token",
                provider=store.provider_key(token),
                token_id=token.pk,
            )
        if why == BACKOFF:
            raise TokenRefreshUnavailable(
                f"A recent refresh failed ({state.last_error or 'unknown'}); "
                "the next attempt waits for its back-off.",
                code="backoff",
                provider=store.provider_key(token),
                token_id=token.pk,
                retry_at=state.next_retry_at,
            )

    # -- the loop ------------------------------------------------------------

    def run(self, hold: Callable[[Flight], SocialToken]) -> SocialToken:
        """Claim the lease (or wait for whoever holds it) and run ``hold`` while
        holding it; the lease is released afterwards, whatever happens."""
        token = self.token
        # While the caller's token still works nobody waits for another
        # worker's refresh: the current token is good enough.
        patient = self.force or expiry.is_expired(token, store.state_of(token))
        wait = app_settings.WAIT if patient else 0.0
        if patient:
            wakeup.listen(token)
        deadline = time.monotonic() + wait
        lock = _process_lock(token)
        # Waiting for the lock means another thread of this process held it,
        # and has probably just refreshed the token: read before claiming.
        alone = lock.acquire(blocking=False)
        if not alone and not lock.acquire(timeout=wait):
            raise self.gave_up()
        try:
            # The common case is a lone caller: claim at once, on the token and
            # state it read (``hold`` re-checks them, and re-reads only when the
            # claim could not confirm they are current).
            if alone and (self.claim_as_read() or (self.claimable() and self.claim())):
                return self._holding(hold, patient)
            poll = POLL_FIRST
            while True:
                # Taken before the read: a wake-up landing between the read and
                # the wait is not lost.
                since = wakeup.version(token)
                state = store.reload(token)
                if self.settled(state):
                    return token
                self.check_blocked(state)
                if self.claim():
                    return self._holding(hold, patient)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.gave_up()
                _wait_for_change(token, since, min(poll, left))
                poll = min(poll * 1.3, POLL_MAX)
        finally:
            lock.release()

    def _holding(self, hold: Callable[[Flight], SocialToken], patient: bool) -> SocialToken:
        try:
            return hold(self)
        finally:
            self.release()
            # Only a caller whose token had expired (or who forces) waits for
            # another's refresh: other processes are told only when this one
            # had to (the others poll, as without wake-ups).
            wakeup.notify(self.token, processes=patient)

    def gave_up(self) -> TokenRefreshUnavailable:
        return TokenRefreshUnavailable(
            f"Another worker is still refreshing this token after {app_settings.WAIT} s.",
            code="refresh_in_progress",
            provider=store.provider_key(self.token),
            token_id=self.token.pk,
        )

    def claimable(self) -> bool:
        return store.state_of(self.token) is not None

    def claim(self) -> bool:
        """Claim the lease; the holder re-reads the token."""
        return self._claim(
            lambda lease_id: store.states(self.token).claim_lease(
                self.token.pk, lease_id, app_settings.LEASE
            )
        )

    def claim_as_read(self) -> bool:
        """Claim the lease only if the token and its state are still as the
        caller read them (in one query: ``select_related``), marking the refresh
        in flight in the same statement. ``False``: claim as usual."""
        token = self.token
        state = store.state_of(token)
        if state is None or not token.token_secret or transactions.on_helper():
            # On the helper of a caller's transaction, the token's row may be
            # locked by that very transaction (MariaDB would wait to read it).
            return False
        claimed = self._claim(
            lambda lease_id: store.states(token).claim_as_read(
                token.pk,
                lease_id,
                app_settings.LEASE,
                seen=state,
                access=token.token,
                refresh=token.token_secret,
            )
        )
        if claimed:
            self.read_as_claimed = state
        return claimed

    def _claim(self, update: Callable[[str], bool]) -> bool:
        lease_id = uuid.uuid4().hex
        try:
            claimed = update(lease_id)
        except DatabaseError as exc:
            # Someone else's open transaction holds the row: not ours to wait for.
            if transactions.is_lock_timeout(exc):
                return False
            raise
        if claimed:
            self.lease_id = lease_id
        return claimed

    def release(self) -> None:
        if self.released or not self.lease_id:
            return
        # Claimed as read but never sent: the in-flight mark goes back as it was.
        unmark = self.read_as_claimed if not self.sent else None
        try:
            store.states(self.token).release_lease(self.token.pk, self.lease_id, unmark=unmark)
        except DatabaseError as exc:
            # The lease runs out on its own; the caller's outcome stands.
            logger.error(
                "Could not release the lease on token %s (%s); it expires in %s s.",
                self.token.pk,
                type(exc).__name__,
                app_settings.LEASE,
            )
        self.released = True
