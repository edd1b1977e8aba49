"""The only module that knows what this app keeps in the session.

The middleware keeps a small summary of the signed-in user's tokens in the
session, so that the common request (every token fresh) is answered from the
session alone, without a database query. It is kept short, since with
cookie-based sessions it travels with every request::

    {
        "u": "42",            # the session's auth user id
        "c": 1764241234,      # when the database must be looked at next (epoch s)
        "x": 1764241294,      # the earliest expiry of the user's access tokens
        "e": {"provider": "google", "code": "invalid_grant",   # only after a
              "login_url": "/accounts/google/login/", ...},    # permanent failure
    }

No token value is ever stored here.

Which session: a browser's (the cookie's, ``request.session``), or, for an app
client of allauth headless (``X-Session-Token``), the session that token names. The two are never
mixed: on a request that carries an app token the cookie session is neither
read nor written, and the app session is saved here, at once, before the view
runs (allauth headless loads it again in the view and saves its own changes
over ours, never the reverse).
"""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.apps import apps
from django.conf import settings
from django.contrib.auth import SESSION_KEY as AUTH_USER_KEY
from django.contrib.auth import get_user
from django.contrib.sessions.backends.base import SessionBase, UpdateError
from django.http import HttpRequest
from django.utils import timezone

from . import REFRESH_ACCESS_TOKEN_ERROR

KEY = "_token_rotation"


@dataclass(frozen=True)
class TokenSession:
    """What templates see as ``{{ session }}`` (the Auth.js ``session`` object).

    ``error`` is ``"RefreshAccessTokenError"`` once a refresh failed for good,
    else ``""``. ``provider`` is the allauth provider id concerned,
    ``expires_at`` the earliest expiry of the user's access tokens. It never
    holds a token value.
    """

    error: str = ""
    provider: str = ""
    code: str = ""
    login_url: str = ""
    expires_at: datetime.datetime | None = None
    provider_name: str = ""

    def __bool__(self) -> bool:
        return bool(self.error)

    def as_json(self) -> dict[str, Any]:
        """For JSON answers (allauth headless's ``meta.token_rotation``): no sign-in URL."""
        return {
            "error": self.error,
            "provider": self.provider,
            "code": self.code,
            "expires_at": _json_time(self.expires_at),
        }


def _json_time(value: datetime.datetime | None) -> str | None:
    """ISO 8601 as Django's JSON encoder writes it: aware with ``USE_TZ = True``, else
    naive in ``TIME_ZONE`` (the times a ``USE_TZ = False`` site stores and shows)."""
    if value is None:
        return None
    if not settings.USE_TZ and timezone.is_aware(value):
        value = timezone.make_naive(value, timezone.get_default_timezone())
    return value.isoformat()


USER, CHECK_AT, EXPIRES_AT, ERROR = "u", "c", "x", "e"

# The header of allauth headless's session token. Requests authenticated by the
# JWT strategy's access token alone are left alone: reading their session on
# every request would undo what stateless access tokens are for (docs/headless.rst).
_APP_HEADER = "HTTP_X_SESSION_TOKEN"
# Where the app session found for a request is kept (``None``: token unknown or expired).
_APP_SESSION = "_token_rotation_app_session"


def app_session_token(request: HttpRequest) -> str | None:
    """The allauth headless session token the request carries, if any.

    Asked of allauth's ``HEADLESS_TOKEN_STRATEGY``, when the request carries
    ``X-Session-Token`` and ``allauth.headless`` is installed.
    """
    if _APP_HEADER not in request.META:
        return None
    if not apps.is_installed("allauth.headless"):
        return None
    from allauth.headless import app_settings as headless_settings

    token = headless_settings.TOKEN_STRATEGY.get_session_token(request)
    return token or None


def is_app(request: HttpRequest) -> bool:
    """Whether the request is an allauth headless app client's (a session token, no cookie).

    Its summary lives in the token's session, and it is answered in allauth
    headless's JSON shape.
    """
    if _APP_SESSION in request.__dict__:
        return True
    return app_session_token(request) is not None


def _session(request: HttpRequest) -> SessionBase | None:
    """The session that holds this request's summary (see the module's docstring)."""
    if _APP_SESSION in request.__dict__:
        app: SessionBase | None = request.__dict__[_APP_SESSION]
        return app
    token = app_session_token(request)
    if token is None:
        return getattr(request, "session", None)
    from allauth.headless import app_settings as headless_settings

    app = headless_settings.TOKEN_STRATEGY.lookup_session(token)
    request.__dict__[_APP_SESSION] = app
    return app


