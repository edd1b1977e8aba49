"""The engine against a scripted token endpoint (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import datetime
from typing import Any

import jwt
import pytest
from allauth.socialaccount.models import SocialApp, SocialToken
from django.contrib.auth.models import AnonymousUser
from django.utils import timezone

from django_token_rotation import (
    ProviderNotRefreshable,
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    get_access_token,
    refresh,
    rotation,
    signals,
)
from django_token_rotation.models import TokenState
from tests.helpers import SECRETS, MakeToken, stored
from tests.scripted_server import Reply, ScriptedServer, oauth_error, tokens

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("hidden_secrets")]


@pytest.fixture
def received_signals(django_capture_on_commit_callbacks: Any) -> Any:
    """Signals received. They are sent on commit: tests run the code under
    ``django_capture_on_commit_callbacks(execute=True)``, as a real commit would."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def on_refreshed(sender: Any, **kwargs: Any) -> None:
        seen.append(("refreshed", kwargs))

    def on_failed(sender: Any, **kwargs: Any) -> None:
        seen.append(("failed", kwargs))

    signals.token_refreshed.connect(on_refreshed)
    signals.token_refresh_failed.connect(on_failed)
    yield seen
    signals.token_refreshed.disconnect(on_refreshed)
    signals.token_refresh_failed.disconnect(on_failed)


def state_of(token: SocialToken) -> TokenState:
    return TokenState.objects.get(token_id=token.pk)


# -- the happy path -----------------------------------------------------------


