"""A token's health, computed from the stored data: what the admin shows and filters on.

Nothing here calls a provider or changes anything. The order of the checks
is the order of what an operator must act on first.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

from allauth.socialaccount.models import SocialToken
from django.db import models
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .conf import app_settings
from .expiry import expiry, needs_refresh
from .models import refused
from .store import state_of


class Status(models.TextChoices):
    SIGN_IN_REQUIRED = "sign_in_required", _("sign-in required")
    MISCONFIGURED = "misconfigured", _("provider not configured")
    NO_REFRESH_TOKEN = "no_refresh_token", _("no refresh token")
    FAILING = "failing", _("refresh failing (transient)")
    EXPIRED = "expired", _("expired")
    EXPIRING = "expiring", _("expiring soon")
    FRESH = "fresh", _("fresh")


#: Error codes that a person fixes in the site's configuration, not the user.
CONFIGURATION_ERRORS = frozenset({"provider_not_configured", "insecure_endpoint"})


def status(token: SocialToken, now: datetime.datetime | None = None) -> Status:
    """The token's status. A recorded failure of a refresh token that has since
    been replaced (the user signed in again) no longer counts."""
    now = now or timezone.now()
    state = state_of(token)
    if refused(token, state):
        return Status.SIGN_IN_REQUIRED
    if not token.token_secret:
        return Status.NO_REFRESH_TOKEN
    if (
        state is not None
        and state.last_error in CONFIGURATION_ERRORS
        and state.next_retry_at is not None
        and not state.needs_reauth
    ):
        return Status.MISCONFIGURED
    if (
        state is not None
        and state.consecutive_failures
        and state.next_retry_at is not None
        and not state.needs_reauth
    ):
        return Status.FAILING
    expires = expiry(token, state)
    if expires is not None and now >= expires:
        return Status.EXPIRED
    if needs_refresh(token, state, now=now):
        return Status.EXPIRING
    return Status.FRESH


def _candidates(wanted: Status, now: datetime.datetime) -> Q:
    """A superset, in SQL, of the tokens that may have status ``wanted``."""
    horizon = now + datetime.timedelta(seconds=app_settings.LEEWAY)
    unknown_expiry = Q(expires_at__isnull=True)
    if wanted == Status.SIGN_IN_REQUIRED:
        return Q(rotation_state__needs_reauth=True) & ~Q(token_secret="")
    if wanted == Status.NO_REFRESH_TOKEN:
        return Q(token_secret="")
    if wanted == Status.MISCONFIGURED:
        return Q(rotation_state__last_error__in=CONFIGURATION_ERRORS)
    if wanted == Status.FAILING:
        return Q(
            rotation_state__consecutive_failures__gt=0, rotation_state__next_retry_at__isnull=False
        )
    if wanted == Status.EXPIRED:
        return Q(expires_at__lte=now) | unknown_expiry
    if wanted == Status.EXPIRING:
        return Q(expires_at__lte=horizon) | unknown_expiry
    # Not fresh: any of the above.
    return (
        Q(rotation_state__needs_reauth=True)
        | Q(token_secret="")
        | Q(rotation_state__consecutive_failures__gt=0)
        | Q(expires_at__lte=horizon)
        | unknown_expiry
    )


def _matching(
    queryset: QuerySet[SocialToken], candidates: Q, test: Status, now: datetime.datetime
) -> Iterator[tuple[int, bool]]:
    rows = queryset.filter(candidates).select_related("account", "rotation_state").order_by("pk")
    for token in rows.iterator(chunk_size=500):
        yield token.pk, status(token, now) == test


def filter_by_status(
    queryset: QuerySet[SocialToken], wanted: Status, now: datetime.datetime | None = None
) -> QuerySet[SocialToken]:
    """``queryset`` narrowed to the tokens whose :func:`status` is ``wanted``.

    The status needs Python (a keyed hash, JWT expiries, the leeway rule), so
    SQL narrows the candidates and Python decides; fresh tokens, the bulk, are
    found by excluding the others, so they are never loaded for this.
    """
    now = now or timezone.now()
    candidates = _candidates(wanted, now)
    if wanted == Status.FRESH:
        not_fresh = [
            pk for pk, fresh in _matching(queryset, candidates, Status.FRESH, now) if not fresh
        ]
        return queryset.exclude(pk__in=not_fresh)
    pks = [pk for pk, match in _matching(queryset, candidates, wanted, now) if match]
    return queryset.filter(pk__in=pks)


# -- how times read: one format on every page and in every command -----------

EMPTY = "—"


def _aware(value: datetime.datetime) -> datetime.datetime:
    """Under ``USE_TZ = False`` Django stores naive times in ``TIME_ZONE``."""
    if timezone.is_naive(value):
        return timezone.make_aware(value, timezone.get_default_timezone())
    return value


def format_time(value: datetime.datetime | None) -> str:
    """The one time format of the admin, the history, the command and the demo:
    ``2026-11-27 10:48:03 UTC``, in the current time zone, with ``USE_TZ`` on or off."""
    if value is None:
        return EMPTY
    return f"{timezone.localtime(_aware(value)):%Y-%m-%d %H:%M:%S %Z}"


def format_relative(value: datetime.datetime | None, now: datetime.datetime | None = None) -> str:
    """``"in 4 min"`` / ``"3 h ago"``."""
    if value is None:
        return EMPTY
    seconds = (_aware(value) - _aware(now or timezone.now())).total_seconds()
    size = abs(seconds)
    if size < 60:
        amount = f"{size:.0f} s"
    elif size < 3600:
        amount = f"{size // 60:.0f} min"
    elif size < 2 * 86400:
        amount = f"{size // 3600:.0f} h"
    else:
        amount = f"{size // 86400:.0f} d"
    return f"in {amount}" if seconds >= 0 else f"{amount} ago"


def format_duration(seconds: float | None) -> str:
    """A refresh's duration in milliseconds: ``"541 ms"``."""
    return EMPTY if seconds is None else f"{seconds * 1000:.0f} ms"
