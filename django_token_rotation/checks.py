"""System checks (``manage.py check``), each with a stable id and a hint."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections
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


def _anchor(name: str) -> str:
    """The id Sphinx gives the heading ``TOKEN_ROTATION_<NAME>`` of docs/settings.rst."""
    return f"token-rotation-{name.lower().replace('_', '-')}"


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
    from .conf import app_settings, docs_url

    errors: list[checks.CheckMessage] = []
    for name in dir(app_settings):
        if not name.isupper():
            continue
        try:
            getattr(app_settings, name)
        except ImproperlyConfigured as exc:
            if not str(exc).startswith(f"{app_settings.prefix}{name} "):
                continue  # derived from another setting (LEASE from TIMEOUT): reported there
            errors.append(
                checks.Error(
                    str(exc),
                    hint=f"See {docs_url('settings', _anchor(name))}",
                    id="token_rotation.E005",
                )
            )
    try:
        from .singleflight import LEASE_MARGIN

        # The lease is renewed when the refresh token is sent; from then on the
        # refresh takes at most TIMEOUT (one deadline for discovery, token call
        # and JWKS) plus the database writes (LEASE_MARGIN).
        if app_settings.LEASE < app_settings.TIMEOUT + LEASE_MARGIN:
            errors.append(
                checks.Error(
                    f"TOKEN_ROTATION_LEASE ({app_settings.LEASE} s) does not outlive a whole "
                    f"refresh: TOKEN_ROTATION_TIMEOUT ({app_settings.TIMEOUT} s) plus "
                    f"{LEASE_MARGIN} s for the database writes. A slow refresh could lose its "
                    "lease and another worker replay the refresh token.",
                    hint=f"Make TOKEN_ROTATION_LEASE at least TOKEN_ROTATION_TIMEOUT + "
                    f"{LEASE_MARGIN} s.",
                    id="token_rotation.E006",
                )
            )
    except ImproperlyConfigured:
        pass  # reported above
    return errors


@checks.register(checks.Tags.compatibility)
def check_deprecated_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A deprecated setting still set: what replaces it (conf.DEPRECATED)."""
    from .conf import deprecated_settings_in_use, docs_url

    return [
        checks.Warning(
            f"{name} is deprecated and will be removed in 2.0: {replacement}.",
            hint=f"Remove {name} from your settings: {docs_url('settings', 'deprecated-settings')}",
            id="token_rotation.W101",
        )
        for name, replacement in deprecated_settings_in_use()
    ]


