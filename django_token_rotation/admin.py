"""The admin: every token's health, safe operations, the refresh history.

allauth's own ``SocialToken`` admin shows access tokens in its list and edits
both tokens as plain text. It is replaced by :class:`SocialTokenAdmin`, which is
the token list (registered on ``SocialToken`` itself rather than on a proxy, so
that there is one list of tokens, under allauth's existing permissions):

* read-only, token values masked (the last 4 characters of long ones at most);
* a status computed from the data (:mod:`django_token_rotation.health`),
  filterable, with expiries as dates and as "in 4 min" / "3 h ago";
* actions "Refresh now" and "Clear error" (``change_socialtoken`` permission)
  and "Revoke at provider" (``delete_socialtoken``, with a confirmation page).

:class:`RefreshEventAdmin` is the read-only refresh history.
"""

from __future__ import annotations

import datetime
from collections import Counter
from typing import Any

import allauth.socialaccount.admin  # noqa: F401  (registers allauth's admins first)
from allauth.account.adapter import get_adapter as get_account_adapter
from allauth.socialaccount.models import SocialToken
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import health, revocation, rotation
from .conf import app_settings
from .exceptions import TokenRotationError
from .expiry import expiry
from .models import RefreshEvent, TokenState
from .store import state_of

EMPTY = health.EMPTY

# --------------------------------------------------------------------------
# Presentation helpers
# --------------------------------------------------------------------------

#: Only tokens at least this long show their last characters.
MASK_MIN_LENGTH = 24
MASK_VISIBLE = 4


def mask(value: str | None) -> str:
    """A token made safe to show: ``"…wxyz (1024 chars)"`` for long ones,
    ``"… (10 chars)"`` for short ones, ``"—"`` when there is none."""
    if not value:
        return EMPTY
    tail = value[-MASK_VISIBLE:] if len(value) >= MASK_MIN_LENGTH else ""
    return f"…{tail} ({len(value)} chars)"


def when(value: datetime.datetime | None) -> str:
    """A date with its relative form: ``2026-11-27 10:48:03 UTC (in 4 min)``."""
    if value is None:
        return EMPTY
    return f"{health.format_time(value)} ({health.format_relative(value)})"


def when_short(value: datetime.datetime | None) -> SafeString | str:
    """For list columns: ``in 4 min``, the full date in a tooltip (narrow columns)."""
    if value is None:
        return EMPTY
    return format_html(
        '<span title="{}">{}</span>', health.format_time(value), health.format_relative(value)
    )


STATUS_COLOURS = {
    health.Status.SIGN_IN_REQUIRED: "#ba2121",
    health.Status.NO_REFRESH_TOKEN: "#ba2121",
    health.Status.MISCONFIGURED: "#ba2121",
    health.Status.FAILING: "#c86400",
    health.Status.EXPIRED: "#c86400",
    health.Status.EXPIRING: "#7a6a00",
    health.Status.FRESH: "#2e7d32",
}


def _state(token: SocialToken) -> TokenState | None:
    return state_of(token)


# --------------------------------------------------------------------------
# Filters
# --------------------------------------------------------------------------


class StatusFilter(admin.SimpleListFilter):
    title = _("status")
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return list(health.Status.choices)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        value = self.value()
        if value not in health.Status.values:
            return queryset
        return health.filter_by_status(queryset, health.Status(value))


class ProviderFilter(admin.SimpleListFilter):
    title = _("provider")
    parameter_name = "provider"
    lookup = "account__provider"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        values = (
            model_admin.get_queryset(request)
            .order_by()
            .values_list(self.lookup, flat=True)
            .distinct()
        )
        return [(value, value) for value in sorted(values)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any] | None:
        value = self.value()
        return queryset.filter(**{self.lookup: value}) if value else queryset


class EventProviderFilter(ProviderFilter):
    lookup = "token__account__provider"


def _user_search_fields(prefix: str) -> list[str]:
    return [f"{prefix}{name}" for name in get_account_adapter().get_user_search_fields()]


# --------------------------------------------------------------------------
# The token list
# --------------------------------------------------------------------------


