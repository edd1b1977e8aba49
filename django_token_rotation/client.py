"""The only module that speaks HTTP to a provider.

It sends the refresh-token grant (and RFC 7009 revocation requests), reads the
answer under a size cap and one hard wall-clock deadline (:mod:`.wire`: the
discovery fetch, the token call and the JWKS fetch of one refresh share it,
from name resolution to the last byte of the body), and turns it
into either validated data (:class:`TokenResponse`, :class:`RevocationResponse`)
or one of the typed exceptions of :mod:`django_token_rotation.exceptions`. It
never logs, and never puts in an exception, a body, a header value or any token.
"""

from __future__ import annotations

import datetime
import email.utils
import functools
import ipaddress
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import requests
import requests.adapters
import requests.auth
import requests.utils
import urllib3
import urllib3.connection
import urllib3.util.connection
from allauth.socialaccount.adapter import get_adapter
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from . import wire
from .conf import app_settings
from .exceptions import (
    ImproperlyConfiguredProvider,
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    TokenRotationError,
)

logger = logging.getLogger("django_token_rotation")

#: OAuth 2.0 error codes (RFC 6749 5.2) after which retrying cannot help: the
#: grant or the client is not accepted, so the user has to sign in again.
PERMANENT_ERRORS = frozenset(
    {
        "invalid_grant",
        "invalid_client",
        "unauthorized_client",
        "invalid_scope",
        "unsupported_grant_type",
        "invalid_request",
    }
)
#: Error codes that say "later".
TRANSIENT_ERRORS = frozenset({"temporarily_unavailable", "server_error", "slow_down"})

_ERROR_CODE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# An expiry beyond this is not a lifetime, it is junk (or an attempt to park a
# token forever); it is ignored and the expiry derived some other way.
MAX_EXPIRES_IN = 366 * 24 * 3600


