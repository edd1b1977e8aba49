"""Provider resolution through allauth: endpoints, credentials, client auth, discovery cache."""

from __future__ import annotations

from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp
from allauth.socialaccount.providers.oauth2.client import OAuth2Client
from allauth.socialaccount.providers.oauth2.provider import OAuth2Provider
from allauth.socialaccount.providers.oauth2.views import OAuth2Adapter
from django.core.cache import cache

from django_token_rotation import TokenRefreshUnavailable, get_access_token, providers
from tests.helpers import MakeToken
from tests.scripted_server import Reply, ScriptedServer

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    cache.clear()


@pytest.fixture
def oidc_app(make_oidc_app: Any) -> SocialApp:
    app: SocialApp = make_oidc_app()
    return app


def discovery_requests(scripted: ScriptedServer) -> int:
    return sum(1 for r in scripted.received if "well-known" in r.path)


def test_openid_connect_endpoint_comes_from_discovery(
    oidc_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    make_token(provider="scripted", app=oidc_app)
    assert get_access_token(user, "scripted") == "new-access"
    [request] = scripted.token_requests
    assert request.form["client_id"] == "oidc-client"
    assert request.form["client_secret"] == "oidc-secret"  # client_secret_post is offered


def test_discovery_document_is_cached_not_fetched_per_refresh(
    oidc_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    token = make_token(provider="scripted", app=oidc_app)
    for _ in range(3):
        providers.resolve(token)
    assert discovery_requests(scripted) == 1


def test_token_auth_method_setting_selects_basic_auth(
    oidc_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    oidc_app.settings["token_auth_method"] = "client_secret_basic"
    oidc_app.save()
    make_token(provider="scripted", app=oidc_app)
    get_access_token(user, "scripted")
    [request] = scripted.token_requests
    assert request.headers["Authorization"].startswith("Basic ")
    assert "client_secret" not in request.form


def test_configuration_overrides_apply(
    oidc_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    oidc_app.settings["openid_configuration_overrides"] = {
        "token_endpoint": f"{scripted.base_url}/token?overridden=1"
    }
    oidc_app.save()
    token = make_token(provider="scripted", app=oidc_app)
    assert providers.resolve(token).url.endswith("?overridden=1")


def test_discovery_failure_is_transient(
    db: None, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    app = SocialApp.objects.create(
        provider="openid_connect",
        provider_id="broken",
        name="Broken",
        client_id="c",
        secret="s",
        settings={"server_url": "http://127.0.0.1:9/nothing-here"},
    )
    make_token(provider="broken", app=app, expires_in=-1)
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        get_access_token(user, "broken")
    assert excinfo.value.code == "connection_error"


def test_discovery_document_without_token_endpoint(
    oidc_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    oidc_app.settings["openid_configuration_overrides"] = {"token_endpoint": None}
    oidc_app.save()
    make_token(provider="scripted", app=oidc_app, expires_in=-1)
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        get_access_token(user, "scripted")
    assert excinfo.value.code == "discovery_failed"


def test_settings_configured_openid_connect_app(
    make_token: MakeToken, scripted: ScriptedServer, user: Any, settings: Any
) -> None:
    settings.SOCIALACCOUNT_PROVIDERS = {
        "openid_connect": {
            "APPS": [
                {
                    "provider_id": "from-settings",
                    "name": "From settings",
                    "client_id": "settings-oidc",
                    "secret": "settings-secret",
                    "settings": {"server_url": scripted.base_url},
                }
            ]
        }
    }
    make_token(provider="from-settings", app=None)
    assert get_access_token(user, "from-settings") == "new-access"
    assert scripted.token_requests[0].form["client_id"] == "settings-oidc"


def test_google_resolves_to_its_token_endpoint(make_token: MakeToken) -> None:
    app = SocialApp.objects.create(provider="google", name="G", client_id="gid", secret="gsec")
    token = make_token(provider="google", app=app)
    endpoint = providers.resolve(token)
    assert endpoint.url == "https://oauth2.googleapis.com/token"
    assert (endpoint.client_id, endpoint.basic_auth) == ("gid", False)
    assert "gsec" not in repr(endpoint)


def test_html_discovery_document_is_refused(
    oidc_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    scripted.discovery = lambda: "<html>"  # type: ignore[assignment,return-value,method-assign]
    scripted.script(Reply(200, {"access_token": "x"}))
    make_token(provider="scripted", app=oidc_app, expires_in=-1)
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        get_access_token(user, "scripted")
    assert excinfo.value.code == "discovery_failed"


# -- a new allauth provider is classified from its classes, without a change here ------


class _Adapter(OAuth2Adapter):
    provider_id = "tests_new"
    access_token_url = "https://new.example/token"


class _OwnClient(OAuth2Client):
    def get_access_token(self, code: Any, pkce_code_verifier: Any = None) -> Any:
        raise NotImplementedError


class _OwnClientAdapter(_Adapter):
    client_class = _OwnClient


class _OwnGetClientAdapter(_Adapter):
    def get_client(self, request: Any, app: Any) -> Any:
        raise NotImplementedError


class _SignInDataAdapter(_Adapter):
    def get_access_token_data(self, request: Any, app: Any, client: Any, pkce: Any = None) -> Any:
        raise NotImplementedError


def _provider_class(adapter: type[OAuth2Adapter] | None) -> type[OAuth2Provider]:
    attributes: dict[str, Any] = {"id": "tests_new", "name": "New"}
    if adapter is not None:
        attributes["oauth2_adapter_class"] = adapter
    return type("NewProvider", (OAuth2Provider,), attributes)


@pytest.mark.parametrize(
    ("adapter", "reason"),
    [
        pytest.param(_Adapter, None, id="the standard exchange"),
        pytest.param(None, "custom_token_exchange", id="no OAuth2 adapter"),
        pytest.param(_OwnClientAdapter, "custom_token_exchange", id="its own client"),
        pytest.param(_OwnGetClientAdapter, "custom_token_exchange", id="builds its own client"),
        pytest.param(_SignInDataAdapter, "sign_in_parameter", id="reads the sign-in request"),
    ],
)
def test_refusal_reason_of_a_provider_unknown_to_the_registry(
    adapter: type[OAuth2Adapter] | None, reason: str | None
) -> None:
    assert providers.refusal_reason(_provider_class(adapter)) == reason


def test_a_provider_that_is_not_oauth2_is_refused() -> None:
    from allauth.socialaccount.providers.twitter.provider import TwitterProvider

    assert providers.refusal_reason(TwitterProvider) == "not_oauth2"
