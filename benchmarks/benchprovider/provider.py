from __future__ import annotations

from typing import Any

from allauth.socialaccount.providers.base import ProviderAccount
from allauth.socialaccount.providers.oauth2.provider import OAuth2Provider

from .views import BenchAdapter


class BenchProvider(OAuth2Provider):  # type: ignore[misc]
    id = "bench"
    name = "Bench"
    account_class = ProviderAccount
    oauth2_adapter_class = BenchAdapter

    def extract_uid(self, data: Any) -> str:
        return str(data["sub"])


provider_classes = [BenchProvider]