@dataclass(frozen=True)
class TokenEndpoint:
    """Everything needed to call one provider's token endpoint."""

    url: str
    client_id: str
    client_secret: str = field(repr=False)
    provider: str
    basic_auth: bool = False
    headers: Mapping[str, str] | None = field(default=None, repr=False)
    client_id_parameter: str = "client_id"
    expires_in_key: str = "expires_in"
    #: OpenID Connect providers: where refreshed ID tokens are checked against.
    issuer: str | None = None
    jwks_uri: str | None = None
    #: ``token_type`` values besides ``Bearer`` that name a bearer token (Slack's "user").
    token_types: frozenset[str] = frozenset()
    #: Further form parameters of the refresh (VK ID's ``device_id`` and ``state``).
    params: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: The provider's error answers in its own words: shape -> standard code
    #: (``providers.registry.error_shapes``).
    errors: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class TokenResponse:
    """A validated successful answer of a token endpoint."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_in: int | None = None
    refresh_expires_in: int | None = None
    id_token: str | None = field(default=None, repr=False)
    token_type: str | None = None
    #: Set when the answer is refused for its access token (a non-Bearer type,
    #: a malformed or missing one) but carries a new refresh token: then
    #: ``access_token`` is empty and only ``refresh_token`` may be stored.
    refused: TokenRotationError | None = None


# Hides every local variable from Django's error reports (DEBUG pages, mails).
@sensitive_variables()
def refresh_token_grant(
    endpoint: TokenEndpoint, refresh_token: str, *, before_send: wire.BeforeSend | None = None
) -> TokenResponse:
    """Exchange ``refresh_token`` at ``endpoint``.

    Raises :class:`ReauthenticationRequired` when the provider refuses the grant
    or the client, :class:`TokenRefreshUnavailable` for everything that may work
    later (network, 5xx, 429, malformed answers). ``before_send`` runs once the
    connection is up, immediately before the request is written (given the
    seconds left of the deadline); what it raises is raised here, and nothing
    is sent.
    """
    data = {**endpoint.params, "grant_type": "refresh_token", "refresh_token": refresh_token}
    # Always POST (RFC 6749 3.2), even for providers whose allauth adapter
    # uses GET at sign-in: a refresh token never goes into a URL, where proxies
    # and urllib3's debug log would record it.
    status, content_type, body, response_headers = _send(
        endpoint,
        "POST",
        data=data,
        headers={"Accept": "application/json", **(endpoint.headers or {})},
        auth=_authenticate(endpoint, data),
        before_send=before_send,
    )
    return parse_token_response(
        endpoint,
        status,
        content_type,
        body,
        retry_after=response_headers.get("Retry-After"),
    )


# Hides every local variable from Django's error reports (DEBUG pages, mails).
@sensitive_variables()
def _authenticate(endpoint: TokenEndpoint, data: dict[str, str]) -> requests.auth.AuthBase | None:
    """Client authentication as allauth does it at sign-in: HTTP Basic when the
    adapter says so (and there is a secret), else the form body; public clients
    send their id only."""
    if endpoint.basic_auth and endpoint.client_secret:
        return requests.auth.HTTPBasicAuth(endpoint.client_id, endpoint.client_secret)
    data[endpoint.client_id_parameter] = endpoint.client_id
    if endpoint.client_secret:
        data["client_secret"] = endpoint.client_secret
    return None


def fetch_json(
    url: str,
    *,
    provider: str,
    timeout: float | None = None,
    what: str = "the discovery document",
    code: str = "discovery_failed",
) -> dict[str, Any]:
    """GET a JSON document (a discovery document, a JWKS) under the same caps.

    The same deadline, body-size cap and whole-answer timeout as the token call.
    A transport failure is :class:`TokenRefreshUnavailable` with its own code
    (``timeout``, ``connection_error``...); an answer that is not a JSON object,
    with ``code``.
    """
    endpoint = TokenEndpoint(url=url, client_id="", client_secret="", provider=provider)
    status, content_type, body, _headers = _send(
        endpoint, "GET", headers={"Accept": "application/json"}, timeout=timeout
    )
    if status != 200:
        raise TokenRefreshUnavailable(
            f"Fetching {what} answered HTTP {status}.", code=code, provider=provider
        )
    document = _decode_json(body)
    if not isinstance(document, dict):
        raise TokenRefreshUnavailable(
            f"{what[0].upper()}{what[1:]} is not a JSON object.", code=code, provider=provider
        )
    return document


@dataclass(frozen=True)
class RevocationResponse:
    """A revocation endpoint's answer (RFC 7009 2.2): 200 means revoked (or
    already invalid); anything else carries the status and the error code."""

    status: int
    error: str | None = None
    retry_at: datetime.datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.status == 200


# Hides every local variable from Django's error reports (DEBUG pages, mails).
@sensitive_variables()
def revoke_token(
    endpoint_url: str,
    token: str,
    token_type_hint: str,
    *,
    credentials: TokenEndpoint,
    timeout: float | None = None,
) -> RevocationResponse:
    """Ask ``endpoint_url`` to revoke ``token`` (RFC 7009), authenticating as the
    client of ``credentials`` exactly as for a refresh.

    Network failures and oversized answers raise :class:`TokenRefreshUnavailable`
    (code ``timeout``, ``connection_error``, ``malformed_response``); every
    answer that arrives is returned, classified by status and error code only.
    """
    data = {"token": token, "token_type_hint": token_type_hint}
    auth = _authenticate(credentials, data)
    target = TokenEndpoint(
        url=endpoint_url,
        client_id=credentials.client_id,
        client_secret="",
        provider=credentials.provider,
    )
    status, content_type, body, response_headers = _send(
        target,
        "POST",
        data=data,
        headers={"Accept": "application/json", **(credentials.headers or {})},
        auth=auth,
        timeout=timeout,
    )
    error = None if status == 200 else _error_code(_decode_body(content_type, body))
    return RevocationResponse(
        status=status,
        error=error,
        retry_at=_retry_at(response_headers.get("Retry-After")) if status != 200 else None,
    )


# Per-thread HTTP sessions kept while a background run holds keep_alive().
_keep_alive = threading.local()
_keep_alive_users = 0
_keep_alive_guard = threading.Lock()


@contextmanager
def keep_alive() -> Iterator[None]:
    """Inside, each thread reuses one HTTP session (and its connections to the
    token endpoint) instead of a new one per request: for background runs over
    many tokens. Sessions are closed when the last holder leaves, or by the
    thread that made them (:func:`close_sessions`)."""
    global _keep_alive_users
    with _keep_alive_guard:
        _keep_alive_users += 1
    try:
        yield
    finally:
        with _keep_alive_guard:
            _keep_alive_users -= 1
        close_sessions()


def close_sessions() -> None:
    """Close this thread's kept session, if any."""
    session = getattr(_keep_alive, "session", None)
    _keep_alive.templates = None
    if session is not None:
        _keep_alive.session = None
        session.close()


