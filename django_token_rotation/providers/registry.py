"""What this app knows about each provider beyond its allauth classes: one entry each.

An :class:`Entry` holds everything about one provider in one place: how it
rotates refresh tokens, the quirks of its refresh that are handled, the settings
it needs, how a site asks it for refresh tokens, the error answers it gives in
its own words (:attr:`Entry.errors`), its documented access-token lifetime, its
RFC 7009 revocation endpoint. ``docs/providers.rst`` is generated from these
entries (``make providers-doc``). A provider without an entry refreshes the
standard way, as its allauth adapter says.

Pure data and lookups: nothing here speaks HTTP or resolves an allauth app.
Entries are keyed by the account's provider id (``SocialAccount.provider``: the
allauth provider id, or an OpenID Connect app's ``provider_id``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

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

#: What an error shape (:attr:`Entry.errors`) may mean: the standard OAuth 2.0
#: error codes the client acts on. The first six mean "sign in again".
MEANINGS = frozenset(
    {
        "invalid_grant",
        "invalid_client",
        "unauthorized_client",
        "invalid_scope",
        "unsupported_grant_type",
        "invalid_request",
        "server_error",
        "temporarily_unavailable",
        "slow_down",
    }
)


#: What an error shape can look like (docs/providers.rst, "Error answers"): the
#: body's ``error`` string, a Graph API error code, a bare ``message`` (lower
#: case), an ``errors`` list item, an HTTP status without an OAuth error.
SHAPE = re.compile(
    r"graph:-?\d{1,12}|message:[^A-Z]{1,100}|field:[^:]+:.+|http:[1-5]\d\d(:empty)?"
    r"|[A-Za-z0-9_.-]{1,64}"
)


@dataclass(frozen=True)
class Entry:
    """What this app knows about one provider beyond its allauth adapter."""

    #: Does a refresh return a new refresh token? "always", "optional" (the
    #: app's or the provider's setting decides), "never", or "" (undocumented).
    rotation: str = ""
    #: Quirks of the refresh that this app handles, in a few words (the docs row).
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
    #: The allauth client's method that generates the client secret for each
    #: token request (Apple's ES256 JWT); the rest of the request is standard.
    generated_secret: str = ""
    #: The provider's error answers in its own words: shape -> one of
    #: :data:`MEANINGS` (shapes: docs/errors.rst, "Error answers in a provider's
    #: words"). ``TOKEN_ROTATION_PROVIDER_ERRORS`` adds to them per provider.
    errors: Mapping[str, str] = field(default_factory=dict)
    #: Its RFC 7009 revocation endpoint, when it publishes no discovery document.
    revocation_endpoint: str = ""
    #: What its error answers look like (the docs row, reStructuredText).
    errors_note: str = ""


def _at_import(provider_id: str, key: str) -> str:
    return (
        f"SOCIALACCOUNT_PROVIDERS['{provider_id}']['{key}'] (allauth reads it when it is imported)"
    )


#: Facebook and Instagram (Graph API): ``{"error": {"code": 190, "type": "OAuthException"}}``.
_GRAPH_API_ERRORS = {
    "graph:190": "invalid_grant",
    "graph:1": "server_error",
    "graph:2": "temporarily_unavailable",
    "graph:4": "slow_down",
    "graph:17": "slow_down",
    "graph:32": "slow_down",
    "graph:613": "slow_down",
}

#: THE registry: provider id -> its :class:`Entry`, one per provider, by id.
ENTRIES: Mapping[str, Entry] = MappingProxyType(
    {
        "amazon_cognito": Entry(
            rotation="never", settings="SOCIALACCOUNT_PROVIDERS['amazon_cognito']['DOMAIN']"
        ),
        "apple": Entry(
            rotation="never",
            handled="the ES256 client secret, signed per refresh by allauth's own generator; "
            "the first of several client ids",
            settings="the app's key (team id), secret (key id) and settings certificate_key",
            generated_secret="generate_client_secret",
        ),
        "atlassian": Entry(rotation="always", offline=("scope", "offline_access")),
        "auth0": Entry(
            rotation="optional",
            settings=_at_import("auth0", "AUTH0_URL"),
            offline=("scope", "offline_access"),
        ),
        "battlenet": Entry(
            handled="the region comes from SOCIALACCOUNT_PROVIDERS['battlenet']['REGION'] "
            "(the sign-in's ?region= is gone at refresh time)",
            settings="SOCIALACCOUNT_PROVIDERS['battlenet']['REGION'] outside the US region",
        ),
        "dingtalk": Entry(refused="custom_token_exchange"),
        "dropbox": Entry(rotation="never", offline=("auth_param", "token_access_type=offline")),
        "facebook": Entry(
            handled="dead grants answered with Graph API error objects (code 190)",
            errors=_GRAPH_API_ERRORS,
            errors_note='``{"error": {"code": 190, "type": "OAuthException"}}``',
        ),
        "feishu": Entry(refused="custom_token_exchange"),
        "github": Entry(
            rotation="always",
            handled="dead grants answered with HTTP 200 (bad_refresh_token)",
            errors={
                "bad_refresh_token": "invalid_grant",
                "incorrect_client_credentials": "invalid_client",
            },
            errors_note="HTTP 200, JSON or form-encoded",
        ),
        "google": Entry(
            rotation="never",
            offline=("auth_param", "access_type=offline"),
            revocation_endpoint="https://oauth2.googleapis.com/revoke",
        ),
        "gumroad": Entry(settings=_at_import("gumroad", "GUMROAD_URL")),
        "instagram": Entry(
            handled="dead grants answered with Graph API error objects (code 190)",
            errors=_GRAPH_API_ERRORS,
            errors_note='``{"error": {"code": 190, "type": "OAuthException"}}``',
        ),
        "jupyterhub": Entry(settings=_at_import("jupyterhub", "API_URL")),
        "keycloak": Entry(rotation="optional"),
        "lemonldap": Entry(settings=_at_import("lemonldap", "LEMONLDAP_URL")),
        "microsoft": Entry(rotation="always", offline=("scope", "offline_access")),
        "netiq": Entry(settings=_at_import("netiq", "NETIQ_URL")),
        "okta": Entry(
            rotation="optional",
            settings=_at_import("okta", "OKTA_BASE_URL"),
            offline=("scope", "offline_access"),
        ),
        "openid_connect": Entry(
            rotation="optional",
            settings="the app's server_url",
            offline=("scope", "offline_access"),
        ),
        "salesforce": Entry(
            rotation="never",
            handled="no expires_in ever: the access token lives as long as the org's session "
            "timeout (15 minutes to 24 hours), assumed 15 minutes",
            settings="the app's key: the instance URL (https://login.salesforce.com or the "
            "org's My Domain URL)",
            offline=("scope", "refresh_token"),
            lifetime=15 * 60,
        ),
        "shopify": Entry(refused="sign_in_parameter"),
        "slack": Entry(
            rotation="always",
            handled='dead grants answered with HTTP 200 {"ok": false, "error": ...}; '
            'token_type "user" and "bot" (bearer tokens)',
            token_types=frozenset({"user", "bot"}),
            errors={
                "invalid_refresh_token": "invalid_grant",
                "token_revoked": "invalid_grant",
                "token_expired": "invalid_grant",
                "invalid_client_id": "invalid_client",
                "bad_client_secret": "invalid_client",
                "ratelimited": "slow_down",
                "internal_error": "server_error",
                "fatal_error": "server_error",
                "service_unavailable": "temporarily_unavailable",
            },
            errors_note='HTTP 200, ``{"ok": false, "error": ...}``',
        ),
        "strava": Entry(
            handled='dead grants answered {"errors": [{"field": "refresh_token", '
            '"code": "invalid"}]}',
            errors={"field:refresh_token:invalid": "invalid_grant"},
            errors_note='HTTP 400, ``{"errors": [{"field": "refresh_token", "code": "invalid"}]}``',
        ),
        "tiktok": Entry(rotation="optional", handled="client_key instead of client_id"),
        "twitch": Entry(
            rotation="optional",
            handled='dead grants answered {"status": 400, "message": "Invalid refresh token"}; '
            "refresh answers without expires_in (the last known lifetime is carried forward)",
            errors={"message:invalid refresh token": "invalid_grant"},
            errors_note='HTTP 400, ``{"status": 400, "message": "Invalid refresh token"}``',
        ),
        "twitter_oauth2": Entry(rotation="always", offline=("scope", "offline.access")),
        "vk": Entry(
            handled="the sign-in's device_id, from the account's extra_data['device_id'] "
            "(allauth does not store it: tokens without it are refused, sign_in_parameter); "
            "a fresh state",
            settings="a SocialAccountAdapter that keeps the callback's device_id in "
            "extra_data['device_id']",
            sign_in_values=("device_id",),
            sends_state=True,
        ),
    }
)

_NONE = Entry()


def entry(provider_id: str) -> Entry:
    """The provider's entry (an empty one for a provider without quirks)."""
    return ENTRIES.get(provider_id, _NONE)


def error_shapes(provider_id: str) -> dict[str, str]:
    """The provider's error shapes: its entry's, then the site's
    ``TOKEN_ROTATION_PROVIDER_ERRORS[provider_id]`` (which win)."""
    from django_token_rotation.conf import app_settings

    return {**entry(provider_id).errors, **app_settings.PROVIDER_ERRORS.get(provider_id, {})}
