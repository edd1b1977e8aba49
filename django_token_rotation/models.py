"""Our per-token bookkeeping. It never holds a token value.

Every change of a token's refresh state goes through the methods of
:class:`TokenStateQuerySet` (``TokenState.objects``): the lease, the in-flight
marker, success, refusal, transient failure and clearing a failure. The engine,
the receivers and the admin all use them, so "what a success resets" is
written once.
"""

from __future__ import annotations

import datetime
from typing import Any

from allauth.socialaccount.models import SocialToken
from django.db import models
from django.db.models import Case, Exists, ExpressionWrapper, F, OuterRef, Q, Value, When
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext_lazy as _

from .statements import Param, Statement

#: What "no recorded failure" looks like: set by a success, a new sign-in and
#: the admin's "clear error".
NO_FAILURE: dict[str, Any] = {
    "needs_reauth": False,
    "failed_fingerprint": "",
    "consecutive_failures": 0,
    "last_error": "",
    "next_retry_at": None,
    "inflight_fingerprint": "",
    "inflight_since": None,
}

#: Reasons not to call the provider now (see :func:`refresh_blocker`).
NO_REFRESH_TOKEN = "no_refresh_token"
SIGN_IN_REQUIRED = "sign_in_required"
BACKOFF = "backoff"


def fingerprint(secret: str) -> str:
    """A keyed, truncated hash of a refresh token: tells two apart, reveals nothing."""
    return salted_hmac("django_token_rotation.fingerprint", secret, algorithm="sha256").hexdigest()[
        :32
    ]


def _param(name: str, field: type[models.Field[Any, Any]]) -> Param:
    return Param(name, field())


def _db_now_plus(name: str) -> ExpressionWrapper[Any]:
    """The database's current time plus the ``timedelta`` bound to ``name``, as SQL."""
    return ExpressionWrapper(
        Now() + _param(name, models.DurationField), output_field=models.DateTimeField()
    )


_LEASE_FREE = Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lte=Now())

# The state changes of every refresh, compiled once per database (see
# .statements); the methods below document them.
_CLAIM_LEASE = Statement(
    lambda rows: (
        rows.filter(_LEASE_FREE, pk=_param("token_id", models.BigIntegerField)),
        {
            "lease_id": _param("lease_id", models.CharField),
            "lease_expires_at": _db_now_plus("seconds"),
        },
    )
)
_CLAIM_AS_READ = Statement(
    lambda rows: (
        rows.filter(
            _LEASE_FREE,
            Exists(
                SocialToken.objects.filter(
                    pk=OuterRef("token_id"),
                    token=_param("access", models.TextField),
                    token_secret=_param("refresh", models.TextField),
                )
            ),
            pk=_param("token_id", models.BigIntegerField),
            refresh_count=_param("refresh_count", models.BigIntegerField),
            consecutive_failures=_param("consecutive_failures", models.BigIntegerField),
            inflight_fingerprint=_param("inflight_fingerprint", models.CharField),
        ),
        {
            "lease_id": _param("lease_id", models.CharField),
            "lease_expires_at": _db_now_plus("seconds"),
        },
    )
)
_RELEASE_LEASE = Statement(
    lambda rows: (
        rows.filter(
            pk=_param("token_id", models.BigIntegerField),
            lease_id=_param("lease_id", models.CharField),
        ),
        {"lease_id": "", "lease_expires_at": None},
    )
)
_MARK_IN_FLIGHT = Statement(
    lambda rows: (
        rows.filter(
            lease_expires_at__gt=Now(),
            pk=_param("token_id", models.BigIntegerField),
            lease_id=_param("lease_id", models.CharField),
        ),
        {
            "inflight_fingerprint": _param("fingerprint", models.CharField),
            "inflight_since": Now(),
            "lease_expires_at": _db_now_plus("seconds"),
        },
    )
)
_OURS = Q(lease_id=_param("lease_id", models.CharField))
_RECORD_SUCCESS = Statement(
    lambda rows: (
        rows.filter(pk=_param("token_id", models.BigIntegerField)),
        {
            **NO_FAILURE,
            "last_refreshed_at": _param("at", models.DateTimeField),
            "last_attempt_at": _param("at", models.DateTimeField),
            "refresh_expires_at": _param("refresh_expires_at", models.DateTimeField),
            "refresh_count": F("refresh_count") + 1,
            # In this order: MySQL/MariaDB evaluate SET assignments left to right,
            # each seeing the ones before it; ``lease_id`` must still be ours here.
            "lease_expires_at": Case(When(_OURS, then=Value(None)), default=F("lease_expires_at")),
            "lease_id": Case(When(_OURS, then=Value("")), default=F("lease_id")),
        },
    )
)