def _session() -> tuple[requests.Session, bool]:
    """allauth's session (so that a site's proxies, certificates or retries
    configured on its SocialAccountAdapter apply here too), and whether it is
    kept for the thread under keep_alive() (else it is closed after the request)."""
    if _keep_alive_users <= 0:
        return get_adapter().get_requests_session(), False
    session = getattr(_keep_alive, "session", None)
    if session is None:
        session = _keep_alive.session = get_adapter().get_requests_session()
        _keep_alive.environment = {} if session.trust_env else None
        _keep_alive.templates = {}
        # What requests would read from the environment on every request is
        # read once per URL instead (_environment).
        session.trust_env = False
    return session, True


class _Environment(NamedTuple):
    proxies: dict[str, str]
    verify: str | None
    netrc: tuple[str, str] | None


def _environment(session: requests.Session, url: str) -> _Environment | None:
    """For a kept session that trusted the environment: what requests reads
    from it for ``url`` on every request (the proxy variables, the CA bundle
    variables, ``~/.netrc``), read on its first request to ``url``. It scans
    the whole environment twice per request: about a millisecond of CPU."""
    cache: dict[str, _Environment] | None = getattr(_keep_alive, "environment", None)
    if cache is None or session is not getattr(_keep_alive, "session", None):
        return None
    found = cache.get(url)
    if found is None:
        found = cache[url] = _Environment(
            proxies=requests.utils.get_environ_proxies(url, no_proxy=None),
            verify=os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE"),
            netrc=requests.utils.get_netrc_auth(url),
        )
    return found


class _Template(NamedTuple):
    request: requests.PreparedRequest
    settings: dict[str, Any]


# Hides every local variable from Django's error reports (DEBUG pages, mails).
@sensitive_variables()
def _template(
    session: requests.Session,
    method: str,
    url: str,
    headers: Mapping[str, str] | None,
    auth: requests.auth.AuthBase | None,
    proxies: dict[str, str] | None,
    verify: str | None,
    *,
    form: bool,
) -> _Template | None:
    """For a kept session: ``session.request`` prepared once per method, URL,
    headers and credentials (merging the session's headers, hooks, params and
    authentication, as requests does on every call), and the settings it would
    pass to ``session.send``. A call sends a copy with its own form as the body,
    through ``session.send`` (a site's adapters, hooks and instrumentation see
    it as before), without requests' preparing and merging on every call
    (docs/performance.rst: 0.88 -> 0.69 ms of CPU per call).

    ``None`` (the call goes through ``session.request``) for a one-off session,
    or wherever a copy could differ from what ``session.request`` would send:
    cookies in the session's jar (an endpoint that sets them gets them back),
    a session or credentials other than HTTP Basic (they may sign the body),
    a ``Session`` subclass or a ``request`` replaced by the site (allauth's own
    ``partial`` adding a default timeout is the exception: the call passes one).
    """
    templates: dict[Any, _Template] | None = getattr(_keep_alive, "templates", None)
    if (
        templates is None
        or session is not getattr(_keep_alive, "session", None)
        or session.cookies
        or not _prepares_as_requests(session)
        or (auth is not None and type(auth) is not requests.auth.HTTPBasicAuth)
    ):
        return None
    credentials = (
        (auth.username, auth.password) if isinstance(auth, requests.auth.HTTPBasicAuth) else None
    )
    key = (
        form,
        method,
        url,
        tuple((headers or {}).items()),
        credentials,
        tuple(sorted((proxies or {}).items())),
        verify,
    )
    found = templates.get(key)
    if found is None:
        request = session.prepare_request(
            # A placeholder form, so that the headers come in requests' order.
            requests.Request(
                method, url, headers=dict(headers or {}), auth=auth, data={"": ""} if form else None
            )
        )
        settings = session.merge_environment_settings(
            request.url, proxies or {}, True, verify, None
        )
        found = templates[key] = _Template(request, settings)
    return found


