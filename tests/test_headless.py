"""allauth headless: browser clients (cookie) and app clients (``X-Session-Token``).

Through allauth headless's real endpoints (``/_allauth/{browser,app}/v1/...``,
tests/urls.py), with the Django test client and a live server, against the
scripted token endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import import_module
from typing import Any

import allauth
import pytest
import requests
from allauth.headless.adapter import DefaultHeadlessAdapter
from allauth.socialaccount.models import SocialApp, SocialToken
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib.sessions.backends.base import SessionBase
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_token_rotation import session as token_session
from django_token_rotation.conf import app_settings
from django_token_rotation.middleware import TokenRefreshMiddleware
from tests.helpers import MakeToken, table
from tests.scripted_server import ScriptedServer, oauth_error
from tests.test_middleware import clock as clock  # noqa: F401 (the fixture)
from tests.test_middleware import sign_in_again_on

pytestmark = pytest.mark.django_db

APP = "/_allauth/app/v1"
BROWSER = "/_allauth/browser/v1"
FETCH = {"Sec-Fetch-Dest": "empty", "Sec-Fetch-Mode": "cors"}


def headless_session(token: str) -> SessionBase:
    engine = import_module(django_settings.SESSION_ENGINE)
    store: SessionBase = engine.SessionStore(token)
    return store


def app_login(client: Client) -> str:
    """Signs in as an app does: the session token comes back in the answer's ``meta``."""
    response = client.post(
        f"{APP}/auth/login",
        {"username": "alice", "password": "pw"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    token: str = response.json()["meta"]["session_token"]
    return token


@pytest.fixture
def app(app_sessions: None, user: Any) -> tuple[Client, dict[str, str]]:
    """An app client: no cookie, only its ``X-Session-Token``."""
    client = Client()
    token = app_login(client)
    client.cookies.clear()
    return client, {"X-Session-Token": token}


@pytest.fixture
def browser(user: Any) -> Client:
    """A browser client of allauth headless (an SPA): signed in with a cookie session."""
    client = Client()
    response = client.post(
        f"{BROWSER}/auth/login",
        {"username": "alice", "password": "pw"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    assert "sessionid" in client.cookies
    return client


@pytest.fixture
def revoked(fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer) -> SocialToken:
    token = make_token(expires_in=-5)
    scripted.script(oauth_error("invalid_grant"))
    return token


# -- app clients -----------------------------------------------------------------


@pytest.mark.parametrize("path", [f"{APP}/auth/session", "/api/"])
def test_app_clients_get_their_tokens_refreshed(
    app: tuple[Client, dict[str, str]],
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    path: str,
) -> None:
    client, headers = app
    token = make_token(expires_in=-5)
    response = client.get(path, headers=headers)
    assert response.status_code == 200
    assert len(scripted.token_requests) == 1
    token.refresh_from_db()
    assert token.token == "new-access"
    # The summary went to the token's session, and no cookie session was made.
    summary = headless_session(headers["X-Session-Token"])[token_session.KEY]
    assert summary[token_session.USER] == str(token.account.user_id)
    assert "sessionid" not in response.cookies
    # The next request is answered from that summary: no second refresh.
    client.get("/api/", headers=headers)
    assert len(scripted.token_requests) == 1


def test_app_client_refused_grant_is_a_401_in_allauth_headless_shape(
    app: tuple[Client, dict[str, str]], revoked: SocialToken
) -> None:
    client, headers = app
    response = client.post("/api/", headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert body["status"] == 401
    assert body["meta"] == {"is_authenticated": True}
    assert body["data"] == {"provider": "fake"}
    [error] = body["errors"]
    assert error["code"] == "RefreshAccessTokenError"
    assert error["param"] == "provider"
    assert "Fake" in error["message"] or "fake" in error["message"]
    assert "old-" not in response.content.decode()
    assert "sessionid" not in response.cookies
    # Whatever the Accept header: an app is never redirected nor sent HX-Redirect.
    for extra in ({"Accept": "text/html"}, {"HX-Request": "true"}):
        again = client.get("/api/", headers={**headers, **extra})
        assert again.status_code == 401
        assert again.json()["errors"][0]["code"] == "RefreshAccessTokenError"


def test_app_client_headless_endpoints_are_not_interrupted_but_carry_the_headers(
    app: tuple[Client, dict[str, str]], revoked: SocialToken
) -> None:
    client, headers = app
    response = client.get(f"{APP}/auth/session", headers=headers)
    assert response.status_code == 200
    assert response.json()["meta"]["is_authenticated"] is True
    assert response["Token-Rotation-Error"] == "RefreshAccessTokenError"
    assert response["Token-Rotation-Provider"] == "fake"


def test_unknown_session_token_is_anonymous_and_never_touches_the_cookie_session(
    user: Any, fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    client = Client()
    client.force_login(user)
    make_token(expires_in=-5)
    response = client.get("/api/", headers={"X-Session-Token": "no-such-session"})
    assert response.status_code == 200
    assert scripted.token_requests == []
    assert token_session.KEY not in client.session


#: The queries allauth headless's token strategy makes to find an app's session
#: (``exists()`` and the load), by session engine: the cached ones hit the cache.
SESSION_READS = {
    "django.contrib.sessions.backends.db": 2,
    "django.contrib.sessions.backends.cached_db": 0,
    "django.contrib.sessions.backends.cache": 0,
    "django.contrib.sessions.backends.file": 0,
}


def statements(queries: CaptureQueriesContext) -> list[str]:
    """The queries, without the savepoints Django wraps a view in (``ATOMIC_REQUESTS``)."""
    return [
        q["sql"]
        for q in queries.captured_queries
        if not q["sql"].upper().startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO"))
    ]


def test_app_client_fresh_path_costs_only_the_session_read(
    app: tuple[Client, dict[str, str]], fake_app: SocialApp, make_token: MakeToken, settings: Any
) -> None:
    client, headers = app
    make_token(expires_in=3600)
    client.get("/api/", headers=headers)  # writes the summary into the token's session

    with CaptureQueriesContext(connection) as with_middleware:
        client.get("/api/", headers=headers)
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "token_rotation" not in m]
    with CaptureQueriesContext(connection) as without_middleware:
        Client().get("/api/", headers=headers)  # a new client loads the new MIDDLEWARE

    # Ours are only the reads of the app's session through allauth's token
    # strategy (``exists()`` and the load, as allauth headless's own views make
    # them): no token, state or user query. What those reads cost is the session
    # engine's: two queries with database sessions, none from a cache.
    assert statements(without_middleware) == []
    ours = statements(with_middleware)
    assert len(ours) == SESSION_READS[django_settings.SESSION_ENGINE], ours
    assert all(f"FROM {table('django_session')}" in sql for sql in ours), ours


def test_app_client_fresh_path_makes_no_query_with_cache_sessions(
    settings: Any, fake_app: SocialApp, make_token: MakeToken, user: Any
) -> None:
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    client = Client()
    token = app_login(client)
    client.cookies.clear()
    make_token(expires_in=3600)
    client.get("/api/", headers={"X-Session-Token": token})

    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/", headers={"X-Session-Token": token})
    assert response.status_code == 200
    assert statements(queries) == []


@pytest.mark.usefixtures("app_sessions")
@pytest.mark.django_db(transaction=True)
async def test_app_client_async_request_refreshes(
    async_client: AsyncClient, fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    token = await sync_to_async(app_login)(Client())
    headers = {"X-Session-Token": token}
    await sync_to_async(make_token)(expires_in=-5)
    response = await async_client.get("/async-page/", headers=headers)
    assert response.status_code in (200, 302)  # login_required sees the cookie user
    assert len(scripted.token_requests) == 1
    summary = await sync_to_async(lambda: headless_session(token)[token_session.KEY])()
    assert summary[token_session.USER]


def test_a_sign_in_in_a_browser_lifts_the_apps_error_within_15_s(
    app: tuple[Client, dict[str, str]],
    user: Any,
    revoked: SocialToken,
    clock: Callable[[float], None],
) -> None:
    """The mobile recipe: the app sends the user through the provider in a browser;
    allauth stores the new tokens on the same row; the app's session follows."""
    client, headers = app
    assert client.get("/api/", headers=headers).status_code == 401
    browser = Client()
    browser.force_login(user)
    sign_in_again_on(browser, revoked)
    clock(app_settings.ERROR_RECHECK + 1)
    assert client.get("/api/", headers=headers).status_code == 200


@pytest.mark.usefixtures("app_sessions")
def test_stateless_jwt_access_tokens_are_left_alone(
    settings: Any, user: Any, fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    """allauth's JWT strategy: an API call with the access token alone reads no session
    (that is what the strategy is for), so the middleware does not either."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings.HEADLESS_TOKEN_STRATEGY = "allauth.headless.tokens.strategies.jwt.JWTTokenStrategy"
    settings.HEADLESS_JWT_PRIVATE_KEY = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    client = Client()
    login = client.post(
        f"{APP}/auth/login",
        {"username": "alice", "password": "pw"},
        content_type="application/json",
    ).json()
    client.cookies.clear()
    make_token(expires_in=-5)
    bearer = {"Authorization": f"Bearer {login['meta']['access_token']}"}

    with CaptureQueriesContext(connection) as queries:
        assert client.get("/api/", headers=bearer).status_code == 200
    assert statements(queries) == []
    assert scripted.token_requests == []
    # With its session token, the same app is served.
    client.get("/api/", headers={"X-Session-Token": login["meta"]["session_token"]})
    assert len(scripted.token_requests) == 1


def test_app_request_unit_needs_no_cookie_session(
    app: tuple[Client, dict[str, str]],
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    rf: RequestFactory,
) -> None:
    """The middleware alone (RequestFactory): an app request has no ``request.session``
    of its own to read or write; the refresh and the summary go through its token's."""
    _, headers = app
    make_token(expires_in=-5)
    request = rf.get("/api/", headers=headers)
    assert not hasattr(request, "session")
    seen: list[HttpRequest] = []

    def view(request: HttpRequest) -> HttpResponse:
        seen.append(request)
        return HttpResponse("ok")

    middleware = TokenRefreshMiddleware(view)
    response = middleware(request)
    assert response.content == b"ok"
    assert seen == [request]
    assert len(scripted.token_requests) == 1
    assert not hasattr(request, "session")
    assert token_session.KEY in headless_session(headers["X-Session-Token"])


# -- a request that carries both a cookie and a session token -----------------------


@pytest.mark.usefixtures("app_sessions")
def test_both_sessions_one_key_headless_flow_state_survives(
    user: Any, fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    """What 18 of django-allauth's own tests do: the cookie and the token name one session.

    allauth headless saves its flow state (here: the reauthentication record) in
    the token's session; a stale cookie session must never be saved over it.
    """
    client = Client()
    client.force_login(user)
    key = client.session.session_key
    assert key is not None
    headers = {"X-Session-Token": key}
    make_token(expires_in=-5)  # the middleware has work to do on this request

    response = client.post(
        f"{APP}/auth/reauthenticate",
        {"password": "pw"},
        content_type="application/json",
        headers=headers,
    )
    assert response.status_code == 200, response.content
    assert len(scripted.token_requests) == 1

    methods = client.get(f"{APP}/auth/session", headers=headers).json()["data"]["methods"]
    assert any(m.get("reauthenticated") for m in methods), methods
    assert token_session.KEY in headless_session(key)


@pytest.mark.usefixtures("app_sessions")
def test_both_sessions_two_keys_each_keeps_its_own(
    user: Any, fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    client = Client()
    token = app_login(client)
    client.force_login(user)  # and a cookie session of its own
    cookie_key = client.session.session_key
    assert cookie_key != token
    make_token(expires_in=-5)

    client.get("/api/", headers={"X-Session-Token": token})
    assert token_session.KEY in headless_session(token)
    assert token_session.KEY not in client.session  # the cookie session was not written


# -- browser clients -------------------------------------------------------------


def test_browser_client_tokens_are_refreshed_in_the_cookie_session(
    browser: Client, fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    token = make_token(expires_in=-5)
    response = browser.get(f"{BROWSER}/auth/session", headers=FETCH)
    assert response.status_code == 200
    assert len(scripted.token_requests) == 1
    token.refresh_from_db()
    assert token.token == "new-access"
    assert browser.session[token_session.KEY][token_session.USER] == str(token.account.user_id)


def test_browser_client_refused_grant_is_what_fetch_calls_get_today(
    browser: Client, revoked: SocialToken
) -> None:
    response = browser.get("/api/", headers={**FETCH, "Referer": "http://testserver/app/"})
    assert response.status_code == 401
    assert json.loads(response.content) == {
        "error": "RefreshAccessTokenError",
        "provider": "fake",
        "reauth_url": "/accounts/fake/login/?process=login&next=%2Fapp%2F",
        "message": "Your sign-in with Fake has expired. Please sign in again to continue.",
    }
    session = browser.get(f"{BROWSER}/auth/session", headers=FETCH)
    assert session.status_code == 200  # allauth's own endpoints: never interrupted
    assert session["Token-Rotation-Error"] == "RefreshAccessTokenError"
    assert session["Token-Rotation-Provider"] == "fake"


# -- meta.token_rotation: {{ session }} in every headless answer -------------------


@pytest.fixture
def meta_adapter(settings: Any) -> None:
    if not hasattr(DefaultHeadlessAdapter, "populate_response_meta"):
        pytest.skip(
            "meta.token_rotation needs django-allauth 65.22.1 or later (its headless "
            f"adapter's populate_response_meta hook); installed: {allauth.__version__}"
        )
    settings.HEADLESS_ADAPTER = "django_token_rotation.headless.HeadlessAdapter"


def test_browser_session_endpoint_carries_what_templates_see(
    meta_adapter: None, browser: Client, revoked: SocialToken
) -> None:
    meta = browser.get(f"{BROWSER}/auth/session", headers=FETCH).json()["meta"]
    assert meta["is_authenticated"] is True
    assert meta["token_rotation"] == {
        "error": "RefreshAccessTokenError",
        "provider": "fake",
        "code": "invalid_grant",
        "expires_at": revoked.expires_at.replace(microsecond=0).isoformat(),
    }


def test_app_session_endpoint_carries_what_templates_see(
    meta_adapter: None,
    app: tuple[Client, dict[str, str]],
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
) -> None:
    client, headers = app
    make_token(expires_in=-5)
    meta = client.get(f"{APP}/auth/session", headers=headers).json()["meta"]
    assert meta["token_rotation"]["error"] == ""
    assert meta["token_rotation"]["expires_at"] is not None  # the refreshed token's
    assert len(scripted.token_requests) == 1

    # The next refresh is refused.
    scripted.script(oauth_error("invalid_grant"))
    SocialToken.objects.update(expires_at=timezone.now())
    recheck_on_next_request(headers["X-Session-Token"])
    meta = client.get(f"{APP}/auth/session", headers=headers).json()["meta"]
    assert meta["token_rotation"]["error"] == "RefreshAccessTokenError"
    assert meta["token_rotation"]["provider"] == "fake"


def recheck_on_next_request(session_token: str) -> None:
    """The summary in the app's session says: look at the database on the next request."""
    session = headless_session(session_token)
    summary = dict(session[token_session.KEY])
    summary[token_session.CHECK_AT] = 0
    session[token_session.KEY] = summary
    session.save()


# -- a live server, an app speaking HTTP -----------------------------------------


@pytest.mark.usefixtures("app_sessions")
@pytest.mark.django_db(transaction=True)
def test_app_over_http_refresh_then_refused_grant(
    live_server: Any, fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    with requests.Session() as http:
        login = http.post(
            f"{live_server.url}{APP}/auth/login",
            json={"username": "alice", "password": "pw"},
            timeout=10,
        )
        assert login.status_code == 200, login.text
        headers = {"X-Session-Token": login.json()["meta"]["session_token"]}
        http.cookies.clear()

        token = make_token(expires_in=-5)
        assert http.get(f"{live_server.url}/api/", headers=headers, timeout=10).ok
        token.refresh_from_db()
        assert token.token == "new-access"
        assert len(scripted.token_requests) == 1

        # The provider refuses the next refresh: the app gets the 401 it can act on.
        SocialToken.objects.filter(pk=token.pk).update(expires_at=timezone.now())
        scripted.script(oauth_error("invalid_grant"))
        recheck_on_next_request(headers["X-Session-Token"])
        refused = http.get(f"{live_server.url}/api/", headers=headers, timeout=10)
        assert refused.status_code == 401
        assert refused.json()["errors"][0]["code"] == "RefreshAccessTokenError"
        assert "sessionid" not in http.cookies


@pytest.mark.django_db(transaction=True)
def test_spa_over_http_refresh_then_refused_grant(
    live_server: Any, fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    """A browser client as an SPA runs it: CSRF cookie, sign-in, fetch calls with the cookie."""
    with requests.Session() as http:
        http.get(f"{live_server.url}{BROWSER}/config", timeout=10)  # sets the CSRF cookie
        login = http.post(
            f"{live_server.url}{BROWSER}/auth/login",
            json={"username": "alice", "password": "pw"},
            headers={"X-CSRFToken": http.cookies["csrftoken"]},
            timeout=10,
        )
        assert login.status_code == 200, login.text
        assert "sessionid" in http.cookies

        token = make_token(expires_in=-5)
        assert http.get(f"{live_server.url}/api/", headers=FETCH, timeout=10).ok
        token.refresh_from_db()
        assert token.token == "new-access"

        SocialToken.objects.filter(pk=token.pk).update(expires_at=timezone.now())
        scripted.script(oauth_error("invalid_grant"))
        session = headless_session(http.cookies["sessionid"])
        summary = dict(session[token_session.KEY])
        summary[token_session.CHECK_AT] = 0  # look at the database on the next request
        session[token_session.KEY] = summary
        session.save()
        for cookie in http.cookies:  # a signed-cookie session's key is its data
            if cookie.name == "sessionid":
                cookie.value = session.session_key
        refused = http.get(f"{live_server.url}/api/", headers=FETCH, timeout=10)
        assert refused.status_code == 401
        assert refused.json()["error"] == "RefreshAccessTokenError"
        assert refused.json()["reauth_url"].startswith("/accounts/fake/login/?process=login")
        state = http.get(f"{live_server.url}{BROWSER}/auth/session", headers=FETCH, timeout=10)
        assert state.status_code == 200
        assert state.headers["Token-Rotation-Error"] == "RefreshAccessTokenError"
