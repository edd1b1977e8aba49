"""From a ``SocialToken`` to the token endpoint that refreshes it, through allauth.

Nothing here knows a provider's URL: the endpoint, the client credentials and
the client authentication method come from the provider's allauth OAuth2
adapter and its ``SocialApp`` (from the database or from
``SOCIALACCOUNT_PROVIDERS``), exactly as allauth uses them at sign-in.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from allauth.core import context
from allauth.socialaccount.models import SocialApp, SocialToken
from allauth.socialaccount.providers.oauth2.client import OAuth2Client
from allauth.socialaccount.providers.oauth2.provider import OAuth2Provider
from allauth.socialaccount.providers.openid_connect.views import OpenIDConnectOAuth2Adapter
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured, MultipleObjectsReturned

from . import client
from .conf import app_settings
from .exceptions import (
    ImproperlyConfiguredProvider,
    ProviderNotRefreshable,
    TokenRefreshUnavailable,
)

logger = logging.getLogger("django_token_rotation")


def get_provider(token: SocialToken) -> Any:
    """The allauth provider instance (with its app) that issued ``token``."""
    account = token.account
    try:
        if token.app_id is not None and token.app is not None:
            return token.app.get_provider(context.request)
        return account.get_provider(context.request)
    except (SocialApp.DoesNotExist, MultipleObjectsReturned, ImproperlyConfigured) as exc:
        raise ImproperlyConfiguredProvider(
            f"allauth cannot resolve provider {account.provider!r} to exactly one app "
            f"({type(exc).__name__}).",
            provider=account.provider,
            token_id=token.pk,
        ) from None


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

    Raises :class:`ProviderNotRefreshable` for tokens this app leaves alone
    (OAuth1 providers; OAuth2 providers whose token exchange allauth does with
    a provider-specific client, such as Apple's signed client secret).
    """
    cache = _cache
    if cache is None:
        return _resolve(token)
    key = (token._state.db, token.app_id, token.account.provider)
    endpoint = cache.get(key)
    if endpoint is None:
        endpoint = cache[key] = _resolve(token)
    return endpoint


def _resolve(token: SocialToken) -> client.TokenEndpoint:
    provider = get_provider(token)
    provider_key = token.account.provider
    if not isinstance(provider, OAuth2Provider):
        raise ProviderNotRefreshable(
            f"{type(provider).__name__} is not an OAuth 2.0 provider; its tokens do not refresh.",
            provider=provider_key,
            token_id=token.pk,
        )
    adapter = provider.get_oauth2_adapter(context.request)
    client_class = getattr(adapter, "client_class", OAuth2Client)
    if client_class is not OAuth2Client:
        raise ProviderNotRefreshable(
            f"{type(adapter).__name__} exchanges tokens with its own client "
            f"({client_class.__name__}); refreshing it needs provider-specific code.",
            provider=provider_key,
            token_id=token.pk,
        )
    oidc: dict[str, Any] = {}
    if isinstance(adapter, OpenIDConnectOAuth2Adapter):
        # allauth fetches the discovery document once per adapter instance,
        # that is once per request. Give it our cached copy instead.
        oidc = adapter._openid_config = openid_configuration(provider)
    try:
        url = adapter.access_token_url
    except KeyError:  # a discovery document without "token_endpoint"
        url = None
    if not isinstance(url, str) or not url:
        raise TokenRefreshUnavailable(
            "The provider names no token endpoint.",
            code="discovery_failed",
            provider=provider_key,
            token_id=token.pk,
        )
    app = provider.app
    return client.TokenEndpoint(
        url=url,
        client_id=app.client_id,
        client_secret=app.secret or "",
        provider=provider_key,
        basic_auth=bool(adapter.basic_auth),
        headers=adapter.headers,
        client_id_parameter=client_class.client_id_parameter,
        expires_in_key=adapter.expires_in_key,
        issuer=_string(oidc.get("issuer")),
        jwks_uri=_string(oidc.get("jwks_uri")),
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