def _prepares_as_requests(session: requests.Session) -> bool:
    """Whether ``session.request`` is requests' own (allauth's ``partial``
    with a default timeout included) and nothing it relies on is overridden."""
    cls = type(session)
    if (
        cls.request is not requests.Session.request
        or cls.prepare_request is not requests.Session.prepare_request
        or cls.merge_environment_settings is not requests.Session.merge_environment_settings
        or session.auth is not None
    ):
        return False
    override = vars(session).get("request")
    if override is None:
        return True
    return (
        isinstance(override, functools.partial)
        and not override.args
        and set(override.keywords) <= {"timeout"}
        and getattr(override.func, "__func__", None) is requests.Session.request
        and getattr(override.func, "__self__", None) is session
    )


# Hides every local variable from Django's error reports (DEBUG pages, mails).
@sensitive_variables()
def _send(
    endpoint: TokenEndpoint,
    method: str,
    *,
    params: Mapping[str, str] | None = None,
    data: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    auth: requests.auth.AuthBase | None = None,
    timeout: float | None = None,
    before_send: wire.BeforeSend | None = None,
) -> tuple[int, str, bytes, Mapping[str, str]]:
    timeout = app_settings.TIMEOUT if timeout is None else timeout
    limit = app_settings.MAX_RESPONSE_BYTES
    provider = endpoint.provider
    require_secure(endpoint.url, provider=provider)
    # This call's own deadline, within the refresh's if one is running.
    ends = wire.ends_within(timeout)
    left = ends - time.monotonic()
    if left <= 0:
        raise TokenRefreshUnavailable(
            "No time left of this refresh's deadline.", code="timeout", provider=provider
        )
    guard, watched = wire.guard(ends, before_send)
    session, kept = _session()
    environment = _environment(session, endpoint.url)
    proxies: dict[str, str] | None = None
    verify: str | None = None
    if environment is not None:
        # As requests would have merged them with trust_env (see _environment).
        proxies, verify = dict(environment.proxies), environment.verify
        if auth is None and session.auth is None and environment.netrc is not None:
            auth = requests.auth.HTTPBasicAuth(*environment.netrc)
    try:
        with nullcontext() if kept else session:
            wire.arm(session)
            # Per socket operation; the guard holds the whole call to ``ends``.
            timeout_pair = (left, left)
            template = _template(
                session, method, endpoint.url, headers, auth, proxies, verify, form=bool(data)
            )
            if template is None or params is not None:
                response = session.request(
                    method,
                    endpoint.url,
                    params=params,
                    data=data,
                    headers=dict(headers or {}),
                    auth=auth,
                    timeout=timeout_pair,
                    allow_redirects=False,
                    stream=True,
                    proxies=proxies,
                    verify=verify,
                )
            else:
                prepared = template.request.copy()
                prepared.prepare_body(data, None)
                response = session.send(
                    prepared, timeout=timeout_pair, allow_redirects=False, **template.settings
                )
            with response:
                body = _read_capped(response, limit=limit)
                if guard.finish() and not _complete(response):
                    # Cut at the deadline: an end of file, not the end of the body.
                    raise wire.Expired
                return (
                    response.status_code,
                    response.headers.get("Content-Type", ""),
                    body,
                    response.headers,
                )
    except wire.NotSent:
        refusal = guard.refusal
        if isinstance(refusal, TokenRotationError) and refusal.provider is None:
            refusal.provider = provider
        assert refusal is not None
        raise refusal from None
    except _BodyTooLarge:
        raise TokenRefreshUnavailable(
            f"The response body exceeds {limit} bytes.",
            code="malformed_response",
            provider=provider,
        ) from None
    except Exception as exc:
        if guard.fired or isinstance(exc, (wire.Expired, requests.Timeout)):
            # Whatever broke when the watchdog shut the socket: the deadline did it.
            raise TokenRefreshUnavailable(
                f"No complete answer within {timeout} s.", code="timeout", provider=provider
            ) from None
        if isinstance(exc, requests.RequestException):
            # The message of a requests exception can quote the URL: never pass it on.
            raise TokenRefreshUnavailable(
                "Could not connect to the endpoint."
                if isinstance(exc, requests.ConnectionError)
                else f"HTTP request failed ({type(exc).__name__}).",
                code="connection_error",
                provider=provider,
            ) from None
        # Anything else raised inside requests (a site's custom session or
        # adapter): its traceback would show the form with the refresh token
        # on a DEBUG error page. Report the type only, without the chain.
        raise TokenRefreshUnavailable(
            f"HTTP request failed unexpectedly ({type(exc).__name__}).",
            code="connection_error",
            provider=provider,
        ) from None
    finally:
        wire.unguard(guard, watched)


