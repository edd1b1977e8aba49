"""The app against a second real provider: Debian's glewlwyd (2.7.5 on bookworm).

glewlwyd's OpenID Connect plugin runs with one-use refresh tokens: each refresh
disables the refresh token it used, and a replayed one disables the newest of
the chain, so a single duplicate send would sign the user out. It wants a
``nonce`` in the authorization request (allauth 65 sends none unless told, see
``auth_params`` below) and answers every refresh it refuses with a bare
HTTP 400: no body, no content type.

The user signs in through the real authorization-code flow: allauth's
``openid_connect`` provider on our live server, glewlwyd's login API and its
consent step driven by a ``requests`` session standing in for the browser.
"""

from __future__ import annotations

import asyncio
import datetime
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
import requests
from allauth.socialaccount.models import SocialAccount, SocialApp, SocialToken
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import AsyncClient
from django.utils import timezone

from django_token_rotation.models import TokenState
from tests.glewlwyd.fixture import ACCESS_TOKEN_LIFETIME, Glewlwyd
from tests.glewlwyd.fixture import version as glewlwyd_version
from tests.helpers import (
    ALIASES,
    DATABASES,
    PROCESSES,
    THREADS,
    collect,
    start_workers,
    worker_env,
)

pytestmark = pytest.mark.glewlwyd

PROVIDER_ID = "glewlwyd"
#: glewlwyd refuses an authorization request without a nonce ("nonce required");
#: allauth 65 sends the app's ``auth_params`` with every authorization request.
NONCE = secrets.token_urlsafe(16)
#: The access token (30 s at glewlwyd) is due this long before it expires:
#: 8 s after sign-in, so a test sees it fresh, then due, in real time.
LEEWAY = ACCESS_TOKEN_LIFETIME - 8
PROMPT = "Sign in again with"


@pytest.fixture
def glewlwyd(glewlwyd_server: Glewlwyd) -> Glewlwyd:
    cache.clear()  # discovery documents of an earlier glewlwyd (another port)
    return glewlwyd_server


def make_app(glewlwyd: Glewlwyd, alias: str = "default") -> SocialApp:
    return SocialApp.objects.using(alias).create(
        provider="openid_connect",
        provider_id=PROVIDER_ID,
        name="Glewlwyd",
        client_id=glewlwyd.client_id,
        secret=glewlwyd.client_secret,
        settings={"server_url": glewlwyd.issuer, "auth_params": {"nonce": NONCE}},
    )


@dataclass
class SignedIn:
    """A user signed in to our site through glewlwyd, and their browser."""

    browser: requests.Session
    site: str
    username: str
    password: str
    token: SocialToken

    def page(self) -> str:
        response = self.browser.get(f"{self.site}/page/", allow_redirects=False, timeout=30)
        assert response.status_code == 200, (response.status_code, response.headers)
        return response.text


@pytest.fixture
def sign_in(
    glewlwyd: Glewlwyd,
    django_db_setup: None,
    transactional_db: None,
    live_server: Any,
    settings: Any,
) -> Any:
    """Signs a new glewlwyd user in to our live server (started after the test
    database exists, as in tests/test_admin_browser.py)."""
    settings.TOKEN_ROTATION_LEEWAY = LEEWAY
    site = live_server.url
    glewlwyd.allow_redirect_uri(f"{site}/accounts/oidc/{PROVIDER_ID}/login/callback/")
    make_app(glewlwyd)

    def run() -> SignedIn:
        username, password = glewlwyd.add_user()
        browser = requests.Session()
        # Our site: allauth's sign-in button (a POST with the CSRF token).
        login = f"{site}/accounts/oidc/{PROVIDER_ID}/login/?process=login"
        assert browser.get(login, timeout=30).status_code == 200
        response = browser.post(
            login,
            data={"csrfmiddlewaretoken": browser.cookies["csrftoken"]},
            allow_redirects=False,
            timeout=30,
        )
        assert response.status_code == 302, response.text[:500]
        authorize_url = response.headers["Location"]
        assert authorize_url.startswith(f"{glewlwyd.issuer}/auth?")
        assert f"nonce={NONCE}" in authorize_url
        # glewlwyd: log in, consent, then back to our callback with a code.
        glewlwyd.sign_in(browser, username, password)
        callback = glewlwyd.authorize(browser, authorize_url)
        assert callback.startswith(f"{site}/accounts/oidc/{PROVIDER_ID}/login/callback/?")
        # allauth exchanges the code, checks the ID token and stores the SocialToken.
        response = browser.get(callback, allow_redirects=False, timeout=30)
        assert response.status_code == 302, response.text[:1000]
        token = (
            SocialToken.objects.select_related("account")
            .filter(account__provider=PROVIDER_ID)
            .latest("pk")
        )
        return SignedIn(browser, site, username, password, token)

    return run


