"""TokenState's state changes: one method each, the same fields wherever they are used."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from django.utils import timezone

from django_token_rotation.models import (
    BACKOFF,
    NO_REFRESH_TOKEN,
    SIGN_IN_REQUIRED,
    TokenState,
    fingerprint,
    refresh_blocker,
)
from tests.helpers import MakeToken

pytestmark = pytest.mark.django_db

FAILED: dict[str, Any] = {
    "needs_reauth": True,
    "failed_fingerprint": fingerprint("old-refresh"),
    "consecutive_failures": 4,
    "last_error": "invalid_grant",
    "last_error_at": timezone.now(),
    "next_retry_at": timezone.now() + datetime.timedelta(minutes=5),
    "inflight_fingerprint": fingerprint("old-refresh"),
    "inflight_since": timezone.now(),
}
CLEARED = {
    "needs_reauth": False,
    "failed_fingerprint": "",
    "consecutive_failures": 0,
    "last_error": "",
    "last_error_at": None,
    "next_retry_at": None,
    "inflight_fingerprint": "",
    "inflight_since": None,
}


def fields(state: TokenState) -> dict[str, Any]:
    state.refresh_from_db()
    return {name: getattr(state, name) for name in CLEARED}


def test_a_new_sign_in_and_clear_failure_reset_the_same_fields(make_token: MakeToken) -> None:
    signed_in, cleared = make_token(), make_token()
    first = TokenState.objects.create(token=signed_in, **FAILED)
    second = TokenState.objects.create(token=cleared, **FAILED)

    signed_in.token_secret = "refresh-of-a-new-sign-in"
    signed_in.save()  # what allauth does on a sign-in: the receiver clears the failure
    TokenState.objects.filter(pk=cleared.pk).clear_failure()  # what the admin's action does

    assert fields(first) == fields(second) == CLEARED


def test_the_lease_is_a_compare_and_swap(make_token: MakeToken) -> None:
    token = make_token()
    TokenState.objects.create(token=token)
    states = TokenState.objects
    assert states.claim_lease(token.pk, "a" * 32, 30)
    assert not states.claim_lease(token.pk, "b" * 32, 30)
    states.release_lease(token.pk, "b" * 32)  # not the holder: nothing happens
    assert not states.claim_lease(token.pk, "c" * 32, 30)
    states.release_lease(token.pk, "a" * 32)
    assert states.claim_lease(token.pk, "d" * 32, 30)


def test_success_releases_only_its_own_lease(make_token: MakeToken) -> None:
    token = make_token()
    state = TokenState.objects.create(token=token, **FAILED)
    TokenState.objects.claim_lease(token.pk, "theirs" + "0" * 26, 30)
    TokenState.objects.record_success(
        token.pk, lease_id="mine" + "0" * 28, at=timezone.now(), refresh_expires_at=None
    )
    state.refresh_from_db()
    assert state.lease_id == "theirs" + "0" * 26 and state.refresh_count == 1
    assert not state.needs_reauth and state.consecutive_failures == 0
    assert (state.inflight_fingerprint, state.next_retry_at) == ("", None)


def test_refresh_blocker(make_token: MakeToken) -> None:
    token = make_token()
    assert refresh_blocker(token, None) == ""
    state = TokenState.objects.create(token=token, **FAILED)
    assert refresh_blocker(token, state) == SIGN_IN_REQUIRED
    token.token_secret = "refresh-of-a-new-sign-in"
    assert refresh_blocker(token, state) == BACKOFF
    assert refresh_blocker(token, state, force=True) == ""
    later = timezone.now() + datetime.timedelta(minutes=10)
    assert refresh_blocker(token, state, now=later) == ""
    token.token_secret = ""
    assert refresh_blocker(token, state) == NO_REFRESH_TOKEN


@pytest.mark.django_db(databases=["default", "mariadb", "postgres"])
@pytest.mark.parametrize(
    "alias",
    [
        "default",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_success_releases_the_whole_lease_on_every_database(alias: str) -> None:
    """MariaDB evaluates SET assignments left to right: releasing ``lease_id``
    first left ``lease_expires_at`` set, and nobody could claim for LEASE seconds."""
    from allauth.socialaccount.models import SocialAccount, SocialToken
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.db_manager(alias).create_user("lease")
    account = SocialAccount.objects.using(alias).create(user=user, provider="fake", uid="1")
    token = SocialToken.objects.using(alias).create(account=account, token="a", token_secret="r")
    states = TokenState.objects.using(alias)
    states.create(token=token)
    assert states.claim_lease(token.pk, "a" * 32, 30)
    states.record_success(token.pk, lease_id="a" * 32, at=timezone.now(), refresh_expires_at=None)
    state = states.get(pk=token.pk)
    assert (state.lease_id, state.lease_expires_at) == ("", None)
    assert states.claim_lease(token.pk, "b" * 32, 30)


@pytest.mark.django_db(databases=["default", "mariadb", "postgres"])
@pytest.mark.parametrize(
    "alias",
    [
        "default",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
def test_a_claim_as_read_fails_on_any_change_since_the_read(alias: str) -> None:
    """The claim of a caller that does not re-read: any refresh, attempt or
    outcome since its read makes it fail."""
    from allauth.socialaccount.models import SocialAccount, SocialToken
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.db_manager(alias).create_user("read")
    account = SocialAccount.objects.using(alias).create(user=user, provider="fake", uid="1")
    token = SocialToken.objects.using(alias).create(account=account, token="a", token_secret="r")
    states = TokenState.objects.using(alias)
    seen = states.create(token=token)

    def claim(lease: str, *, access: str = "a", refresh: str = "r") -> bool:
        return states.claim_as_read(
            token.pk, lease * 32, 30, seen=seen, access=access, refresh=refresh
        )

    # The token is not what the caller read (someone refreshed, or a sign-in).
    assert not claim("x", refresh="older")
    assert not claim("x", access="older")
    # Another attempt started (in flight) or ended (counts changed) meanwhile.
    states.filter(pk=token.pk).update(inflight_fingerprint=fingerprint("r"))
    assert not claim("x")
    states.filter(pk=token.pk).update(inflight_fingerprint="", consecutive_failures=1)
    assert not claim("x")
    states.filter(pk=token.pk).update(consecutive_failures=0, refresh_count=1)
    assert not claim("x")
    states.filter(pk=token.pk).update(refresh_count=0)
    # As read: claimed. The in-flight mark waits for the send (mark_in_flight).
    assert claim("a")
    state = states.get(pk=token.pk)
    assert state.lease_id == "a" * 32 and state.inflight_fingerprint == ""
    assert not claim("b")  # the lease is taken
    states.release_lease(token.pk, "a" * 32)
    assert states.get(pk=token.pk).lease_id == ""