def _complete(response: requests.Response) -> bool:
    """Whether a body read to its end is all there: its declared length arrived
    (a chunked body that is cut raises while it is read)."""
    raw = response.raw
    if getattr(raw, "chunked", False):
        return True
    declared = response.headers.get("Content-Length", "")
    return declared.isdigit() and raw.tell() == int(declared)


def require_secure(url: str, *, provider: str) -> None:
    """Tokens travel over HTTPS only; plain HTTP to a loopback address (a
    provider on the same machine), or with ``TOKEN_ROTATION_ALLOW_INSECURE_HTTP``
    (development), is the exception."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and (
        _is_loopback(parts.hostname or "") or app_settings.ALLOW_INSECURE_HTTP
    ):
        return
    raise ImproperlyConfiguredProvider(
        f"Refusing to send tokens to a non-HTTPS endpoint ({parts.scheme}://{parts.hostname}).",
        code="insecure_endpoint",
        provider=provider,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _BodyTooLarge(Exception):
    pass


# Hides every local variable from Django's error reports (DEBUG pages, mails).
@sensitive_variables()
def _read_capped(response: requests.Response, *, limit: int) -> bytes:
    """The whole body, at most ``limit`` bytes (the guard of the call holds the
    deadline: a body dripping a byte at a time is cut there).

    ``stream()`` reads as urllib3 1.26 and 2.x both do (1.26 has no ``read1``).
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.raw.stream(16 * 1024, decode_content=True):
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge
            chunks.append(chunk)
    except urllib3.exceptions.ReadTimeoutError:
        raise wire.Expired from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise requests.ConnectionError(type(exc).__name__) from None
    return b"".join(chunks)


def _decode_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def _decode_body(content_type: str, body: bytes) -> Any:
    """JSON, or (like allauth, for providers such as GitHub) form-encoded."""
    media_type = content_type.split(";")[0].strip().lower()
    stripped = body.lstrip()
    if media_type.endswith("json") or stripped[:1] in (b"{", b"["):
        return _decode_json(body)
    if media_type in ("application/x-www-form-urlencoded", "text/plain"):
        try:
            return dict(parse_qsl(body.decode("utf-8"), strict_parsing=True))
        except (UnicodeDecodeError, ValueError):
            return None
    return None


def _retry_at(value: str | None) -> datetime.datetime | None:
    """Parse ``Retry-After`` (seconds or an HTTP date); ``None`` if absent or junk."""
    if not value:
        return None
    value = value.strip()
    now = timezone.now()
    if value.isdigit():
        seconds = min(int(value), 24 * 3600)
        return now + datetime.timedelta(seconds=seconds)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    if timezone.is_naive(now):  # USE_TZ = False: the site's local time, as timezone.now()
        when = timezone.make_naive(when, timezone.get_default_timezone())
    return min(max(when, now), now + datetime.timedelta(days=1))


def _error_code(payload: Any) -> str | None:
    if isinstance(payload, dict):
        code = payload.get("error")
        if isinstance(code, str) and _ERROR_CODE_RE.match(code):
            return code
        if code is not None:
            return "non_standard_error"
    return None


#: Where providers put the refresh token's lifetime: Keycloak
#: (``refresh_expires_in``), GitHub Apps, LinkedIn, Pinterest, Google
#: time-limited consent (``refresh_token_expires_in``), Intuit QuickBooks
#: (``x_refresh_token_expires_in``). The first usable one wins.
REFRESH_EXPIRES_IN_KEYS = (
    "refresh_expires_in",
    "refresh_token_expires_in",
    "x_refresh_token_expires_in",
)