def wait_until_due(token: SocialToken) -> None:
    assert token.expires_at is not None
    due = token.expires_at - datetime.timedelta(seconds=LEEWAY)
    delay = (due - timezone.now()).total_seconds() + 0.5
    if delay > 0:
        time.sleep(delay)


def test_sign_in_stores_glewlwyds_tokens(sign_in: Any, glewlwyd: Glewlwyd) -> None:
    user = sign_in()

    token = user.token
    assert token.token and token.token_secret
    assert token.expires_at is not None
    lifetime = (token.expires_at - timezone.now()).total_seconds()
    assert ACCESS_TOKEN_LIFETIME - 10 < lifetime <= ACCESS_TOKEN_LIFETIME
    claims = jwt.decode(token.token, options={"verify_signature": False})
    assert claims["iss"] == glewlwyd.issuer and claims["sub"] == token.account.uid
    assert PROMPT not in user.page()
    assert glewlwyd.refreshes(user.username) == 0


def test_expiry_refreshes_once_through_the_middleware(
    sign_in: Any, glewlwyd: Glewlwyd, hidden_secrets: list[str]
) -> None:
    user = sign_in()
    hidden_secrets += [user.token.token, user.token.token_secret, glewlwyd.client_secret]
    first = (user.token.token, user.token.token_secret)
    user.page()  # fresh: nothing to do
    assert glewlwyd.refreshes(user.username) == 0

    wait_until_due(user.token)
    refused = glewlwyd.refused()
    assert PROMPT not in user.page()

    assert glewlwyd.refreshes(user.username) == 1
    assert glewlwyd.refused() == refused
    token = SocialToken.objects.get(pk=user.token.pk)
    hidden_secrets += [token.token, token.token_secret]  # never in a log record
    assert token.token != first[0]
    assert token.token_secret and token.token_secret != first[1]  # the rotated one, stored
    assert token.expires_at is not None and token.expires_at > timezone.now()
    user.page()  # fresh again: no second refresh
    assert glewlwyd.refreshes(user.username) == 1
    # What we stored is glewlwyd's live refresh token (and the spent one is dead).
    assert glewlwyd.refresh(token.token_secret).status_code == 200
    assert glewlwyd.refreshes(user.username) == 2


async def test_expiry_refreshes_once_through_the_async_middleware(
    sign_in: Any, glewlwyd: Glewlwyd, async_client: AsyncClient
) -> None:
    """The same, through the middleware's async path (an ``async def`` view under
    Django's async test client), with the session the sign-in made."""
    user = await sync_to_async(sign_in)()
    async_client.cookies["sessionid"] = user.browser.cookies["sessionid"]
    first = user.token.token_secret
    assert (await async_client.get("/async-page/")).status_code == 200
    assert await sync_to_async(glewlwyd.refreshes)(user.username) == 0

    assert user.token.expires_at is not None
    due = user.token.expires_at - datetime.timedelta(seconds=LEEWAY)
    await asyncio.sleep(max(0.0, (due - timezone.now()).total_seconds() + 0.5))
    response = await async_client.get("/async-page/")

    assert response.status_code == 200 and response.content == b"async ok"
    assert await sync_to_async(glewlwyd.refreshes)(user.username) == 1
    token = await SocialToken.objects.aget(pk=user.token.pk)
    assert token.token_secret and token.token_secret != first
    assert (await async_client.get("/async-page/")).status_code == 200
    assert await sync_to_async(glewlwyd.refreshes)(user.username) == 1