class TokenStateQuerySet(models.QuerySet["TokenState"]):
    """The state changes. Each is one conditional ``UPDATE`` on the token's row
    (``token_id``), so it is atomic on every database without a transaction."""

    def _of(self, token_id: Any) -> TokenStateQuerySet:
        return self.filter(pk=token_id)

    def for_token(self, token_id: Any) -> TokenState:
        """The token's state row, created on first use."""
        state, _created = self.get_or_create(token_id=token_id)
        return state

    # -- the lease -------------------------------------------------------------

    def claim_lease(self, token_id: Any, lease_id: str, seconds: float) -> bool:
        """Take the lease if it is free or expired (a compare-and-swap). Lease
        times are the database's clock, the same for every host."""
        lease = datetime.timedelta(seconds=seconds)
        return bool(_CLAIM_LEASE.run(self, token_id=token_id, lease_id=lease_id, seconds=lease))

    def claim_as_read(
        self,
        token_id: Any,
        lease_id: str,
        seconds: float,
        *,
        seen: TokenState,
        access: str,
        refresh: str,
    ) -> bool:
        """:meth:`claim_lease` for a caller that read the token and ``seen`` (its
        state) before: only if the lease is free, the token still holds
        ``access`` and ``refresh``, and no attempt has started or ended since
        ``seen`` (every one sets the in-flight mark and ends by changing the
        refresh count or the failure count).

        ``True`` means the caller's copy is current: the holder need not re-read
        it. The conditions on this row are re-checked by every database against
        the newest committed row before it is updated (a concurrent success,
        which changes the token and this row, makes them fail), and the token's
        own values are checked in the same statement.
        """
        claimed = _CLAIM_AS_READ.run(
            self,
            token_id=token_id,
            lease_id=lease_id,
            seconds=datetime.timedelta(seconds=seconds),
            access=access,
            refresh=refresh,
            refresh_count=seen.refresh_count,
            consecutive_failures=seen.consecutive_failures,
            inflight_fingerprint=seen.inflight_fingerprint,
        )
        return bool(claimed)

    def release_lease(self, token_id: Any, lease_id: str) -> None:
        """Give the lease back, if it is still ours."""
        _RELEASE_LEASE.run(self, token_id=token_id, lease_id=lease_id)

    # -- the outcome of one refresh ---------------------------------------------

    def mark_in_flight(
        self, token_id: Any, sent_fingerprint: str, *, lease_id: str, lease_seconds: float
    ) -> bool:
        """Record that the refresh token with this fingerprint is about to be sent,
        and renew the lease for ``lease_seconds`` from now (database clock) - only
        if the lease is still ours and unexpired. ``False``: it is not, and the
        refresh token must not be sent."""
        renewed = _MARK_IN_FLIGHT.run(
            self,
            token_id=token_id,
            lease_id=lease_id,
            fingerprint=sent_fingerprint,
            seconds=datetime.timedelta(seconds=lease_seconds),
        )
        return bool(renewed)

    def record_success(
        self,
        token_id: Any,
        *,
        lease_id: str,
        at: datetime.datetime,
        refresh_expires_at: datetime.datetime | None,
    ) -> dict[str, Any]:
        """A refresh was stored: the failure is gone, the count goes up and the
        lease (if still ``lease_id``) is released in the same statement.
        Returns the plain values written, for the caller's copy of the row."""
        values: dict[str, Any] = {
            **NO_FAILURE,
            "last_refreshed_at": at,
            "last_attempt_at": at,
            "refresh_expires_at": refresh_expires_at,
        }
        _RECORD_SUCCESS.run(
            self, token_id=token_id, lease_id=lease_id, at=at, refresh_expires_at=refresh_expires_at
        )
        return values

    def record_refusal(self, token_id: Any, *, sent_fingerprint: str, code: str) -> None:
        """The provider refused this refresh token: sign-in required until a new one."""
        now = timezone.now()
        self._of(token_id).update(
            needs_reauth=True,
            failed_fingerprint=sent_fingerprint,
            inflight_fingerprint="",
            inflight_since=None,
            last_error=code,
            last_error_at=now,
            last_attempt_at=now,
            consecutive_failures=F("consecutive_failures") + 1,
            next_retry_at=None,
        )

    def record_new_refresh_token(
        self, token_id: Any, *, refresh_expires_at: datetime.datetime | None
    ) -> None:
        """An answer refused for its access token carried a new refresh token,
        which is now stored: the one sent is accounted for (no longer in flight)."""
        self._of(token_id).update(
            inflight_fingerprint="", inflight_since=None, refresh_expires_at=refresh_expires_at
        )

    def record_transient(
        self,
        token_id: Any,
        *,
        code: str,
        failures: int,
        retry_at: datetime.datetime,
        not_processed: bool,
    ) -> None:
        """A transient failure: try again after ``retry_at``. ``not_processed``:
        the provider said it did not act, so nothing can have been rotated."""
        now = timezone.now()
        cleared: dict[str, Any] = (
            {"inflight_fingerprint": "", "inflight_since": None} if not_processed else {}
        )
        self._of(token_id).update(
            **cleared,
            consecutive_failures=failures,
            last_error=code,
            last_error_at=now,
            last_attempt_at=now,
            next_retry_at=retry_at,
        )

    def clear_failure(self) -> int:
        """Forget the recorded failures of these rows (a new sign-in, the admin's
        "clear error"): the next use tries the provider again."""
        return self.update(**NO_FAILURE, last_error_at=None)


