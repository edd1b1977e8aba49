"""Our per-token bookkeeping. It never holds a token value."""

from __future__ import annotations

from allauth.socialaccount.models import SocialToken
from django.db import models
from django.utils.translation import gettext_lazy as _


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
        help_text=_("Known only when the provider sends refresh_expires_in."),
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
        _("duration (s)"), null=True, blank=True, help_text=_("Time the provider took.")
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
        verbose_name_plural = _("refresh history")
        ordering = ("-at", "-pk")
        indexes = [models.Index(fields=["token", "-at"], name="token_rotation_event_token_at")]

    def __str__(self) -> str:
        return f"{self.outcome} of token {self.token_id} at {self.at:%Y-%m-%d %H:%M:%S}"

    def __repr__(self) -> str:
        return (
            f"<RefreshEvent token_id={self.token_id} outcome={self.outcome!r} "
            f"error_code={self.error_code!r}>"
        )
