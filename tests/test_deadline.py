"""One deadline per refresh, and a lease that outlives it (issue #11, item 3).

Against tests/scripted_server.py: answers that drip a byte at a time, an
endpoint that hangs, a slow discovery document. Every database: the lease
and its renewal use the database's clock.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken
from django.core.cache import cache

from django_token_rotation import providers
from django_token_rotation.models import TokenState
from tests.helpers import ALIASES, DATABASES, MakeToken, seed_fake_app, timed
from tests.scripted_server import Reply, ScriptedServer, tokens

pytestmark = pytest.mark.usefixtures("hidden_secrets")


@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_dripping_answer_is_cut_at_the_deadline(
    alias: str, scripted: ScriptedServer, settings: Any
) -> None:
    settings.TOKEN_ROTATION_TIMEOUT = 1
    seed_fake_app(alias, scripted, settings)
    # ~100 bytes, one every 0.1 s: 10 s if each read only had to beat the timeout.
    scripted.script(Reply(200, {**tokens().body, "pad": "x" * 30}, drip=0.1))  # type: ignore[dict-item]
    took, outcome = timed(alias)
    print(f"\n[{alias}] dripping endpoint, TIMEOUT=1: {outcome} after {took:.2f} s")
    assert outcome == "timeout"
    assert took < 1.5
    assert SocialToken.objects.using(alias).get().token == "old-access"


@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_hanging_endpoint_costs_one_request_at_most_the_timeout(
    alias: str, scripted: ScriptedServer, settings: Any
) -> None:
    settings.TOKEN_ROTATION_TIMEOUT = 1
    seed_fake_app(alias, scripted, settings)
    release = threading.Event()
    scripted.script(Reply(200, tokens().body, hold=release))
    try:
        took, outcome = timed(alias)
        again, second = timed(alias)
    finally:
        release.set()
    print(
        f"\n[{alias}] hanging endpoint, TIMEOUT=1: {outcome} after {took:.2f} s, "
        f"then {second} after {again:.2f} s"
    )
    assert outcome == "timeout" and took < 1.5
    # The next request does not hang again: the token is in its back-off.
    assert second == "backoff" and again < 0.5
    assert len(scripted.token_requests) == 1


@pytest.mark.django_db
def test_a_complete_answer_that_arrived_in_time_is_kept(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, settings: Any, user: Any
) -> None:
    settings.TOKEN_ROTATION_TIMEOUT = 2
    token = make_token()
    scripted.script(Reply(200, tokens().body, drip=0.01))  # ~80 bytes over ~0.8 s
    assert timed("default")[1] == "new-access"
    token.refresh_from_db()
    assert (token.token, token.token_secret) == ("new-access", "new-refresh")


@pytest.mark.django_db
def test_discovery_and_the_token_call_share_one_deadline(
    make_oidc_app: Any, make_token: MakeToken, scripted: ScriptedServer, settings: Any
) -> None:
    """Each of them alone fits in the timeout; together they do not."""
    cache.clear()
    settings.TOKEN_ROTATION_TIMEOUT = 1
    make_token(provider="scripted", app=make_oidc_app(), uid="user-1")
    scripted.discovery_delay = 0.6
    scripted.script(Reply(200, tokens().body, delay=0.6))
    took, outcome = timed("default")
    print(f"\ndiscovery 0.6 s + token call 0.6 s, TIMEOUT=1: {outcome} after {took:.2f} s")
    assert outcome == "timeout"
    assert took < 1.3


@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_holder_whose_lease_ran_out_never_sends_the_refresh_token(
    alias: str, scripted: ScriptedServer, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease (1 s, by the database's clock) runs out while the holder is
    held up before sending (a slow discovery, a paused process: 1.5 s here):
    the refresh token is not sent."""
    settings.TOKEN_ROTATION_LEASE = 1
    settings.TOKEN_ROTATION_TIMEOUT = 5
    seed_fake_app(alias, scripted, settings)
    real_resolve = providers.resolve

    def slow_resolve(token: SocialToken) -> Any:
        time.sleep(1.5)
        return real_resolve(token)

    monkeypatch.setattr(providers, "resolve", slow_resolve)
    took, outcome = timed(alias)
    print(f"\n[{alias}] lease 1 s, held up 1.5 s before sending: {outcome} after {took:.2f} s")
    assert outcome == "lease_expired"
    assert scripted.token_requests == []
    state = TokenState.objects.using(alias).get()
    assert state.inflight_fingerprint == ""  # nothing was sent
    monkeypatch.setattr(providers, "resolve", real_resolve)
    assert timed(alias)[1] == "new-access"
    assert len(scripted.token_requests) == 1