def _refresh_lifetime(payload: dict[str, Any]) -> int | None:
    for key in REFRESH_EXPIRES_IN_KEYS:
        lifetime = _lifetime(payload.get(key))
        if lifetime is not None:
            return lifetime
    return None


def _provider_error(
    errors: Mapping[str, str], status: int, body: bytes, payload: Any
) -> str | None:
    """The standard error code an error answer means, through the provider's
    error shapes (``errors``, from its registry entry and the site's settings).

    Reads the answer's shape only (never a token): an ``error`` string, a Graph
    API error object, a bare ``message``, a Strava-style ``errors`` list, and
    for an answer without any of them its status (``http:<status>``, and
    ``http:<status>:empty`` when the body is empty).
    """
    keys: list[str] = []
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), int):
            keys.append(f"graph:{error['code']}")
        message = payload.get("message")
        if isinstance(message, str) and len(message) <= 100:
            keys.append(f"message:{message.strip().lower()}")
        items = payload.get("errors")
        if isinstance(items, list):
            keys.extend(
                f"field:{item.get('field')}:{item.get('code')}"
                for item in items[:10]
                if isinstance(item, dict)
            )
    for key in keys:
        if key in errors:
            return errors[key]
    code = _error_code(payload)
    if code is not None:
        return errors.get(code, code)
    if not body.strip() and f"http:{status}:empty" in errors:
        return errors[f"http:{status}:empty"]
    return errors.get(f"http:{status}")


def _lifetime(value: Any) -> int | None:
    """A lifetime in seconds from ``expires_in``-like values; ``None`` if unusable.

    Integers and integral strings (Azure AD v1 sends ``"3599"``) are accepted.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit() or len(value) > 12:
            return None
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not 0 < value <= MAX_EXPIRES_IN:
        return None
    return value


# Hides every local variable from Django's error reports (DEBUG pages, mails).
@sensitive_variables()
def parse_token_response(
    endpoint: TokenEndpoint,
    status: int,
    content_type: str,
    body: bytes,
    *,
    retry_after: str | None = None,
) -> TokenResponse:
    """Classify a token endpoint's answer; return it only when it is usable."""
    provider = endpoint.provider
    payload = _decode_body(content_type, body)
    code = _provider_error(endpoint.errors, status, body, payload)

    if 300 <= status < 400:
        raise TokenRefreshUnavailable(
            f"The token endpoint redirected (HTTP {status}); redirects are not followed.",
            code="unexpected_response",
            provider=provider,
        )
    if status == 429 or code == "slow_down":
        raise TokenRefreshUnavailable(
            f"Rate limited (HTTP {status}).",
            code="rate_limited",
            provider=provider,
            retry_at=_retry_at(retry_after),
        )
    if status >= 500 or code in TRANSIENT_ERRORS:
        raise TokenRefreshUnavailable(
            f"The provider is unavailable (HTTP {status}, error {code or '-'}).",
            code=code if code in TRANSIENT_ERRORS else "server_error",
            provider=provider,
            retry_at=_retry_at(retry_after),
        )
    if code in PERMANENT_ERRORS:
        raise ReauthenticationRequired(
            f"The provider refused the refresh (HTTP {status}, error {code}).",
            code=code,
            provider=provider,
        )
    if status == 408:
        raise TokenRefreshUnavailable(
            "The token endpoint timed out the request (HTTP 408).",
            code="timeout",
            provider=provider,
            retry_at=_retry_at(retry_after),
        )
    if 400 <= status < 500:
        # A refusal that says nothing we understand (glewlwyd's empty HTTP 400
        # for a spent refresh token, an HTML page, an unknown error code): the
        # engine tries once more, and a second one means "sign in again".
        raise TokenRefreshUnavailable(
            f"The token endpoint refused the refresh without an OAuth error we know "
            f"(HTTP {status}, error {code or '-'}).",
            code="refusal_unconfirmed",
            provider=provider,
        )
    if code is not None:
        # An error in a 2xx answer that we do not know. Signing the user out
        # would not fix it.
        raise TokenRefreshUnavailable(
            f"Unexpected answer from the token endpoint (HTTP {status}, error {code or '-'}).",
            code="unexpected_response",
            provider=provider,
        )
    if status not in (200, 201):
        raise TokenRefreshUnavailable(
            f"Unexpected status HTTP {status} from the token endpoint.",
            code="unexpected_response",
            provider=provider,
        )
    return _validated(endpoint, payload)


