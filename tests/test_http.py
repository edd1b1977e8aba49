"""Authorized HTTP clients (issue #18, item 2): ``requests``, ``httpx`` (sync and
async) and google-auth, against real HTTP servers on 127.0.0.1.

The API server below accepts only the access tokens the provider currently
honours and answers 401 to the others; the token endpoint is the scripted
server (or django-oauth-toolkit, the real provider). Every test counts what
both servers received.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import io
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests
from allauth.socialaccount.models import SocialApp, SocialToken
from django.db import connections
from django.utils import timezone

from django_token_rotation import ReauthenticationRequired, TokenRefreshUnavailable, refresh
from django_token_rotation.http import (
    HttpxTokenAuth,
    TokenAuth,
    _presented,
    google_credentials,
    should_refresh,
)
from django_token_rotation.models import TokenState
from django_token_rotation.rotation import REFUSED_SOON_AFTER_REFRESH
from tests.helpers import ALIASES, MakeToken, connect, seed
from tests.scripted_server import SHUTDOWN_POLL, Reply, ScriptedServer, oauth_error, tokens
from tests.test_async import DATABASES as UVICORN_DATABASES
from tests.test_async import uvicorn

pytestmark = [pytest.mark.usefixtures("hidden_secrets"), pytest.mark.django_db(transaction=True)]

CALLERS = 64
SERVED = 24


@dataclass
class Seen:
    token: str | None
    body: bytes


@dataclass
class ApiServer:
    """An API on 127.0.0.1 that honours only the tokens in :attr:`valid`."""

    valid: set[str] = field(default_factory=lambda: {"new-access"})
    #: Answer to a token that is not valid.
    status: int = 401
    www_authenticate: str | None = 'Bearer realm="api", error="invalid_token"'
    #: Rejections wait here until this many requests arrived (all see the 401 together).
    barrier: threading.Barrier | None = None
    #: Called (in the server's thread) before a rejection is answered.
    on_reject: Any = None
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def tokens_seen(self) -> list[str | None]:
        return [s.token for s in self.seen]


@contextlib.contextmanager
def api_server() -> Iterator[ApiServer]:
    api = ApiServer()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = b""
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    body += self.rfile.read(size)
                    self.rfile.readline()
            else:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            authorization = self.headers.get("Authorization", "")
            token = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else None
            with lock:
                api.seen.append(Seen(token, body))
            if token in api.valid:
                payload = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Set-Cookie", "api=1")
            else:
                if api.barrier is not None:
                    with contextlib.suppress(threading.BrokenBarrierError):
                        api.barrier.wait(30)
                if api.on_reject is not None:
                    api.on_reject()
                payload = b'{"error": "invalid_token"}'
                self.send_response(api.status)
                if api.www_authenticate:
                    self.send_header("WWW-Authenticate", api.www_authenticate)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _answer
        do_POST = _answer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    api.url = f"http://127.0.0.1:{httpd.server_address[1]}/resource"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL}, daemon=True
    )
    thread.start()
    try:
        yield api
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with api_server() as server:
        yield server


@pytest.fixture
def live_token(make_token: MakeToken, fake_app: SocialApp) -> SocialToken:
    """Valid for an hour by its ``expires_at``, but the API no longer honours it."""
    return make_token(expires_in=3600)


def in_thread(func: Any) -> Any:
    def call(*args: Any) -> Any:
        try:
            return func(*args)
        finally:
            connections.close_all()

    return call


# -- when to refresh ------------------------------------------------------------------


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize(
    ("status", "header", "expected"),
    [
        (401, None, True),
        (401, "Bearer", True),
        (401, 'Bearer realm="api"', True),
        (401, 'Bearer realm="api", error="invalid_token"', True),
        (401, 'Bearer error="invalid_token", error_description="expired"', True),
        (401, "Bearer error=invalid_token", True),
        (401, 'Bearer error="insufficient_scope"', False),
        (401, 'Bearer error="invalid_request"', False),
        (403, 'Bearer error="invalid_token"', True),
        (400, 'Basic realm="x", Bearer error="invalid_token"', True),
        (401, 'Bearer realm="a", Basic realm="b", error="x"', True),
        # No Bearer challenge says otherwise: a 401 is taken as a refused token.
        (401, 'Basic realm="x"', True),
        (401, "", True),
        (403, None, False),
        (403, 'Bearer error="insufficient_scope"', False),
        (200, None, False),
        (500, None, False),
    ],
)
def test_should_refresh(status: int, header: str | None, expected: bool) -> None:
    assert should_refresh(status, header) is expected


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize(
    ("authorization", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_the_rejected_token_is_the_one_presented(
    authorization: str | None, token: str | None
) -> None:
    assert _presented(authorization) == token


def test_a_401_to_a_request_without_our_header_is_returned_as_is(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    """A hook of the caller's removed the header (as requests does on a redirect
    to another host): nothing to fence on, no refresh."""

    def strip(request: requests.PreparedRequest) -> requests.PreparedRequest:
        del request.headers["Authorization"]
        return request

    class Stripped(TokenAuth):
        def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
            return strip(super().__call__(request))

    response = requests.get(api.url, auth=Stripped(user, "fake"), timeout=10)
    assert response.status_code == 401
    assert api.tokens_seen() == [None]
    assert scripted.token_requests == []


# -- requests -------------------------------------------------------------------------


def test_a_401_costs_one_fenced_refresh_and_one_retry(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    session = requests.Session()
    session.auth = TokenAuth(user, "fake")
    response = session.post(api.url, json={"a": 1}, timeout=10)
    assert response.status_code == 200
    assert api.tokens_seen() == ["old-access", "new-access"]
    assert api.seen[0].body == api.seen[1].body == b'{"a": 1}'
    assert len(scripted.token_requests) == 1
    assert [r.status_code for r in response.history] == [401]
    # The next request goes out with the new token at once.
    assert session.get(api.url, timeout=10).status_code == 200
    assert api.tokens_seen()[2:] == ["new-access"]
    assert len(scripted.token_requests) == 1
    live_token.refresh_from_db()
    assert (live_token.token, live_token.token_secret) == ("new-access", "new-refresh")


def test_64_concurrent_401s_cause_one_refresh_not_64(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    """Every one of 64 threads sends the old token and gets its 401 at the same
    moment (the API holds the rejections until all 64 arrived)."""
    api.barrier = threading.Barrier(CALLERS)
    scripted.script(Reply(200, tokens().body, delay=0.3))
    auth = TokenAuth(user, "fake")

    def call(_: int) -> int:
        return requests.get(api.url, auth=auth, timeout=60).status_code

    with ThreadPoolExecutor(CALLERS) as pool:
        statuses = list(pool.map(in_thread(call), range(CALLERS)))
    seen = api.tokens_seen()
    print(
        f"\n{CALLERS} concurrent 401s: token requests {len(scripted.token_requests)}, "
        f"API requests {len(seen)}"
    )
    assert statuses == [200] * CALLERS
    assert len(scripted.token_requests) == 1
    assert sorted(seen, key=str) == ["new-access"] * CALLERS + ["old-access"] * CALLERS


def test_a_token_refreshed_meanwhile_is_taken_without_a_refresh(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    """While the request with the old token is at the API, another worker
    refreshes the token: the 401 is answered with the stored, newer token."""

    def another_worker_refreshes() -> None:
        api.on_reject = None
        in_thread(lambda: refresh(SocialToken.objects.get(pk=live_token.pk), force=True))()

    api.on_reject = another_worker_refreshes
    response = requests.get(api.url, auth=TokenAuth(user, "fake"), timeout=10)
    assert response.status_code == 200
    assert api.tokens_seen() == ["old-access", "new-access"]
    assert len(scripted.token_requests) == 1  # the other worker's, not ours


def test_no_401_loop_when_the_api_refuses_every_token(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    """One retry per request; and a token refused within 30 s of its refresh is not
    refreshed again (an API that refuses every token costs no refresh per request)."""
    api.valid = set()
    scripted.script(tokens("new-access"), tokens("newer-access", "newer-refresh"))
    auth = TokenAuth(user, "fake")
    first = requests.get(api.url, auth=auth, timeout=10)
    assert first.status_code == 401
    assert api.tokens_seen() == ["old-access", "new-access"]  # one retry, no more
    assert len(scripted.token_requests) == 1
    for _ in range(3):
        assert requests.get(api.url, auth=auth, timeout=10).status_code == 401
    assert api.tokens_seen()[2:] == ["new-access"] * 3  # sent once each, not retried
    assert len(scripted.token_requests) == 1
    # Once the refresh is REFUSED_SOON_AFTER_REFRESH old, a refusal refreshes again.
    TokenState.objects.filter(token=live_token).update(
        last_refreshed_at=timezone.now() - datetime.timedelta(seconds=REFUSED_SOON_AFTER_REFRESH)
    )
    assert requests.get(api.url, auth=auth, timeout=10).status_code == 401
    assert api.tokens_seen()[5:] == ["new-access", "newer-access"]
    assert len(scripted.token_requests) == 2


def test_a_401_that_a_new_token_would_not_cure_is_returned_as_is(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    api.www_authenticate = 'Bearer error="insufficient_scope", scope="calendar"'
    response = requests.get(api.url, auth=TokenAuth(user, "fake"), timeout=10)
    assert response.status_code == 401
    assert api.tokens_seen() == ["old-access"]
    assert scripted.token_requests == []


def test_invalid_token_with_another_status_is_retried(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    api.status = 403
    response = requests.get(api.url, auth=TokenAuth(user, "fake"), timeout=10)
    assert response.status_code == 200
    assert api.tokens_seen() == ["old-access", "new-access"]


def test_a_body_that_cannot_be_sent_twice_is_not_retried(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    auth = TokenAuth(user, "fake")

    def chunks() -> Iterator[bytes]:
        yield b"part one, "
        yield b"part two"

    response = requests.post(api.url, data=chunks(), auth=auth, timeout=10)
    assert response.status_code == 401  # as the API answered it
    assert api.tokens_seen() == ["old-access"]
    assert api.seen[0].body == b"part one, part two"
    # The token was refreshed all the same: the next request is accepted.
    assert len(scripted.token_requests) == 1
    assert requests.get(api.url, auth=auth, timeout=10).status_code == 200

    # A file that cannot be rewound (a pipe) is not resent either.
    api.valid = {"newer-access"}
    scripted.script(tokens("newer-access", "newer-refresh"))
    read_end, write_end = os.pipe()
    os.write(write_end, b"from a pipe")
    os.close(write_end)
    with open(read_end, "rb") as pipe:
        response = requests.post(api.url, data=pipe, auth=auth, timeout=10)
    assert response.status_code == 401
    assert api.tokens_seen()[-1] == "new-access"
    assert api.seen[-1].body == b"from a pipe"


class ProgressUpload:
    """An upload wrapper that counts what was read, as progress bars do: it
    knows its position, but the pipe under it cannot seek."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.sent = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.raw.read(size)
        self.sent += len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(8192):
            yield chunk

    def tell(self) -> int:
        return self.sent

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self.raw.seek(offset, whence))


