"""``TokenRefreshMiddleware``: keeps the signed-in user's tokens fresh on every request.

Place it after ``SessionMiddleware``, ``AuthenticationMiddleware`` and allauth's
``AccountMiddleware``. The common request (every token fresh) is answered from
a summary kept in the session: no database query. When a token is due, it is
refreshed through the engine (``rotation.check_user_tokens``), which is the
only refresh path.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.http.response import HttpResponseBase
from django.urls import Resolver404, resolve, reverse
from django.urls.exceptions import NoReverseMatch
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _

from . import providers, rotation
from . import session as token_session
from .conf import app_settings
from .exceptions import TokenRotationError
from .session import TokenSession

logger = logging.getLogger("django_token_rotation")

GetResponse = Callable[[HttpRequest], Any]


class TokenRefreshMiddleware:
    """Keeps the signed-in user's tokens fresh, and answers for a refused grant.

    A site changes what a request gets once a grant is refused in one place: a
    subclass of this middleware, named in ``MIDDLEWARE`` instead of it, that
    overrides :meth:`reauthentication_response` or one of the four answers it
    picks from (:meth:`html_response`, :meth:`json_response`,
    :meth:`htmx_response`, :meth:`app_response`). Each gets the request and the
    :class:`~django_token_rotation.session.TokenSession` that templates see as
    ``{{ session }}``, and returns a response, or ``None`` to let the request
    through to its view.
    """

    sync_capable = True
    async_capable = True

    #: Set on every response of a user whose grant was refused that the
    #: middleware lets through (allauth's own views, HTML pages): the error,
    #: and the id of the provider to sign in with again.
    ERROR_HEADER = "Token-Rotation-Error"
    PROVIDER_HEADER = "Token-Rotation-Provider"

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        error = self.process(request)
        if error is None:
            return self.get_response(request)
        response = self._interrupt(request, error)
        if response is None:
            response = self.get_response(request)
            self._mark(response, error)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        get_response: Callable[[HttpRequest], Awaitable[Any]] = self.get_response
        error = await self.aprocess(request)
        if error is None:
            return await get_response(request)
        response = await sync_to_async(self._interrupt)(request, error)
        if response is None:
            response = await get_response(request)
            self._mark(response, error)
        return response

    # -- the two halves -----------------------------------------------------

    def process(self, request: HttpRequest) -> TokenSession | None:
        """The refused grant of the request's user, or ``None`` (all is well)."""
        # The fast path (a signed-in user, every token fresh) is the first three
        # lines: one cached setting, two session reads, no query.
        exempt = app_settings.EXEMPT_PATHS
        if exempt and _exempt(request, exempt):
            return None
        user_id, summary = token_session.lookup(request, time.time())
        if summary is None:
            if user_id is None:
                return None
            summary = recheck(request)
        elif token_session.error_of(summary) is None:
            return None
        return _refused(summary)

    async def aprocess(self, request: HttpRequest) -> TokenSession | None:
        exempt = app_settings.EXEMPT_PATHS
        if exempt and _exempt(request, exempt):
            return None
        user_id, summary = await token_session.alookup(request, time.time())
        if summary is None:
            if user_id is None:
                return None
            summary = await sync_to_async(recheck)(request)
        return _refused(summary)

    def _interrupt(self, request: HttpRequest, error: TokenSession) -> HttpResponse | None:
        if _is_signin_flow(request):
            return None
        return self.reauthentication_response(request, error)

    def _mark(self, response: Any, error: TokenSession) -> None:
        if isinstance(response, HttpResponseBase):
            response[self.ERROR_HEADER] = error.error
            response[self.PROVIDER_HEADER] = error.provider

    # -- the answers to a refused grant (override in a subclass) --------------

    def reauthentication_response(
        self, request: HttpRequest, error: TokenSession
    ) -> HttpResponse | None:
        """The answer to a request whose user must sign in again, or ``None`` to let it through.

        Picks one of the four answers below by the kind of request: an allauth
        headless app client (a session token), an HTMX request, a
        ``fetch``/XHR/JSON call (:func:`wants_json`), an HTML page. Never
        called for allauth's own views and ``TOKEN_ROTATION_EXEMPT_PATHS``.
        """
        if token_session.is_app(request):
            return self.app_response(request, error)
        if request.headers.get("HX-Request") == "true":
            return self.htmx_response(request, error)
        if wants_json(request):
            return self.json_response(request, error)
        return self.html_response(request, error)

    def html_response(self, request: HttpRequest, error: TokenSession) -> HttpResponse | None:
        """A page load: let the template decide (``None``), or, with
        ``TOKEN_ROTATION_REDIRECT_ON_ERROR``, redirect a ``GET`` to sign-in."""
        if app_settings.REDIRECT_ON_ERROR and request.method in ("GET", "HEAD"):
            return HttpResponseRedirect(reauth_url(request, error, request.get_full_path()))
        return None

    def json_response(self, request: HttpRequest, error: TokenSession) -> HttpResponse | None:
        """A ``fetch``/XHR call from a browser (cookie session, allauth headless
        browser clients included): ``401`` with ``error``, ``provider``,
        ``reauth_url`` (back to the ``Referer`` page) and ``message`` (in the
        request's language, for the page to show as it is)."""
        next_url = _local_path(request, request.headers.get("Referer"))
        return JsonResponse(
            {
                "error": error.error,
                "provider": error.provider,
                "reauth_url": reauth_url(request, error, next_url),
                "message": _(
                    "Your sign-in with %(provider)s has expired. Please sign in again to continue."
                )
                % {"provider": error.provider_name or error.provider},
            },
            status=401,
        )

    def htmx_response(self, request: HttpRequest, error: TokenSession) -> HttpResponse | None:
        """An HTMX request: ``HX-Redirect`` to sign-in, back to ``HX-Current-URL``."""
        next_url = _local_path(request, request.headers.get("HX-Current-URL"))
        response = HttpResponse(status=200)
        response["HX-Redirect"] = reauth_url(request, error, next_url)
        return response

    def app_response(self, request: HttpRequest, error: TokenSession) -> HttpResponse | None:
        """An allauth headless app client: ``401`` in allauth headless's envelope.

        ``{"status": 401, "errors": [{"code": "RefreshAccessTokenError",
        "param": "provider", "message": ...}], "data": {"provider": ...},
        "meta": {"is_authenticated": true}}``: the user is still signed in to
        the site; the app signs in again at ``data.provider`` (allauth
        headless's ``provider_token`` or ``provider_redirect`` flow).
        """
        name = error.provider_name or error.provider
        return JsonResponse(
            {
                "status": 401,
                "errors": [
                    {
                        "code": error.error,
                        "param": "provider",
                        "message": _(
                            "Your sign-in with %(provider)s has expired. "
                            "Please sign in again to continue."
                        )
                        % {"provider": name},
                    }
                ],
                "data": {"provider": error.provider},
                "meta": {"is_authenticated": True},
            },
            status=401,
        )


