"""RFC 7009 revocation: the client call, endpoint discovery, a real provider, and
the optional revocation on logout and on disconnect (best effort, bounded)."""

from __future__ import annotations

import datetime
import threading
import time
from typing import Any

import pytest
from allauth.socialaccount.models import SocialAccount, SocialApp, SocialToken
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_token_rotation import client, revocation
from tests.helpers import MakeToken, connect
from tests.scripted_server import Reply, ScriptedServer, oauth_error

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_discovery(hidden_secrets: list[str]) -> None:
    cache.clear()


def revocations(server: ScriptedServer) -> list[Any]:
    return [r for r in server.received if r.path == "/revoke"]


@pytest.fixture
def oidc_app(scripted: ScriptedServer, make_oidc_app: Any) -> SocialApp:
    app: SocialApp = make_oidc_app({"revocation_endpoint": f"{scripted.base_url}/revoke"})
    return app


@pytest.fixture
def oidc_token(make_token: MakeToken, oidc_app: SocialApp) -> SocialToken:
    return make_token(provider="scripted", app=oidc_app, expires_in=3600)


# -- the client call ------------------------------------------------------------


def test_revoke_token_sends_rfc7009_with_the_refresh_client_auth(scripted: ScriptedServer) -> None:
    scripted.script(Reply(200, ""), oauth_error("invalid_client", status=401), Reply(503, "x"))
    creds = client.TokenEndpoint(
        url="unused", client_id="cid", client_secret="fake-secret", provider="p", basic_auth=True
    )
    url = f"{scripted.base_url}/revoke"
    assert client.revoke_token(url, "old-refresh", "refresh_token", credentials=creds).revoked
    refused = client.revoke_token(url, "old-refresh", "refresh_token", credentials=creds)
    assert (refused.revoked, refused.status, refused.error) == (False, 401, "invalid_client")
    down = client.revoke_token(url, "old-refresh", "refresh_token", credentials=creds)
    assert (down.revoked, down.status, down.error) == (False, 503, None)
    first = revocations(scripted)[0]
    assert first.method == "POST"
    assert first.form == {"token": "old-refresh", "token_type_hint": "refresh_token"}
    assert first.headers["Authorization"].startswith("Basic ")
    assert "old-refresh" not in repr(refused)


# -- endpoint discovery ----------------------------------------------------------


def test_endpoint_from_discovery_overrides_settings_and_table(
    oidc_token: SocialToken, make_token: MakeToken, settings: Any, fake_app: SocialApp
) -> None:
    assert revocation.revocation_endpoint(oidc_token).endswith("/revoke")  # type: ignore[union-attr]
    SocialApp.objects.create(provider="google", name="G", client_id="g", secret="s")
    google = make_token(provider="google")
    assert revocation.revocation_endpoint(google) == "https://oauth2.googleapis.com/revoke"
    fake = make_token(provider="fake")
    assert revocation.revocation_endpoint(fake) is None
    settings.TOKEN_ROTATION_REVOCATION_ENDPOINTS = {"fake": "https://fake.example/revoke"}
    assert revocation.revocation_endpoint(fake) == "https://fake.example/revoke"


def test_revoke_deletes_only_on_success(oidc_token: SocialToken, scripted: ScriptedServer) -> None:
    scripted.script(Reply(503, "down"))
    result = revocation.revoke(oidc_token)
    assert (result.revoked, result.code, result.deleted) == (False, "http_503", False)
    assert SocialToken.objects.filter(pk=oidc_token.pk).exists()

    scripted.script(Reply(200, ""))
    result = revocation.revoke(oidc_token)
    assert (result.revoked, result.deleted) == (True, True)
    assert not SocialToken.objects.filter(pk=oidc_token.pk).exists()


def test_unsupported_token_type_falls_back_to_the_access_token(
    oidc_token: SocialToken, scripted: ScriptedServer
) -> None:
    scripted.script(oauth_error("unsupported_token_type"), Reply(200, ""))
    assert revocation.revoke(oidc_token).revoked
    hints = [r.form["token_type_hint"] for r in revocations(scripted)]
    assert hints == ["refresh_token", "access_token"]


