"""What goes on the wire: HTTPS only, POST only, Bearer only."""

from __future__ import annotations

import base64
import datetime
import email.utils
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp
from django.utils import timezone

from django_token_rotation import (
    ProviderNotRefreshable,
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    client,
    get_access_token,
    refresh,
)
from django_token_rotation.client import require_secure
from django_token_rotation.exceptions import ImproperlyConfiguredProvider
from django_token_rotation.models import TokenState
from tests.helpers import IN_CI, ROOT, MakeToken, unmeasured
from tests.scripted_server import Reply, ScriptedServer, tokens

pytestmark = pytest.mark.usefixtures("hidden_secrets")


@pytest.mark.parametrize(
    "url",
    [
        "https://oauth2.googleapis.com/token",
        "http://127.0.0.1:8001/o/token/",
        "http://127.9.9.9/token",
        "http://[::1]:9000/token",
        "http://localhost:8000/token",
    ],
)
def test_https_and_loopback_are_allowed(url: str) -> None:
    require_secure(url, provider="p")


@pytest.mark.parametrize(
    "url",
    [
        "http://provider.example/token",
        "http://10.0.0.5/token",
        "http://localhost.evil.example/token",
        "ftp://provider.example/token",
        "//provider.example/token",
    ],
)
def test_anything_else_is_refused(url: str, settings: Any) -> None:
    with pytest.raises(ImproperlyConfiguredProvider) as excinfo:
        require_secure(url, provider="p")
    assert excinfo.value.code == "insecure_endpoint"
    if url.startswith("http:"):
        settings.TOKEN_ROTATION_ALLOW_INSECURE_HTTP = True
        require_secure(url, provider="p")


@pytest.mark.django_db
def test_insecure_token_endpoint_is_never_called(
    fake_app: SocialApp, make_token: MakeToken, user: Any, settings: Any
) -> None:
    settings.FAKE_PROVIDER_TOKEN_URL = "http://provider.example/token"
    token = make_token(expires_in=30)  # due, still valid: returned as it is
    assert get_access_token(user, "fake") == "old-access"
    token.expires_at = timezone.now()
    token.save()
    with pytest.raises(ProviderNotRefreshable) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "insecure_endpoint"


@pytest.mark.django_db
def test_refresh_is_a_post_even_for_adapters_that_use_get(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.fakeprovider.views import FakeAdapter

    monkeypatch.setattr(FakeAdapter, "access_token_method", "GET")
    make_token()
    get_access_token(user, "fake")
    [request] = scripted.token_requests
    assert request.method == "POST"
    assert request.form["refresh_token"] == "old-refresh"


@pytest.mark.django_db
@pytest.mark.parametrize("token_type", ["DPoP", "MAC", "N_A"])
def test_only_bearer_tokens_are_accepted(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    token_type: str,
) -> None:
    token = make_token()
    scripted.script(tokens(token_type=token_type))
    with pytest.raises(ReauthenticationRequired) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "unsupported_token_type"
    token.refresh_from_db()
    # The access token is not used; the new refresh token is kept
    # (tests/test_refresh_token_kept.py).
    assert (token.token, token.token_secret) == ("old-access", "new-refresh")


# -- both urllib3 majors ------------------------------------------------------------

#: Set by the test below for the run it starts: the urllib3 series that must be imported.
URLLIB3_UNDER_TEST = os.environ.get("TOKEN_ROTATION_TEST_URLLIB3", "")


def test_the_urllib3_asked_for_is_the_one_imported() -> None:
    from importlib.metadata import version

    assert version("urllib3").startswith(URLLIB3_UNDER_TEST)


def test_the_transport_works_with_urllib3_1_26(tmp_path: Path) -> None:
    """``requests>=2.31`` admits urllib3 1.26, whose ``HTTPResponse`` has no
    ``read1``: every refresh used to reach the provider and then fail as
    ``connection_error``. This file and tests/test_deadline.py (TLS, dripping
    answers, hangs, the shared deadline; not the process races) run again with
    urllib3 1.26 ahead of the installed 2.x on the path."""
    target = tmp_path / "urllib3-1.26"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
        + ["urllib3>=1.26,<2"],
        env=unmeasured(dict(os.environ)),
        capture_output=True,
        text=True,
    )
    if install.returncode != 0:
        if IN_CI:
            pytest.fail(f"pip could not install urllib3 1.26: {install.stderr[-2000:]}")
        pytest.skip("urllib3 1.26 cannot be installed here (no package index?)")
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"]
        + ["tests/test_client.py", "tests/test_deadline.py"]
        + ["-k", "not race and not urllib3_1_26"],
        cwd=ROOT,
        # A whole nested test run: not traced by coverage (it would double its time).
        env=unmeasured(
            {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(target), str(ROOT)]),
                "TOKEN_ROTATION_TEST_URLLIB3": "1.26.",
            }
        ),
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    print(f"\nwith urllib3 1.26: {summary}")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert " passed" in summary and "skipped" not in summary