@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_burst_of_processes_refreshes_once(alias: str, glewlwyd: Glewlwyd) -> None:
    """With one-use refresh tokens a single replay would kill the grant: every
    caller would fail, and so would the further refresh at the end."""
    username, password = glewlwyd.add_user()
    grant = glewlwyd.code_grant(username, password)  # the real code flow, with a nonce
    app = make_app(glewlwyd, alias)
    user = get_user_model().objects.db_manager(alias).create_user(username, "g@example.com")
    claims = jwt.decode(grant["id_token"], options={"verify_signature": False})
    account = SocialAccount.objects.using(alias).create(
        user=user, provider=PROVIDER_ID, uid=claims["sub"], extra_data={"id_token": claims}
    )
    token = SocialToken.objects.using(alias).create(
        account=account,
        app=app,
        token=grant["access_token"],
        token_secret=grant["refresh_token"],
        expires_at=timezone.now() - datetime.timedelta(seconds=1),
    )
    refused = glewlwyd.refused()

    results = collect(
        start_workers(
            PROCESSES,
            alias=alias,
            user_id=user.pk,
            provider=PROVIDER_ID,
            threads=THREADS,
            env=worker_env(alias),
        )
    )

    token.refresh_from_db()
    outcomes = Counter(
        "stored token" if r.get("token") == token.token else f"other: {r}" for r in results
    )
    print(
        f"\n[{alias}, glewlwyd] {PROCESSES} processes x {THREADS} threads; refreshes at "
        f"glewlwyd: {glewlwyd.refreshes(username)}, refused: {glewlwyd.refused() - refused}; "
        f"outcomes: {dict(outcomes)}"
    )
    assert outcomes == {"stored token": PROCESSES * THREADS}
    assert glewlwyd.refreshes(username) == 1
    assert glewlwyd.refused() == refused  # nothing replayed
    assert token.token_secret != grant["refresh_token"]
    # The grant is alive: the rotated refresh token refreshes again.
    SocialToken.objects.using(alias).filter(pk=token.pk).update(expires_at=timezone.now())
    [after] = collect(
        start_workers(
            1, alias=alias, user_id=user.pk, provider=PROVIDER_ID, threads=1, env=worker_env(alias)
        )
    )
    assert "token" in after, after
    assert glewlwyd.refreshes(username) == 2
    assert glewlwyd.refused() == refused


@pytest.mark.parametrize(
    ("rules", "calls", "code"),
    [
        pytest.param({}, 2, "refusal_confirmed", id="bodiless-4xx-rule"),
        pytest.param(
            {"glewlwyd": {"http:400:empty": "invalid_grant"}},
            1,
            "invalid_grant",
            id="provider-errors-setting",
        ),
    ],
)
def test_revocation_at_glewlwyd_ends_at_the_prompt(
    sign_in: Any,
    glewlwyd: Glewlwyd,
    settings: Any,
    rules: dict[str, dict[str, str]],
    calls: int,
    code: str,
    hidden_secrets: list[str],
) -> None:
    """glewlwyd's bare 400 is a refusal: confirmed by one more call, or at the first
    with the ``TOKEN_ROTATION_PROVIDER_ERRORS`` rule docs/providers.rst gives for it."""
    settings.TOKEN_ROTATION_PROVIDER_ERRORS = rules
    user = sign_in()
    hidden_secrets += [user.token.token, user.token.token_secret, glewlwyd.client_secret]
    assert glewlwyd.revoke_grants(user.username, user.password) == 1
    refused = glewlwyd.refused()

    wait_until_due(user.token)
    deadline = time.monotonic() + 30
    page = user.page()
    while PROMPT not in page and time.monotonic() < deadline:
        time.sleep(0.5)
        page = user.page()

    assert PROMPT in page, f"no prompt after {glewlwyd.refused() - refused} refused refreshes"
    assert "[RefreshAccessTokenError]" in page
    for _ in range(3):  # and no more calls: the grant is known dead
        user.page()
    assert glewlwyd.refused() - refused == calls
    assert glewlwyd.refreshes(user.username) == 0
    state = TokenState.objects.get(token_id=user.token.pk)
    assert state.needs_reauth and state.last_error == code
    token = SocialToken.objects.get(pk=user.token.pk)
    assert token.token_secret == user.token.token_secret  # nothing overwritten


