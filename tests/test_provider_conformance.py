"""Every provider class of the installed allauth, refreshed against one local server.

Each provider class allauth ships is registered, given an app and an expired
token, and classified by :func:`providers.refusal_reason`. Each refreshable one
is refreshed for real over HTTP: its allauth token URL (``https://...``) is
routed, through allauth's requests session, to one scripted server on
127.0.0.1, which records the host and path the request was for, its client
authentication and its form. What the request must look like comes from
allauth's own adapter, as allauth uses it at sign-in.

docs/providers.rst carries the classification table that
``django_token_rotation.providers.docs`` generates (``make providers-doc``);
a test here only checks that it is current.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import allauth
import pytest
import requests
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.models import SocialAccount, SocialApp, SocialToken
from allauth.socialaccount.providers import registry
from django.http import HttpRequest
from django.utils import timezone

from django_token_rotation import ProviderNotRefreshable, providers, refresh
from django_token_rotation.exceptions import ImproperlyConfiguredProvider
from django_token_rotation.providers import docs
from django_token_rotation.providers.docs import provider_classes
from django_token_rotation.providers.registry import ENTRIES, REFUSAL_REASONS, entry
from tests.scripted_server import Reply, ScriptedServer, running, tokens

DOCS = Path(__file__).resolve().parent.parent / "docs" / "providers.rst"

CLASSES = provider_classes()
REFRESHABLE = [cls for cls in CLASSES if providers.refusal_reason(cls) is None]
REFUSED = [cls for cls in CLASSES if providers.refusal_reason(cls) is not None]

#: What a site must configure for these providers (test values); the same
#: needs are stated in their registry entries' ``settings``.
PROVIDER_SETTINGS: dict[str, dict[str, Any]] = {
    "amazon_cognito": {"DOMAIN": "https://auth.example.amazoncognito.com"},
}
#: Adapters that read their base URL from SOCIALACCOUNT_PROVIDERS when allauth
#: is imported, which a test cannot redo: the class attribute a site's setting
#: would have produced.
IMPORT_TIME_SETTINGS: dict[str, tuple[str, str]] = {
    "auth0": ("access_token_url", "https://example.eu.auth0.com/oauth/token"),
    "gumroad": ("access_token_url", "https://api.gumroad.com/oauth/token"),
    "jupyterhub": ("access_token_url", "https://hub.example.org/hub/api/oauth2/token"),
    "lemonldap": ("access_token_url", "https://auth.example.org/oauth2/token"),
    "netiq": ("provider_base_url", "https://netiq.example.org"),
    "okta": ("okta_base_url", "example.okta.com"),
}


class LoopbackAdapter(DefaultSocialAccountAdapter):
    """allauth's adapter, with its requests session routed to the scripted server."""

    server: ScriptedServer

    def get_requests_session(self) -> requests.Session:
        session: requests.Session = super().get_requests_session()
        session.mount("https://", _Loopback(self.server))
        return session


class _Loopback(requests.adapters.HTTPAdapter):
    """Send ``https://host/path`` to ``http://127.0.0.1:port/host/path``."""

    def __init__(self, server: ScriptedServer) -> None:
        super().__init__()
        self.server = server

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(request.url or "")
        query = f"?{parts.query}" if parts.query else ""
        request.url = f"{self.server.base_url}/{parts.netloc}{parts.path}{query}"
        return super().send(request, *args, **kwargs)


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    saved = dict(registry.provider_map)
    for cls in CLASSES:
        registry.provider_map.setdefault(cls.id, cls)
    LoopbackAdapter.server = None  # type: ignore[assignment]
    with running() as scripted:
        LoopbackAdapter.server = scripted
        yield scripted
    registry.provider_map.clear()
    registry.provider_map.update(saved)


@pytest.fixture
def site(
    settings: Any, server: ScriptedServer, db: None, monkeypatch: pytest.MonkeyPatch
) -> ScriptedServer:
    for provider_id, (attribute, value) in IMPORT_TIME_SETTINGS.items():
        cls = registry.get_class(provider_id)
        monkeypatch.setattr(cls.oauth2_adapter_class, attribute, value)
    settings.SOCIALACCOUNT_ADAPTER = f"{__name__}.LoopbackAdapter"
    settings.SOCIALACCOUNT_PROVIDERS = {
        **PROVIDER_SETTINGS,
        "openid_connect": {"SERVERS": []},
    }
    server.script(tokens())  # and forget earlier requests
    return server