class RefreshEventInline(admin.TabularInline):  # type: ignore[type-arg]
    model = RefreshEvent
    template = "admin/token_rotation/history_inline.html"
    verbose_name_plural = _("refresh history (newest first)")
    fields = readonly_fields = (
        "at_display",
        "outcome",
        "error_code_display",
        "duration_ms",
        "rotated",
        "retry_at_display",
    )
    extra = 0
    can_delete = False
    show_change_link = False

    @admin.display(description=_("time"))
    def at_display(self, event: RefreshEvent) -> str:
        return when(event.at)

    @admin.display(description=_("error"))
    def error_code_display(self, event: RefreshEvent) -> str:
        return event.error_code or EMPTY

    @admin.display(description=_("next retry"))
    def retry_at_display(self, event: RefreshEvent) -> str:
        return when(event.retry_at)

    @admin.display(description=_("duration"))
    def duration_ms(self, event: RefreshEvent) -> str:
        return health.format_duration(event.duration)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


TOKEN_FIELDS = (
    "user",
    "provider",
    "app",
    "status_display",
    "access_token_masked",
    "refresh_token_masked",
    "expires_display",
)
STATE_FIELDS = (
    "last_refreshed_display",
    "refresh_count",
    "last_attempt_display",
    "consecutive_failures",
    "last_error_display",
    "next_retry_display",
    "refresh_expires_display",
    "history_link",
)


class SocialTokenAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    # Narrow columns (times as "in 4 min", the date in a tooltip): the whole row
    # fits a 1280 px screen beside the admin's two sidebars (tests/test_admin_browser.py).
    # The refresh count and last refresh are on each token's page.
    list_display = (
        "user",
        "provider",
        "status_display",
        "expires_column",
        "last_error",
        "refresh_expires_column",
    )
    list_display_links = ("user",)
    change_list_template = "admin/token_rotation/change_list.html"
    empty_value_display = EMPTY
    list_filter = (ProviderFilter, StatusFilter)
    list_select_related = ("account__user", "app", "rotation_state")
    ordering = ("expires_at", "pk")
    actions = ["refresh_now", "clear_error", "revoke_at_provider"]
    inlines = [RefreshEventInline]
    fieldsets = (
        (_("Token"), {"fields": TOKEN_FIELDS}),
        (_("Refresh state"), {"fields": STATE_FIELDS}),
    )
    readonly_fields = TOKEN_FIELDS + STATE_FIELDS

    # -- read-only: nothing here accepts a token ----------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_refresh_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("socialaccount.change_socialtoken")

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("socialaccount.delete_socialtoken")

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        # By user only: never by a token value.
        return [*_user_search_fields("account__user__"), "account__uid"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[SocialToken]:
        return (
            super().get_queryset(request).select_related("account__user", "app", "rotation_state")
        )

    # -- columns ------------------------------------------------------------

    @admin.display(description=_("user"), ordering="account__user")
    def user(self, token: SocialToken) -> str:
        return str(token.account.user)

    @admin.display(description=_("provider"), ordering="account__provider")
    def provider(self, token: SocialToken) -> str:
        return str(token.account.provider)

    @admin.display(description=_("status"))
    def status_display(self, token: SocialToken) -> SafeString:
        status = health.status(token)
        return format_html(
            '<strong style="color: {}" class="token-status token-status-{}">{}</strong>',
            STATUS_COLOURS[status],
            status.value,
            status.label,
        )

    @admin.display(description=_("access token expires"), ordering="expires_at")
    def expires_display(self, token: SocialToken) -> str:
        expires = expiry(token, _state(token))
        return when(expires) if expires else str(_("unknown"))

    @admin.display(description=_("access token expires"), ordering="expires_at")
    def expires_column(self, token: SocialToken) -> SafeString | str:
        expires = expiry(token, _state(token))
        return when_short(expires) if expires else str(_("unknown"))

    @admin.display(description=_("last refreshed"), ordering="rotation_state__last_refreshed_at")
    def last_refreshed_display(self, token: SocialToken) -> str:
        state = _state(token)
        return when(state.last_refreshed_at if state else None)

    @admin.display(
        description=_("refresh token expires"), ordering="rotation_state__refresh_expires_at"
    )
    def refresh_expires_column(self, token: SocialToken) -> SafeString | str:
        """When the refresh token expires (known when the provider says)."""
        state = _state(token)
        if state is None or state.refresh_expires_at is None:
            return EMPTY
        return when_short(state.refresh_expires_at)

    @admin.display(description=_("refreshes"), ordering="rotation_state__refresh_count")
    def refresh_count(self, token: SocialToken) -> int:
        state = _state(token)
        return state.refresh_count if state else 0

    @admin.display(description=_("last error"), ordering="rotation_state__last_error")
    def last_error(self, token: SocialToken) -> str:
        state = _state(token)
        return (state.last_error if state else "") or EMPTY

    @admin.display(description=_("refresh token expires"))
    def refresh_expires_display(self, token: SocialToken) -> str:
        state = _state(token)
        return when(state.refresh_expires_at if state else None)

    @admin.display(description=_("access token"))
    def access_token_masked(self, token: SocialToken) -> str:
        return mask(token.token)

    @admin.display(description=_("refresh token"))
    def refresh_token_masked(self, token: SocialToken) -> str:
        return mask(token.token_secret)

    @admin.display(description=_("last attempt"))
    def last_attempt_display(self, token: SocialToken) -> str:
        state = _state(token)
        return when(state.last_attempt_at if state else None)

    @admin.display(description=_("consecutive failures"))
    def consecutive_failures(self, token: SocialToken) -> int:
        state = _state(token)
        return state.consecutive_failures if state else 0

    @admin.display(description=_("last error"))
    def last_error_display(self, token: SocialToken) -> str:
        """The code and its time together: no time without an error."""
        state = _state(token)
        if state is None or not state.last_error:
            return EMPTY
        if state.last_error_at is None:
            return state.last_error
        return f"{state.last_error}, {when(state.last_error_at)}"

    @admin.display(description=_("next retry"))
    def next_retry_display(self, token: SocialToken) -> str:
        state = _state(token)
        return when(state.next_retry_at if state else None)

    @admin.display(description=_("refresh history"))
    def history_link(self, token: SocialToken) -> SafeString:
        url = reverse("admin:token_rotation_refreshevent_changelist")
        return format_html(
            '<a href="{}?token__id__exact={}">{}</a>', url, token.pk, _("all events")
        )

    # -- actions ------------------------------------------------------------

    @admin.action(description=_("Refresh now"), permissions=["refresh"])
    def refresh_now(self, request: HttpRequest, queryset: QuerySet[SocialToken]) -> None:
        refreshed = 0
        failures: Counter[tuple[str, bool]] = Counter()
        for token in queryset.select_related("account", "app", "rotation_state"):
            try:
                rotation.refresh(token, force=True)
            except TokenRotationError as exc:
                failures[(exc.code, exc.permanent)] += 1
            else:
                refreshed += 1
        if refreshed:
            self.message_user(
                request,
                ngettext("Refreshed %d token.", "Refreshed %d tokens.", refreshed) % refreshed,
                messages.SUCCESS,
            )
        for (code, permanent), count in sorted(failures.items()):
            why = _("sign-in required") if permanent else _("will retry")
            self.message_user(
                request,
                ngettext(
                    "%(count)d token failed to refresh: %(code)s (%(why)s).",
                    "%(count)d tokens failed to refresh: %(code)s (%(why)s).",
                    count,
                )
                % {"count": count, "code": code, "why": why},
                messages.ERROR if permanent else messages.WARNING,
            )

    @admin.action(description=_("Clear error"), permissions=["refresh"])
    def clear_error(self, request: HttpRequest, queryset: QuerySet[SocialToken]) -> None:
        # The in-flight marker goes too: a later invalid_grant is then a plain refusal.
        cleared = TokenState.objects.filter(token__in=queryset.values("pk")).clear_failure()
        self.message_user(
            request,
            ngettext(
                "Cleared the recorded error of %d token; the next use will try the provider again.",
                "Cleared the recorded errors of %d tokens; the next use will try the provider "
                "again.",
                cleared,
            )
            % cleared,
            messages.SUCCESS,
        )

    @admin.action(description=_("Revoke at provider"), permissions=["revoke"])
    def revoke_at_provider(
        self, request: HttpRequest, queryset: QuerySet[SocialToken]
    ) -> HttpResponse | None:
        tokens = list(queryset.select_related("account__user", "app"))
        if request.POST.get("post") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": _("Revoke tokens at their provider?"),
                "opts": self.model._meta,
                "tokens": [
                    {
                        "pk": token.pk,
                        "user": str(token.account.user),
                        "provider": token.account.provider,
                        "refresh_token": mask(token.token_secret),
                        "access_token": mask(token.token),
                    }
                    for token in tokens
                ],
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                "action": "revoke_at_provider",
                "media": self.media,
            }
            return TemplateResponse(
                request, "admin/token_rotation/revoke_confirmation.html", context
            )
        results = [revocation.revoke(token, delete=True) for token in tokens]
        revoked = [token for token, result in zip(tokens, results, strict=True) if result.revoked]
        if revoked:
            self.log_deletions(request, revoked)  # type: ignore[arg-type]
            self.message_user(
                request,
                ngettext(
                    "Revoked %d token at its provider and removed it.",
                    "Revoked %d tokens at their provider and removed them.",
                    len(revoked),
                )
                % len(revoked),
                messages.SUCCESS,
            )
        failed = Counter(result.code for result in results if not result.revoked)
        for code, count in sorted(failed.items()):
            self.message_user(
                request,
                ngettext(
                    "%(count)d token was not revoked (%(code)s) and is kept.",
                    "%(count)d tokens were not revoked (%(code)s) and are kept.",
                    count,
                )
                % {"count": count, "code": code},
                messages.ERROR,
            )
        return None


