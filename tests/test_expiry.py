"""Never lose an expiry: answers without ``expires_in``, tokens stored without one.

An answer without ``expires_in`` (and an opaque access token) keeps the
lifetime of the token it replaces, else the provider's documented default
(its ``providers.registry`` entry), else ``TOKEN_ROTATION_DEFAULT_LIFETIME``; and tokens
allauth stored at sign-in without an expiry (no ``TokenState``) become due
on every path, the middleware's included.
"""

from __future__ import annotations

import datetime
from io import StringIO
from typing import Any

import jwt
import pytest
from allauth.socialaccount.models import SocialAccount, SocialApp, SocialToken
from django.conf import settings as django_settings
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from django_token_rotation import expiry, get_access_token, refresh
from django_token_rotation.models import TokenState
from tests.helpers import MakeToken
from tests.scripted_server import ScriptedServer, tokens

pytestmark = pytest.mark.django_db


def signed_in_ago(token: SocialToken, seconds: float) -> None:
    """allauth stamps ``SocialAccount.last_login`` when it stores a sign-in's token."""
    when = timezone.now() - datetime.timedelta(seconds=seconds)
    SocialAccount.objects.filter(pk=token.account_id).update(last_login=when)
    token.account.last_login = when


def lifetime_of(token: SocialToken) -> float:
    token.refresh_from_db()
    assert token.expires_at is not None
    seconds: float = (token.expires_at - timezone.now()).total_seconds()
    return seconds


# -- carried forward -------------------------------------------------------------