def user(request: HttpRequest) -> Any:
    """The user the request's session is signed in as (an app's: its token's session)."""
    if not is_app(request):
        return request.user
    session = _session(request)
    if session is None:
        return None
    # What allauth headless does to know an app's user (it checks the session hash).
    probe = HttpRequest()
    probe.session = session
    return get_user(probe)


def auth_user_id(request: HttpRequest) -> str | None:
    session = _session(request)
    if session is None:
        return None
    value = session.get(AUTH_USER_KEY)
    return None if value is None else str(value)


def summary(request: HttpRequest) -> dict[str, Any] | None:
    session = _session(request)
    value = session.get(KEY) if session is not None else None
    return value if isinstance(value, dict) else None


# The fast path: every request of a signed-in user goes through one of these two.
# They are written for speed (two session reads, no other call): profiling showed
# that each helper call and setting read costs about as much as a session read.


def lookup(request: HttpRequest, now: float) -> tuple[str | None, dict[str, Any] | None]:
    """The session's user id, and its summary if it can be trusted ``now``.

    ``(None, None)``: nobody is signed in. ``(user_id, None)``: the database
    must be looked at (no summary, another user's, or its check time passed).
    """
    if _APP_HEADER in request.META:
        session = _session(request)
    else:
        session = getattr(request, "session", None)
    if session is None:
        return None, None
    user_id = session.get(AUTH_USER_KEY)
    if user_id is None:
        return None, None
    user_id = str(user_id)
    value = session.get(KEY)
    if type(value) is dict and value.get(USER) == user_id:
        check_at = value.get(CHECK_AT)
        if type(check_at) is int and now < check_at:
            return user_id, value
    return user_id, None


async def alookup(request: HttpRequest, now: float) -> tuple[str | None, dict[str, Any] | None]:
    """:func:`lookup` for async code (the session may load from the database)."""
    if is_app(request):
        return await sync_to_async(lookup)(request, now)
    session = getattr(request, "session", None)
    if session is None:
        return None, None
    user_id = await session.aget(AUTH_USER_KEY)
    if user_id is None:
        return None, None
    user_id = str(user_id)
    value = await session.aget(KEY)
    if type(value) is dict and value.get(USER) == user_id:
        check_at = value.get(CHECK_AT)
        if type(check_at) is int and now < check_at:
            return user_id, value
    return user_id, None


def build(
    user_id: str,
    check_at: float,
    expires_at: float | None,
    error: dict[str, Any] | None,
) -> dict[str, Any]:
    """A summary (whole seconds: checking up to a second early is harmless)."""
    value: dict[str, Any] = {USER: user_id, CHECK_AT: int(check_at)}
    if expires_at is not None:
        value[EXPIRES_AT] = int(expires_at)
    if error is not None:
        value[ERROR] = error
    return value


def store(request: HttpRequest, value: dict[str, Any]) -> None:
    session = _session(request)
    if session is None or summary(request) == value:
        return
    session[KEY] = value
    if is_app(request):
        _save_app_session(session)


def clear(request: HttpRequest) -> None:
    session = _session(request)
    if session is not None and KEY in session:
        del session[KEY]
        if is_app(request):
            _save_app_session(session)


def _save_app_session(session: SessionBase) -> None:
    """Saved now, before the view: allauth headless reloads it there and saves over it."""
    # Deleted meanwhile (a logout): nothing to keep; the next request looks again.
    with contextlib.suppress(UpdateError):
        session.save()


def error_of(value: dict[str, Any] | None) -> dict[str, Any] | None:
    error = value.get(ERROR) if value else None
    return error if isinstance(error, dict) else None


def token_session(value: dict[str, Any] | None) -> TokenSession:
    """The template-facing view of a summary."""
    expiry = (value or {}).get(EXPIRES_AT)
    expires_at = (
        datetime.datetime.fromtimestamp(expiry, tz=datetime.UTC)
        if isinstance(expiry, (int, float))
        else None
    )
    error = error_of(value)
    if error is None:
        return TokenSession(expires_at=expires_at)
    return TokenSession(
        error=REFRESH_ACCESS_TOKEN_ERROR,
        provider=str(error.get("provider") or ""),
        code=str(error.get("code") or ""),
        login_url=str(error.get("login_url") or ""),
        expires_at=expires_at,
        provider_name=str(error.get("provider_name") or error.get("provider") or ""),
    )


def for_request(request: HttpRequest) -> TokenSession:
    """The ``TokenSession`` of this request (empty for anonymous users)."""
    value = summary(request)
    if value is None or value.get(USER) != auth_user_id(request):
        return TokenSession()
    return token_session(value)
