"""The refresh history: one :class:`~django_token_rotation.models.RefreshEvent` per
refresh that reached a provider, recorded from the engine's signals.

``TOKEN_ROTATION_HISTORY_RETENTION`` events are kept per token; older ones are
pruned as new ones arrive (after every failure and every ``retention // 5``-th
refresh, so at most a fifth more stay between prunes): the table grows with the
number of tokens, never with time. Connected in ``TokenRotationConfig.ready()``.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from allauth.socialaccount.models import SocialToken
from django.db import DatabaseError
from django.dispatch import receiver
from django.utils import timezone

from . import signals, transactions
from .conf import app_settings
from .models import RefreshEvent

logger = logging.getLogger("django_token_rotation")


@receiver(signals.token_refreshed, dispatch_uid="token_rotation.history.refreshed")
def record_refresh(
    sender: Any, token: SocialToken, rotated: bool, duration: float | None = None, **kwargs: Any
) -> None:
    record(token, RefreshEvent.Outcome.REFRESHED, duration=duration, rotated=rotated)


@receiver(signals.token_refresh_failed, dispatch_uid="token_rotation.history.failed")
def record_failure(
    sender: Any,
    token: SocialToken,
    code: str,
    permanent: bool,
    retry_at: datetime.datetime | None = None,
    duration: float | None = None,
    **kwargs: Any,
) -> None:
    outcome = (
        RefreshEvent.Outcome.FAILED_PERMANENT
        if permanent
        else RefreshEvent.Outcome.FAILED_TRANSIENT
    )
    record(token, outcome, error_code=code, duration=duration, retry_at=retry_at)


def record(
    token: SocialToken,
    outcome: RefreshEvent.Outcome,
    *,
    error_code: str = "",
    duration: float | None = None,
    rotated: bool | None = None,
    retry_at: datetime.datetime | None = None,
) -> RefreshEvent | None:
    """Store one event for ``token`` and prune its oldest beyond the retention."""
    keep = app_settings.HISTORY_RETENTION
    if keep <= 0:
        return None
    db = transactions.database(token)
    event = RefreshEvent(
        token_id=token.pk,
        at=timezone.now(),
        outcome=outcome,
        error_code=error_code[:64],
        duration=duration,
        rotated=rotated,
        retry_at=retry_at,
    )
    pending: list[tuple[str, RefreshEvent, bool]] | None = getattr(_buffer, "events", None)
    if pending is not None:
        pending.append((db, event, _prune_now(token, outcome, keep)))
        if len(pending) >= BUFFER_SIZE:
            flush()
        return event
    try:
        event.save(using=db, force_insert=True)
        if _prune_now(token, outcome, keep):
            prune(token.pk, keep=keep, using=db)
    except DatabaseError as exc:  # e.g. the token was deleted meanwhile
        logger.warning(
            "Could not record a refresh event of token %s (%s).", token.pk, type(exc).__name__
        )
        return None
    return event


#: Events a buffering thread writes at once.
BUFFER_SIZE = 100
_buffer = threading.local()


@contextmanager
def buffered() -> Iterator[None]:
    """Inside, this thread's events are written in batches (one ``INSERT`` per
    :data:`BUFFER_SIZE`) instead of one by one: for background runs over many
    tokens. Written when the block ends, whatever happens."""
    outer = getattr(_buffer, "events", None)
    if outer is None:
        _buffer.events = []
    try:
        yield
    finally:
        if outer is None:
            try:
                flush()
            finally:
                _buffer.events = None


def flush() -> None:
    """Write this thread's buffered events, and prune where due."""
    pending: list[tuple[str, RefreshEvent, bool]] | None = getattr(_buffer, "events", None)
    if not pending:
        return
    _buffer.events = []
    keep = app_settings.HISTORY_RETENTION
    by_db: dict[str, list[tuple[RefreshEvent, bool]]] = {}
    for db, event, prune_now in pending:
        by_db.setdefault(db, []).append((event, prune_now))
    for db, items in by_db.items():
        try:
            RefreshEvent.objects.using(db).bulk_create([event for event, _ in items])
            for token_id in {event.token_id for event, prune_now in items if prune_now}:
                prune(token_id, keep=keep, using=db)
        except DatabaseError as exc:  # e.g. a token was deleted meanwhile
            logger.warning(
                "Could not record %d refresh event(s) (%s).", len(items), type(exc).__name__
            )


def _prune_now(token: SocialToken, outcome: RefreshEvent.Outcome, keep: int) -> bool:
    """Prune after every failure, and after every ``keep // 5``-th refresh (by the
    token's refresh count): at most a fifth more than ``keep`` events stay between
    prunes, and most refreshes save the query."""
    from .store import state_of

    state = state_of(token)
    if state is None or outcome != RefreshEvent.Outcome.REFRESHED:
        return True
    count: int = state.refresh_count
    return count > 0 and count % max(1, keep // 5) == 0


def prune(token_id: int, *, keep: int, using: str = "default") -> int:
    """Delete the events of ``token_id`` beyond the newest ``keep``; how many went."""
    events = RefreshEvent.objects.using(using).filter(token_id=token_id)
    stale = list(events.order_by("-at", "-pk").values_list("pk", flat=True)[keep:])
    if not stale:
        return 0
    deleted, _ = RefreshEvent.objects.using(using).filter(pk__in=stale).delete()
    return deleted
