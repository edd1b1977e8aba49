"""ID tokens returned by a refresh are validated as OpenID Connect Core 12.2 requires."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from allauth.socialaccount.models import SocialAccount, SocialApp, SocialToken
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.cache import cache

from django_token_rotation import ReauthenticationRequired, get_access_token, idtoken
from django_token_rotation.models import TokenState, fingerprint
from tests.helpers import MakeToken
from tests.scripted_server import Reply, ScriptedServer, tokens

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("hidden_secrets")]

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks(key: Any = KEY, kid: str = "k1") -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**public, "kid": kid, "use": "sig", "alg": "RS256"}]}


def id_token(scripted: ScriptedServer, key: Any = KEY, alg: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": scripted.base_url,
        "aud": "oidc-client",
        "sub": "user-1",
        "iat": now,
        "exp": now + 300,
        "email": "alice@example.com",
        **claims,
    }
    payload = {name: value for name, value in payload.items() if value is not None}
    signing_key: Any = key if alg.startswith("RS") else "x" * 32
    return jwt.encode(payload, signing_key, algorithm=alg, headers={"kid": "k1"})


@pytest.fixture
def oidc(make_oidc_app: Any, make_token: MakeToken, scripted: ScriptedServer) -> SocialToken:
    cache.clear()
    scripted.static["/jwks"] = Reply(200, jwks())
    app: SocialApp = make_oidc_app()
    token = make_token(provider="scripted", app=app, uid="user-1")
    SocialAccount.objects.filter(pk=token.account_id).update(
        extra_data={"id_token": {"sub": "user-1", "email": "old@example.com"}}
    )
    return token


def test_valid_refreshed_id_token_updates_the_stored_claims(
    oidc: SocialToken, scripted: ScriptedServer, user: Any
) -> None:
    scripted.script(tokens(id_token=id_token(scripted)))
    assert get_access_token(user, "scripted") == "new-access"
    account = SocialAccount.objects.get(pk=oidc.account_id)
    assert account.extra_data["id_token"]["email"] == "alice@example.com"
    assert account.extra_data["id_token"]["sub"] == "user-1"


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"sub": "someone-else"}, id="other subject"),
        pytest.param({"aud": "another-client"}, id="other audience"),
        pytest.param({"iss": "https://evil.example"}, id="other issuer"),
    ],
)
def test_a_validated_mismatch_signs_out_and_keeps_the_new_refresh_token_blocked(
    oidc: SocialToken,
    scripted: ScriptedServer,
    user: Any,
    caplog: pytest.LogCaptureFixture,
    claims: dict[str, Any],
) -> None:
    scripted.script(tokens(id_token=id_token(scripted, **claims)))

    with pytest.raises(ReauthenticationRequired) as excinfo:
        get_access_token(user, "scripted")

    assert excinfo.value.code == "id_token_invalid"
    oidc.refresh_from_db()
    # The access token is not used; the issued refresh token is kept for the record...
    assert (oidc.token, oidc.token_secret) == ("old-access", "new-refresh")
    state = TokenState.objects.get()
    assert state.needs_reauth and state.last_error == "id_token_invalid"
    # ...and blocked: recorded against it, no further call until a sign-in.
    assert state.failed_fingerprint == fingerprint("new-refresh")
    with pytest.raises(ReauthenticationRequired):
        get_access_token(user, "scripted")
    assert len(scripted.token_requests) == 1
    security = [r for r in caplog.records if r.name == "django_token_rotation.security"]
    assert len(security) == 1 and security[0].levelno == logging.WARNING
    account = SocialAccount.objects.get(pk=oidc.account_id)
    assert account.extra_data["id_token"]["email"] == "old@example.com"


def test_a_mismatch_without_a_new_refresh_token_writes_nothing_and_blocks_the_old_one(
    oidc: SocialToken, scripted: ScriptedServer, user: Any
) -> None:
    """A provider that does not rotate refresh tokens answers with an ID token
    for another account: nothing of the answer is stored, and the refresh token
    sent is blocked until a sign-in."""
    scripted.script(tokens(refresh=None, id_token=id_token(scripted, sub="someone-else")))
    with pytest.raises(ReauthenticationRequired) as excinfo:
        get_access_token(user, "scripted")
    assert excinfo.value.code == "id_token_invalid"
    oidc.refresh_from_db()
    assert (oidc.token, oidc.token_secret) == ("old-access", "old-refresh")
    state = TokenState.objects.get()
    assert state.needs_reauth and state.last_error == "id_token_invalid"
    assert state.failed_fingerprint == fingerprint("old-refresh")
    with pytest.raises(ReauthenticationRequired):
        get_access_token(user, "scripted")
    assert len(scripted.token_requests) == 1
    account = SocialAccount.objects.get(pk=oidc.account_id)
    assert account.extra_data["id_token"]["email"] == "old@example.com"


def test_claims_mixed_with_userinfo_are_left_as_they_are(
    oidc: SocialToken, scripted: ScriptedServer, user: Any
) -> None:
    """Accounts stored by allauth < 65.11 mix the claims with the userinfo, with
    no ``id_token`` key: the new tokens are stored, that data is not rewritten."""
    old_layout = {"sub": "user-1", "email": "old@example.com", "name": "Alice"}
    SocialAccount.objects.filter(pk=oidc.account_id).update(extra_data=old_layout)
    scripted.script(tokens(id_token=id_token(scripted, email="new@example.com")))
    assert get_access_token(user, "scripted") == "new-access"
    oidc.refresh_from_db()
    assert (oidc.token, oidc.token_secret) == ("new-access", "new-refresh")
    assert SocialAccount.objects.get(pk=oidc.account_id).extra_data == old_layout


@pytest.mark.parametrize(
    ("claims", "key", "alg"),
    [
        pytest.param({}, OTHER_KEY, "RS256", id="bad signature"),
        pytest.param({"exp": int(time.time()) - 3600}, KEY, "RS256", id="expired an hour ago"),
        pytest.param({"iat": int(time.time()) + 3600}, KEY, "RS256", id="issued in an hour"),
        pytest.param({}, KEY, "HS256", id="symmetric algorithm"),
        pytest.param({"sub": None}, KEY, "RS256", id="no subject"),
    ],
)
def test_an_unverifiable_id_token_keeps_the_tokens_but_not_its_claims(
    oidc: SocialToken,
    scripted: ScriptedServer,
    user: Any,
    caplog: pytest.LogCaptureFixture,
    claims: dict[str, Any],
    key: Any,
    alg: str,
) -> None:
    scripted.script(tokens(id_token=id_token(scripted, key=key, alg=alg, **claims)))

    assert get_access_token(user, "scripted") == "new-access"

    oidc.refresh_from_db()
    assert (oidc.token, oidc.token_secret) == ("new-access", "new-refresh")
    state = TokenState.objects.get()
    assert not state.needs_reauth and state.last_error == ""
    security = [r for r in caplog.records if r.name == "django_token_rotation.security"]
    assert len(security) == 1 and "could not be verified" in security[0].getMessage()
    account = SocialAccount.objects.get(pk=oidc.account_id)
    assert account.extra_data["id_token"]["email"] == "old@example.com"


@pytest.mark.parametrize("skew", [120, -120, 299])
def test_a_provider_clock_off_by_minutes_signs_no_one_out(
    oidc: SocialToken, scripted: ScriptedServer, user: Any, skew: int
) -> None:
    # The provider's clock runs ``skew`` seconds ahead: ``iat`` is in our future.
    now = int(time.time()) + skew
    scripted.script(tokens(id_token=id_token(scripted, iat=now, exp=now + 300)))
    assert get_access_token(user, "scripted") == "new-access"
    account = SocialAccount.objects.get(pk=oidc.account_id)
    assert account.extra_data["id_token"]["email"] == "alice@example.com"  # verified


def test_the_clock_skew_tolerated_is_a_setting(
    oidc: SocialToken, scripted: ScriptedServer, user: Any, settings: Any
) -> None:
    settings.TOKEN_ROTATION_ID_TOKEN_LEEWAY = 10
    now = int(time.time()) + 120
    scripted.script(tokens(id_token=id_token(scripted, iat=now, exp=now + 300)))
    assert get_access_token(user, "scripted") == "new-access"  # kept...
    account = SocialAccount.objects.get(pk=oidc.account_id)
    assert account.extra_data["id_token"]["email"] == "old@example.com"  # ...not verified


@pytest.mark.parametrize("value", [-1, 601, "300", None, True])
def test_a_bad_clock_skew_setting_is_reported_by_the_checks(settings: Any, value: Any) -> None:
    from django_token_rotation.checks import check_setup

    settings.TOKEN_ROTATION_ID_TOKEN_LEEWAY = value
    messages = [m for m in check_setup() if "ID_TOKEN_LEEWAY" in m.msg]
    assert [m.id for m in messages] == ["token_rotation.E005"]


def _keys_unreachable(oidc: SocialToken, scripted: ScriptedServer) -> None:
    scripted.static.pop("/jwks")
    SocialApp.objects.filter(pk=oidc.app_id).update(
        settings={
            "server_url": scripted.base_url,
            "openid_configuration_overrides": {"jwks_uri": "http://127.0.0.1:9/jwks"},
        }
    )


def _no_usable_key(oidc: SocialToken, scripted: ScriptedServer) -> None:
    scripted.static["/jwks"] = Reply(200, {"keys": [{"kty": "no-such-type", "kid": "k1"}]})


@pytest.mark.parametrize("break_the_keys", [_keys_unreachable, _no_usable_key])
def test_keys_that_cannot_be_had_keep_the_new_tokens_but_not_the_claims(
    oidc: SocialToken,
    scripted: ScriptedServer,
    user: Any,
    caplog: pytest.LogCaptureFixture,
    break_the_keys: Callable[[SocialToken, ScriptedServer], None],
) -> None:
    break_the_keys(oidc, scripted)
    scripted.script(tokens(id_token=id_token(scripted)))
    assert get_access_token(user, "scripted") == "new-access"
    oidc.refresh_from_db()
    assert oidc.token_secret == "new-refresh"
    account = SocialAccount.objects.get(pk=oidc.account_id)
    assert account.extra_data["id_token"]["email"] == "old@example.com"
    assert "was not checked (jwks_unavailable)" in caplog.text


def test_providers_without_discovery_skip_the_check(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    make_token()
    scripted.script(tokens(id_token="not-even-a-jwt"))
    assert get_access_token(user, "fake") == "new-access"


def test_a_dripping_jwks_endpoint_is_cut_at_the_refresh_deadline(
    oidc: SocialToken, scripted: ScriptedServer, user: Any, settings: Any
) -> None:
    """The keys come through the same transport as the token call: the whole answer
    must arrive within the refresh's deadline, not each byte within the timeout."""
    settings.TOKEN_ROTATION_TIMEOUT = 1
    # ~1.5 kB at one byte per 20 ms: 30 s if each read only had to beat the timeout.
    scripted.static["/jwks"] = Reply(200, jwks(), drip=0.02)
    scripted.script(tokens(id_token=id_token(scripted)))
    started = time.monotonic()
    assert get_access_token(user, "scripted") == "new-access"
    took = time.monotonic() - started
    assert took < 2.5, took
    oidc.refresh_from_db()
    assert oidc.token_secret == "new-refresh"  # kept: the keys were unavailable, not wrong