def test_revocation_at_a_real_provider(provider: Any) -> None:
    """django-oauth-toolkit does not advertise its endpoint in discovery; the
    app's ``openid_configuration_overrides`` names it, as allauth allows."""
    _user, token = connect("default", provider)
    app = token.app
    app.settings["openid_configuration_overrides"] = {"revocation_endpoint": provider.revoke_url}
    app.save()
    refresh_token = token.token_secret

    result = revocation.revoke(token)

    assert result.revoked, result
    assert not SocialToken.objects.filter(pk=token.pk).exists()
    assert provider.stats()["revoke_calls"] == 1
    assert provider.refresh(refresh_token).status_code == 400  # really revoked


# -- on logout and on disconnect --------------------------------------------------


def _logout(client_: Client, user: Any) -> float:
    client_.force_login(user)
    started = time.monotonic()
    response = client_.post(reverse("account_logout"))
    assert response.status_code == 302
    return time.monotonic() - started


def test_logout_does_not_revoke_by_default(
    client: Client, oidc_token: SocialToken, scripted: ScriptedServer, user: Any
) -> None:
    _logout(client, user)
    assert revocations(scripted) == []
    assert SocialToken.objects.filter(pk=oidc_token.pk).exists()


def test_logout_revokes_when_enabled(
    client: Client, oidc_token: SocialToken, scripted: ScriptedServer, user: Any, settings: Any
) -> None:
    settings.TOKEN_ROTATION_REVOKE_ON_LOGOUT = True
    scripted.script(Reply(200, ""))
    _logout(client, user)
    assert len(revocations(scripted)) == 1
    assert not SocialToken.objects.filter(pk=oidc_token.pk).exists()


@pytest.mark.parametrize("failure", ["hung", "refused"])
def test_logout_never_waits_long_for_a_provider_that_is_down(
    client: Client,
    oidc_token: SocialToken,
    scripted: ScriptedServer,
    user: Any,
    settings: Any,
    failure: str,
) -> None:
    settings.TOKEN_ROTATION_REVOKE_ON_LOGOUT = True
    settings.TOKEN_ROTATION_REVOKE_TIMEOUT = 0.5
    release = threading.Event()
    if failure == "hung":
        scripted.script(Reply(200, "", hold=release))
    else:
        oidc_token.app.settings["openid_configuration_overrides"] = {
            "revocation_endpoint": "http://127.0.0.1:9/revoke"
        }
        oidc_token.app.save()
    try:
        took = _logout(client, user)
    finally:
        release.set()
    assert took < 3
    assert "_auth_user_id" not in client.session  # logged out all the same
    assert SocialToken.objects.filter(pk=oidc_token.pk).exists()  # kept: not revoked


def test_disconnect_revokes_when_enabled(
    oidc_token: SocialToken, scripted: ScriptedServer, settings: Any
) -> None:
    scripted.script(Reply(200, ""))
    SocialAccount.objects.filter(pk=oidc_token.account_id).delete()
    assert revocations(scripted) == []  # off by default

    settings.TOKEN_ROTATION_REVOKE_ON_DISCONNECT = True
    user = get_user_model().objects.create_user("zed", "z@example.com", "pw")
    account = SocialAccount.objects.create(user=user, provider="scripted", uid="zed")
    SocialToken.objects.create(
        account=account,
        app=oidc_token.app,
        token="old-access",
        token_secret="old-refresh",
        expires_at=timezone.now() + datetime.timedelta(hours=1),
    )
    account.delete()
    [revoke] = revocations(scripted)
    assert revoke.form["token"] == "old-refresh"
    assert not SocialToken.objects.filter(account_id=account.pk).exists()


# -- what cannot be revoked is kept, and said --------------------------------------


