"""What a direct port of the Auth.js "refresh token rotation" guide to Django looks like.

On every request of a signed-in user it loads the ``SocialToken`` from the database; when
the access token has expired it posts the refresh token to the token endpoint and saves the
answer. No single-flight: concurrent requests that see the same expired token each refresh
it. Here only to be measured against ``TokenRefreshMiddleware``.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

import requests
from allauth.socialaccount.models import SocialToken
from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone

logger = logging.getLogger("benchmarks.naive")


class NaiveTokenMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        if request.user.is_authenticated:
            token = SocialToken.objects.filter(
                account__user=request.user, account__provider="bench"
            ).first()
            if token is not None and token.expires_at and timezone.now() >= token.expires_at:
                self.refresh(request, token)
        return self.get_response(request)

    def refresh(self, request: HttpRequest, token: SocialToken) -> None:
        try:
            response = requests.post(
                getattr(settings, "BENCH_TOKEN_URL", ""),
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": token.token_secret,
                    "client_id": "bench-client",
                    "client_secret": "bench-client-secret",
                },
                timeout=5,
            )
            response.raise_for_status()
            data = response.json()
        except (requests.RequestException, ValueError):
            request.session["error"] = "RefreshAccessTokenError"
            return
        token.token = data["access_token"]
        token.token_secret = data.get("refresh_token") or token.token_secret
        token.expires_at = timezone.now() + datetime.timedelta(seconds=data["expires_in"])
        token.save()