def test_rotated_signing_keys_are_fetched_again_but_not_for_every_unknown_kid(
    oidc: SocialToken, scripted: ScriptedServer, user: Any, settings: Any
) -> None:
    def jwks_fetches() -> int:
        return sum(1 for r in scripted.received if r.path == "/jwks")

    scripted.script(tokens(id_token=id_token(scripted)))
    assert get_access_token(user, "scripted") == "new-access"
    assert jwks_fetches() == 1

    # The provider rotates its keys; the next ID token names the new one.
    scripted.static["/jwks"] = Reply(200, jwks(OTHER_KEY, kid="k2"))
    now = int(time.time())
    claims = {"iss": scripted.base_url, "aud": "oidc-client", "sub": "user-1"}
    rotated = jwt.encode(
        {**claims, "iat": now, "exp": now + 300}, OTHER_KEY, "RS256", headers={"kid": "k2"}
    )
    scripted.script(tokens(access="newer-access", refresh="newer-refresh", id_token=rotated))
    SocialToken.objects.filter(pk=oidc.pk).update(expires_at=oidc.expires_at)
    assert get_access_token(user, "scripted") == "newer-access"
    assert jwks_fetches() == 1  # (script() starts a new record)

    # A kid nobody published (forged, or a provider's mistake): rejected, and the keys
    # were fetched again less than a minute ago, so no third fetch.
    forged = jwt.encode(
        {**claims, "iat": now, "exp": now + 300}, KEY, "RS256", headers={"kid": "unknown"}
    )
    scripted.script(tokens(access="x-access", refresh="x-refresh", id_token=forged))
    SocialToken.objects.filter(pk=oidc.pk).update(expires_at=oidc.expires_at)
    # Not a mismatch anyone validated: transient for the claims, the tokens are kept.
    assert get_access_token(user, "scripted") == "x-access"
    assert jwks_fetches() == 0
    oidc.refresh_from_db()
    assert oidc.token_secret == "x-refresh"
    assert not TokenState.objects.get().needs_reauth


