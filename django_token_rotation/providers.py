"""From a ``SocialToken`` to the token endpoint that refreshes it, through allauth.

Nothing here knows a provider's URL: the endpoint, the client credentials and
the client authentication method come from the provider's allauth OAuth2
adapter and its ``SocialApp`` (from the database or from
``SOCIALACCOUNT_PROVIDERS``), exactly as allauth uses them at sign-in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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

from . import client
from .conf import app_settings
from .exceptions import (
    ImproperlyConfiguredProvider,
    ProviderNotRefreshable,
    TokenRefreshUnavailable,
    TokenRotationError,
)

logger = logging.getLogger("django_token_rotation")


#: Why a provider's tokens are not refreshed: reason code -> what it means.
#: docs/providers.rst documents the same codes (tests/test_provider_conformance.py).
REFUSAL_REASONS: dict[str, str] = {
    "not_oauth2": "not an OAuth 2.0 provider (OAuth 1.0a, OpenID 2.0, SAML, Telegram): "
    "its sign-ins carry no refresh token",
    "custom_token_exchange": "allauth exchanges its tokens with provider-specific code "
    "(its own client or request), which a standard refresh would get wrong",
    "sign_in_parameter": "the token endpoint needs a value that only the sign-in request "
    "carried (allauth does not store it)",
}


@dataclass(frozen=True)
class Quirks:
    """What this app knows about one allauth provider beyond its allauth adapter."""

    #: Does a refresh return a new refresh token? "always", "optional" (the
    #: app's or the provider's setting decides), "never", or "" (undocumented).
    rotation: str = ""
    #: Quirks of the refresh that this app handles, in a few words.
    handled: str = ""
    #: Settings the refresh needs beyond the app's client id and secret.
    settings: str = ""
    #: How a site asks this provider for refresh tokens, when it must (check
    #: W007): ``("scope", value)`` or ``("auth_param", "name=value")``.
    offline: tuple[str, str] | None = None
    #: ``token_type`` values, besides ``Bearer``, that name a bearer token here.
    token_types: frozenset[str] = frozenset()
    #: The reason (a key of :data:`REFUSAL_REASONS`) when the provider is refused
    #: although its allauth classes look standard.
    refused: str | None = None
    #: Seconds its access tokens are assumed to live when an answer says
    #: nothing (no ``expires_in``, an opaque token) and no earlier lifetime is
    #: known: for providers documented never to send one. Before
    #: ``TOKEN_ROTATION_DEFAULT_LIFETIME``.
    lifetime: int | None = None
    #: Values only the sign-in request carried that the token endpoint needs on
    #: a refresh too (VK ID's ``device_id``). allauth does not store them; they
    #: are sent from the account's ``extra_data`` when a site keeps them there,
    #: and a token whose account lacks one is refused (``sign_in_parameter``).
    sign_in_values: tuple[str, ...] = ()
    #: Send a fresh random ``state`` with each refresh, as allauth does at sign-in.
    sends_state: bool = False


def _at_import(provider_id: str, key: str) -> str:
    return (
        f"SOCIALACCOUNT_PROVIDERS['{provider_id}']['{key}'] (allauth reads it when it is imported)"
    )


#: THE provider quirks table: allauth provider id -> :class:`Quirks`. A provider
#: missing here refreshes the standard way, as its allauth adapter says.
QUIRKS: dict[str, Quirks] = {
    "amazon_cognito": Quirks(
        rotation="never", settings="SOCIALACCOUNT_PROVIDERS['amazon_cognito']['DOMAIN']"
    ),
    "atlassian": Quirks(rotation="always", offline=("scope", "offline_access")),
    "auth0": Quirks(
        rotation="optional",
        settings=_at_import("auth0", "AUTH0_URL"),
        offline=("scope", "offline_access"),
    ),
    "apple": Quirks(
        rotation="never",
        handled="the ES256 client secret, signed per refresh by allauth's own generator; "
        "the first of several client ids",
        settings="the app's key (team id), secret (key id) and settings certificate_key",
    ),
    "battlenet": Quirks(
        handled="the region comes from SOCIALACCOUNT_PROVIDERS['battlenet']['REGION'] "
        "(the sign-in's ?region= is gone at refresh time)",
        settings="SOCIALACCOUNT_PROVIDERS['battlenet']['REGION'] outside the US region",
    ),
    "dingtalk": Quirks(refused="custom_token_exchange"),
    "dropbox": Quirks(rotation="never", offline=("auth_param", "token_access_type=offline")),
    "feishu": Quirks(refused="custom_token_exchange"),
    "github": Quirks(
        rotation="always",
        handled="dead grants answered with HTTP 200 (bad_refresh_token)",
    ),
    "google": Quirks(rotation="never", offline=("auth_param", "access_type=offline")),
    "keycloak": Quirks(rotation="optional"),
    "microsoft": Quirks(rotation="always", offline=("scope", "offline_access")),
    "okta": Quirks(
        rotation="optional",
        settings=_at_import("okta", "OKTA_BASE_URL"),
        offline=("scope", "offline_access"),
    ),
    "gumroad": Quirks(settings=_at_import("gumroad", "GUMROAD_URL")),
    "jupyterhub": Quirks(settings=_at_import("jupyterhub", "API_URL")),
    "lemonldap": Quirks(settings=_at_import("lemonldap", "LEMONLDAP_URL")),
    "netiq": Quirks(settings=_at_import("netiq", "NETIQ_URL")),
    "openid_connect": Quirks(
        rotation="optional", settings="the app's server_url", offline=("scope", "offline_access")
    ),
    "salesforce": Quirks(
        rotation="never",
        handled="no expires_in ever: the access token lives as long as the org's session "
        "timeout (15 minutes to 24 hours), assumed 15 minutes",
        settings="the app's key: the instance URL (https://login.salesforce.com or the org's "
        "My Domain URL)",
        offline=("scope", "refresh_token"),
        lifetime=15 * 60,
    ),
    "shopify": Quirks(refused="sign_in_parameter"),
    "slack": Quirks(
        rotation="always",
        handled='dead grants answered with HTTP 200 {"ok": false, "error": ...}; '
        'token_type "user" and "bot" (bearer tokens)',
        token_types=frozenset({"user", "bot"}),
    ),
    "tiktok": Quirks(rotation="optional", handled="client_key instead of client_id"),
    "twitch": Quirks(
        rotation="optional",
        handled='dead grants answered {"status": 400, "message": "Invalid refresh token"}; '
        "refresh answers without expires_in (the last known lifetime is carried forward)",
    ),
    "vk": Quirks(
        handled="the sign-in's device_id, from the account's extra_data['device_id'] (allauth "
        "does not store it: tokens without it are refused, sign_in_parameter); a fresh state",
        settings="a SocialAccountAdapter that keeps the callback's device_id in "
        "extra_data['device_id']",
        sign_in_values=("device_id",),
        sends_state=True,
    ),
    "twitter_oauth2": Quirks(rotation="always", offline=("scope", "offline.access")),
}


#: Client classes whose token request is the standard one except for a client
#: secret they generate: provider id -> the client's generator method. The
#: refresh calls allauth's own generator (and ``get_client_id``) each time.
GENERATED_SECRETS: dict[str, str] = {"apple": "generate_client_secret"}


def quirks(provider_id: str) -> Quirks:
    return QUIRKS.get(provider_id, Quirks())


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
    offline = quirks(provider_id).offline
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
    explicit = quirks(provider_class.id).refused
    if explicit:
        return explicit
    adapter_class = getattr(provider_class, "oauth2_adapter_class", None)
    if adapter_class is None:
        return "custom_token_exchange"
    client_class = getattr(adapter_class, "client_class", OAuth2Client)
    generator = GENERATED_SECRETS.get(provider_class.id)
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
        and not quirks(provider_class.id).sign_in_values
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
    """``endpoint`` with this token's own parameters (:attr:`Quirks.sign_in_values`,
    a fresh ``state``), or the refusal when its account lacks one."""
    wanted = quirks(endpoint.provider)
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
    generator = GENERATED_SECRETS.get(type(provider).id)
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
        token_types=quirks(provider_key).token_types,
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
