from __future__ import annotations

from typing import Any

from allauth.socialaccount.providers.oauth2.views import (
    OAuth2Adapter,
    OAuth2CallbackView,
    OAuth2LoginView,
)
from django.conf import settings
from django.http import HttpRequest


class FakeAdapter(OAuth2Adapter):
    provider_id = "fake"
    authorize_url = "http://127.0.0.1:9/authorize"

    @property
    def access_token_url(self) -> str:
        return str(settings.FAKE_PROVIDER_TOKEN_URL)

    @property
    def basic_auth(self) -> bool:
        return bool(getattr(settings, "FAKE_PROVIDER_BASIC_AUTH", False))

    def complete_login(self, request: HttpRequest, app: Any, token: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


oauth2_login = OAuth2LoginView.adapter_view(FakeAdapter)
oauth2_callback = OAuth2CallbackView.adapter_view(FakeAdapter)