@pytest.mark.django_db
def test_a_sites_retry_of_posts_never_sends_the_refresh_token_twice(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A site whose allauth adapter mounts a urllib3 ``Retry`` that retries POSTs:
    the provider reads the refresh request and drops the connection, urllib3
    tries again, and the second send is refused before it is written."""
    import requests
    from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
    from urllib3.util.retry import Retry

    def retrying_session(self: Any) -> requests.Session:
        session = requests.Session()
        retry = Retry(total=3, read=3, connect=3, allowed_methods=None, backoff_factor=0)
        session.mount("http://", requests.adapters.HTTPAdapter(max_retries=retry))
        return session

    monkeypatch.setattr(DefaultSocialAccountAdapter, "get_requests_session", retrying_session)
    make_token()
    scripted.script(Reply(drop=True), tokens())
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "connection_error"
    assert len(scripted.token_requests) == 1


def test_a_document_answered_with_an_error_status_is_not_read(scripted: ScriptedServer) -> None:
    """A discovery document or JWKS answered with 404: the status is the error
    (with the caller's code), whatever the body says."""
    scripted.static["/jwks"] = Reply(404, {"keys": []})
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        client.fetch_json(
            f"{scripted.base_url}/jwks", provider="p", what="the JWKS", code="jwks_failed"
        )
    assert excinfo.value.code == "jwks_failed"
    assert excinfo.value.provider == "p"
    assert "answered HTTP 404" in str(excinfo.value)
    assert [r.path for r in scripted.received] == ["/jwks"]


def test_a_kept_session_sends_netrc_credentials_as_requests_does(
    scripted: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``keep_alive`` the environment is read once per URL instead of by
    requests on every call: a ``~/.netrc`` entry for the host still applies, as
    it does to a one-off session."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login site-user password site-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    scripted.static["/jwks"] = Reply(200, {"keys": []})
    url = f"{scripted.base_url}/jwks"
    assert client.fetch_json(url, provider="p") == {"keys": []}
    with client.keep_alive():
        assert client.fetch_json(url, provider="p") == {"keys": []}
        assert client.fetch_json(url, provider="p") == {"keys": []}
    basic = "Basic " + base64.b64encode(b"site-user:site-password").decode()
    assert [r.headers.get("Authorization") for r in scripted.received] == [basic] * 3


@pytest.mark.django_db
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "close-delimited"])
def test_an_oversized_answer_is_refused_and_nothing_is_stored(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    settings: Any,
    declared: bool,
) -> None:
    """Refused by its declared length before it is read, or while it is read
    when no length is declared."""
    settings.TOKEN_ROTATION_MAX_RESPONSE_BYTES = 1024
    token = make_token()
    oversized = tokens(pad="x" * 4096)
    oversized.close_delimited = not declared
    scripted.script(oversized)
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "malformed_response"
    assert "exceeds 1024 bytes" in str(excinfo.value)
    token.refresh_from_db()
    assert (token.token, token.token_secret) == ("old-access", "old-refresh")
    # Just under the cap is read as usual.
    TokenState.objects.filter(token_id=token.pk).update(next_retry_at=None)
    scripted.script(tokens(pad="x" * 800))
    assert get_access_token(user, "fake") == "new-access"


@pytest.mark.django_db
@pytest.mark.parametrize("zone", ["GMT", "-0000"])
def test_retry_after_as_an_http_date_is_honoured(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, zone: str, settings: Any
) -> None:
    """RFC 9110 allows ``Retry-After`` as a date; ``-0000`` (a date without a
    zone, says RFC 5322) is read as UTC."""
    token = make_token(expires_in=30)  # due (leeway 60 s) but still valid
    at = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=120)).replace(
        microsecond=0
    )
    header = email.utils.format_datetime(at, usegmt=True)
    if zone != "GMT":
        header = header.replace("GMT", zone)
    scripted.script(Reply(503, b"", headers={"Retry-After": header}))
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        refresh(token)
    retry_at = TokenState.objects.get(token_id=token.pk).next_retry_at
    # With USE_TZ = False the site keeps naive local times (TIME_ZONE): the same instant.
    assert retry_at == (at if settings.USE_TZ else timezone.make_naive(at))
    assert excinfo.value.retry_at == retry_at


