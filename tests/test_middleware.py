"""The request layer: middleware, session error, context processor, through the full stack."""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from importlib import import_module
from io import StringIO
from types import SimpleNamespace
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth.signals import user_logged_in
from django.core.management import call_command
from django.db import OperationalError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_token_rotation import REFRESH_ACCESS_TOKEN_ERROR, store
from django_token_rotation import middleware as middleware_module
from django_token_rotation import session as token_session
from django_token_rotation.conf import app_settings
from django_token_rotation.middleware import TokenRefreshMiddleware
from django_token_rotation.models import TokenState
from tests.helpers import MakeToken, save_session
from tests.scripted_server import Reply, ScriptedServer, oauth_error, tokens

pytestmark = pytest.mark.django_db


@pytest.fixture
def signed_in(client: Client, user: Any) -> Client:
    client.force_login(user)
    return client


def error_in(response: Any) -> str:
    html: str = response.content.decode()
    return html.split('<p id="error">[', 1)[1].split("]", 1)[0]


def summary_of(client: Client) -> dict[str, Any] | None:
    value = client.session.get(token_session.KEY)
    return value if isinstance(value, dict) else None


# -- refreshing on requests --------------------------------------------------------


def test_due_token_is_refreshed_on_a_page_load(
    signed_in: Client, fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    token = make_token(expires_in=-5)
    response = signed_in.get("/page/")
    assert response.status_code == 200
    assert error_in(response) == ""
    assert len(scripted.token_requests) == 1
    token.refresh_from_db()
    assert token.token == "new-access"
    summary = summary_of(signed_in)
    assert summary is not None
    assert summary[token_session.USER] == str(token.account.user_id)
    assert summary[token_session.EXPIRES_AT] == int(token.expires_at.timestamp())
    assert token_session.ERROR not in summary


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_every_http_method_refreshes(
    signed_in: Client,
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    method: str,
) -> None:
    make_token(expires_in=-5)
    response = getattr(signed_in, method)("/api/")
    assert response.status_code == 200
    assert len(scripted.token_requests) == 1


def test_fresh_tokens_cost_no_query(
    signed_in: Client,
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    settings: Any,
) -> None:
    make_token(expires_in=3600)
    signed_in.get("/api/")  # the first request writes the summary into the session

    with CaptureQueriesContext(connection) as with_middleware:
        signed_in.get("/page/")
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "token_rotation" not in m]
    without = Client()  # a client loads MIDDLEWARE once: a new one, same session cookie
    without.cookies = signed_in.cookies
    with CaptureQueriesContext(connection) as without_middleware:
        without.get("/page/")

    assert len(with_middleware.captured_queries) == len(without_middleware.captured_queries)
    assert scripted.token_requests == []


def test_middleware_alone_makes_no_query_on_a_fresh_summary(
    signed_in: Client,
    fake_app: SocialApp,
    make_token: MakeToken,
    django_assert_num_queries: Any,
) -> None:
    make_token(expires_in=3600)
    signed_in.get("/api/")
    request = RequestFactory().get("/page/")
    engine = import_module(django_settings.SESSION_ENGINE)
    request.session = engine.SessionStore(signed_in.session.session_key)
    request.session.items()  # loaded, as AuthenticationMiddleware would have done
    middleware = TokenRefreshMiddleware(lambda r: HttpResponse("ok"))
    with django_assert_num_queries(0):
        response = middleware(request)
    assert response.content == b"ok"


