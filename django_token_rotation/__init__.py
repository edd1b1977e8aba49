"""Keep django-allauth OAuth2 access tokens fresh, refreshing exactly once per expiry.

Public API::

    from django_token_rotation import get_access_token, refresh

    token = get_access_token(request.user, "google")
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

from .exceptions import (
    ProviderNotRefreshable,
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    TokenRotationError,
)

if TYPE_CHECKING:
    from allauth.socialaccount.models import SocialToken

try:
    #: The installed distribution's version (set once, in setup.cfg).
    __version__ = metadata.version("django-token-rotation")
except metadata.PackageNotFoundError:  # imported from a checkout that is not installed
    __version__ = "0+unknown"

#: The value the session carries once a refresh has failed for good, as in Auth.js.
REFRESH_ACCESS_TOKEN_ERROR = "RefreshAccessTokenError"


def get_access_token(user: Any, provider: str) -> str:
    """A valid access token for ``user``'s account at ``provider`` (an allauth
    provider id such as ``"google"``, or an OpenID Connect ``provider_id``),
    refreshed first when it expires within ``TOKEN_ROTATION_LEEWAY``.

    Raises :class:`ReauthenticationRequired` when the user must sign in again,
    :class:`TokenRefreshUnavailable` when the provider is temporarily
    unavailable and the current access token has already expired.
    """
    # Imported here: this package is imported while apps are still loading.
    from .rotation import get_access_token as _get_access_token

    return _get_access_token(user, provider)


def refresh(token: SocialToken, force: bool = False) -> SocialToken:
    """Refresh one allauth ``SocialToken`` if it is due (always with ``force``)
    through the single-flight machinery, and return it updated."""
    from .rotation import refresh as _refresh

    return _refresh(token, force=force)


__all__ = [
    "REFRESH_ACCESS_TOKEN_ERROR",
    "ProviderNotRefreshable",
    "ReauthenticationRequired",
    "TokenRefreshUnavailable",
    "TokenRotationError",
    "get_access_token",
    "refresh",
]
