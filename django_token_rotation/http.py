"""Authorized HTTP clients for the provider's API: a 401 costs one fenced refresh.

An access token can die before its ``expires_at``: revoked at the provider, the
user changed their password, the provider rotated its keys. These clients send
``Authorization: Bearer <token>`` with a fresh token, and when the API answers
``401`` (or any status with ``WWW-Authenticate: Bearer error="invalid_token"``):

1. they refresh the token once, **fenced**: only if the stored access token is
   still the one the API rejected; if another request (thread, process, host)
   refreshed it meanwhile, its newer token is taken instead. However many
   requests see the same 401 at once, the provider gets one refresh
   (:func:`~django_token_rotation.rotation.refresh_if_current`);
2. they resend the request once with the new token. Never more than one retry
   per request, so a 401 loop is impossible;
3. a request whose body cannot be sent twice (a generator, a file object that
   cannot be rewound, an httpx stream) is **not** retried: its 401 response is
   returned as it is (the token is refreshed all the same, so the next request
   gets the new one).

A 401 whose ``WWW-Authenticate`` names another Bearer error (``insufficient_scope``,
``invalid_request``) is returned as it is: a new token would not help.
When the grant is gone the clients raise
:class:`~django_token_rotation.ReauthenticationRequired`; while the provider is
unavailable and the token has expired,
:class:`~django_token_rotation.TokenRefreshUnavailable`. No token value ever
reaches a log line or an exception message.

* :class:`TokenAuth` for ``requests``;
* :class:`HttpxTokenAuth` for ``httpx`` (sync and async clients; ``pip install
  django-token-rotation[httpx]``);
* :func:`google_credentials` for Google's client libraries (``google-auth``).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any

import requests
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from .exceptions import ReauthenticationRequired

if TYPE_CHECKING:
    import httpx
    from allauth.socialaccount.models import SocialToken
    from google.oauth2.credentials import Credentials

    _HttpxAuth = httpx.Auth
else:
    try:
        from httpx import Auth as _HttpxAuth
    except ImportError:  # the [httpx] extra is not installed: HttpxTokenAuth says so
        _HttpxAuth = object

__all__ = ["HttpxTokenAuth", "TokenAuth", "google_credentials", "should_refresh"]

# One challenge's ``error`` parameter: ``Bearer realm="x", error="invalid_token"``.
_BEARER_ERROR = re.compile(r'\berror\s*=\s*"?([A-Za-z0-9_.-]+)"?')


def _bearer_error(www_authenticate: str) -> str | None:
    """The ``error`` of the ``Bearer`` challenge in a ``WWW-Authenticate`` value."""
    position = www_authenticate.lower().find("bearer")
    if position < 0:
        return None
    challenge = www_authenticate[position + len("bearer") :]
    # The Bearer challenge's parameters end where the next challenge begins.
    following = re.search(r",\s*[A-Za-z][\w-]*\s+[\w-]+\s*=", challenge)
    if following is not None:
        challenge = challenge[: following.start()]
    found = _BEARER_ERROR.search(challenge)
    return found.group(1) if found else None


def should_refresh(status: int, www_authenticate: str | None) -> bool:
    """Whether an API answer says the access token itself was refused.

    ``401`` without a Bearer error, or with ``error="invalid_token"``; any status
    with ``WWW-Authenticate: Bearer error="invalid_token"`` (some APIs answer
    400 or 403). Example::

        >>> should_refresh(401, None)
        True
        >>> should_refresh(401, 'Bearer error="insufficient_scope"')
        False
        >>> should_refresh(403, 'Bearer realm="api", error="invalid_token"')
        True
    """
    error = _bearer_error(www_authenticate) if www_authenticate else None
    if error == "invalid_token":
        return True
    return status == 401 and error is None


def _presented(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


# -- the engine, sync and async ------------------------------------------------


def _current_token(user: Any, provider: str) -> SocialToken:
    from .rotation import find_token

    token = find_token(user, provider)
    if token is None:
        raise ReauthenticationRequired(
            f"No stored token for this user at provider {provider!r}.",
            code="no_token",
            provider=provider,
        )
    return token


@sensitive_variables()
def fresh_after_rejection(user: Any, provider: str, rejected: str) -> str:
    """The access token to use after an API refused ``rejected``: the stored one
    if it is newer, else a fresh one from a forced refresh (fenced: one refresh
    however many callers ask at once)."""
    from .rotation import refresh_if_current

    return str(refresh_if_current(_current_token(user, provider), rejected).token)


async def afresh_after_rejection(user: Any, provider: str, rejected: str) -> str:
    """The async twin of :func:`fresh_after_rejection`."""
    from .aio import run_blocking

    return await run_blocking(fresh_after_rejection, user, provider, rejected)


# -- requests --------------------------------------------------------------------


def _rewind(request: requests.PreparedRequest) -> bool:
    """Put the body back where it started; ``False`` when it cannot be sent again."""
    body = request.body
    if body is None or isinstance(body, (bytes, str)):
        return True
    position = getattr(request, "_body_position", None)
    seek = getattr(body, "seek", None)
    if isinstance(position, int) and seek is not None:
        try:
            seek(position)
        except OSError:
            return False
        return True
    # A generator, an iterator, a file that cannot seek: sent once already.
    return False


class TokenAuth(requests.auth.AuthBase):
    """A ``requests`` auth: ``Authorization: Bearer <fresh token>`` of ``user`` at
    ``provider``, one fenced refresh and one retry on a 401.

    Thread-safe: one instance can serve a shared ``Session``. Example::

        import requests
        from django_token_rotation.http import TokenAuth

        session = requests.Session()
        session.auth = TokenAuth(request.user, "google")
        events = session.get(
            "https://www.googleapis.com/calendar/v3/calendars/primary/events", timeout=10
        ).json()

    Raises :class:`~django_token_rotation.ReauthenticationRequired` (sign in
    again) and :class:`~django_token_rotation.TokenRefreshUnavailable` (try
    later) as :func:`~django_token_rotation.get_access_token` does.
    """

    def __init__(self, user: Any, provider: str) -> None:
        self.user = user
        self.provider = provider

    def __repr__(self) -> str:
        return f"TokenAuth(provider={self.provider!r})"

    @sensitive_variables()
    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        from .rotation import get_access_token

        request.headers["Authorization"] = f"Bearer {get_access_token(self.user, self.provider)}"
        request.register_hook("response", self._handle_rejection)  # type: ignore[no-untyped-call]
        return request

    @sensitive_variables()
    def _handle_rejection(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        if getattr(request, "_token_rotation_retried", False) or not should_refresh(
            response.status_code, response.headers.get("WWW-Authenticate")
        ):
            return response
        rejected = _presented(request.headers.get("Authorization"))
        if rejected is None:
            return response
        # Release the connection before anything else (as requests' digest auth).
        response.content  # noqa: B018
        response.close()
        token = fresh_after_rejection(self.user, self.provider, rejected)
        if token == rejected or not _rewind(request):
            return response
        retry = request.copy()
        retry._token_rotation_retried = True  # type: ignore[attr-defined]
        retry.headers["Authorization"] = f"Bearer {token}"
        cookies = getattr(retry, "_cookies", None)
        if cookies is not None and response.raw is not None:
            requests.cookies.extract_cookies_to_jar(cookies, request, response.raw)  # type: ignore[no-untyped-call]
            retry.prepare_cookies(cookies)
        answer: requests.Response = response.connection.send(retry, **kwargs)
        answer.history.append(response)
        answer.request = retry
        return answer


# -- httpx -------------------------------------------------------------------------


def _replayable(request: httpx.Request) -> bool:
    import httpx

    return isinstance(request.stream, httpx.ByteStream)


class HttpxTokenAuth(_HttpxAuth):
    """An ``httpx.Auth`` with the behaviour of :class:`TokenAuth`, for
    ``httpx.Client`` and ``httpx.AsyncClient`` (the async flow never blocks the
    event loop: it uses :func:`~django_token_rotation.aget_access_token`).

    Needs ``pip install django-token-rotation[httpx]``. A request whose body is a
    stream (``content=`` an iterator, a file, multipart ``files=``) is not
    retried. Example::

        import httpx
        from django_token_rotation.http import HttpxTokenAuth

        async with httpx.AsyncClient(auth=HttpxTokenAuth(user, "google")) as client:
            response = await client.get("https://www.googleapis.com/oauth2/v3/userinfo")
    """

    def __init__(self, user: Any, provider: str) -> None:
        import httpx  # noqa: F401  (a clear ImportError without the [httpx] extra)

        self.user = user
        self.provider = provider

    def __repr__(self) -> str:
        return f"HttpxTokenAuth(provider={self.provider!r})"

    @sensitive_variables()
    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        from .rotation import get_access_token

        request.headers["Authorization"] = f"Bearer {get_access_token(self.user, self.provider)}"
        response = yield request
        rejected = self._rejected(request, response)
        if rejected is None:
            return
        response.read()
        token = fresh_after_rejection(self.user, self.provider, rejected)
        if token != rejected and _replayable(request):
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    @sensitive_variables()
    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        from .aio import aget_access_token

        token = await aget_access_token(self.user, self.provider)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        rejected = self._rejected(request, response)
        if rejected is None:
            return
        await response.aread()
        token = await afresh_after_rejection(self.user, self.provider, rejected)
        if token != rejected and _replayable(request):
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

    @staticmethod
    def _rejected(request: httpx.Request, response: httpx.Response) -> str | None:
        if not should_refresh(response.status_code, response.headers.get("WWW-Authenticate")):
            return None
        return _presented(request.headers.get("Authorization"))


# -- google-auth ---------------------------------------------------------------------

#: What google-auth takes off an expiry before it calls a token stale
#: (``google.auth._helpers.REFRESH_THRESHOLD``).
_GOOGLE_REFRESH_THRESHOLD = datetime.timedelta(minutes=3, seconds=45)


def google_credentials(user: Any, provider: str = "google") -> Credentials:
    """``google.oauth2.credentials.Credentials`` for ``user`` whose refreshes go
    through this app's single-flight (its ``refresh_handler``): Google's client
    libraries (``googleapiclient``, ``google-cloud-*``) and
    ``google.auth.transport.requests.AuthorizedSession`` never see the refresh
    token, and never refresh it themselves.

    A refresh google-auth asks for because of a 401 is a fenced, forced
    refresh; one it asks for because the token is due is the usual one. The
    ``expiry`` reported to google-auth is shifted so that it calls the token
    stale exactly when this app does (``TOKEN_ROTATION_LEEWAY``). Needs
    ``google-auth``. Example::

        from googleapiclient.discovery import build
        from django_token_rotation.http import google_credentials

        calendar = build("calendar", "v3", credentials=google_credentials(request.user))
        events = calendar.events().list(calendarId="primary").execute()
    """
    from google.oauth2.credentials import Credentials

    credentials = Credentials(token=None)  # type: ignore[no-untyped-call]

    @sensitive_variables()
    def refresh_handler(request: Any, scopes: Any = None) -> tuple[str, datetime.datetime]:
        from .expiry import due_at
        from .rotation import access_token_for, refresh_if_current
        from .store import state_of

        token = _current_token(user, provider)
        if credentials.token:
            # Stale by the shifted expiry means due here, so a call for a token
            # that is not due comes from a 401: the fenced, forced refresh.
            token = refresh_if_current(token, credentials.token)
        else:
            access_token_for(token)
        due = due_at(token, state_of(token))
        if due is None:
            # No expiry known: google-auth asks again after a 401, or in a day.
            due = timezone.now() + datetime.timedelta(days=1)
        # google-auth keeps naive UTC datetimes and calls a token stale
        # REFRESH_THRESHOLD before its expiry: report the moment it is due here.
        expiry = due.astimezone(datetime.UTC).replace(tzinfo=None) + _GOOGLE_REFRESH_THRESHOLD
        return str(token.token), expiry

    credentials.refresh_handler = refresh_handler
    return credentials