class TokenState(models.Model):
    """Refresh state of one allauth ``SocialToken``.

    The lease (``lease_id`` / ``lease_expires_at``) is how workers agree on who
    refreshes: it is claimed with a conditional ``UPDATE`` that only succeeds
    when no unexpired lease exists, so it works the same on every database,
    across threads, processes and hosts, without a transaction held open over
    the HTTP call.
    """

    token = models.OneToOneField(
        SocialToken,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="rotation_state",
        verbose_name=_("token"),
    )
    created_at = models.DateTimeField(_("first seen"), auto_now_add=True)

    lease_id = models.CharField(_("lease"), max_length=32, blank=True, default="")
    lease_expires_at = models.DateTimeField(_("lease expires at"), null=True, blank=True)

    refresh_count = models.PositiveIntegerField(_("refresh count"), default=0)
    last_refreshed_at = models.DateTimeField(_("last refreshed at"), null=True, blank=True)
    last_attempt_at = models.DateTimeField(_("last attempt at"), null=True, blank=True)
    refresh_expires_at = models.DateTimeField(
        _("refresh token expires at"),
        null=True,
        blank=True,
        help_text=_(
            "When the refresh token stops working unless used: known when the provider "
            "says (refresh_expires_in, refresh_token_expires_in or x_refresh_token_expires_in). "
            "refresh_tokens --refresh-within renews the token before then."
        ),
    )

    consecutive_failures = models.PositiveIntegerField(_("consecutive failures"), default=0)
    last_error = models.CharField(_("last error"), max_length=64, blank=True, default="")
    last_error_at = models.DateTimeField(_("last error at"), null=True, blank=True)
    next_retry_at = models.DateTimeField(_("next retry at"), null=True, blank=True)

    needs_reauth = models.BooleanField(
        _("sign-in required"),
        default=False,
        help_text=_("The provider refused the refresh token: the user must sign in again."),
    )
    # A keyed, truncated hash of the refresh token that was refused, so that a
    # new sign-in (which stores a new refresh token) lifts the failure without
    # the token itself ever being stored here.
    failed_fingerprint = models.CharField(max_length=32, blank=True, default="", editable=False)
    # Set (a fingerprint of the refresh token sent) just before a refresh is
    # sent, cleared once its outcome is stored. Still set on the next attempt
    # with the same refresh token means the earlier answer was lost (the worker
    # died, or the database write failed): an invalid_grant then is a "lost
    # rotation", not a revocation.
    inflight_fingerprint = models.CharField(max_length=32, blank=True, default="", editable=False)
    inflight_since = models.DateTimeField(null=True, blank=True, editable=False)

    objects = TokenStateQuerySet.as_manager()

    class Meta:
        verbose_name = _("token refresh state")
        verbose_name_plural = _("token refresh states")

    def __str__(self) -> str:
        return f"refresh state of token {self.token_id}"

    def __repr__(self) -> str:
        return (
            f"<TokenState token_id={self.token_id} refresh_count={self.refresh_count} "
            f"needs_reauth={self.needs_reauth} last_error={self.last_error!r}>"
        )

    def refuses(self, token: SocialToken) -> bool:
        """Whether the provider refused the refresh token that ``token`` holds now
        (a refusal of an earlier refresh token, replaced by a sign-in, does not count)."""
        return (
            self.needs_reauth
            and bool(token.token_secret)
            and self.failed_fingerprint == fingerprint(token.token_secret)
        )


