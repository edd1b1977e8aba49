from __future__ import annotations

from typing import Any

from allauth.socialaccount.providers.oauth2.views import OAuth2Adapter
from django.conf import settings
from django.http import HttpRequest


class BenchAdapter(OAuth2Adapter):  # type: ignore[misc]
    provider_id = "bench"
    authorize_url = "http://127.0.0.1:9/authorize"

    @property
    def access_token_url(self) -> str:
        return str(getattr(settings, "BENCH_TOKEN_URL", ""))

    def complete_login(self, request: HttpRequest, app: Any, token: Any, **kwargs: Any) -> Any:
        raise NotImplementedError