def test_fresh_token_is_returned_without_calling_the_provider(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    make_token(expires_in=3600)
    assert get_access_token(user, "fake") == "old-access"
    assert scripted.token_requests == []


def test_expired_token_is_refreshed_and_rotated(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    received_signals: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    token = make_token(expires_in=-10)
    before = timezone.now()

    with django_capture_on_commit_callbacks(execute=True):
        assert get_access_token(user, "fake") == "new-access"

    [request] = scripted.token_requests
    assert request.method == "POST"
    assert request.form == {
        "grant_type": "refresh_token",
        "refresh_token": "old-refresh",
        "client_id": "fake-client",
        "client_secret": "fake-secret",
    }
    assert "Authorization" not in request.headers
    token = stored(token)
    assert (token.token, token.token_secret) == ("new-access", "new-refresh")
    assert token.expires_at is not None
    assert before + datetime.timedelta(seconds=3590) < token.expires_at
    assert token.expires_at < timezone.now() + datetime.timedelta(seconds=3610)
    state = state_of(token)
    assert state.refresh_count == 1
    assert state.last_refreshed_at is not None
    assert state.consecutive_failures == 0
    assert [(name, kw["rotated"], kw["provider"]) for name, kw in received_signals] == [
        ("refreshed", True, "fake")
    ]


def test_old_refresh_token_is_kept_when_none_comes_back(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    received_signals: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    token = make_token()
    scripted.script(tokens(refresh=None))
    with django_capture_on_commit_callbacks(execute=True):
        assert get_access_token(user, "fake") == "new-access"
    token = stored(token)
    assert (token.token, token.token_secret) == ("new-access", "old-refresh")
    assert received_signals[0][1]["rotated"] is False


@pytest.mark.parametrize(("expires_in", "due"), [(59, True), (61, False)])
def test_refresh_starts_within_the_leeway(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    expires_in: int,
    due: bool,
) -> None:
    make_token(expires_in=expires_in)
    expected = "new-access" if due else "old-access"
    assert get_access_token(user, "fake") == expected
    assert len(scripted.token_requests) == (1 if due else 0)


def test_leeway_is_a_setting(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    settings: Any,
) -> None:
    settings.TOKEN_ROTATION_LEEWAY = 600
    make_token(expires_in=300)
    assert get_access_token(user, "fake") == "new-access"


def test_basic_client_authentication(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    settings: Any,
) -> None:
    settings.FAKE_PROVIDER_BASIC_AUTH = True
    make_token()
    get_access_token(user, "fake")
    [request] = scripted.token_requests
    assert request.headers["Authorization"].startswith("Basic ")
    assert "client_secret" not in request.form
    assert "client_id" not in request.form


def test_public_client_sends_its_id_and_no_secret(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    settings: Any,
) -> None:
    settings.FAKE_PROVIDER_BASIC_AUTH = True  # ignored: there is no secret to send
    fake_app.secret = ""
    fake_app.save()
    make_token()
    get_access_token(user, "fake")
    [request] = scripted.token_requests
    assert request.form["client_id"] == "fake-client"
    assert "client_secret" not in request.form
    assert "Authorization" not in request.headers


def test_app_from_settings_with_null_app_on_the_token(
    make_token: MakeToken, scripted: ScriptedServer, user: Any, settings: Any
) -> None:
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    settings.SOCIALACCOUNT_PROVIDERS = {
        "fake": {"APP": {"client_id": "settings-client", "secret": "settings-secret"}}
    }
    token = make_token(app=None)
    assert get_access_token(user, "fake") == "new-access"
    assert scripted.token_requests[0].form["client_id"] == "settings-client"
    assert stored(token).app is None


def test_duplicate_rows_of_settings_apps_pick_the_newest(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    older = make_token(access="stale", expires_in=100, uid="same-1")
    newer = make_token(access="old-access", expires_in=3000, uid="same-2")
    assert get_access_token(user, "fake") == "old-access"
    assert older.pk != newer.pk


def test_refresh_expires_in_is_recorded(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    token = make_token()
    scripted.script(tokens(refresh_expires_in=1800))
    get_access_token(user, "fake")
    state = state_of(token)
    assert state.refresh_expires_at is not None
    delta = state.refresh_expires_at - timezone.now()
    assert datetime.timedelta(seconds=1790) < delta <= datetime.timedelta(seconds=1800)


# -- expiry derivation ---------------------------------------------------------


def make_jwt(exp: datetime.datetime) -> str:
    return jwt.encode({"exp": int(exp.timestamp()), "sub": "x"}, "k" * 32, algorithm="HS256")


def test_expiry_from_the_jwt_when_no_expires_in(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    exp = timezone.now().replace(microsecond=0) + datetime.timedelta(minutes=20)
    access = make_jwt(exp)
    token = make_token()
    scripted.script(tokens(access=access, expires_in=None))
    assert get_access_token(user, "fake") == access
    assert stored(token).expires_at == exp


def test_stored_token_without_expiry_uses_its_jwt_exp(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    make_token(access=make_jwt(timezone.now() - datetime.timedelta(seconds=5)), expires_in=None)
    assert get_access_token(user, "fake") == "new-access"


def test_default_lifetime_when_nothing_else_is_known(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    settings: Any,
) -> None:
    token = make_token()
    scripted.script(tokens(expires_in=None))
    settings.TOKEN_ROTATION_DEFAULT_LIFETIME = 900
    get_access_token(user, "fake")
    expires_at = stored(token).expires_at
    assert expires_at is not None
    assert abs((expires_at - timezone.now()).total_seconds() - 900) < 5


def test_without_any_expiry_tokens_are_never_refreshed_proactively(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    make_token(expires_in=None)
    assert get_access_token(user, "fake") == "old-access"
    assert scripted.token_requests == []


def test_default_lifetime_counts_from_the_sign_in_for_stored_tokens(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    settings: Any,
) -> None:
    from allauth.socialaccount.models import SocialAccount

    settings.TOKEN_ROTATION_DEFAULT_LIFETIME = 120
    token = make_token(expires_in=None)
    assert get_access_token(user, "fake") == "old-access"  # signed in now: 120 s left
    # allauth stamps the account's last_login when it stores the sign-in's token.
    SocialAccount.objects.filter(pk=token.account_id).update(
        last_login=timezone.now() - datetime.timedelta(seconds=100)
    )
    assert get_access_token(user, "fake") == "new-access"


@pytest.mark.parametrize("value", ["3600", 3600.0])
def test_integral_expires_in_strings_are_accepted(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    value: Any,
) -> None:
    token = make_token()
    scripted.script(tokens(expires_in=value))
    get_access_token(user, "fake")
    expires_at = stored(token).expires_at
    assert expires_at is not None
    assert expires_at > timezone.now() + datetime.timedelta(seconds=3500)


@pytest.mark.parametrize("value", ["soon", -5, 0, 10**30, "1e9", True, [3600]])
def test_unusable_expires_in_is_ignored_not_fatal(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    value: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The provider has already rotated the refresh token: keep the new tokens.
    token = make_token()
    scripted.script(tokens(expires_in=value))
    assert get_access_token(user, "fake") == "new-access"
    token = stored(token)
    assert token.token_secret == "new-refresh"
    assert token.expires_at is None
    assert "unusable 'expires_in'" in caplog.text


# -- transient failures ----------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Reply(500, "<html>oops</html>"), "server_error"),
        (Reply(502, b""), "server_error"),
        (oauth_error("temporarily_unavailable"), "temporarily_unavailable"),
        (Reply(429, b""), "rate_limited"),
        (
            Reply(200, "<html>hello</html>", headers={"Content-Type": "text/html"}),
            "malformed_response",
        ),
        (Reply(200, [1, 2, 3]), "malformed_response"),
        (Reply(200, b'{"access_token": "new-acc'), "malformed_response"),
        (Reply(200, {"token_type": "Bearer"}), "malformed_response"),
        (Reply(200, {"access_token": 12345}), "malformed_response"),
        (Reply(200, {"access_token": ""}), "malformed_response"),
        (Reply(200, {"access_token": "new-access", "refresh_token": ["x"]}), "malformed_response"),
        (Reply(200, {"access_token": {"nested": "junk"}}), "malformed_response"),
        (
            Reply(302, b"", headers={"Location": "http://127.0.0.1:9/elsewhere"}),
            "unexpected_response",
        ),
        # HTTP 4xx without an OAuth error we know: the next attempt confirms it.
        (Reply(404, "<html>not found</html>"), "refusal_unconfirmed"),
        (Reply(403, {"error": "<script>"}), "refusal_unconfirmed"),
    ],
)
def test_transient_failures_keep_everything_and_back_off(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    reply: Reply,
    code: str,
    received_signals: list[Any],
    django_capture_on_commit_callbacks: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = make_token(expires_in=-1)
    scripted.script(reply)
    # Django's clock stands still: an expired token's back-off (0.5 s) must not
    # pass between the two calls on a loaded machine.
    frozen = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: frozen)

    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(TokenRefreshUnavailable) as excinfo,
    ):
        get_access_token(user, "fake")

    assert excinfo.value.code == code
    assert not excinfo.value.permanent
    token = stored(token)
    assert (token.token, token.token_secret) == ("old-access", "old-refresh")
    state = state_of(token)
    assert state.consecutive_failures == 1
    assert state.last_error == code
    assert not state.needs_reauth
    assert state.next_retry_at is not None and state.next_retry_at > timezone.now()
    assert state.lease_id == ""  # released
    assert [(n, kw["code"], kw["permanent"]) for n, kw in received_signals] == [
        ("failed", code, False)
    ]
    # During the back-off the provider is not called again.
    with pytest.raises(TokenRefreshUnavailable) as again:
        get_access_token(user, "fake")
    assert again.value.code == "backoff"
    assert len(scripted.token_requests) == 1


def test_transient_failure_returns_the_still_valid_token(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    make_token(expires_in=30)  # due (leeway 60 s) but still valid
    scripted.script(Reply(503, b""))
    assert get_access_token(user, "fake") == "old-access"
    assert get_access_token(user, "fake") == "old-access"
    assert len(scripted.token_requests) == 1


def test_retry_after_is_honoured_while_the_token_is_valid(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    token = make_token(expires_in=30)  # due (leeway 60 s) but still valid
    scripted.script(Reply(503, b"", headers={"Retry-After": "120"}))
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        refresh(token)
    retry_at = state_of(token).next_retry_at
    assert retry_at is not None
    assert retry_at >= timezone.now() + datetime.timedelta(seconds=115)
    assert excinfo.value.retry_at == retry_at


def test_retry_after_is_capped_once_the_token_has_expired(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any, settings: Any
) -> None:
    settings.TOKEN_ROTATION_RETRY_AFTER_MAX = 20
    token = make_token()
    scripted.script(Reply(503, b"", headers={"Retry-After": "120"}))
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        get_access_token(user, "fake")
    retry_at = state_of(token).next_retry_at
    assert retry_at is not None
    assert timezone.now() + datetime.timedelta(seconds=15) <= retry_at
    assert retry_at <= timezone.now() + datetime.timedelta(seconds=20)
    assert excinfo.value.retry_at == retry_at


def _delays(token: SocialToken, attempts: int) -> list[float]:
    delays = []
    for _ in range(attempts):
        TokenState.objects.filter(token_id=token.pk).update(next_retry_at=None)
        with pytest.raises(TokenRefreshUnavailable):
            refresh(token)
        state = state_of(token)
        assert state.next_retry_at is not None and state.last_error_at is not None
        delays.append((state.next_retry_at - state.last_error_at).total_seconds())
    return delays


def test_backoff_doubles_and_is_capped_while_the_token_is_valid(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    settings: Any,
) -> None:
    settings.TOKEN_ROTATION_RETRY_BACKOFF = 10
    settings.TOKEN_ROTATION_RETRY_BACKOFF_MAX = 35
    token = make_token(expires_in=30)
    scripted.script(Reply(500, b""))
    assert [round(delay) for delay in _delays(token, 4)] == [10, 20, 35, 35]


def test_retries_are_quick_and_jittered_once_the_token_has_expired(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    settings: Any,
) -> None:
    settings.TOKEN_ROTATION_EXPIRED_BACKOFF_MAX = 4
    token = make_token()
    scripted.script(Reply(500, b""))
    delays = _delays(token, 6)
    steps = [0.5, 1, 2, 4, 4, 4]
    assert all(
        step / 2 - 0.01 <= delay <= step + 0.01 for delay, step in zip(delays, steps, strict=True)
    )
    assert len({round(delay, 3) for delay in delays[3:]}) > 1  # jittered


def test_success_after_backoff_clears_the_failure(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    token = make_token()
    scripted.script(Reply(500, b""), tokens())
    with pytest.raises(TokenRefreshUnavailable):
        get_access_token(user, "fake")
    TokenState.objects.filter(token_id=token.pk).update(next_retry_at=timezone.now())
    assert get_access_token(user, "fake") == "new-access"
    state = state_of(token)
    assert (state.consecutive_failures, state.last_error, state.next_retry_at) == (0, "", None)


def test_timeout(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    settings: Any,
) -> None:
    settings.TOKEN_ROTATION_TIMEOUT = 0.3
    make_token()
    scripted.script(Reply(delay=2.0, body={"access_token": "new-access"}))
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "timeout"


def test_slow_drip_body_is_cut_off(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    settings: Any,
) -> None:
    settings.TOKEN_ROTATION_TIMEOUT = 0.3
    token = make_token()
    scripted.script(Reply(200, {"access_token": "new-access", "pad": "x" * 40}, drip=0.05))
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "timeout"
    assert stored(token).token == "old-access"


def test_connection_refused(
    fake_app: SocialApp, make_token: MakeToken, user: Any, settings: Any
) -> None:
    settings.FAKE_PROVIDER_TOKEN_URL = "http://127.0.0.1:9/token"
    make_token()
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "connection_error"


# -- permanent failures ------------------------------------------------------------


@pytest.mark.parametrize(
    "code", ["invalid_grant", "invalid_client", "unauthorized_client", "invalid_scope"]
)
def test_refused_refresh_means_sign_in_again(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    code: str,
    received_signals: list[Any],
    django_capture_on_commit_callbacks: Any,
) -> None:
    token = make_token()
    scripted.script(oauth_error(code, status=401 if code == "invalid_client" else 400))

    with (
        django_capture_on_commit_callbacks(execute=True),
        pytest.raises(ReauthenticationRequired) as excinfo,
    ):
        get_access_token(user, "fake")

    assert excinfo.value.code == code
    assert excinfo.value.permanent
    token = stored(token)
    assert (token.token, token.token_secret) == ("old-access", "old-refresh")
    state = state_of(token)
    assert state.needs_reauth and state.last_error == code
    assert [(n, kw["code"], kw["permanent"]) for n, kw in received_signals] == [
        ("failed", code, True)
    ]
    # Known dead: the provider is not asked again with the same refresh token.
    with pytest.raises(ReauthenticationRequired):
        get_access_token(user, "fake")
    assert len(scripted.token_requests) == 1


def test_signing_in_again_lifts_the_failure(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    token = make_token()
    scripted.script(oauth_error("invalid_grant"), tokens())
    with pytest.raises(ReauthenticationRequired):
        get_access_token(user, "fake")
    # allauth stores the tokens of a new sign-in on the same row.
    SocialToken.objects.filter(pk=token.pk).update(
        token="relogin-access",
        token_secret="relogin-refresh",
        expires_at=timezone.now() - datetime.timedelta(seconds=1),
    )
    assert get_access_token(user, "fake") == "new-access"
    assert scripted.token_requests[-1].form["refresh_token"] == "relogin-refresh"
    assert not state_of(token).needs_reauth


# The scripted server's hook writes from its own thread (its own connection):
# the data must be committed.
@pytest.mark.django_db(transaction=True)
def test_invalid_grant_for_a_token_rotated_meanwhile_adopts_the_stored_one(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
) -> None:
    token = make_token()

    def someone_else_rotates(_received: Any) -> None:
        SocialToken.objects.filter(pk=token.pk).update(
            token="their-access",
            token_secret="their-refresh",
            expires_at=timezone.now() + datetime.timedelta(hours=1),
        )

    scripted.on_request = someone_else_rotates
    scripted.script(oauth_error("invalid_grant"))
    assert get_access_token(user, "fake") == "their-access"
    assert not state_of(token).needs_reauth


@pytest.mark.django_db(transaction=True)
def test_an_older_answer_never_overwrites_a_newer_token(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = make_token()

    def someone_else_rotates(_received: Any) -> None:
        SocialToken.objects.filter(pk=token.pk).update(
            token="their-access",
            token_secret="their-refresh",
            expires_at=timezone.now() + datetime.timedelta(hours=1),
        )

    scripted.on_request = someone_else_rotates
    assert get_access_token(user, "fake") == "their-access"
    token = stored(token)
    assert (token.token, token.token_secret) == ("their-access", "their-refresh")
    assert "replaced while our refresh was in flight" in caplog.text


def test_no_refresh_token(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    make_token(refresh="", expires_in=-1)
    with pytest.raises(ReauthenticationRequired) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "no_refresh_token"
    assert scripted.token_requests == []


def test_no_token_at_all(db: None, user: Any) -> None:
    with pytest.raises(ReauthenticationRequired) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "no_token"
    with pytest.raises(ReauthenticationRequired):
        get_access_token(AnonymousUser(), "fake")


# -- force, explicit refresh ----------------------------------------------------------


def test_refresh_without_force_leaves_a_fresh_token_alone(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    token = make_token(expires_in=3600)
    assert refresh(token).token == "old-access"
    assert scripted.token_requests == []


def test_forced_refresh(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    token = make_token(expires_in=3600)
    result = refresh(token, force=True)
    assert result is token
    assert (token.token, token.token_secret) == ("new-access", "new-refresh")
    assert len(scripted.token_requests) == 1


# -- providers this app leaves alone ----------------------------------------------------


def test_oauth1_tokens_are_left_alone(
    make_token: MakeToken,
    user: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Logged once per provider and process: forget what earlier tests logged.
    monkeypatch.setattr(rotation, "_left_alone", set())
    SocialApp.objects.create(provider="twitter", name="T", client_id="k", secret="s")
    make_token(provider="twitter", expires_in=30)
    # Due, but not refreshable: the still-valid token is returned...
    assert get_access_token(user, "twitter") == "old-access"
    assert "Leaving tokens of provider twitter alone" in caplog.text
    # ...and once expired, the user must sign in again.
    SocialToken.objects.update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    with pytest.raises(ProviderNotRefreshable):
        get_access_token(user, "twitter")


def test_apple_without_its_signing_key_is_left_alone(make_token: MakeToken, user: Any) -> None:
    # Apple refreshes with allauth's generated client secret (tests/test_provider_conformance.py);
    # without the app's certificate_key that is a configuration error.
    SocialApp.objects.create(provider="apple", name="A", client_id="k", secret="s")
    make_token(provider="apple")
    with pytest.raises(ProviderNotRefreshable) as excinfo:
        get_access_token(user, "apple")
    assert excinfo.value.code == "provider_not_configured"


def test_missing_app_is_a_configuration_error(make_token: MakeToken, user: Any) -> None:
    make_token(provider="fake")
    with pytest.raises(ProviderNotRefreshable) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "provider_not_configured"


# -- the lease ---------------------------------------------------------------------------


def test_a_live_lease_makes_others_wait_then_give_up(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    settings: Any,
) -> None:
    settings.TOKEN_ROTATION_WAIT = 0.3
    token = make_token(expires_in=-1)
    TokenState.objects.create(
        token=token,
        lease_id="someone",
        lease_expires_at=timezone.now() + datetime.timedelta(seconds=30),
    )
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "refresh_in_progress"
    assert scripted.token_requests == []


def test_an_expired_lease_is_taken_over(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    token = make_token(expires_in=-1)
    TokenState.objects.create(
        token=token,
        lease_id="dead-worker",
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1),
    )
    assert get_access_token(user, "fake") == "new-access"
    assert state_of(token).lease_id == ""


# -- no secrets in messages and reprs -------------------------------------------------------


def test_exceptions_and_reprs_carry_no_token(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    token = make_token()
    scripted.script(oauth_error("invalid_grant"))
    with pytest.raises(ReauthenticationRequired) as excinfo:
        get_access_token(user, "fake")
    from django_token_rotation import providers

    texts = [str(excinfo.value), repr(excinfo.value), repr(state_of(token))]
    texts.append(repr(providers.resolve(stored(token))))
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_short_lived_tokens_do_not_make_every_call_a_refresh(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    # 30-second tokens with the default 60-second leeway: the leeway shrinks
    # to half the lifetime instead of declaring each new token due at once.
    make_token(expires_in=-1)
    scripted.script(tokens(expires_in=30))
    for _ in range(3):
        assert get_access_token(user, "fake") == "new-access"
    assert len(scripted.token_requests) == 1