def test_glewlwyd_refuses_with_a_bare_400(glewlwyd: Glewlwyd) -> None:
    """What glewlwyd 2.7.5 answers to refreshes it refuses (docs/testing-providers.rst)."""
    username, password = glewlwyd.add_user()
    grant = glewlwyd.code_grant(username, password)
    spent = grant["refresh_token"]
    rotated = glewlwyd.refresh(spent)
    assert rotated.status_code == 200
    assert rotated.headers["Content-Type"] == "application/json"
    assert rotated.headers["Cache-Control"] == "no-store"
    body = rotated.json()
    assert body["token_type"] == "bearer"
    assert jwt.get_unverified_header(body["access_token"])["typ"] == "at+jwt"
    assert body["refresh_token"] != spent  # one use: a new refresh token each time
    assert body["expires_in"] == ACCESS_TOKEN_LIFETIME and "id_token" not in body

    refusals = {
        "spent (replayed)": glewlwyd.refresh(spent),
        "newest after a replay": glewlwyd.refresh(body["refresh_token"]),
        "unknown": glewlwyd.refresh("not-a-refresh-token"),
        "wrong client secret": glewlwyd.refresh(
            body["refresh_token"], auth=(glewlwyd.client_id, "wrong")
        ),
    }
    other_user, other_password = glewlwyd.add_user()
    live = glewlwyd.code_grant(other_user, other_password)["refresh_token"]
    glewlwyd.revoke_grants(other_user, other_password)
    refusals["revoked by the user"] = glewlwyd.refresh(live)
    client = (glewlwyd.client_id, glewlwyd.client_secret)
    refusals["no refresh_token"] = requests.post(
        glewlwyd.token_url, data={"grant_type": "refresh_token"}, auth=client, timeout=10
    )
    refusals["unknown grant_type"] = requests.post(
        glewlwyd.token_url, data={"grant_type": "bogus"}, auth=client, timeout=10
    )

    seen = glewlwyd_version()
    for case, response in refusals.items():
        case = f"{case} (glewlwyd {seen})"
        assert (response.status_code, response.content) == (400, b""), case
        assert response.headers.get("Content-Length") == "0", case
        assert "Content-Type" not in response.headers, case
        assert response.headers.get("Cache-Control") == "no-store", case
        assert response.headers.get("Referrer-Policy") == "no-referrer", case


def test_glewlwyd_wants_a_nonce(glewlwyd: Glewlwyd) -> None:
    """Why the app's ``auth_params`` carry a nonce: allauth 65 sends none of its own."""
    username, password = glewlwyd.add_user()
    redirect_uri = "http://127.0.0.1:9/callback"
    glewlwyd.allow_redirect_uri(redirect_uri)
    browser = requests.Session()
    glewlwyd.sign_in(browser, username, password)
    query = {
        "response_type": "code",
        "client_id": glewlwyd.client_id,
        "redirect_uri": redirect_uri,
        "scope": "openid profile email",
        "state": "s",
    }
    location = glewlwyd.authorize(browser, f"{glewlwyd.issuer}/auth?{urlencode(query)}")
    answer = parse_qs(urlsplit(location).query)
    assert answer == {
        "state": ["s"],
        "error": ["invalid_request"],
        "error_description": ["nonce required"],
    }


def test_logout_revokes_the_grant_at_glewlwyd(
    sign_in: Any, glewlwyd: Glewlwyd, settings: Any
) -> None:
    """``TOKEN_ROTATION_REVOKE_ON_LOGOUT``: RFC 7009 at glewlwyd's ``revocation_endpoint``."""
    settings.TOKEN_ROTATION_REVOKE_ON_LOGOUT = True
    user = sign_in()
    refresh_token = user.token.token_secret

    response = user.browser.post(
        f"{user.site}/accounts/logout/",
        data={"csrfmiddlewaretoken": user.browser.cookies["csrftoken"]},
        allow_redirects=False,
        timeout=30,
    )

    assert response.status_code == 302
    assert not SocialToken.objects.filter(pk=user.token.pk).exists()
    assert glewlwyd.refresh(refresh_token).status_code == 400  # dead at glewlwyd
