"""allauth headless: what templates see as ``{{ session }}``, in every headless response.

Name the adapter in settings (or mix :class:`TokenRotationMetaMixin` into your
own headless adapter)::

    HEADLESS_ADAPTER = "django_token_rotation.headless.HeadlessAdapter"

and every answer of allauth headless's endpoints, to browser and app clients
alike, carries ``meta.token_rotation``::

    {"error": "RefreshAccessTokenError", "provider": "google",
     "code": "invalid_grant", "expires_at": "2026-12-07T16:00:00+00:00"}

(``"error": ""`` while all is well). It costs no query: the middleware keeps
what it needs in the session (an app's: its token's session).
"""

from __future__ import annotations

from typing import Any

from allauth.headless.adapter import DefaultHeadlessAdapter
from django.http import HttpRequest

from . import session

META_KEY = "token_rotation"


class TokenRotationMetaMixin:
    """Adds ``meta.token_rotation`` to allauth headless's responses."""

    def populate_response_meta(self, request: HttpRequest, meta: dict[str, Any]) -> None:
        super().populate_response_meta(request, meta)  # type: ignore[misc]
        meta[META_KEY] = session.for_request(request).as_json()


class HeadlessAdapter(TokenRotationMetaMixin, DefaultHeadlessAdapter):  # type: ignore[misc]
    """allauth's default headless adapter, with ``meta.token_rotation``."""