def _apple_key() -> tuple[str, Any]:
    """A fresh P-256 key pair: the private key as Apple's .p8 (PEM), the public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem, private.public_key()


APPLE_KEY, APPLE_PUBLIC_KEY = _apple_key()


def make_app(cls: type[Any], server: ScriptedServer, **extra: Any) -> SocialApp:
    app_settings: dict[str, Any] = {}
    if cls.id == "apple":
        app_settings["certificate_key"] = APPLE_KEY
    if cls.id in ("openid_connect", "keycloak", "lemonldap", "fxa", "nextcloud", "gitea"):
        app_settings["server_url"] = server.base_url
    return SocialApp.objects.create(
        provider=cls.id,
        name=cls.id,
        client_id=f"id-{cls.id}",
        secret=f"secret-{cls.id}",
        # Salesforce reads its instance URL from the app's key.
        key="https://login.salesforce.com" if cls.id == "salesforce" else "key",
        settings=app_settings,
        **extra,
    )


def make_token(cls: type[Any], app: SocialApp, django_user_model: Any) -> SocialToken:
    user = django_user_model.objects.create(username=f"user-{cls.id}")
    # What a site keeps for providers that need sign-in values on refresh (VK ID).
    extra = {name: f"{name}-of-the-sign-in" for name in entry(cls.id).sign_in_values}
    account = SocialAccount.objects.create(
        user=user, provider=app.provider_id or cls.id, uid="1", extra_data=extra
    )
    return SocialToken.objects.create(
        app=app, account=account, token="old-access", token_secret="old-refresh"
    )


def expected_request(cls: type[Any], app: SocialApp) -> tuple[str, bool, str, dict[str, str]]:
    """(host + path, basic auth?, client id parameter, headers) as allauth signs in."""
    request = HttpRequest()
    provider = cls(request, app=app)
    adapter = provider.get_oauth2_adapter(request)
    if hasattr(adapter, "_openid_config"):  # OpenID Connect: its cached discovery
        adapter._openid_config = providers.openid_configuration(provider)
    parts = urlsplit(adapter.access_token_url)
    target = f"/{parts.netloc}{parts.path}" if parts.scheme == "https" else parts.path
    return (
        target,
        bool(adapter.basic_auth),
        adapter.client_class.client_id_parameter,
        dict(adapter.headers or {}),
    )


#: The django-allauth of the survey below and of docs/providers.rst. An older one (the
#: lowest setup.cfg admits: nox -s minimum) has fewer providers and other endpoints.
SURVEYED_ALLAUTH = (65, 22)
of_the_surveyed_allauth = pytest.mark.skipif(
    tuple(int(part) for part in allauth.__version__.split(".")[:2]) < SURVEYED_ALLAUTH,
    reason=f"the survey and docs/providers.rst are of allauth 65.22, not {allauth.__version__}",
)


@of_the_surveyed_allauth
def test_every_allauth_provider_is_classified() -> None:
    # The survey of allauth 65.22: 125 provider classes.
    assert len(CLASSES) >= 125
    assert {"clever", "dropbox", "figma", "salesforce"} <= {cls.id for cls in CLASSES}
    assert len(REFRESHABLE) >= 95
    for cls in REFUSED:
        assert providers.refusal_reason(cls) in REFUSAL_REASONS


@pytest.mark.parametrize("cls", REFRESHABLE, ids=lambda cls: cls.id)
def test_refreshes_as_allauth_signs_in(
    cls: type[Any], site: ScriptedServer, django_user_model: Any
) -> None:
    app = make_app(cls, site)
    token = make_token(cls, app, django_user_model)
    site.script(tokens(access="fresh-access", refresh="fresh-refresh"))
    path, basic, client_id_parameter, headers = expected_request(cls, app)

    refresh(token, force=True)

    [request] = [r for r in site.received if "well-known" not in r.path]
    assert request.method == "POST"
    assert request.path == path
    assert request.form["grant_type"] == "refresh_token"
    assert request.form["refresh_token"] == "old-refresh"
    if basic:
        expected = base64.b64encode(f"id-{cls.id}:secret-{cls.id}".encode()).decode()
        assert request.headers["Authorization"] == f"Basic {expected}"
        assert "client_secret" not in request.form
    elif entry(cls.id).generated_secret:
        assert request.form[client_id_parameter] == f"id-{cls.id}"
        verify_apple_client_secret(request.form["client_secret"], app)
    else:
        assert request.form[client_id_parameter] == f"id-{cls.id}"
        assert request.form["client_secret"] == f"secret-{cls.id}"
    for name, value in headers.items():
        assert request.headers.get(name) == value, name
    known = entry(cls.id)
    for name in known.sign_in_values:
        assert request.form[name] == f"{name}-of-the-sign-in"
    assert ("state" in request.form) == known.sends_state
    token.refresh_from_db()
    assert (token.token, token.token_secret) == ("fresh-access", "fresh-refresh")


@pytest.mark.parametrize("cls", REFUSED, ids=lambda cls: cls.id)
def test_refused_with_its_reason_and_no_request(
    cls: type[Any], site: ScriptedServer, django_user_model: Any
) -> None:
    app = make_app(cls, site)
    token = make_token(cls, app, django_user_model)
    site.script(tokens())
    with pytest.raises(ProviderNotRefreshable) as caught:
        providers.resolve(token)
    assert f"[{providers.refusal_reason(cls)}]" in str(caught.value)
    assert site.received == []


def verify_apple_client_secret(secret: str, app: SocialApp) -> None:
    """What Apple checks: an ES256 JWT signed with the app's key, kid = key id,
    iss = team id, sub = client id, aud = appleid.apple.com, short-lived."""
    import jwt

    assert jwt.get_unverified_header(secret) == {"alg": "ES256", "kid": app.secret, "typ": "JWT"}
    claims = jwt.decode(
        secret, APPLE_PUBLIC_KEY, algorithms=["ES256"], audience="https://appleid.apple.com"
    )
    assert (claims["iss"], claims["sub"]) == (app.key, app.client_id.split(",")[0])
    assert 0 < claims["exp"] - claims["iat"] <= 3600


def test_apple_uses_the_first_client_id_and_a_key_it_can_verify(
    site: ScriptedServer, django_user_model: Any
) -> None:
    cls = registry.get_class("apple")
    app = make_app(cls, site)
    app.client_id = "com.example.web,com.example.ios"
    app.save()
    token = make_token(cls, app, django_user_model)
    refresh(token, force=True)
    [request] = site.received
    assert request.path == "/appleid.apple.com/auth/token"
    assert request.form["client_id"] == "com.example.web"
    verify_apple_client_secret(request.form["client_secret"], app)
    with pytest.raises(Exception, match="Signature verification failed"):
        import jwt

        other = _apple_key()[1]
        jwt.decode(request.form["client_secret"], other, algorithms=["ES256"], audience="x")


def test_apple_without_its_key_is_a_configuration_error(
    site: ScriptedServer, django_user_model: Any
) -> None:
    cls = registry.get_class("apple")
    app = make_app(cls, site)
    app.settings = {}
    app.save()
    token = make_token(cls, app, django_user_model)
    with pytest.raises(ImproperlyConfiguredProvider) as caught:
        providers.resolve(token)
    assert "ImproperlyConfigured" in str(caught.value)
    assert site.received == []


def test_tiktok_sends_client_key(site: ScriptedServer, django_user_model: Any) -> None:
    cls = registry.get_class("tiktok")
    token = make_token(cls, make_app(cls, site), django_user_model)
    refresh(token, force=True)
    [request] = site.received
    assert request.form["client_key"] == "id-tiktok"
    assert "client_id" not in request.form


def test_vk_id_sends_the_sign_ins_device_id_and_a_fresh_state(
    site: ScriptedServer, django_user_model: Any
) -> None:
    cls = registry.get_class("vk")
    token = make_token(cls, make_app(cls, site), django_user_model)
    refresh(token, force=True)
    refresh(token, force=True)
    first, second = site.received
    assert first.path == second.path == "/id.vk.ru/oauth2/auth"
    assert first.form["device_id"] == second.form["device_id"] == "device_id-of-the-sign-in"
    assert first.form["state"] != second.form["state"]
    assert len(first.form["state"]) >= 32


def test_vk_id_without_the_device_id_is_refused_with_its_reason(
    site: ScriptedServer, django_user_model: Any
) -> None:
    # What allauth stores by itself: no device_id anywhere.
    cls = registry.get_class("vk")
    token = make_token(cls, make_app(cls, site), django_user_model)
    SocialAccount.objects.filter(pk=token.account_id).update(extra_data={"user_id": "1"})
    token = SocialToken.objects.select_related("account").get(pk=token.pk)
    with pytest.raises(ProviderNotRefreshable) as caught:
        refresh(token, force=True)
    assert caught.value.code == "unsupported_provider"
    assert "[sign_in_parameter]" in str(caught.value) and "device_id" in str(caught.value)
    assert site.received == []


def test_feishu_is_refused_its_adapter_builds_its_own_client(
    site: ScriptedServer, django_user_model: Any
) -> None:
    # feishu's adapter overrides get_client (FeishuOAuth2Client: an app access
    # token first, a JSON body, the answer under "data"): a standard refresh
    # would go to its code-exchange URL.
    cls = registry.get_class("feishu")
    assert providers.refusal_reason(cls) == "custom_token_exchange"
    token = make_token(cls, make_app(cls, site), django_user_model)
    with pytest.raises(ProviderNotRefreshable) as caught:
        refresh(token, force=True)
    assert "[custom_token_exchange]" in str(caught.value)
    assert site.received == []


# -- resolution failures are configuration errors, not crashes ----------------


def test_cognito_without_domain_is_a_configuration_error(
    site: ScriptedServer, settings: Any, django_user_model: Any
) -> None:
    settings.SOCIALACCOUNT_PROVIDERS = {}
    cls = registry.get_class("amazon_cognito")
    token = make_token(cls, make_app(cls, site), django_user_model)
    with pytest.raises(ImproperlyConfiguredProvider) as caught:
        providers.resolve(token)
    assert caught.value.code == "provider_not_configured"
    assert "ValueError" in str(caught.value)


def test_two_apps_for_one_provider_are_a_configuration_error(
    site: ScriptedServer, django_user_model: Any
) -> None:
    cls = registry.get_class("microsoft")
    make_app(cls, site)
    app = make_app(cls, site)
    token = make_token(cls, app, django_user_model)
    SocialToken.objects.filter(pk=token.pk).update(app=None)
    token.refresh_from_db()
    with pytest.raises(ImproperlyConfiguredProvider) as caught:
        providers.resolve(token)
    assert "MultipleObjectsReturned" in str(caught.value)


def test_a_base_url_missing_from_settings_is_a_configuration_error(
    site: ScriptedServer, django_user_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What allauth's Okta adapter holds when OKTA_BASE_URL was not set at import.
    cls = registry.get_class("okta")
    monkeypatch.setattr(cls.oauth2_adapter_class, "okta_base_url", None)
    token = make_token(cls, make_app(cls, site), django_user_model)
    with pytest.raises(ImproperlyConfiguredProvider):
        providers.resolve(token)
    assert site.received == []


def test_salesforce_answers_without_expires_in_get_its_documented_lifetime(
    site: ScriptedServer, django_user_model: Any
) -> None:
    # Salesforce's refresh answer: instance_url, id, issued_at, signature; never expires_in.
    cls = registry.get_class("salesforce")
    token = make_token(cls, make_app(cls, site), django_user_model)
    site.script(tokens(expires_in=None, refresh=None, issued_at="1764931200000"))
    refresh(token, force=True)
    [request] = site.received
    assert request.path == "/login.salesforce.com/services/oauth2/token"
    token.refresh_from_db()
    assert token.expires_at is not None
    lifetime = (token.expires_at - timezone.now()).total_seconds()
    assert 890 < lifetime <= 900
    assert token.token_secret == "old-refresh"  # Salesforce does not rotate


def test_twitch_refresh_answers_keep_the_sign_ins_lifetime(
    site: ScriptedServer, django_user_model: Any
) -> None:
    # Twitch documents its refresh answer without expires_in; its sign-in had one.
    cls = registry.get_class("twitch")
    token = make_token(cls, make_app(cls, site), django_user_model)
    SocialToken.objects.filter(pk=token.pk).update(
        expires_at=token.account.last_login + datetime.timedelta(seconds=14400)
    )
    token.refresh_from_db()
    site.script(tokens(expires_in=None, scope=["user:read:email"]))
    refresh(token, force=True)
    token.refresh_from_db()
    assert token.expires_at is not None
    lifetime = (token.expires_at - timezone.now()).total_seconds()
    assert 14390 < lifetime <= 14400


def test_salesforce_without_its_instance_url_is_a_configuration_error(
    site: ScriptedServer, django_user_model: Any
) -> None:
    cls = registry.get_class("salesforce")
    app = make_app(cls, site)
    app.key = ""
    app.save()
    token = make_token(cls, app, django_user_model)
    with pytest.raises(ImproperlyConfiguredProvider):
        providers.resolve(token)
    assert site.received == []


def test_battlenet_resolves_without_a_request(site: ScriptedServer, settings: Any) -> None:
    settings.SOCIALACCOUNT_PROVIDERS = {"battlenet": {"REGION": "cn"}}
    cls = registry.get_class("battlenet")
    app = make_app(cls, site)
    account = SocialAccount(provider="battlenet", uid="1")
    token = SocialToken(app=app, account=account, token="a", token_secret="r")
    assert providers.resolve(token).url == "https://oauth.battlenet.com.cn/token"


# -- the Providers page -------------------------------------------------------


@of_the_surveyed_allauth
def test_providers_page_tables_are_current() -> None:
    text = DOCS.read_text()
    assert docs.render(text, CLASSES) == text, (
        "docs/providers.rst is not current: run make providers-doc"
    )
    assert f"{len(CLASSES)} provider classes, {len(REFRESHABLE)} refreshed" in text


def test_providers_page_documents_every_reason_and_error_shape() -> None:
    text = DOCS.read_text()
    for reason in REFUSAL_REASONS:
        assert f"``{reason}``" in text, reason
    for provider_id, known in ENTRIES.items():
        for shape in known.errors:
            assert f"``{shape}``" in text, (provider_id, shape)


@of_the_surveyed_allauth
def test_the_page_generator_rewrites_a_stale_page_and_checks_a_current_one(
    tmp_path: Path,
) -> None:
    stale = DOCS.read_text().replace("refreshed, ", "refreshed (stale), ", 1)
    page = tmp_path / "providers.rst"
    page.write_text(stale)
    assert docs.main([str(page), "--check"]) == 1
    assert page.read_text() == stale  # --check writes nothing
    assert docs.main([str(page)]) == 0
    assert page.read_text() == DOCS.read_text()
    assert docs.main([str(page), "--check"]) == 0


def test_scripted_server_sees_the_original_host(site: ScriptedServer) -> None:
    site.script(Reply(200, {}))
    with LoopbackAdapter().get_requests_session() as session:
        session.get("https://provider.example/oauth/token?x=1")
    assert site.received[0].path == "/provider.example/oauth/token"


# -- W007: providers whose refresh tokens need an opt-in ----------------------

OPT_INS = {key: known.offline for key, known in ENTRIES.items() if known.offline}


@pytest.mark.parametrize(("provider_id", "offline"), OPT_INS.items(), ids=OPT_INS.keys())
def test_w007_warns_until_the_opt_in_is_configured(
    provider_id: str, offline: tuple[str, str], server: ScriptedServer
) -> None:
    from django_token_rotation.checks import offline_access_problems

    kind, wanted = offline
    [warning] = offline_access_problems(provider_id, ["email"], {}, "here")
    assert warning.id == "token_rotation.W007"
    assert wanted in warning.msg
    if kind == "scope":
        assert offline_access_problems(provider_id, ["email", wanted], {}, "here") == []
    else:
        name, _, value = wanted.partition("=")
        assert offline_access_problems(provider_id, [], {name: value}, "here") == []


def test_w007_reads_allauths_default_scope(server: ScriptedServer) -> None:
    from django_token_rotation.checks import offline_access_problems

    # X's default scope lacks offline.access; Okta's has offline_access.
    assert offline_access_problems("twitter_oauth2", None, {}, "here")
    assert offline_access_problems("okta", None, {}, "here") == []
    assert set(OPT_INS) >= {
        "google",
        "microsoft",
        "okta",
        "auth0",
        "openid_connect",
        "twitter_oauth2",
        "dropbox",
        "atlassian",
        "salesforce",
    }


# -- resolution with and without a request -------------------------------------


def test_every_provider_resolves_the_same_inside_and_outside_a_request(
    site: ScriptedServer, django_user_model: Any, rf: Any
) -> None:
    """The command and tasks resolve without a request (allauth's adapters get an
    empty one); a web request must give the same endpoint, and no provider
    crashes either way (refused ones are refused with their reason)."""
    from allauth.core import context

    for cls in CLASSES:
        token = make_token(cls, make_app(cls, site), django_user_model)
        outside: Any
        try:
            outside = providers.resolve(token).url
        except ProviderNotRefreshable as exc:
            outside = exc.code
        request = rf.get("/accounts/", {"shop": "x.myshopify.com", "region": "eu"})
        with context.request_context(request):
            try:
                inside: Any = providers.resolve(token).url
            except ProviderNotRefreshable as exc:
                inside = exc.code
        assert inside == outside, cls.id
        assert (outside == "unsupported_provider") == (cls in REFUSED), cls.id


def test_battlenet_refreshes_from_the_command(
    site: ScriptedServer, settings: Any, django_user_model: Any
) -> None:
    from io import StringIO

    from django.core.management import call_command

    settings.SOCIALACCOUNT_PROVIDERS = {"battlenet": {"REGION": "eu"}}
    cls = registry.get_class("battlenet")
    token = make_token(cls, make_app(cls, site), django_user_model)
    SocialToken.objects.filter(pk=token.pk).update(expires_at=timezone.now())
    call_command("refresh_tokens", stdout=StringIO())
    [request] = site.received
    assert request.path == "/oauth.battle.net/token"
    token.refresh_from_db()
    assert token.token_secret == "new-refresh"


# -- each provider's error shapes, through its own allauth adapter ---------------------


def _answer_in(shape: str) -> Reply:
    """An answer in ``shape`` (docs/providers.rst, "Error answers")."""
    kind, _, rest = shape.partition(":")
    if kind == "graph":
        return Reply(400, {"error": {"code": int(rest), "type": "OAuthException"}})
    if kind == "message":
        return Reply(400, {"status": 400, "message": rest.capitalize()})
    if kind == "field":
        field, _, code = rest.partition(":")
        return Reply(400, {"message": "Bad Request", "errors": [{"field": field, "code": code}]})
    if kind == "http":
        status, _, empty = rest.partition(":")
        return Reply(int(status), b"" if empty else "<html>refused</html>")
    return Reply(200, {"ok": False, "error": shape})


SHAPES = [
    (provider_id, shape, meaning)
    for provider_id, known in ENTRIES.items()
    for shape, meaning in known.errors.items()
]
REPORTED_AS = {"slow_down": "rate_limited"}


@pytest.mark.parametrize(
    ("provider_id", "shape", "meaning"), SHAPES, ids=[f"{p}-{s}" for p, s, _ in SHAPES]
)
def test_each_providers_error_shapes_through_its_own_adapter(
    site: ScriptedServer, django_user_model: Any, provider_id: str, shape: str, meaning: str
) -> None:
    from django_token_rotation import ReauthenticationRequired, TokenRefreshUnavailable

    cls = registry.get_class(provider_id)
    assert providers.refusal_reason(cls) is None, provider_id
    token = make_token(cls, make_app(cls, site), django_user_model)
    site.script(_answer_in(shape))
    with pytest.raises((ReauthenticationRequired, TokenRefreshUnavailable)) as caught:
        refresh(token, force=True)
    assert caught.value.code == REPORTED_AS.get(meaning, meaning)
    [request] = [r for r in site.received if "well-known" not in r.path]
    assert request.path == expected_request(cls, token.app)[0]
    token.refresh_from_db()
    assert (token.token, token.token_secret) == ("old-access", "old-refresh")
