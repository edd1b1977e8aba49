"""What goes on the wire: HTTPS only, POST only, Bearer only."""

from __future__ import annotations

from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp
from django.utils import timezone

from django_token_rotation import (
    ProviderNotRefreshable,
    ReauthenticationRequired,
    get_access_token,
)
from django_token_rotation.client import require_secure
from django_token_rotation.exceptions import ImproperlyConfiguredProvider
from tests.helpers import MakeToken
from tests.scripted_server import ScriptedServer, tokens

pytestmark = pytest.mark.usefixtures("hidden_secrets")


@pytest.mark.parametrize(
    "url",
    [
        "https://oauth2.googleapis.com/token",
        "http://127.0.0.1:8001/o/token/",
        "http://127.9.9.9/token",
        "http://[::1]:9000/token",
        "http://localhost:8000/token",
    ],
)
def test_https_and_loopback_are_allowed(url: str) -> None:
    require_secure(url, provider="p")


@pytest.mark.parametrize(
    "url",
    [
        "http://provider.example/token",
        "http://10.0.0.5/token",
        "http://localhost.evil.example/token",
        "ftp://provider.example/token",
        "//provider.example/token",
    ],
)
def test_anything_else_is_refused(url: str, settings: Any) -> None:
    with pytest.raises(ImproperlyConfiguredProvider) as excinfo:
        require_secure(url, provider="p")
    assert excinfo.value.code == "insecure_endpoint"
    if url.startswith("http:"):
        settings.TOKEN_ROTATION_ALLOW_INSECURE_HTTP = True
        require_secure(url, provider="p")


@pytest.mark.django_db
def test_insecure_token_endpoint_is_never_called(
    fake_app: SocialApp, make_token: MakeToken, user: Any, settings: Any
) -> None:
    settings.FAKE_PROVIDER_TOKEN_URL = "http://provider.example/token"
    token = make_token(expires_in=30)  # due, still valid: returned as it is
    assert get_access_token(user, "fake") == "old-access"
    token.expires_at = timezone.now()
    token.save()
    with pytest.raises(ProviderNotRefreshable) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "insecure_endpoint"


@pytest.mark.django_db
def test_refresh_is_a_post_even_for_adapters_that_use_get(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.fakeprovider.views import FakeAdapter

    monkeypatch.setattr(FakeAdapter, "access_token_method", "GET")
    make_token()
    get_access_token(user, "fake")
    [request] = scripted.token_requests
    assert request.method == "POST"
    assert request.form["refresh_token"] == "old-refresh"


@pytest.mark.django_db
@pytest.mark.parametrize("token_type", ["DPoP", "MAC", "N_A"])
def test_only_bearer_tokens_are_accepted(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    token_type: str,
) -> None:
    token = make_token()
    scripted.script(tokens(token_type=token_type))
    with pytest.raises(ReauthenticationRequired) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "unsupported_token_type"
    token.refresh_from_db()
    # The access token is not used; the new refresh token is kept
    # (tests/test_refresh_token_kept.py).
    assert (token.token, token.token_secret) == ("old-access", "new-refresh")