@checks.register(checks.Tags.compatibility)
def check_provider_errors(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Shapes in ``TOKEN_ROTATION_PROVIDER_ERRORS`` that no answer can ever match."""
    from .conf import app_settings, docs_url
    from .providers.registry import SHAPE

    try:
        configured = app_settings.PROVIDER_ERRORS
    except ImproperlyConfigured:
        return []  # E005
    return [
        checks.Warning(
            f"TOKEN_ROTATION_PROVIDER_ERRORS[{provider!r}] names the shape {shape[:80]!r}, "
            "which no answer can match: the rule is never used.",
            hint="Shapes are an error code, graph:<number>, message:<text in lower case>, "
            "field:<field>:<code>, http:<status> or http:<status>:empty: "
            f"{docs_url('providers')}",
            id="token_rotation.W010",
        )
        for provider, shapes in configured.items()
        for shape in shapes
        if not SHAPE.fullmatch(shape)
    ]


# -- what a newcomer trips on and allauth does not report ------------------------

REQUEST_PROCESSOR = "django.template.context_processors.request"


@checks.register(checks.Tags.urls)
def check_allauth_urls(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """allauth's views must be routed: the "sign in again" prompt links to them."""
    if not apps.is_installed("allauth.account"):
        return []  # E001 says what to install first
    from django.urls import NoReverseMatch, reverse

    try:
        reverse("account_login")
    except NoReverseMatch:
        return [
            checks.Warning(
                "allauth's URLs are not routed (no URL named 'account_login'): users cannot "
                "sign in with a provider, and the 'sign in again' prompt has nowhere to send them.",
                hint='Add path("accounts/", include("allauth.urls")) to your ROOT_URLCONF.',
                id="token_rotation.W008",
            )
        ]
    except Exception:  # a broken URLconf is Django's own check to report
        return []
    return []


@checks.register(checks.Tags.templates)
def check_request_context_processor(
    app_configs: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """The template tags read the request: the ``request`` context processor must be on."""
    engines = [
        engine
        for engine in getattr(settings, "TEMPLATES", [])
        if engine.get("BACKEND") == "django.template.backends.django.DjangoTemplates"
    ]
    if not engines:
        return []
    for engine in engines:
        if REQUEST_PROCESSOR in engine.get("OPTIONS", {}).get("context_processors", []):
            return []
    return [
        checks.Warning(
            f"'{REQUEST_PROCESSOR}' is in no DjangoTemplates engine's context_processors: "
            "{% reauth_prompt %}, {% reauth_redirect %} and {% token_rotation_error %} read the "
            "request and render nothing without it.",
            hint=f"Add '{REQUEST_PROCESSOR}' to TEMPLATES[...]['OPTIONS']['context_processors'] "
            "(django-admin startproject puts it there).",
            id="token_rotation.W009",
        )
    ]


# -- refresh tokens must be asked for -------------------------------------------


def _offline_warning(provider: str, what: str, where: str) -> checks.Warning:
    from .conf import docs_url

    return checks.Warning(
        f"The {provider} app ({where}) does not ask for refresh tokens: {what}.",
        hint="Without a refresh token the user has to sign in again whenever the access "
        "token expires. Silence token_rotation.W007 if this provider issues refresh tokens "
        f"anyway. How each provider issues them: {docs_url('providers')}",
        id="token_rotation.W007",
    )


def offline_access_problems(
    provider: str, scope: Iterable[str] | None, auth_params: dict[str, Any] | None, where: str
) -> list[checks.CheckMessage]:
    """Warnings for one app, from the opt-ins of the provider registry
    (``providers.registry``: Google's access_type=offline, offline_access, X's
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


def _database_apps(model: Any, databases: Sequence[str]) -> list[Any]:
    """The rows of ``model`` in each database, or none where its table is not there yet.

    ``migrate`` runs the database checks before it creates any table, and
    ``check --database`` may meet an empty or unreachable database: a check
    reports problems, it never stops a command.
    """
    rows: list[Any] = []
    for alias in databases:
        try:
            connection = connections[alias]
            if model._meta.db_table not in connection.introspection.table_names():
                continue
            rows.extend(model._default_manager.using(alias).all())
        except DatabaseError:
            continue
    return rows


@checks.register(checks.Tags.database)
def check_offline_access_database_apps(
    app_configs: Any = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    if not databases or not apps.is_installed("allauth.socialaccount"):
        return []
    from allauth.socialaccount.models import SocialApp

    providers = getattr(settings, "SOCIALACCOUNT_PROVIDERS", {}) or {}
    problems: list[checks.CheckMessage] = []
    for app in _database_apps(SocialApp, databases):
        config = providers.get(app.provider, {}) if isinstance(providers, dict) else {}
        scope = app.settings.get("scope", config.get("SCOPE"))
        if scope is None and app.provider == "openid_connect":
            scope = ["openid", "profile", "email"]
        auth_params = app.settings.get("auth_params", config.get("AUTH_PARAMS"))
        problems.extend(
            offline_access_problems(app.provider, scope, auth_params, f"SocialApp {app.pk}")
        )
    return problems


SIGNED_COOKIES = "django.contrib.sessions.backends.signed_cookies"


@checks.register(checks.Tags.compatibility)
def check_headless_sessions(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """allauth headless app clients cannot sign in with signed-cookie sessions (allauth
    does not say so: their ``X-Session-Token`` names a stored session, which a signed
    cookie is not, and allauth headless answers 410 to every request of theirs)."""
    from .conf import docs_url

    if not apps.is_installed("allauth.headless") or settings.SESSION_ENGINE != SIGNED_COOKIES:
        return []
    from allauth.headless import app_settings as headless_settings

    if "app" not in headless_settings.CLIENTS:
        return []
    return [
        checks.Warning(
            "allauth.headless app clients (X-Session-Token) cannot keep a session with "
            f"SESSION_ENGINE = {SIGNED_COOKIES!r}: allauth headless answers them 410, so "
            "their tokens are never refreshed. Browser clients (cookies) are not concerned.",
            hint="Use a server-side session engine (db, cache or cached_db), or set "
            'HEADLESS_CLIENTS = ("browser",) if you serve no app clients: '
            f"{docs_url('headless', 'what-is-not-served')}",
            id="token_rotation.W011",
        )
    ]