def _refused(summary: dict[str, Any] | None) -> TokenSession | None:
    if token_session.error_of(summary) is None:
        return None
    return token_session.token_session(summary)


def recheck(request: HttpRequest) -> dict[str, Any] | None:
    """Look at the database: refresh due tokens, rebuild the session summary.

    A summary that carries an error is trusted for ``ERROR_RECHECK`` seconds at
    most (not ``SESSION_RECHECK``): a sign-in on another device, or an admin's
    "clear error", lifts the error in the database, and every other session of
    the user must see that soon. Sessions without an error never pay for this.
    """
    user = token_session.user(request)
    if user is None or not user.is_authenticated:
        token_session.clear(request)
        return None
    now = time.time()
    try:
        checks = rotation.check_user_tokens(user.pk, app_settings.PROVIDERS)
    except TokenRotationError as exc:
        # Never into the page: the request goes on, the next one looks again.
        logger.warning("Could not check the tokens of user %s (%s).", user.pk, exc.code)
        return token_session.summary(request)
    check_at = now + app_settings.SESSION_RECHECK
    expiries: list[float] = []
    error: dict[str, Any] | None = None
    shown = token_session.error_of(token_session.summary(request))
    for check in checks:
        if check.expires_at is not None:
            expiries.append(check.expires_at.timestamp())
        if check.next_check is not None:
            check_at = min(check_at, check.next_check.timestamp())
        if check.error is not None and error is None:
            error = {"provider": check.provider, "code": check.error.code}
            if shown is not None and shown.get("provider") == check.provider:
                # Still the same failure: keep its sign-in link (no query).
                error.update({k: v for k, v in shown.items() if k not in error})
            else:
                error.update(_signin(request, check.token_id))
    if error is not None:
        check_at = min(check_at, now + app_settings.ERROR_RECHECK)
    summary = token_session.build(
        str(user.pk), check_at, min(expiries) if expiries else None, error
    )
    token_session.store(request, summary)
    return summary


def _signin(request: HttpRequest, token_id: int) -> dict[str, str]:
    """The provider's sign-in URL and name, computed once when the error appears."""
    from allauth.socialaccount.models import SocialToken

    try:
        token = SocialToken.objects.select_related("account", "app").get(pk=token_id)
        provider = providers.get_provider(token)
        return {"login_url": provider.get_login_url(request), "provider_name": provider.name}
    except Exception:  # any failure here must not break the page
        logger.warning("No sign-in URL for token %s; using the account login page.", token_id)
        try:
            return {"login_url": reverse("account_login")}
        except NoReverseMatch:
            return {"login_url": "/"}


def reauth_url(request: HttpRequest, error: TokenSession, next_url: str | None) -> str:
    """The URL that signs the user in again at the affected provider."""
    url = error.login_url or "/"
    params = {"process": "login"}
    if next_url and url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        params["next"] = next_url
    return f"{url}?{urlencode(params)}"


def wants_json(request: HttpRequest) -> bool:
    """A ``fetch``/XHR/API call rather than a page load."""
    headers = request.headers
    if headers.get("X-Requested-With") == "XMLHttpRequest":
        return True
    if headers.get("Sec-Fetch-Dest") == "empty":  # fetch() and XHR in modern browsers
        return True
    if (headers.get("Content-Type") or "").startswith("application/json"):
        return True
    accept = headers.get("Accept") or ""
    return "json" in accept and "text/html" not in accept


def _local_path(request: HttpRequest, url: str | None) -> str | None:
    """The path of ``url`` if it points at this site, else ``None``."""
    if not url or not url_has_allowed_host_and_scheme(
        url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return None
    return urlsplit(url).path


def _exempt(request: HttpRequest, patterns: tuple[re.Pattern[str], ...]) -> bool:
    path = request.path_info
    return any(pattern.match(path) for pattern in patterns)


def _is_signin_flow(request: HttpRequest) -> bool:
    """allauth's own views (sign-in, callback, logout...) are never interrupted."""
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return False
    module = getattr(match.func, "__module__", "") or ""
    return module.startswith("allauth.") or (match.url_name or "").startswith(
        ("account_", "socialaccount_")
    )
