"""The claims the demo provider puts in id_tokens and in its userinfo answer."""

from __future__ import annotations

from typing import Any

from oauth2_provider.oauth2_validators import OAuth2Validator


class DemoValidator(OAuth2Validator):  # type: ignore[misc]
    """django-oauth-toolkit's validator, plus profile and email claims.

    DOT hands each claim out only with its scope (``email`` needs ``email``,
    ``preferred_username`` and ``name`` need ``profile``).
    """

    _CLAIMS = ("preferred_username", "name", "given_name", "family_name", "email", "email_verified")

    def get_discovery_claims(self, request: Any) -> list[str]:
        return ["sub", *self._CLAIMS]

    def get_additional_claims(self, request: Any) -> dict[str, Any]:
        user = request.user
        return {
            "preferred_username": user.get_username(),
            "name": user.get_full_name() or user.get_username(),
            "given_name": user.first_name,
            "family_name": user.last_name,
            "email": user.email,
            "email_verified": bool(user.email),
        }
