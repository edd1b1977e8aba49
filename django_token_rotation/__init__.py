"""Keep django-allauth OAuth2 access tokens fresh, refreshing exactly once per expiry.

Public API::

    from django_token_rotation import aget_access_token, get_access_token

    token = get_access_token(request.user, "google")  # in a sync view
    token = await aget_access_token(await request.auser(), "google")  # in an async view

Authorized HTTP clients (a 401 costs one fenced refresh and one retry) are in
:mod:`django_token_rotation.http`.
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
    unavailable and the current access token has already expired. Example::

        from django_token_rotation import ReauthenticationRequired, get_access_token

        try:
            token = get_access_token(request.user, "google")
        except ReauthenticationRequired:
            return redirect("socialaccount_connections")
        requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    """
    # Imported here: this package is imported while apps are still loading.
    from .rotation import get_access_token as _get_access_token

    return _get_access_token(user, provider)


async def aget_access_token(user: Any, provider: str) -> str:
    """The async twin of :func:`get_access_token`: same result, same exceptions.

    A fresh token costs one query, made on the request's sync thread as
    Django's async ORM does; a refresh (the token endpoint, or the wait for
    another worker's refresh) runs on a small thread pool of its own, never on
    the event loop, and shares the single-flight with sync callers: however
    many async and sync callers find the token expired, one refresh. Example::

        async def calendar(request):
            user = await request.auser()
            token = await aget_access_token(user, "google")
            async with httpx.AsyncClient() as client:
                response = await client.get(url, headers={"Authorization": f"Bearer {token}"})
    """
    from .aio import aget_access_token as _aget_access_token

    return await _aget_access_token(user, provider)


def refresh(token: SocialToken, force: bool = False) -> SocialToken:
    """Refresh one allauth ``SocialToken`` if it is due (always with ``force``)
    through the single-flight machinery, and return it updated.

    Raises the same exceptions as :func:`get_access_token`. Example::

        token = SocialToken.objects.get(account__user=user, account__provider="google")
        refresh(token, force=True)  # e.g. after the provider rotated its keys
    """
    from .rotation import refresh as _refresh

    return _refresh(token, force=force)


async def arefresh(token: SocialToken, force: bool = False) -> SocialToken:
    """The async twin of :func:`refresh`: same result, same exceptions; the
    refresh runs on the thread pool of :func:`aget_access_token`. Example::

        token = await SocialToken.objects.select_related("account").aget(pk=token_id)
        await arefresh(token, force=True)
    """
    from .aio import arefresh as _arefresh

    return await _arefresh(token, force=force)


__all__ = [
    "REFRESH_ACCESS_TOKEN_ERROR",
    "ProviderNotRefreshable",
    "ReauthenticationRequired",
    "TokenRefreshUnavailable",
    "TokenRotationError",
    "aget_access_token",
    "arefresh",
    "get_access_token",
    "refresh",
]
