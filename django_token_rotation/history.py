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
from typing import Any

from allauth.socialaccount.models import SocialToken
from django.db import DatabaseError
from django.dispatch import receiver
from django.utils import timezone

from . import signals
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
    db = token._state.db or "default"
    try:
        event = RefreshEvent.objects.using(db).create(
            token_id=token.pk,
            at=timezone.now(),
            outcome=outcome,
            error_code=error_code[:64],
            duration=duration,
            rotated=rotated,
            retry_at=retry_at,
        )
        if _prune_now(token, outcome, keep):
            prune(token.pk, keep=keep, using=db)
    except DatabaseError as exc:  # e.g. the token was deleted meanwhile
        logger.warning(
            "Could not record a refresh event of token %s (%s).", token.pk, type(exc).__name__
        )
        return None
    return event


def _prune_now(token: SocialToken, outcome: RefreshEvent.Outcome, keep: int) -> bool:
    """Prune after every failure, and after every ``keep // 5``-th refresh (by the
    token's refresh count): at most a fifth more than ``keep`` events stay between
    prunes, and most refreshes save the query."""
    from .rotation import state_of

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