def test_an_answer_without_expires_in_keeps_the_sign_ins_lifetime(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    # Twitch: the sign-in's answer said 3600 s, the refresh's says nothing.
    token = make_token(expires_in=-10)
    signed_in_ago(token, 3610)
    scripted.script(tokens(expires_in=None))
    assert get_access_token(user, "fake") == "new-access"
    assert 3590 < lifetime_of(token) <= 3600


def test_the_lifetime_of_our_own_last_refresh_is_carried(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    token = make_token(expires_in=-10)
    signed_in_ago(token, 7 * 24 * 3600)
    scripted.script(tokens(expires_in=1800, refresh="r2"), tokens(expires_in=None, refresh="r3"))
    get_access_token(user, "fake")
    refresh(token, force=True)
    assert 1790 < lifetime_of(token) <= 1800
    refresh(token, force=True)  # carried again: it does not decay
    assert 1790 < lifetime_of(token) <= 1800


def test_a_new_sign_in_does_not_stretch_the_carried_lifetime(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    # Refreshed a week ago, then signed in again now (allauth: expires_at = now + 3600).
    token = make_token(expires_in=3600)
    TokenState.objects.create(
        token=token, last_refreshed_at=timezone.now() - datetime.timedelta(days=7)
    )
    scripted.script(tokens(expires_in=None))
    refresh(token, force=True)
    # The inferred lifetime is expires_at - last_login: make_token stores the account (its
    # last_login) a database round trip before it computes expires_at, so it can read 3600.001.
    assert 3590 < lifetime_of(token) <= 3601


def test_an_implausibly_short_inferred_lifetime_is_not_carried(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any, settings: Any
) -> None:
    # The account was saved long after the sign-in: 10 s is not a lifetime.
    settings.TOKEN_ROTATION_DEFAULT_LIFETIME = 900
    token = make_token(expires_in=10)
    scripted.script(tokens(expires_in=None))
    refresh(token, force=True)
    assert 890 < lifetime_of(token) <= 900


def test_expires_in_and_a_jwt_exp_still_win_over_the_carried_lifetime(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    token = make_token(expires_in=-10)
    signed_in_ago(token, 3610)
    scripted.script(tokens(expires_in=120))
    refresh(token, force=True)
    assert 110 < lifetime_of(token) <= 120


# -- the provider's default, then the setting ---------------------------------------


def _unsaved(provider: str, *, signed_in: datetime.datetime, expires_at: Any = None) -> SocialToken:
    account = SocialAccount(provider=provider, uid="1", last_login=signed_in)
    return SocialToken(account=account, token="opaque", token_secret="r", expires_at=expires_at)


def test_salesforce_never_sends_expires_in_and_gets_its_documented_default(
    settings: Any,
) -> None:
    settings.TOKEN_ROTATION_DEFAULT_LIFETIME = 3600
    now = timezone.now()
    minutes = datetime.timedelta(minutes=1)
    # A refresh answer: the provider's default before the setting.
    assert expiry.expires_at(None, "opaque", now, provider="salesforce") == now + 15 * minutes
    assert expiry.expires_at(None, "opaque", now, provider="other") == now + 60 * minutes
    # The carried lifetime before both.
    carried = expiry.expires_at(None, "opaque", now, previous=600, provider="salesforce")
    assert carried == now + 10 * minutes
    # A token stored at sign-in without expiry: counted from the sign-in.
    token = _unsaved("salesforce", signed_in=now - datetime.timedelta(minutes=20))
    assert expiry.expiry(token) == now - datetime.timedelta(minutes=5)
    assert expiry.needs_refresh(token, now=now)


def test_without_any_default_a_token_without_expiry_is_never_due() -> None:
    now = timezone.now()
    token = _unsaved("other", signed_in=now - datetime.timedelta(days=30))
    assert expiry.expiry(token) is None
    assert not expiry.needs_refresh(token, now=now)
    assert expiry.expires_at(None, "opaque", now, provider="other") is None
    assert expiry.lifetime(token) is None


def test_lifetime_is_read_from_the_stored_expiry_and_the_later_issue_time() -> None:
    now = timezone.now()
    token = _unsaved(
        "other",
        signed_in=now - datetime.timedelta(hours=2),
        expires_at=now + datetime.timedelta(minutes=30),
    )
    assert expiry.lifetime(token) == 9000
    state = TokenState(last_refreshed_at=now - datetime.timedelta(minutes=30))
    assert expiry.lifetime(token, state) == 3600
    assert expiry.issued_at(token, state) == state.last_refreshed_at


# -- every path: the middleware and the command -------------------------------------


def test_the_middleware_refreshes_a_sign_in_token_without_expiry(
    client: Client,
    user: Any,
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    settings: Any,
) -> None:
    settings.TOKEN_ROTATION_DEFAULT_LIFETIME = 600
    token = make_token(expires_in=None)  # as allauth stores it: no TokenState
    signed_in_ago(token, 1200)
    assert not TokenState.objects.filter(token=token).exists()
    client.force_login(user)
    assert client.get("/page/").status_code == 200
    assert len(scripted.token_requests) == 1
    token.refresh_from_db()
    assert token.token == "new-access"


def test_the_middleware_leaves_a_recent_sign_in_token_alone(
    client: Client,
    user: Any,
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    settings: Any,
) -> None:
    settings.TOKEN_ROTATION_DEFAULT_LIFETIME = 600
    make_token(expires_in=None)
    client.force_login(user)
    assert client.get("/page/").status_code == 200
    assert scripted.token_requests == []


def test_refresh_tokens_renews_tokens_whose_refresh_token_is_about_to_expire(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    token = make_token(expires_in=3600)  # the access token is fresh
    idle_until = timezone.now() + datetime.timedelta(minutes=10)
    TokenState.objects.create(token=token, refresh_expires_at=idle_until)
    scripted.script(tokens(refresh_token_expires_in=30 * 24 * 3600))

    call_command("refresh_tokens", "--refresh-within", "60", stdout=StringIO())
    assert scripted.token_requests == []
    call_command("refresh_tokens", "--refresh-within", "3600", stdout=StringIO())
    assert len(scripted.token_requests) == 1
    state = TokenState.objects.get(token=token)
    assert state.refresh_expires_at is not None
    assert state.refresh_expires_at > timezone.now() + datetime.timedelta(days=29)


def test_the_admin_explains_refresh_token_expiry() -> None:
    field = TokenState._meta.get_field("refresh_expires_at")
    assert "refresh_token_expires_in" in str(field.help_text)
    assert "--refresh-within" in str(field.help_text)


def test_issue_time_without_an_account_is_when_the_token_was_first_seen() -> None:
    token = SocialToken(token="opaque", token_secret="r")
    assert expiry.issued_at(token) is None
    state = TokenState(created_at=timezone.now())
    assert expiry.issued_at(token, state) == state.created_at


# -- a JWT's exp is only a hint: junk in it means "unknown", never an error ------------


def _unsigned(claims: Any) -> str:
    return jwt.encode(claims, "k" * 32, algorithm="HS256")


@pytest.mark.parametrize(
    "access_token",
    [
        pytest.param("opaque-token", id="not a JWT"),
        pytest.param("a.b.c", id="three parts, not JSON"),
        pytest.param(_unsigned({"sub": "x"}), id="no exp"),
        pytest.param(_unsigned({"exp": "tomorrow"}), id="exp a string"),
        pytest.param(_unsigned({"exp": True}), id="exp a boolean"),
        pytest.param(_unsigned({"exp": 10**20}), id="exp beyond any date"),
    ],
)
def test_jwt_expiry_of_junk_is_unknown(access_token: str) -> None:
    assert expiry.jwt_expiry(access_token) is None


def test_jwt_expiry_is_the_exp_claim_unverified() -> None:
    when = datetime.datetime(2027, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    expected = when if django_settings.USE_TZ else timezone.make_naive(when)
    assert expiry.jwt_expiry(_unsigned({"exp": int(when.timestamp())})) == expected


@pytest.mark.django_db
def test_a_token_without_expires_at_expires_at_its_jwt_exp(make_token: MakeToken) -> None:
    when = timezone.now().replace(microsecond=0) + datetime.timedelta(minutes=10)
    token = make_token(access=_unsigned({"exp": int(when.timestamp())}), expires_in=None)
    assert expiry.expiry(token) == when


def test_backoff_doubles_up_to_its_cap_while_the_token_works(settings: Any) -> None:
    settings.TOKEN_ROTATION_RETRY_BACKOFF = 5
    assert [expiry.backoff(n) for n in (0, 1, 2, 3, 7, 100)] == [5, 5, 10, 20, 300, 300]
    assert expiry.retry_after_cap(expired=False) == 300


def test_backoff_is_short_and_jittered_once_the_token_has_expired() -> None:
    for failures, step in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (50, 4.0)):
        waits = [expiry.backoff(failures, expired=True) for _ in range(20)]
        assert all(step / 2 <= wait <= step for wait in waits), (failures, waits)
        assert len(set(waits)) > 1  # jittered: hosts do not retry in step
    assert expiry.retry_after_cap(expired=True) == 30