def refused(token: SocialToken, state: TokenState | None) -> bool:
    """Whether the provider refused the refresh token that is stored now."""
    return state is not None and state.refuses(token)


def refresh_blocker(
    token: SocialToken,
    state: TokenState | None,
    *,
    now: datetime.datetime | None = None,
    force: bool = False,
) -> str:
    """Why the provider must not be called for ``token`` now; ``""`` when it may.

    The one answer to "may we call the provider now?", shared by the engine,
    the command and the background refresh: :data:`NO_REFRESH_TOKEN`,
    :data:`SIGN_IN_REQUIRED` (the stored refresh token was refused) or
    :data:`BACKOFF` (a transient failure's back-off has not passed; ``force``
    ignores it).
    """
    if not token.token_secret:
        return NO_REFRESH_TOKEN
    if refused(token, state):
        return SIGN_IN_REQUIRED
    if (
        not force
        and state is not None
        and state.next_retry_at is not None
        and (now or timezone.now()) < state.next_retry_at
    ):
        return BACKOFF
    return ""


class RefreshEvent(models.Model):
    """One refresh attempt that reached the provider: when, how it ended, how long it took.

    Written by :mod:`django_token_rotation.history` from the engine's signals;
    ``TOKEN_ROTATION_HISTORY_RETENTION`` bounds how many are kept per token. It
    never holds a token value.
    """

    class Outcome(models.TextChoices):
        REFRESHED = "refreshed", _("refreshed")
        FAILED_TRANSIENT = "failed_transient", _("failed, will retry")
        FAILED_PERMANENT = "failed_permanent", _("failed, sign-in required")

    token = models.ForeignKey(
        SocialToken,
        on_delete=models.CASCADE,
        related_name="refresh_events",
        verbose_name=_("token"),
    )
    at = models.DateTimeField(_("time"), db_index=True)
    outcome = models.CharField(_("outcome"), max_length=32, choices=Outcome.choices)
    error_code = models.CharField(_("error code"), max_length=64, blank=True, default="")
    duration = models.FloatField(
        _("duration"), null=True, blank=True, help_text=_("Seconds the provider took.")
    )
    rotated = models.BooleanField(
        _("refresh token rotated"),
        null=True,
        blank=True,
        help_text=_("Whether the provider sent a new refresh token (successful refreshes)."),
    )
    retry_at = models.DateTimeField(_("next retry at"), null=True, blank=True)

    class Meta:
        verbose_name = _("refresh event")
        verbose_name_plural = _("refresh events")
        ordering = ("-at", "-pk")
        indexes = [models.Index(fields=["token", "-at"], name="token_rotation_event_token_at")]

    def __str__(self) -> str:
        return f"{self.get_outcome_display()}: token {self.token_id}, {self.at:%Y-%m-%d %H:%M:%S}"

    def __repr__(self) -> str:
        return (
            f"<RefreshEvent token_id={self.token_id} outcome={self.outcome!r} "
            f"error_code={self.error_code!r}>"
        )