def test_a_provider_without_a_revocation_endpoint_keeps_the_token(
    make_token: MakeToken, fake_app: SocialApp, scripted: ScriptedServer
) -> None:
    token = make_token(provider="fake", app=fake_app)
    result = revocation.revoke(token)
    assert (result.revoked, result.code, result.deleted) == (False, "no_revocation_endpoint", False)
    assert scripted.received == []
    assert SocialToken.objects.filter(pk=token.pk).exists()


def test_a_discovery_document_without_the_endpoint_falls_back_to_the_table(
    make_token: MakeToken, make_oidc_app: Any
) -> None:
    token = make_token(provider="scripted", app=make_oidc_app(), expires_in=3600)
    assert revocation.revocation_endpoint(token) is None
    assert revocation.revoke(token).code == "no_revocation_endpoint"


def test_a_token_with_only_an_access_token_revokes_that(
    make_token: MakeToken, oidc_app: SocialApp, scripted: ScriptedServer
) -> None:
    token = make_token(provider="scripted", app=oidc_app, refresh="", expires_in=3600)
    scripted.script(Reply(200, ""))
    assert revocation.revoke(token).revoked
    [sent] = revocations(scripted)
    assert (sent.form["token"], sent.form["token_type_hint"]) == ("old-access", "access_token")


def test_a_token_with_nothing_to_revoke_is_kept(
    make_token: MakeToken, oidc_app: SocialApp, scripted: ScriptedServer
) -> None:
    token = make_token(provider="scripted", app=oidc_app, access="", refresh="")
    result = revocation.revoke(token)
    assert (result.revoked, result.code) == (False, "no_token")
    assert revocations(scripted) == []
    assert SocialToken.objects.filter(pk=token.pk).exists()


def test_a_refusal_keeps_the_token_and_names_the_providers_error(
    oidc_token: SocialToken, scripted: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    scripted.script(oauth_error("invalid_client", status=401))
    result = revocation.revoke(oidc_token)
    assert (result.revoked, result.code) == (False, "invalid_client")
    assert SocialToken.objects.filter(pk=oidc_token.pk).exists()
    assert any(
        "invalid_client" in r.getMessage() and "it is kept" in r.getMessage()
        for r in caplog.records
    )


def test_revoke_without_delete_keeps_the_revoked_token(
    oidc_token: SocialToken, scripted: ScriptedServer
) -> None:
    scripted.script(Reply(200, ""))
    result = revocation.revoke(oidc_token, delete=False)
    assert (result.revoked, result.deleted) == (True, False)
    assert SocialToken.objects.filter(pk=oidc_token.pk).exists()


def test_tokens_left_when_the_budget_is_spent_are_not_sent(
    oidc_token: SocialToken, scripted: ScriptedServer
) -> None:
    [result] = revocation.revoke_within([oidc_token], budget=0)
    assert (result.revoked, result.code, result.token_id) == (False, "out_of_time", oidc_token.pk)
    assert revocations(scripted) == []
    assert SocialToken.objects.filter(pk=oidc_token.pk).exists()


def test_a_bad_revocation_setting_never_fails_a_logout_or_a_disconnect(
    client: Client,
    oidc_token: SocialToken,
    scripted: ScriptedServer,
    user: Any,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.TOKEN_ROTATION_REVOKE_ON_LOGOUT = True
    settings.TOKEN_ROTATION_REVOKE_ON_DISCONNECT = True
    settings.TOKEN_ROTATION_REVOKE_TIMEOUT = "soon"  # manage.py check reports it (E005)
    _logout(client, user)
    assert "_auth_user_id" not in client.session  # logged out all the same
    SocialAccount.objects.get(pk=oidc_token.account_id).delete()
    assert not SocialAccount.objects.filter(pk=oidc_token.account_id).exists()
    assert revocations(scripted) == []
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        "Revocation on logout failed (ImproperlyConfigured).",
        "Revocation on disconnect failed (ImproperlyConfigured).",
    ]
