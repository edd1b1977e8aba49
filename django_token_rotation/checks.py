"""System checks (``manage.py check``), each with a stable id and a hint."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

MIDDLEWARE_PATH = "django_token_rotation.middleware.TokenRefreshMiddleware"

# What must come before our middleware, and why.
PREREQUISITES = (
    ("django.contrib.sessions.middleware.SessionMiddleware", "it reads the session"),
    (
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "it needs request.user",
    ),
    ("allauth.account.middleware.AccountMiddleware", "allauth expects its context first"),
)


def _middleware_entries() -> list[object]:
    """What each MIDDLEWARE path imports to (a class or a function); ``None`` if broken."""
    entries: list[object] = []
    for path in settings.MIDDLEWARE:
        try:
            entries.append(import_string(path))
        except ImportError:
            entries.append(None)
    return entries


def _index_of(entries: Sequence[object], wanted: object) -> int | None:
    """Where ``wanted`` (or a subclass of it) stands in MIDDLEWARE."""
    for index, entry in enumerate(entries):
        if entry is wanted:
            return index
        if isinstance(entry, type) and isinstance(wanted, type) and issubclass(entry, wanted):
            return index
    return None


@checks.register(checks.Tags.compatibility)
def check_setup(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    if not apps.is_installed("allauth.socialaccount"):
        errors.append(
            checks.Error(
                "django-token-rotation needs allauth's socialaccount app.",
                hint="Add 'allauth', 'allauth.account' and 'allauth.socialaccount' "
                "to INSTALLED_APPS.",
                id="token_rotation.E001",
            )
        )
    if getattr(settings, "SOCIALACCOUNT_STORE_TOKENS", False) is not True:
        errors.append(
            checks.Error(
                "SOCIALACCOUNT_STORE_TOKENS is not True: allauth does not store the tokens "
                "this app refreshes.",
                hint="Set SOCIALACCOUNT_STORE_TOKENS = True.",
                id="token_rotation.E002",
            )
        )
    errors.extend(_check_middleware())
    errors.extend(_check_settings())
    return errors


def _check_middleware() -> list[checks.CheckMessage]:
    from .middleware import TokenRefreshMiddleware

    entries = _middleware_entries()
    ours = _index_of(entries, TokenRefreshMiddleware)
    if ours is None:
        return [
            checks.Warning(
                "TokenRefreshMiddleware is not in MIDDLEWARE: tokens are refreshed only "
                "when get_access_token() is called, and templates never see session.error.",
                hint=f"Add '{MIDDLEWARE_PATH}' after allauth's AccountMiddleware, or silence "
                "token_rotation.W003 if you only use get_access_token().",
                id="token_rotation.W003",
            )
        ]
    errors: list[checks.CheckMessage] = []
    for path, why in PREREQUISITES:
        try:
            prerequisite = import_string(path)
        except ImportError:
            continue
        index = _index_of(entries, prerequisite)
        if index is None or index > ours:
            where = "is missing from" if index is None else "comes after TokenRefreshMiddleware in"
            errors.append(
                checks.Error(
                    f"{path} {where} MIDDLEWARE; TokenRefreshMiddleware needs it first ({why}).",
                    hint=f"Put '{MIDDLEWARE_PATH}' after '{path}'.",
                    id="token_rotation.E004",
                )
            )
    return errors


def _check_settings() -> list[checks.CheckMessage]:
    from .conf import app_settings

    errors: list[checks.CheckMessage] = []
    for name in dir(app_settings):
        if not name.isupper():
            continue
        try:
            getattr(app_settings, name)
        except ImproperlyConfigured as exc:
            errors.append(
                checks.Error(
                    str(exc), hint="See the README's settings reference.", id="token_rotation.E005"
                )
            )
    try:
        if app_settings.LEASE <= app_settings.TIMEOUT:
            errors.append(
                checks.Error(
                    f"TOKEN_ROTATION_LEASE ({app_settings.LEASE} s) is not longer than "
                    f"TOKEN_ROTATION_TIMEOUT ({app_settings.TIMEOUT} s): a slow refresh could "
                    "lose its lease and another worker replay the refresh token.",
                    hint="Make TOKEN_ROTATION_LEASE at least a few seconds above the timeout.",
                    id="token_rotation.E006",
                )
            )
    except ImproperlyConfigured:
        pass  # reported above
    return errors


# -- refresh tokens must be asked for -------------------------------------------


def _offline_warning(provider: str, what: str, where: str) -> checks.Warning:
    return checks.Warning(
        f"The {provider} app ({where}) does not ask for refresh tokens: {what}.",
        hint="Without a refresh token the user has to sign in again whenever the access "
        "token expires. Silence token_rotation.W007 if this provider issues refresh tokens "
        "anyway.",
        id="token_rotation.W007",
    )


def offline_access_problems(
    provider: str, scope: Iterable[str] | None, auth_params: dict[str, Any] | None, where: str
) -> list[checks.CheckMessage]:
    """Warnings for one app, from the opt-ins of the provider quirks table
    (``providers.QUIRKS``: Google's access_type=offline, offline_access, X's
    offline.access, Dropbox's token_access_type=offline...)."""
    from .providers import offline_access_missing

    missing = offline_access_missing(
        provider, None if scope is None else list(scope), auth_params or {}
    )
    return [_offline_warning(provider, missing, where)] if missing else []


@checks.register(checks.Tags.compatibility)
def check_offline_access(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Apps configured in ``SOCIALACCOUNT_PROVIDERS`` (database apps: ``check --database``)."""
    problems: list[checks.CheckMessage] = []
    providers = getattr(settings, "SOCIALACCOUNT_PROVIDERS", {}) or {}
    for provider, config in providers.items():
        if not isinstance(config, dict):
            continue
        apps_config = list(config.get("APPS") or ([config["APP"]] if config.get("APP") else []))
        if not apps_config and not config.get("SCOPE") and not config.get("AUTH_PARAMS"):
            continue
        for app in apps_config or [{}]:
            app_settings = app.get("settings", {}) if isinstance(app, dict) else {}
            scope = app_settings.get("scope", config.get("SCOPE"))
            if scope is None and provider == "openid_connect":
                scope = ["openid", "profile", "email"]
            auth_params = app_settings.get("auth_params", config.get("AUTH_PARAMS"))
            name = (app.get("provider_id") or app.get("name")) if app else None
            where = f"SOCIALACCOUNT_PROVIDERS[{provider!r}]" + (f" {name}" if name else "")
            problems.extend(offline_access_problems(provider, scope, auth_params, where))
    return problems


@checks.register(checks.Tags.database)
def check_offline_access_database_apps(
    app_configs: Any = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    if not databases or not apps.is_installed("allauth.socialaccount"):
        return []
    from allauth.socialaccount.models import SocialApp

    providers = getattr(settings, "SOCIALACCOUNT_PROVIDERS", {}) or {}
    problems: list[checks.CheckMessage] = []
    for app in SocialApp.objects.all():
        config = providers.get(app.provider, {}) if isinstance(providers, dict) else {}
        scope = app.settings.get("scope", config.get("SCOPE"))
        if scope is None and app.provider == "openid_connect":
            scope = ["openid", "profile", "email"]
        auth_params = app.settings.get("auth_params", config.get("AUTH_PARAMS"))
        problems.extend(
            offline_access_problems(app.provider, scope, auth_params, f"SocialApp {app.pk}")
        )
    return problems
