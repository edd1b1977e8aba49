"""From a ``SocialToken`` to the token endpoint that refreshes it, through allauth.

Nothing here knows a provider's URL: the endpoint, the client credentials and
the client authentication method come from the provider's allauth OAuth2
adapter and its ``SocialApp`` (from the database or from
``SOCIALACCOUNT_PROVIDERS``), exactly as allauth uses them at sign-in.

The package: this module resolves a token to its endpoint through allauth;
:mod:`.registry` holds one entry per provider (quirks, error shapes, default
lifetime, revocation endpoint, the docs row); :mod:`.docs` generates the
tables of ``docs/providers.rst`` (``make providers-doc``). The entries are data a contributor adds a
provider to; resolution is code that follows allauth: two modules, so that each
stays one screen of purpose.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from allauth.core import context
from allauth.socialaccount.models import SocialToken
from allauth.socialaccount.providers.oauth2.client import OAuth2Client
from allauth.socialaccount.providers.oauth2.provider import OAuth2Provider
from allauth.socialaccount.providers.oauth2.views import OAuth2Adapter
from allauth.socialaccount.providers.openid_connect.views import OpenIDConnectOAuth2Adapter
from django.core.cache import caches
from django.http import HttpRequest

from django_token_rotation import client
from django_token_rotation.conf import app_settings
from django_token_rotation.exceptions import (
    ImproperlyConfiguredProvider,
    ProviderNotRefreshable,
    TokenRefreshUnavailable,
    TokenRotationError,
)

from .registry import REFUSAL_REASONS, entry, error_shapes

logger = logging.getLogger("django_token_rotation")


def default_scope(provider_id: str) -> list[str]:
    """The scope allauth asks for when a site configures none."""
    from allauth.socialaccount.providers import registry

    cls = registry.get_class(provider_id)
    try:
        scope = cls.get_default_scope(cls.__new__(cls)) if cls is not None else []
    except Exception:  # a provider whose default scope needs its app or request
        return []
    return [str(item) for item in scope or []]


def offline_access_missing(
    provider_id: str, scope: list[str] | None, auth_params: dict[str, Any]
) -> str | None:
    """What the app's configuration lacks to be issued refresh tokens, or ``None``.

    ``scope`` is the configured scope (``None``: allauth's default scope).
    """
    offline = entry(provider_id).offline
    if offline is None:
        return None
    kind, wanted = offline
    if kind == "auth_param":
        name, _, value = wanted.partition("=")
        if auth_params.get(name) != value:
            return f"AUTH_PARAMS lacks {wanted}"
        return None
    if wanted not in (default_scope(provider_id) if scope is None else scope):
        return f"the scope lacks {wanted}"
    return None


def refusal_reason(provider_class: type[Any]) -> str | None:
    """Why tokens of ``provider_class`` cannot be refreshed, or ``None`` if they can.

    Decided from allauth's own classes, so that a new allauth provider is
    classified without a change here: a client class that builds its own token
    request (overrides ``get_access_token``), or an adapter that builds its own
    client or token request, is not refreshed the standard way.
    """
    if not issubclass(provider_class, OAuth2Provider):
        return "not_oauth2"
    explicit = entry(provider_class.id).refused
    if explicit:
        return explicit
    adapter_class = getattr(provider_class, "oauth2_adapter_class", None)
    if adapter_class is None:
        return "custom_token_exchange"
    client_class = getattr(adapter_class, "client_class", OAuth2Client)
    generator = entry(provider_class.id).generated_secret
    if generator and hasattr(client_class, generator):
        # Apple: the client differs only by its generated secret, the adapter's
        # get_access_token_data only by the sign-in session's ID token.
        return None
    if client_class.get_access_token is not OAuth2Client.get_access_token:
        return "custom_token_exchange"
    if adapter_class.get_client is not OAuth2Adapter.get_client:
        return "custom_token_exchange"
    if (
        adapter_class.get_access_token_data is not OAuth2Adapter.get_access_token_data
        and not entry(provider_class.id).sign_in_values
    ):
        return "sign_in_parameter"
    return None


def get_provider(token: SocialToken) -> Any:
    """The allauth provider instance (with its app) that issued ``token``."""
    account = token.account
    try:
        if token.app_id is not None and token.app is not None:
            return token.app.get_provider(_request())
        return account.get_provider(_request())
    except Exception as exc:
        raise _not_configured(account.provider, token, exc) from None


def _request() -> HttpRequest:
    """allauth's current request, or an empty one (the command, a task, cron):
    adapters that read the sign-in's query (battlenet, dingtalk) then fall back
    to their settings as they do when the parameter is absent."""
    return context.request or HttpRequest()


def _not_configured(
    provider: str, token: SocialToken, exc: BaseException
) -> ImproperlyConfiguredProvider:
    # The type only: messages of arbitrary exceptions are not ours to log.
    return ImproperlyConfiguredProvider(
        f"allauth cannot resolve provider {provider!r} to one app and token endpoint "
        f"({type(exc).__name__}).",
        provider=provider,
        token_id=token.pk,
    )


# Resolved endpoints per (database, app, provider id) while a background run
# holds resolution_cache(): one resolution per app instead of one per token.
_cache: dict[tuple[Any, ...], client.TokenEndpoint] | None = None
_cache_users = 0
_cache_guard = threading.Lock()


@contextmanager
def resolution_cache() -> Iterator[None]:
    """Resolve each app's endpoint once while inside (all threads share it).

    For background runs over many tokens: allauth builds the provider and reads
    its ``SocialApp`` for every token otherwise. Web requests are never inside
    one, so a changed ``SocialApp`` takes effect at once for them, and at the
    next run for background refreshes.
    """
    global _cache, _cache_users
    with _cache_guard:
        if _cache_users == 0:
            _cache = {}
        _cache_users += 1
    try:
        yield
    finally:
        with _cache_guard:
            _cache_users -= 1
            if _cache_users == 0:
                _cache = None


def resolve(token: SocialToken) -> client.TokenEndpoint:
    """The token endpoint and client credentials that refresh ``token``.

    Raises :class:`ProviderNotRefreshable` (code ``unsupported_provider``) for
    tokens this app leaves alone, with the reason of :data:`REFUSAL_REASONS` in
    its message, and :class:`ImproperlyConfiguredProvider` when allauth cannot
    resolve the provider, its app or its token endpoint (a configuration error:
    logged once, the token left alone).
    """
    cache = _cache
    if cache is None:
        return _for_token(token, _resolve(token))
    key = (token._state.db, token.app_id, token.account.provider)
    endpoint = cache.get(key)
    if endpoint is None:
        endpoint = cache[key] = _resolve(token)
    return _for_token(token, endpoint)


def _for_token(token: SocialToken, endpoint: client.TokenEndpoint) -> client.TokenEndpoint:
    """``endpoint`` with this token's own parameters (:attr:`.registry.Entry.sign_in_values`,
    a fresh ``state``), or the refusal when its account lacks one."""
    wanted = entry(endpoint.provider)
    if not (wanted.sign_in_values or wanted.sends_state):
        return endpoint
    extra = token.account.extra_data if isinstance(token.account.extra_data, dict) else {}
    params: dict[str, str] = {}
    for name in wanted.sign_in_values:
        value = extra.get(name)
        if not isinstance(value, str) or not value or len(value) > 256:
            raise ProviderNotRefreshable(
                f"The token endpoint needs the sign-in's {name!r}, which allauth does not "
                f"store; the account's extra_data has none [sign_in_parameter].",
                provider=endpoint.provider,
                token_id=token.pk,
            )
        params[name] = value
    if wanted.sends_state:
        params["state"] = str(uuid.uuid4())
    return dataclasses.replace(endpoint, params={**endpoint.params, **params})


def _resolve(token: SocialToken) -> client.TokenEndpoint:
    provider = get_provider(token)
    provider_key = token.account.provider
    reason = refusal_reason(type(provider))
    if reason is not None:
        adapter_class = getattr(provider, "oauth2_adapter_class", None)
        client_class = getattr(adapter_class, "client_class", None)
        via = f" ({client_class.__name__})" if client_class not in (None, OAuth2Client) else ""
        raise ProviderNotRefreshable(
            f"{type(provider).__name__}{via}: {REFUSAL_REASONS[reason]} [{reason}].",
            provider=provider_key,
            token_id=token.pk,
        )
    try:
        adapter = provider.get_oauth2_adapter(_request())
        oidc: dict[str, Any] = {}
        if isinstance(adapter, OpenIDConnectOAuth2Adapter):
            # allauth fetches the discovery document once per adapter instance,
            # that is once per request. Give it our cached copy instead.
            oidc = adapter._openid_config = openid_configuration(provider)
        try:
            url = adapter.access_token_url
        except KeyError:  # a discovery document without "token_endpoint"
            url = None
        basic_auth = bool(adapter.basic_auth)
        headers = adapter.headers
        expires_in_key = adapter.expires_in_key
    except TokenRotationError:
        raise
    except Exception as exc:
        raise _not_configured(provider_key, token, exc) from None
    if isinstance(url, str) and urlsplit(url).hostname in (None, "none"):
        # "None/oauth/token", "https://None/...": allauth built the URL from a
        # setting the site did not give (AUTH0_URL, OKTA_BASE_URL...).
        raise _not_configured(provider_key, token, ValueError())
    if not isinstance(url, str) or not url:
        raise TokenRefreshUnavailable(
            "The provider names no token endpoint.",
            code="discovery_failed",
            provider=provider_key,
            token_id=token.pk,
        )
    app = provider.app
    client_class = getattr(adapter, "client_class", OAuth2Client)
    client_id, client_secret = app.client_id, app.secret or ""
    generator = entry(type(provider).id).generated_secret
    if generator:
        try:
            allauth_client = client_class(
                _request(), app.client_id, app.secret, "POST", url, callback_url=""
            )
            client_secret = getattr(allauth_client, generator)()
            client_id = getattr(allauth_client, "get_client_id", lambda: app.client_id)()
        except Exception as exc:  # no key, no certificate_key, two apps...
            raise _not_configured(provider_key, token, exc) from None
    return client.TokenEndpoint(
        url=url,
        client_id=client_id,
        client_secret=client_secret,
        provider=provider_key,
        basic_auth=basic_auth,
        headers=headers,
        client_id_parameter=client_class.client_id_parameter,
        expires_in_key=expires_in_key,
        issuer=_string(oidc.get("issuer")),
        jwks_uri=_string(oidc.get("jwks_uri")),
        token_types=entry(provider_key).token_types,
        errors=error_shapes(provider_key),
    )


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def openid_configuration(provider: Any, *, timeout: float | None = None) -> dict[str, Any]:
    """The provider's discovery document, with the app's overrides, cached.

    ``timeout`` bounds a fetch (default ``TOKEN_ROTATION_TIMEOUT``).
    """
    url = provider.server_url
    cache = caches[app_settings.CACHE]
    key = "token_rotation:oidc:" + hashlib.sha256(url.encode()).hexdigest()
    document = cache.get(key)
    if not isinstance(document, dict):
        document = client.fetch_json(
            url, provider=provider.app.provider_id or provider.id, timeout=timeout
        )
        cache.set(key, document, app_settings.DISCOVERY_CACHE_SECONDS)
    overrides = provider.app.settings.get("openid_configuration_overrides", {})
    return {**document, **overrides}
