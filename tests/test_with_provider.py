"""The engine against a real provider: django-oauth-toolkit with OpenID Connect,
rotating single-use refresh tokens and reuse protection, in its own process."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken
from django.utils import timezone

from django_token_rotation import ReauthenticationRequired, get_access_token, refresh
from django_token_rotation.models import TokenState
from tests.helpers import (
    ALIASES,
    DATABASES,
    PROCESSES,
    THREADS,
    collect,
    connect,
    start_workers,
    userinfo,
    worker_env,
)


@pytest.mark.django_db
def test_refresh_rotates_at_a_real_provider(provider: Any) -> None:
    user, token = connect("default", provider)
    old_access, old_refresh = token.token, token.token_secret

    access = get_access_token(user, "dot")

    assert access != old_access
    token.refresh_from_db()
    assert token.token == access
    assert token.token_secret and token.token_secret != old_refresh  # rotated
    assert token.expires_at is not None and token.expires_at > timezone.now()
    assert provider.stats()["refresh_calls"] == 1
    assert userinfo(provider, access) == 200
    # The provider really made the old refresh token single-use.
    assert provider.refresh(old_refresh).status_code == 400


@pytest.mark.django_db
def test_rotated_token_keeps_working_over_several_refreshes(provider: Any) -> None:
    user, token = connect("default", provider)
    seen = {token.token_secret}
    for _ in range(3):
        refresh(token, force=True)
        seen.add(token.token_secret)
    assert len(seen) == 4
    assert provider.stats()["refresh_calls"] == 3
    assert userinfo(provider, get_access_token(user, "dot")) == 200
    assert TokenState.objects.get(token=token).refresh_count == 3


@pytest.mark.django_db
def test_revoked_grant_is_a_permanent_failure(provider: Any) -> None:
    user, token = connect("default", provider)
    provider.revoke(token.token_secret)

    with pytest.raises(ReauthenticationRequired) as excinfo:
        get_access_token(user, "dot")

    assert excinfo.value.code == "invalid_grant"
    state = TokenState.objects.get(token=token)
    assert state.needs_reauth
    token.refresh_from_db()
    assert token.token_secret  # kept: nothing is overwritten by a failure


@pytest.mark.django_db
def test_invalid_client_is_a_permanent_failure(provider: Any) -> None:
    user, token = connect("default", provider)
    SocialApp.objects.update(secret="wrong-secret")
    with pytest.raises(ReauthenticationRequired) as excinfo:
        get_access_token(user, "dot")
    assert excinfo.value.code == "invalid_client"


@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_racing_processes_never_replay_a_refresh_token(alias: str, provider: Any) -> None:
    """With reuse protection on, a single replayed refresh token would revoke
    the whole grant: every caller would then fail, and so would the check below."""
    provider.set_delay(300)
    user, token = connect(alias, provider)
    workers = start_workers(
        PROCESSES,
        alias=alias,
        user_id=user.pk,
        provider="dot",
        threads=THREADS,
        env=worker_env(alias),
    )
    results = collect(workers)
    provider.set_delay(0)

    token.refresh_from_db()
    outcomes = Counter(
        "stored token" if r.get("token") == token.token else f"other: {r}" for r in results
    )
    stats = provider.stats()
    print(
        f"\n[{alias}, django-oauth-toolkit] {PROCESSES} processes x {THREADS} threads; "
        f"refresh requests received: {stats['refresh_calls']}; outcomes: {dict(outcomes)}"
    )
    assert outcomes == {"stored token": PROCESSES * THREADS}
    assert stats["refresh_calls"] == 1
    assert len(set(stats["refresh_tokens_seen"])) == 1
    # The grant is alive: the rotated refresh token still refreshes.
    SocialToken.objects.using(alias).update(expires_at=timezone.now())
    [after] = collect(
        start_workers(
            1, alias=alias, user_id=user.pk, provider="dot", threads=1, env=worker_env(alias)
        )
    )
    assert "token" in after, after
    assert provider.stats()["refresh_calls"] == 2