def _malformed(provider: str, what: str) -> TokenRefreshUnavailable:
    return TokenRefreshUnavailable(
        f"Malformed token response: {what}.", code="malformed_response", provider=provider
    )


def _optional_string(payload: dict[str, Any], key: str, provider: str) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 16 * 1024:
        raise _malformed(provider, f"'{key}' is not a usable string")
    return value


# Hides every local variable from Django's error reports (DEBUG pages, mails).
@sensitive_variables()
def _access_token(endpoint: TokenEndpoint, payload: dict[str, Any], token_type: Any) -> str:
    """The answer's access token, if the site can use it: present, a usable
    string, a Bearer token (or one of the provider's names for one)."""
    provider = endpoint.provider
    try:
        access_token = _optional_string(payload, "access_token", provider)
    except TokenRefreshUnavailable:
        raise _malformed(provider, "'access_token' is not a usable string") from None
    if access_token is None:
        raise _malformed(provider, "no 'access_token'")
    if token_type is not None and not isinstance(token_type, str):
        raise _malformed(provider, "'token_type' is not a string")
    if token_type is not None and token_type.strip().lower() not in (
        "bearer",
        *endpoint.token_types,
    ):
        # A DPoP- or MAC-bound token cannot be used the way the site uses it,
        # and the provider will issue the same kind again: retrying cannot help.
        kind = token_type[:20] if _ERROR_CODE_RE.match(token_type[:20]) else "?"
        raise ReauthenticationRequired(
            f"The token endpoint issued a {kind!r} token; only Bearer tokens are supported.",
            code="unsupported_token_type",
            provider=provider,
        )
    return access_token


# Hides every local variable from Django's error reports (DEBUG pages, mails).
@sensitive_variables()
def _validated(endpoint: TokenEndpoint, payload: Any) -> TokenResponse:
    provider = endpoint.provider
    if not isinstance(payload, dict):
        raise _malformed(provider, "the body is not a JSON object")
    refresh_token = _optional_string(payload, "refresh_token", provider)
    try:
        id_token = _optional_string(payload, "id_token", provider)
    except TokenRefreshUnavailable:
        # The tokens are usable without it (and the refresh token sent may be
        # spent): only the account's claims are not updated.
        logger.warning(
            "Token endpoint of provider %s sent an unusable 'id_token' (%s); ignoring it.",
            provider,
            type(payload.get("id_token")).__name__,
        )
        id_token = None
    token_type = payload.get("token_type")
    try:
        access_token = _access_token(endpoint, payload, token_type)
    except TokenRotationError as exc:
        if refresh_token is None:
            raise
        # Refused for its access token, but it carries a new refresh token: the
        # one sent may be spent (a rotating provider), so the engine stores it.
        return TokenResponse(
            access_token="",
            refresh_token=refresh_token,
            refresh_expires_in=_refresh_lifetime(payload),
            token_type=token_type if isinstance(token_type, str) else None,
            refused=exc,
        )

    raw_expires_in = payload.get(endpoint.expires_in_key)
    expires_in = _lifetime(raw_expires_in)
    if raw_expires_in is not None and expires_in is None:
        # The new tokens are good and the old refresh token may already be
        # spent: keep them, and derive the expiry another way.
        logger.warning(
            "Token endpoint of provider %s sent an unusable '%s' (%s); ignoring it.",
            provider,
            endpoint.expires_in_key,
            type(raw_expires_in).__name__,
        )
    return TokenResponse(
        access_token=access_token,
        refresh_token=refresh_token,
        expires_in=expires_in,
        refresh_expires_in=_refresh_lifetime(payload),
        id_token=id_token,
        token_type=token_type,
    )