def test_an_unknown_kid_is_looked_up_once_more_then_left_unverified_not_refused(
    oidc: SocialToken, scripted: ScriptedServer, user: Any
) -> None:
    """A ``kid`` the provider does not publish, even after fetching its keys once
    more: temporary, not a validated mismatch. The new tokens are stored, the
    user stays signed in, and only the account's claims are left as they were."""
    now = int(time.time())
    unknown = jwt.encode(
        {
            "iss": scripted.base_url,
            "aud": "oidc-client",
            "sub": "user-1",
            "iat": now,
            "exp": now + 300,
        },
        KEY,
        "RS256",
        headers={"kid": "k9"},
    )
    scripted.script(tokens(id_token=unknown))
    assert get_access_token(user, "scripted") == "new-access"
    # The keys, then once more for the kid they did not have; no third fetch.
    assert [r.path for r in scripted.received].count("/jwks") == 2
    oidc.refresh_from_db()
    assert oidc.token_secret == "new-refresh"
    assert not TokenState.objects.get().needs_reauth
    account = SocialAccount.objects.get(pk=oidc.account_id)
    assert account.extra_data["id_token"]["email"] == "old@example.com"


def test_an_id_token_without_a_kid_is_checked_with_the_only_key(
    oidc: SocialToken, scripted: ScriptedServer, user: Any
) -> None:
    now = int(time.time())
    claims = {"iss": scripted.base_url, "aud": "oidc-client", "sub": "user-1"}
    payload = {**claims, "iat": now, "exp": now + 300, "email": "new@example.com"}
    unnamed = jwt.encode(payload, KEY, algorithm="RS256")
    assert "kid" not in jwt.get_unverified_header(unnamed)
    scripted.script(tokens(id_token=unnamed))
    assert get_access_token(user, "scripted") == "new-access"
    account = SocialAccount.objects.get(pk=oidc.account_id)
    assert account.extra_data["id_token"]["email"] == "new@example.com"  # verified


def test_without_stored_claims_the_subject_is_the_accounts_uid(
    oidc: SocialToken, scripted: ScriptedServer, user: Any
) -> None:
    SocialAccount.objects.filter(pk=oidc.account_id).update(extra_data={})
    scripted.script(tokens(id_token=id_token(scripted, sub="someone-else")))
    with pytest.raises(ReauthenticationRequired) as excinfo:
        get_access_token(user, "scripted")
    assert excinfo.value.code == "id_token_invalid"


def test_expected_subject_of_each_account_shape(oidc: SocialToken) -> None:
    token = SocialToken.objects.select_related("account", "app").get(pk=oidc.pk)
    assert idtoken.expected_subject(token) == "user-1"  # the stored claims
    token.account.extra_data = {"id_token": "not claims"}
    token.account.uid = "uid-7"
    assert idtoken.expected_subject(token) == "uid-7"  # uid is the sub by default
    assert token.app is not None
    token.app.settings["uid_field"] = "email"
    assert idtoken.expected_subject(token) is None  # uid is not the sub: unknown
    token.app = None
    assert idtoken.expected_subject(token) == "uid-7"