# --------------------------------------------------------------------------
# The refresh history
# --------------------------------------------------------------------------


class RefreshEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    # The token column names its user and provider (one column, not three): the list
    # fits 1280 px beside the filters and the date links (tests/test_admin_browser.py).
    list_display = (
        "at_display",
        "token_link",
        "outcome",
        "error_code",
        "duration_ms",
        "rotated",
    )
    list_filter = ("outcome", EventProviderFilter)
    change_list_template = "admin/token_rotation/change_list.html"
    empty_value_display = EMPTY
    list_select_related = ("token__account__user",)
    date_hierarchy = "at"
    # The event's page (read-only): the same formats as the list, durations in ms.
    fields = readonly_fields = (
        "at_display",
        "token_link",
        "user",
        "provider",
        "outcome",
        "error_code",
        "duration_ms",
        "rotated",
        "retry_at_display",
    )

    def get_search_fields(self, request: HttpRequest) -> list[str]:
        return _user_search_fields("token__account__user__")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("time"), ordering="at")
    def at_display(self, event: RefreshEvent) -> SafeString:
        # One line at 1280 px: the time, its relative form in a tooltip.
        return format_html(
            '<span style="white-space: nowrap" title="{}">{}</span>',
            health.format_relative(event.at),
            health.format_time(event.at),
        )

    @admin.display(description=_("next retry"))
    def retry_at_display(self, event: RefreshEvent) -> str:
        return when(event.retry_at)

    @admin.display(description=_("token"), ordering="token__account__user")
    def token_link(self, event: RefreshEvent) -> SafeString:
        """``alice (google)``, a link to the token's page."""
        url = reverse("admin:socialaccount_socialtoken_change", args=[event.token_id])
        account = event.token.account
        return format_html('<a href="{}">{} ({})</a>', url, account.user, account.provider)

    @admin.display(description=_("user"), ordering="token__account__user")
    def user(self, event: RefreshEvent) -> str:
        return str(event.token.account.user)

    @admin.display(description=_("provider"), ordering="token__account__provider")
    def provider(self, event: RefreshEvent) -> str:
        return str(event.token.account.provider)

    @admin.display(description=_("duration"), ordering="duration")
    def duration_ms(self, event: RefreshEvent) -> str:
        return health.format_duration(event.duration)


# allauth calls the model "social application tokens", which an operator looking
# for the OAuth tokens does not find. Only the runtime names change: migrations
# read the declared Meta (``_meta.original_attrs``), so no migration of allauth's
# app appears.
SocialToken._meta.verbose_name = _("OAuth token")
SocialToken._meta.verbose_name_plural = _("OAuth tokens")

if app_settings.ADMIN:  # TOKEN_ROTATION_ADMIN = False keeps allauth's own
    if admin.site.is_registered(SocialToken):
        admin.site.unregister(SocialToken)
    admin.site.register(SocialToken, SocialTokenAdmin)
admin.site.register(RefreshEvent, RefreshEventAdmin)
