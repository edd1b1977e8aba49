"""A plain OAuth 2.0 allauth provider whose token endpoint is a test server.

It goes through the same allauth machinery as Google or GitHub (an
``OAuth2Adapter`` with a fixed ``access_token_url``), which the OpenID Connect
provider does not exercise.
"""

from __future__ import annotations

from typing import Any

from allauth.socialaccount.providers.base import ProviderAccount
from allauth.socialaccount.providers.oauth2.provider import OAuth2Provider

from .views import FakeAdapter


class FakeProvider(OAuth2Provider):
    id = "fake"
    name = "Fake"
    account_class = ProviderAccount
    oauth2_adapter_class = FakeAdapter

    def extract_uid(self, data: Any) -> str:
        return str(data["sub"])


provider_classes = [FakeProvider]