def test_a_stream_that_says_where_it_is_but_cannot_go_back_is_not_resent(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    """requests records the position the stream tells; seeking back to it
    fails: the 401 is returned, not a retry with an empty body."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"read from a pipe")
    os.close(write_end)
    with open(read_end, "rb") as pipe:
        upload = ProgressUpload(pipe)
        response = requests.post(api.url, data=upload, auth=TokenAuth(user, "fake"), timeout=10)
    assert response.status_code == 401
    assert api.tokens_seen() == ["old-access"]
    assert api.seen[0].body == b"read from a pipe"
    assert upload.sent == len(b"read from a pipe")
    # Refreshed all the same: the next request is accepted.
    assert len(scripted.token_requests) == 1
    assert requests.get(api.url, auth=TokenAuth(user, "fake"), timeout=10).status_code == 200


def test_a_token_deleted_while_the_api_answered_raises_reauthentication_required(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    """The user disconnects the account while a request is on its way: the
    401 finds no stored token to refresh."""

    def disconnect() -> None:
        try:
            SocialToken.objects.filter(pk=live_token.pk).delete()
        finally:
            connections.close_all()

    api.on_reject = disconnect
    with pytest.raises(ReauthenticationRequired) as excinfo:
        requests.get(api.url, auth=TokenAuth(user, "fake"), timeout=10)
    assert excinfo.value.code == "no_token"
    assert excinfo.value.provider == "fake"
    assert api.tokens_seen() == ["old-access"]
    assert scripted.token_requests == []


def test_a_file_that_can_be_rewound_is_resent_whole(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    upload = io.BytesIO(b"HEADER" + b"x" * 10_000)
    upload.seek(6)  # the caller sends from here
    response = requests.post(api.url, data=upload, auth=TokenAuth(user, "fake"), timeout=10)
    assert response.status_code == 200
    assert api.tokens_seen() == ["old-access", "new-access"]
    assert api.seen[0].body == api.seen[1].body == b"x" * 10_000


def test_a_gone_grant_raises_reauthentication_required(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    scripted.script(oauth_error("invalid_grant"))
    with pytest.raises(ReauthenticationRequired) as excinfo:
        requests.get(api.url, auth=TokenAuth(user, "fake"), timeout=10)
    assert excinfo.value.code == "invalid_grant"
    for value in ("old-access", "old-refresh"):
        assert value not in str(excinfo.value) and value not in repr(excinfo.value)
    assert "old-access" not in repr(TokenAuth(user, "fake"))
    # The refusal is recorded: the next request raises without calling the provider.
    with pytest.raises(ReauthenticationRequired):
        requests.get(api.url, auth=TokenAuth(user, "fake"), timeout=10)
    assert len(scripted.token_requests) == 1


def test_an_unavailable_provider_raises_and_is_not_hammered(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    scripted.script(oauth_error("temporarily_unavailable", 503))
    auth = TokenAuth(user, "fake")
    for _ in range(3):
        with pytest.raises(TokenRefreshUnavailable):
            requests.get(api.url, auth=auth, timeout=10)
    # The back-off after the first failure holds for the next 401s.
    assert len(scripted.token_requests) == 1


def test_a_user_without_a_token(fake_app: SocialApp, api: ApiServer, user: Any) -> None:
    with pytest.raises(ReauthenticationRequired) as excinfo:
        requests.get(api.url, auth=TokenAuth(user, "fake"), timeout=10)
    assert excinfo.value.code == "no_token"
    assert api.seen == []


# -- httpx ----------------------------------------------------------------------------


def test_httpx_sync_client_retries_once_after_one_refresh(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    with httpx.Client(auth=HttpxTokenAuth(user, "fake")) as client:
        assert client.post(api.url, json={"a": 1}).status_code == 200
        assert api.tokens_seen() == ["old-access", "new-access"]
        assert api.seen[0].body == api.seen[1].body
        api.valid = set()
        TokenState.objects.filter(token=live_token).update(last_refreshed_at=None)
        scripted.script(tokens("newer-access", "newer-refresh"))
        assert client.get(api.url).status_code == 401  # one retry, no loop
    assert api.tokens_seen()[2:] == ["new-access", "newer-access"]
    assert len(scripted.token_requests) == 1


async def test_httpx_sends_an_accepted_token_once_and_refreshes_nothing(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    """The everyday case, sync and async: the API accepts the stored token, one
    request each, no refresh; the auth's repr names the provider, not the token."""
    api.valid = {"old-access"}
    auth = HttpxTokenAuth(user, "fake")
    assert repr(auth) == "HttpxTokenAuth(provider='fake')"

    def sync_call() -> int:
        with httpx.Client(auth=auth) as client:
            return client.get(api.url).status_code

    assert await asyncio.to_thread(in_thread(sync_call)) == 200
    async with httpx.AsyncClient(auth=auth) as client:
        assert (await client.get(api.url)).status_code == 200
    assert api.tokens_seen() == ["old-access", "old-access"]
    assert scripted.token_requests == []


def test_httpx_does_not_resend_a_stream(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"streamed"

    with httpx.Client(auth=HttpxTokenAuth(user, "fake")) as client:
        assert client.post(api.url, content=chunks()).status_code == 401
    assert api.tokens_seen() == ["old-access"]
    assert len(scripted.token_requests) == 1


async def test_httpx_async_does_not_resend_a_stream(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"streamed"

    async with httpx.AsyncClient(auth=HttpxTokenAuth(user, "fake")) as client:
        assert (await client.post(api.url, content=chunks())).status_code == 401
    assert api.tokens_seen() == ["old-access"]
    assert api.seen[0].body == b"streamed"
    assert len(scripted.token_requests) == 1
    await asyncio.to_thread(in_thread(live_token.refresh_from_db))
    assert live_token.token == "new-access"


def test_httpx_concurrent_sync_401s_cause_one_refresh(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    threads = 16
    api.barrier = threading.Barrier(threads)
    scripted.script(Reply(200, tokens().body, delay=0.3))
    auth = HttpxTokenAuth(user, "fake")

    def call(_: int) -> int:
        with httpx.Client(auth=auth, timeout=60) as client:
            return client.get(api.url).status_code

    with ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(in_thread(call), range(threads)))
    assert statuses == [200] * threads
    assert len(scripted.token_requests) == 1


async def test_httpx_async_64_concurrent_401s_cause_one_refresh(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    api.barrier = threading.Barrier(CALLERS)
    scripted.script(Reply(200, tokens().body, delay=0.3))
    limits = httpx.Limits(max_connections=CALLERS)
    async with httpx.AsyncClient(
        auth=HttpxTokenAuth(user, "fake"), timeout=60, limits=limits
    ) as client:
        responses = await asyncio.gather(*(client.get(api.url) for _ in range(CALLERS)))
    assert [r.status_code for r in responses] == [200] * CALLERS
    assert len(scripted.token_requests) == 1
    assert sorted(api.tokens_seen(), key=str) == ["new-access"] * CALLERS + ["old-access"] * CALLERS


async def test_httpx_async_gone_grant_raises(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    scripted.script(oauth_error("invalid_grant"))
    async with httpx.AsyncClient(auth=HttpxTokenAuth(user, "fake")) as client:
        with pytest.raises(ReauthenticationRequired) as excinfo:
            await client.get(api.url)
    assert excinfo.value.code == "invalid_grant"


# -- google-auth ----------------------------------------------------------------------


def test_google_authorized_session_refreshes_through_the_single_flight(
    live_token: SocialToken, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    from google.auth.transport.requests import AuthorizedSession

    credentials = google_credentials(user, "fake")
    session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
    assert session.get(api.url, timeout=10).status_code == 200
    # google-auth sent the stored token, got the 401, asked us: one fenced refresh.
    assert api.tokens_seen() == ["old-access", "new-access"]
    assert len(scripted.token_requests) == 1
    assert credentials.token == "new-access"
    # Fresh for google-auth as long as it is not due here: no further refresh.
    for _ in range(3):
        assert session.get(api.url, timeout=10).status_code == 200
    assert len(scripted.token_requests) == 1


def test_google_credentials_for_a_token_without_an_expiry(
    make_token: MakeToken, fake_app: SocialApp, api: ApiServer, user: Any
) -> None:
    from google.auth.transport.requests import Request

    make_token(access="new-access", expires_in=None)
    credentials = google_credentials(user, "fake")
    credentials.refresh(Request())  # type: ignore[no-untyped-call]
    assert credentials.token == "new-access"
    # Not stale for google-auth for a day: it asks again after a 401.
    expiry = credentials.expiry
    assert expiry is not None
    in_a_day = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) + datetime.timedelta(
        hours=23
    )
    assert expiry > in_a_day


def test_google_credentials_refresh_a_due_token_once(
    make_token: MakeToken, fake_app: SocialApp, scripted: ScriptedServer, api: ApiServer, user: Any
) -> None:
    from google.auth.transport.requests import AuthorizedSession

    make_token(expires_in=-10)  # expired
    sessions = [
        AuthorizedSession(google_credentials(user, "fake"))  # type: ignore[no-untyped-call]
        for _ in range(8)
    ]
    scripted.script(Reply(200, tokens().body, delay=0.3))

    def call(session: Any) -> int:
        return int(session.get(api.url, timeout=30).status_code)

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(in_thread(call), sessions))
    assert statuses == [200] * 8
    assert api.tokens_seen() == ["new-access"] * 8
    assert len(scripted.token_requests) == 1


# -- the real provider ------------------------------------------------------------------


def test_a_token_the_provider_no_longer_honours_is_replaced_once(provider: Any) -> None:
    """django-oauth-toolkit issues a 1-second access token; the app believes it
    valid for an hour (a provider that shortened it, a clock skew). 16 concurrent
    calls to the provider's userinfo API get a 401; one refresh (rotating the
    refresh token) replaces the token, and every call succeeds."""
    provider.set_access_token_lifetime(1)
    try:
        user, token = connect("default", provider)
    finally:
        provider.set_access_token_lifetime(30)
    SocialToken.objects.filter(pk=token.pk).update(
        expires_at=timezone.now() + datetime.timedelta(hours=1)
    )
    url = f"{provider.server_url}/userinfo/"
    time.sleep(1.5)
    assert requests.get(url, headers={"Authorization": f"Bearer {token.token}"}).status_code == 401
    provider.reset()
    auth = TokenAuth(user, "dot")

    def call(_: int) -> int:
        return requests.get(url, auth=auth, timeout=60).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(in_thread(call), range(16)))
    assert statuses == [200] * 16
    assert provider.stats()["refresh_calls"] == 1


# -- the same in a served site, on every database -------------------------------------


@pytest.mark.parametrize("view", ["api-call", "async-api-call"], ids=["requests", "httpx-async"])
@pytest.mark.parametrize("alias", UVICORN_DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_concurrent_401s_in_views_under_uvicorn_cause_one_refresh(
    alias: str, view: str, scripted: ScriptedServer, api: ApiServer
) -> None:
    """24 concurrent requests to a view (sync with ``TokenAuth``, async with
    ``HttpxTokenAuth``) of the site under uvicorn, each calling the API, which
    answers all of them with a 401 at once: one refresh, on SQLite and PostgreSQL.
    (24, not 64: each request holds a database connection of its own, and the
    PostgreSQL server is shared with other test runs.)"""
    app = SocialApp.objects.using(alias).create(
        provider="fake", name="F", client_id="c", secret="s"
    )
    user = seed(alias, provider="fake", app=app, expires_in=3600)
    api.barrier = threading.Barrier(SERVED)
    scripted.script(Reply(200, tokens().body, delay=0.3))
    with uvicorn(alias, scripted.token_url) as (url, _):

        def call(_: int) -> Any:
            response = requests.get(
                f"{url}/{view}/", params={"user": user.pk, "url": api.url}, timeout=120
            )
            if response.headers.get("Content-Type") != "application/json":
                return {"status": response.status_code, "body": response.text[-300:]}
            return response.json()

        with ThreadPoolExecutor(SERVED) as pool:
            results = list(pool.map(call, range(SERVED)))
    print(
        f"\n[{alias}, {view}] {SERVED} views got a 401: token requests "
        f"{len(scripted.token_requests)}, API requests {len(api.seen)}"
    )
    assert results == [{"status": 200}] * SERVED
    assert len(scripted.token_requests) == 1
    assert sorted(api.tokens_seen(), key=str) == ["new-access"] * SERVED + ["old-access"] * SERVED