@pytest.mark.django_db
def test_a_retry_after_that_is_not_a_date_is_ignored(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    """The back-off of a 503 without the header, not an error."""
    retry_ats = []
    for header in ({"Retry-After": "next tuesday"}, {}):
        token = make_token(expires_in=30)
        scripted.script(Reply(503, b"", headers=header))
        with pytest.raises(TokenRefreshUnavailable) as excinfo:
            refresh(token)
        assert excinfo.value.code == "server_error"
        retry_at = TokenState.objects.get(token_id=token.pk).next_retry_at
        assert retry_at is not None
        retry_ats.append((retry_at - timezone.now()).total_seconds())
        token.delete()
    junk, absent = retry_ats
    assert abs(junk - absent) < 5


# -- a kept session sends what a one-off session sends ---------------------------------
# Under keep_alive (background runs) a request is prepared once per URL and copied
# with each call's form (client._template): what reaches the endpoint must not change.


@pytest.mark.parametrize("basic_auth", [False, True], ids=["form-credentials", "basic"])
def test_a_kept_session_sends_what_a_one_off_session_sends(
    scripted: ScriptedServer, basic_auth: bool
) -> None:
    endpoint = client.TokenEndpoint(
        url=scripted.token_url,
        client_id="c",
        client_secret="s",
        provider="p",
        basic_auth=basic_auth,
        headers={"X-Tenant": "t1"},
    )
    scripted.script(tokens())
    client.refresh_token_grant(endpoint, "refresh-1")
    with client.keep_alive():
        client.refresh_token_grant(endpoint, "refresh-2")
        client.refresh_token_grant(endpoint, "refresh-3")
    one_off, *kept = scripted.token_requests
    assert [r.form["refresh_token"] for r in kept] == ["refresh-2", "refresh-3"]
    for received in kept:
        # Same headers, in the same order, and the same form but for the refresh token.
        assert list(received.headers.items()) == list(one_off.headers.items())
        assert {**received.form, "refresh_token": "refresh-1"} == one_off.form
    assert ("Authorization" in one_off.headers) == basic_auth
    assert one_off.headers["X-Tenant"] == "t1"


def test_a_kept_session_returns_the_cookies_an_endpoint_sets(scripted: ScriptedServer) -> None:
    """A load balancer's affinity cookie comes back on the next call, as requests
    sends a session's cookies: the call no longer uses the prepared copy."""
    endpoint = client.TokenEndpoint(
        url=scripted.token_url, client_id="c", client_secret="s", provider="p"
    )
    scripted.script(Reply(200, tokens().body, headers={"Set-Cookie": "node=b7; Path=/"}))
    with client.keep_alive():
        for n in range(3):
            client.refresh_token_grant(endpoint, f"refresh-{n}")
    assert [r.headers.get("Cookie") for r in scripted.token_requests] == [
        None,
        "node=b7",
        "node=b7",
    ]


def test_a_kept_session_keeps_what_the_site_put_in_its_session(
    scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site's adapter that wraps ``session.request`` or signs each body with its
    own ``auth``: every call under keep_alive still goes through them."""
    import hashlib

    import requests
    from allauth.socialaccount.adapter import DefaultSocialAccountAdapter

    class SignBody(requests.auth.AuthBase):
        def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
            body = request.body if isinstance(request.body, bytes) else str(request.body).encode()
            request.headers["X-Signature"] = hashlib.sha256(body).hexdigest()
            return request

    def site_session(self: Any) -> requests.Session:
        session = requests.Session()
        session.auth = SignBody()
        send_as_site = session.request

        def request(method: str, url: str, **kwargs: Any) -> requests.Response:
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "X-Site": "yes"}
            return send_as_site(method, url, **kwargs)

        session.request = request  # type: ignore[method-assign,assignment]
        return session

    monkeypatch.setattr(DefaultSocialAccountAdapter, "get_requests_session", site_session)
    endpoint = client.TokenEndpoint(
        url=scripted.token_url, client_id="c", client_secret="s", provider="p"
    )
    scripted.script(tokens())
    with client.keep_alive():
        client.refresh_token_grant(endpoint, "refresh-1")
        client.refresh_token_grant(endpoint, "refresh-2")
    first, second = scripted.token_requests
    assert first.headers["X-Site"] == second.headers["X-Site"] == "yes"
    assert first.headers["X-Signature"] != second.headers["X-Signature"]
    assert [r.form["refresh_token"] for r in (first, second)] == ["refresh-1", "refresh-2"]