def test_anonymous_requests_are_left_alone(
    client: Client, fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    make_token(expires_in=-5)
    assert client.get("/api/").status_code == 200
    assert scripted.token_requests == []


def test_summary_is_trusted_until_the_token_is_due(
    signed_in: Client,
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
) -> None:
    token = make_token(expires_in=3600)
    signed_in.get("/api/")
    # Expire it behind the session's back: the summary still says fresh.
    SocialToken.objects.filter(pk=token.pk).update(expires_at=timezone.now())
    signed_in.get("/api/")
    assert scripted.token_requests == []
    # Once the summary's check time has passed, the database is consulted.
    session = signed_in.session
    summary = session[token_session.KEY]
    summary[token_session.CHECK_AT] = 0
    session[token_session.KEY] = summary
    save_session(signed_in, session)
    signed_in.get("/api/")
    assert len(scripted.token_requests) == 1


def test_exempt_paths(
    signed_in: Client,
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    settings: Any,
) -> None:
    settings.TOKEN_ROTATION_EXEMPT_PATHS = [r"^/health/"]
    make_token(expires_in=-5)
    assert signed_in.get("/health/").status_code == 200
    assert scripted.token_requests == []
    signed_in.get("/api/")
    assert len(scripted.token_requests) == 1


def test_exempt_paths_follow_setting_changes(settings: Any) -> None:
    # Kept compiled between requests, forgotten on ``setting_changed``.
    settings.TOKEN_ROTATION_EXEMPT_PATHS = [r"^/a/"]
    assert [p.pattern for p in app_settings.EXEMPT_PATHS] == [r"^/a/"]
    settings.TOKEN_ROTATION_EXEMPT_PATHS = [r"^/b/", r"^/c/"]
    assert [p.pattern for p in app_settings.EXEMPT_PATHS] == [r"^/b/", r"^/c/"]
    settings.TOKEN_ROTATION_EXEMPT_PATHS = []
    assert app_settings.EXEMPT_PATHS == ()


def test_providers_setting_limits_what_is_refreshed(
    signed_in: Client,
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    settings: Any,
) -> None:
    settings.TOKEN_ROTATION_PROVIDERS = ["google"]
    make_token(expires_in=-5)
    signed_in.get("/api/")
    assert scripted.token_requests == []


# -- transient failures never sign anyone out -----------------------------------------


def test_transient_failure_lets_the_request_through_and_backs_off(
    signed_in: Client,
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
) -> None:
    make_token(expires_in=-5)
    scripted.script(Reply(503, b""))
    for _ in range(3):
        response = signed_in.get("/page/")
        assert response.status_code == 200
        assert error_in(response) == ""
        assert "token-rotation-reauth" not in response.content.decode()
    assert len(scripted.token_requests) == 1
    summary = summary_of(signed_in)
    assert summary is not None and token_session.ERROR not in summary
    retry_at = TokenState.objects.get().next_retry_at
    assert retry_at is not None
    assert summary[token_session.CHECK_AT] >= retry_at.timestamp() - 1


def test_transient_failure_on_an_api_call_is_not_a_401(
    signed_in: Client, fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    make_token(expires_in=-5)
    scripted.script(Reply(500, b""))
    response = signed_in.get("/api/", headers={"Accept": "application/json"})
    assert response.status_code == 200


# -- permanent failures: the session error --------------------------------------------


@pytest.fixture
def revoked(
    signed_in: Client, fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> SocialToken:
    token = make_token(expires_in=-5)
    scripted.script(oauth_error("invalid_grant"))
    return token


def test_permanent_failure_sets_the_session_error(
    signed_in: Client, revoked: SocialToken, scripted: ScriptedServer
) -> None:
    response = signed_in.get("/page/")
    assert response.status_code == 200  # the template decides
    html = response.content.decode()
    assert error_in(response) == REFRESH_ACCESS_TOKEN_ERROR == "RefreshAccessTokenError"
    assert '<p id="provider">[fake]</p>' in html
    assert '<p id="tag-error">[RefreshAccessTokenError]</p>' in html
    assert 'action="/accounts/fake/login/"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert 'name="next" value="/page/"' in html
    # Known dead: later requests do not ask the provider again.
    signed_in.get("/page/")
    assert len(scripted.token_requests) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Accept": "application/json"},
        {"X-Requested-With": "XMLHttpRequest"},
        {"Sec-Fetch-Dest": "empty", "Sec-Fetch-Mode": "cors"},
    ],
)
def test_api_calls_get_a_401_json(
    signed_in: Client, revoked: SocialToken, headers: dict[str, str]
) -> None:
    response = signed_in.post("/api/", headers={**headers, "Referer": "http://testserver/page/"})
    assert response.status_code == 401
    body = json.loads(response.content)
    assert body["error"] == "RefreshAccessTokenError"
    assert body["provider"] == "fake"
    assert body["reauth_url"] == "/accounts/fake/login/?process=login&next=%2Fpage%2F"
    assert "old-" not in response.content.decode()


def test_htmx_requests_get_hx_redirect(signed_in: Client, revoked: SocialToken) -> None:
    response = signed_in.get(
        "/page/",
        headers={"HX-Request": "true", "HX-Current-URL": "http://testserver/page/?tab=2"},
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/accounts/fake/login/?process=login&next=%2Fpage%2F"


def test_redirect_on_error_setting(signed_in: Client, revoked: SocialToken, settings: Any) -> None:
    settings.TOKEN_ROTATION_REDIRECT_ON_ERROR = True
    response = signed_in.get("/page/?x=1")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/fake/login/?process=login&next=%2Fpage%2F%3Fx%3D1"
    # A form post is not redirected (it would lose the data): the template decides.
    assert signed_in.post("/page/").status_code == 200


def test_foreign_next_urls_are_dropped(signed_in: Client, revoked: SocialToken) -> None:
    response = signed_in.get(
        "/api/", headers={"Accept": "application/json", "Referer": "https://evil.example/x"}
    )
    assert response.json()["reauth_url"] == "/accounts/fake/login/?process=login"


def test_allauth_urls_are_never_interrupted(
    signed_in: Client, revoked: SocialToken, settings: Any
) -> None:
    settings.TOKEN_ROTATION_REDIRECT_ON_ERROR = True
    signed_in.get("/page/")  # the error is now in the session
    for path in ("/accounts/fake/login/", "/accounts/logout/", "/accounts/login/"):
        response = signed_in.get(path, headers={"Accept": "application/json"})
        assert response.status_code != 401, path
        assert not response.get("Location", "").startswith("/accounts/fake/login/?"), path


def test_a_failure_seen_in_one_session_shows_in_the_others(
    user: Any, revoked: SocialToken, scripted: ScriptedServer
) -> None:
    first, second = Client(), Client()
    first.force_login(user)
    second.force_login(user)
    assert error_in(first.get("/page/")) == "RefreshAccessTokenError"
    assert error_in(second.get("/page/")) == "RefreshAccessTokenError"
    assert len(scripted.token_requests) == 1  # the second session learnt it from the token


def test_signing_in_again_clears_the_error(
    signed_in: Client, revoked: SocialToken, scripted: ScriptedServer
) -> None:
    assert error_in(signed_in.get("/page/")) == "RefreshAccessTokenError"
    # What allauth does on a new sign-in through the provider: it saves the
    # new tokens on the same row and logs the user in with the same session.
    revoked.token, revoked.token_secret = "relogin-access", "relogin-refresh"
    revoked.expires_at = timezone.now() + datetime.timedelta(hours=1)
    revoked.save()
    request = HttpRequest()
    engine = import_module(django_settings.SESSION_ENGINE)
    request.session = engine.SessionStore(signed_in.session.session_key)
    user = revoked.account.user
    user_logged_in.send(sender=type(user), request=request, user=user)
    save_session(signed_in, request.session)

    response = signed_in.get("/page/")
    assert error_in(response) == ""
    assert "token-rotation-reauth" not in response.content.decode()
    assert not TokenState.objects.get().needs_reauth


# -- the user's other sessions follow a re-sign-in or a cleared error ----------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Stops the middleware's clock (what session summaries are compared with) and moves
    it forward by hand: on a loaded machine, real seconds passing between two requests
    must not count towards a test's "within 15 s"."""
    offset = [time.time()]
    monkeypatch.setattr(middleware_module, "time", SimpleNamespace(time=lambda: offset[0]))

    def advance(seconds: float) -> None:
        offset[0] += seconds

    return advance


def sign_in_again_on(client: Client, token: SocialToken) -> None:
    """What allauth does when the user signs in through the provider on ``client``'s
    device: it saves the new tokens on the same row and logs the session in."""
    token.token, token.token_secret = "relogin-access", "relogin-refresh"
    token.expires_at = timezone.now() + datetime.timedelta(hours=1)
    token.save()
    request = HttpRequest()
    engine = import_module(django_settings.SESSION_ENGINE)
    request.session = engine.SessionStore(client.session.session_key)
    user = token.account.user
    user_logged_in.send(sender=type(user), request=request, user=user)
    save_session(client, request.session)


def test_a_sign_in_on_another_device_reaches_every_session_within_15_s(
    user: Any, revoked: SocialToken, scripted: ScriptedServer, clock: Callable[[float], None]
) -> None:
    assert app_settings.ERROR_RECHECK == 15
    phone, laptop = Client(), Client()
    phone.force_login(user)
    laptop.force_login(user)
    assert error_in(phone.get("/page/")) == REFRESH_ACCESS_TOKEN_ERROR
    assert error_in(laptop.get("/page/")) == REFRESH_ACCESS_TOKEN_ERROR

    sign_in_again_on(phone, revoked)
    assert error_in(phone.get("/page/")) == ""  # the device that signed in: at once
    clock(14)
    assert error_in(laptop.get("/page/")) == REFRESH_ACCESS_TOKEN_ERROR  # trusted a while
    clock(2)
    assert error_in(laptop.get("/page/")) == ""
    assert "token-rotation-reauth" not in laptop.get("/page/").content.decode()
    assert len(scripted.token_requests) == 1  # only the refusal: nothing was due since


def test_an_admin_clear_error_reaches_every_session_within_15_s(
    user: Any,
    revoked: SocialToken,
    scripted: ScriptedServer,
    admin_client: Client,
    clock: Callable[[float], None],
) -> None:
    laptop = Client()
    laptop.force_login(user)
    assert error_in(laptop.get("/page/")) == REFRESH_ACCESS_TOKEN_ERROR
    assert len(scripted.token_requests) == 1

    # The provider works again for this grant; an admin clears the recorded error.
    scripted.script(tokens())
    admin_client.post(
        "/admin/socialaccount/socialtoken/",
        {"action": "clear_error", "_selected_action": [revoked.pk]},
    )
    assert not TokenState.objects.get(token=revoked).needs_reauth
    clock(app_settings.ERROR_RECHECK + 1)
    assert error_in(laptop.get("/page/")) == ""
    assert len(scripted.token_requests) == 1  # the first request after the clear refreshed
    revoked.refresh_from_db()
    assert revoked.token == "new-access"


def test_only_sessions_showing_an_error_look_again_early(
    signed_in: Client,
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    clock: Callable[[float], None],
) -> None:
    make_token(expires_in=3600)
    signed_in.get("/page/")
    summary = summary_of(signed_in)
    assert summary is not None and token_session.ERROR not in summary
    # A fresh session trusts its summary until the token is due or SESSION_RECHECK.
    assert summary[token_session.CHECK_AT] >= time.time() + app_settings.SESSION_RECHECK - 2
    clock(app_settings.ERROR_RECHECK + 1)
    with CaptureQueriesContext(connection) as queries:
        signed_in.get("/page/")
    settings_queries = len(queries.captured_queries)
    with CaptureQueriesContext(connection) as again:
        signed_in.get("/page/")
    assert settings_queries == len(again.captured_queries)  # no look at the tokens
    assert not any("socialtoken" in q["sql"] for q in queries.captured_queries)


def test_an_error_session_looks_again_at_most_every_15_s(
    signed_in: Client, revoked: SocialToken, scripted: ScriptedServer
) -> None:
    before = time.time()
    signed_in.get("/page/")
    summary = summary_of(signed_in)
    assert summary is not None and token_session.ERROR in summary
    assert summary[token_session.CHECK_AT] <= before + app_settings.ERROR_RECHECK + 1
    # Between two looks, the error is answered from the session: no token query.
    with CaptureQueriesContext(connection) as queries:
        assert error_in(signed_in.get("/page/")) == REFRESH_ACCESS_TOKEN_ERROR
    assert not any("socialtoken" in q["sql"] for q in queries.captured_queries)
    assert len(scripted.token_requests) == 1


def test_logout_clears_the_error(signed_in: Client, revoked: SocialToken, user: Any) -> None:
    signed_in.get("/page/")
    assert summary_of(signed_in) is not None
    signed_in.post("/accounts/logout/")
    assert summary_of(signed_in) is None


# -- async -----------------------------------------------------------------------------
# Async code reaches the database from another thread (its own connection):
# the test data must be committed.


@pytest.mark.django_db(transaction=True)
async def test_async_view_through_asgi(
    async_client: AsyncClient,
    user: Any,
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
) -> None:
    token = await sync_to_async(make_token)(expires_in=-5)
    await async_client.aforce_login(user)
    response = await async_client.get("/async-page/")
    assert response.status_code == 200
    assert response.content == b"async ok"
    assert len(scripted.token_requests) == 1
    await token.arefresh_from_db()
    assert token.token == "new-access"
    # Fresh now: the next request is answered from the session.
    response = await async_client.get("/page/")
    assert response.status_code == 200
    assert len(scripted.token_requests) == 1


@pytest.mark.django_db(transaction=True)
async def test_async_api_call_gets_the_401(
    async_client: AsyncClient, user: Any, revoked: SocialToken
) -> None:
    await async_client.aforce_login(user)
    response = await async_client.get("/api/", headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert json.loads(response.content)["error"] == "RefreshAccessTokenError"


async def test_middleware_in_async_mode_unit(rf: RequestFactory) -> None:
    async def get_response(request: HttpRequest) -> HttpResponse:
        return HttpResponse("inner")

    middleware = TokenRefreshMiddleware(get_response)
    assert middleware.async_mode
    request = rf.get("/")
    engine = import_module(django_settings.SESSION_ENGINE)
    request.session = engine.SessionStore()
    response = await middleware(request)
    assert response.content == b"inner"


def test_sync_middleware_unit_anonymous(rf: RequestFactory) -> None:
    middleware = TokenRefreshMiddleware(lambda r: HttpResponse("inner"))
    request = rf.get("/")
    engine = import_module(django_settings.SESSION_ENGINE)
    request.session = engine.SessionStore()
    assert middleware(request).content == b"inner"


def test_an_engine_failure_never_breaks_the_page(
    signed_in: Client,
    fake_app: SocialApp,
    make_token: MakeToken,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make_token(expires_in=-5)

    def database_gone(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("connection refused")

    # The engine's one read of the user's tokens (on the router's write database).
    monkeypatch.setattr(store, "newest_first", database_gone)
    response = signed_in.get("/page/")
    assert response.status_code == 200
    assert error_in(response) == ""
    assert "Could not check the tokens of user" in caplog.text


# -- edges: JSON bodies, unknown paths, a provider that cannot be resolved ----------


def test_a_json_body_is_an_api_call(signed_in: Client, revoked: SocialToken) -> None:
    """A ``fetch()`` posting JSON from an older browser (no ``Sec-Fetch-*``, no Accept)."""
    response = signed_in.post("/api/", data="{}", content_type="application/json")
    assert response.status_code == 401
    assert response.json()["error"] == REFRESH_ACCESS_TOKEN_ERROR


def test_an_unknown_path_is_not_a_sign_in_view(
    signed_in: Client, revoked: SocialToken, settings: Any
) -> None:
    settings.TOKEN_ROTATION_REDIRECT_ON_ERROR = True
    response = signed_in.get("/no-such-page/")
    # Not one of allauth's views: the user is sent to sign in again (not a 404 first).
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/fake/login/?process=login")


def test_a_provider_that_cannot_be_resolved_falls_back_to_the_login_page(
    signed_in: Client,
    revoked: SocialToken,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    signed_in.get("/page/")  # the error is now in the session
    assert summary_of(signed_in) is not None
    # The app is removed by an admin: the provider's sign-in URL cannot be built.
    SocialToken.objects.filter(pk=revoked.pk).update(app=None)
    SocialApp.objects.all().delete()
    session = signed_in.session  # a new session of the user (another device)
    del session[token_session.KEY]
    save_session(signed_in, session)
    response = signed_in.get("/api/", headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert response.json()["reauth_url"].startswith("/accounts/login/")
    assert "No sign-in URL for token" in caplog.text


@pytest.mark.django_db(transaction=True)
async def test_async_exempt_paths(
    async_client: AsyncClient,
    user: Any,
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    settings: Any,
) -> None:
    settings.TOKEN_ROTATION_EXEMPT_PATHS = [r"^/async-page/"]
    await sync_to_async(make_token)(expires_in=-5)
    await async_client.aforce_login(user)
    assert (await async_client.get("/async-page/")).status_code == 200
    assert scripted.token_requests == []


# -- hooks: a site's own answers to a refused grant ----------------------------------


class SiteAnswers(TokenRefreshMiddleware):
    """What a site writes: one subclass, named in MIDDLEWARE instead of ours."""

    def html_response(self, request: HttpRequest, error: token_session.TokenSession) -> Any:
        return HttpResponse(f"html {error.provider} {error.code}", status=403)

    def json_response(self, request: HttpRequest, error: token_session.TokenSession) -> Any:
        return JsonResponse({"sign_in_with": error.provider}, status=401)

    def htmx_response(self, request: HttpRequest, error: token_session.TokenSession) -> Any:
        response = HttpResponse(status=204)
        response["HX-Location"] = error.login_url
        return response

    def app_response(self, request: HttpRequest, error: token_session.TokenSession) -> Any:
        return JsonResponse({"app": error.provider}, status=401)


class LetThrough(TokenRefreshMiddleware):
    def reauthentication_response(
        self, request: HttpRequest, error: token_session.TokenSession
    ) -> Any:
        return None


@pytest.fixture
def site_answers(settings: Any) -> None:
    settings.MIDDLEWARE = [
        "tests.test_middleware.SiteAnswers" if "TokenRefreshMiddleware" in m else m
        for m in settings.MIDDLEWARE
    ]


@pytest.mark.parametrize(
    ("headers", "status", "expected"),
    [
        ({}, 403, b"html fake invalid_grant"),
        ({"Accept": "application/json"}, 401, b'{"sign_in_with": "fake"}'),
        ({"HX-Request": "true"}, 204, b""),
    ],
)
def test_a_subclass_answers_each_kind_of_request(
    site_answers: None,
    user: Any,
    revoked: SocialToken,
    headers: dict[str, str],
    status: int,
    expected: bytes,
) -> None:
    client = Client()  # after the settings change: loads the subclass
    client.force_login(user)
    response = client.get("/page/", headers=headers)
    assert response.status_code == status
    assert response.content == expected
    if "HX-Request" in headers:
        assert response["HX-Location"] == "/accounts/fake/login/"


@pytest.mark.usefixtures("app_sessions")
def test_a_subclass_answers_app_clients(
    site_answers: None, user: Any, revoked: SocialToken
) -> None:
    client = Client()
    login = client.post(
        "/_allauth/app/v1/auth/login",
        {"username": "alice", "password": "pw"},
        content_type="application/json",
    )
    headers = {"X-Session-Token": login.json()["meta"]["session_token"]}
    response = Client().get("/api/", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"app": "fake"}


def test_a_subclass_that_lets_requests_through_still_marks_them(
    settings: Any, user: Any, revoked: SocialToken
) -> None:
    settings.MIDDLEWARE = [
        "tests.test_middleware.LetThrough" if "TokenRefreshMiddleware" in m else m
        for m in settings.MIDDLEWARE
    ]
    client = Client()
    client.force_login(user)
    response = client.get("/api/", headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response[TokenRefreshMiddleware.ERROR_HEADER] == "RefreshAccessTokenError"
    assert response[TokenRefreshMiddleware.PROVIDER_HEADER] == "fake"


def test_the_checks_accept_a_subclass(site_answers: None) -> None:
    out = StringIO()
    call_command("check", stdout=out)
    assert "token_rotation" not in out.getvalue()


# -- rechecks: what the summary keeps --------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_async_pages_of_a_refused_grant_go_through_marked(
    async_client: AsyncClient, user: Any, revoked: SocialToken
) -> None:
    """As in sync mode: a page load reaches its view (the template decides), and
    the response says which grant was refused."""
    await async_client.aforce_login(user)
    response = await async_client.get("/async-page/")
    assert response.status_code == 200
    assert response.content == b"async ok"
    assert response[TokenRefreshMiddleware.ERROR_HEADER] == REFRESH_ACCESS_TOKEN_ERROR
    assert response[TokenRefreshMiddleware.PROVIDER_HEADER] == "fake"


def test_the_summary_of_a_deleted_user_is_dropped(
    signed_in: Client,
    user: Any,
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    clock: Callable[[float], None],
) -> None:
    """An admin deletes the user: the session still names them, the request is
    anonymous; at the next look the summary goes, and nothing is refreshed."""
    make_token(expires_in=3600)
    signed_in.get("/page/")
    assert summary_of(signed_in) is not None
    user.delete()
    clock(app_settings.SESSION_RECHECK + 1)
    response = signed_in.get("/api/")
    assert response.status_code == 200
    assert signed_in.session.get(token_session.KEY) is None
    assert scripted.token_requests == []


def test_a_token_without_an_expiry_adds_none_to_the_summary(
    signed_in: Client, fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    make_token(expires_in=None)
    before = time.time()
    assert signed_in.get("/page/").status_code == 200
    summary = summary_of(signed_in)
    assert summary is not None
    assert token_session.EXPIRES_AT not in summary and token_session.ERROR not in summary
    assert summary[token_session.CHECK_AT] >= before + app_settings.SESSION_RECHECK - 2
    assert scripted.token_requests == []


def test_a_failure_still_there_keeps_its_sign_in_link(
    signed_in: Client,
    revoked: SocialToken,
    scripted: ScriptedServer,
    clock: Callable[[float], None],
) -> None:
    """The sign-in URL is computed once, when the error appears; a later look
    that finds the same failure keeps it (no provider lookup per recheck)."""
    signed_in.get("/page/")
    session = signed_in.session
    summary = session[token_session.KEY]
    first_check = summary[token_session.CHECK_AT]
    summary[token_session.ERROR]["login_url"] = "/kept/login/"
    session[token_session.KEY] = summary
    save_session(signed_in, session)
    clock(app_settings.ERROR_RECHECK + 1)
    response = signed_in.get("/api/", headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert response.json()["reauth_url"].startswith("/kept/login/?process=login")
    rechecked = summary_of(signed_in)
    assert rechecked is not None and rechecked[token_session.CHECK_AT] > first_check
    assert rechecked[token_session.ERROR]["login_url"] == "/kept/login/"
    assert len(scripted.token_requests) == 1  # known dead: not asked again


def test_without_allauths_urls_the_sign_in_link_is_the_site_root(
    signed_in: Client, revoked: SocialToken, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A URLconf without allauth's URLs (the W008 check warns of it): neither
    the provider's sign-in URL nor the login page can be reversed."""
    settings.ROOT_URLCONF = "tests.urls_without_allauth"
    response = signed_in.get("/api/", headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert response.json()["reauth_url"].startswith("/?process=login")
    assert "No sign-in URL for token" in caplog.text
