"""A rotation the provider made but we never stored is detected, not replayed forever."""

from __future__ import annotations

import logging
import signal
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken
from django.db import connection
from django.test import Client

from django_token_rotation import (
    REFRESH_ACCESS_TOKEN_ERROR,
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    get_access_token,
)
from django_token_rotation.models import TokenState
from tests.helpers import MakeToken, connect, failing_token_writes, start_workers, worker_env
from tests.scripted_server import ScriptedServer, oauth_error, tokens
from tests.test_middleware import error_in

pytestmark = pytest.mark.usefixtures("hidden_secrets")


@pytest.mark.django_db
def test_database_failure_after_the_answer_is_reported_as_lost_rotation(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    user: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = make_token()
    # The provider rotates, our write fails; then it refuses the replayed token.
    scripted.script(tokens(), oauth_error("invalid_grant"))
    with (
        connection.execute_wrapper(failing_token_writes),
        pytest.raises(TokenRefreshUnavailable) as first,
    ):
        get_access_token(user, "fake")
    assert first.value.code == "database_error"
    token.refresh_from_db()
    assert token.token_secret == "old-refresh"  # nothing half-written
    TokenState.objects.update(next_retry_at=None)

    with pytest.raises(ReauthenticationRequired) as second:
        get_access_token(user, "fake")

    assert second.value.code == "lost_rotation"
    state = TokenState.objects.get()
    assert state.needs_reauth and state.last_error == "lost_rotation"
    assert state.inflight_fingerprint == ""
    assert [r.levelno for r in caplog.records if "Lost rotation" in r.getMessage()] == [
        logging.ERROR
    ]
    # And it is not retried: the refresh token is known dead.
    with pytest.raises(ReauthenticationRequired):
        get_access_token(user, "fake")
    assert len(scripted.token_requests) == 2


@pytest.mark.django_db
def test_a_glewlwyd_style_empty_400_after_a_lost_answer_is_a_lost_rotation(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    """A one-use provider that refuses a spent refresh token with an empty 400: the
    confirming retry is still a replay, and the outcome says what happened."""
    from tests.scripted_server import Reply

    make_token()
    scripted.script(tokens(), Reply(400, b""))
    with (
        connection.execute_wrapper(failing_token_writes),
        pytest.raises(TokenRefreshUnavailable),
    ):
        get_access_token(user, "fake")
    TokenState.objects.update(next_retry_at=None)
    with pytest.raises(TokenRefreshUnavailable) as unconfirmed:
        get_access_token(user, "fake")
    assert unconfirmed.value.code == "refusal_unconfirmed"
    assert TokenState.objects.get().inflight_fingerprint != ""  # still a replay
    TokenState.objects.update(next_retry_at=None)
    with pytest.raises(ReauthenticationRequired) as confirmed:
        get_access_token(user, "fake")
    assert confirmed.value.code == "lost_rotation"
    assert len(scripted.token_requests) == 3


@pytest.mark.django_db
def test_a_plain_revocation_is_not_called_lost_rotation(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    make_token()
    scripted.script(oauth_error("temporarily_unavailable"), oauth_error("invalid_grant"))
    with pytest.raises(TokenRefreshUnavailable):
        get_access_token(user, "fake")  # the provider said it did nothing
    TokenState.objects.update(next_retry_at=None)
    with pytest.raises(ReauthenticationRequired) as excinfo:
        get_access_token(user, "fake")
    assert excinfo.value.code == "invalid_grant"


@pytest.mark.django_db(transaction=True)
def test_worker_killed_between_answer_and_commit(provider: Any) -> None:
    """Against the real provider (rotation + reuse protection): the worker dies
    after the provider rotated the refresh token and before the commit."""
    user, token = connect("default", provider)
    env = worker_env("default", TOKEN_ROTATION_TEST_DIE_AFTER_ANSWER="1")
    [worker] = start_workers(
        1, alias="default", user_id=user.pk, provider="dot", threads=1, env=env
    )
    worker.communicate(timeout=120)
    assert worker.returncode == -9  # SIGKILL, as planned
    assert provider.stats()["refresh_calls"] == 1
    assert SocialToken.objects.get(pk=token.pk).token_secret == token.token_secret

    # Its lease would run out after TOKEN_ROTATION_LEASE; don't wait for it.
    TokenState.objects.update(lease_expires_at=None)
    with pytest.raises(ReauthenticationRequired) as excinfo:
        get_access_token(user, "dot")

    assert excinfo.value.code == "lost_rotation"
    assert provider.stats()["refresh_calls"] == 2  # one replay, detected; not one per request
    with pytest.raises(ReauthenticationRequired):
        get_access_token(user, "dot")
    assert provider.stats()["refresh_calls"] == 2


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_after_the_answer_ends_at_sign_in_again_never_a_loop_or_a_500(
    provider: Any, client: Client
) -> None:
    """The worker process is SIGKILLed after the provider rotated the refresh
    token and before the answer was stored. The user's next page waits for the
    dead worker's lease (3 s), replays the spent refresh token once, and shows
    the sign-in prompt (``lost_rotation``); the pages after it do not ask the
    provider again."""
    user, token = connect("default", provider)
    env = worker_env(
        "default",
        TOKEN_ROTATION_TEST_DIE_AFTER_ANSWER="1",
        TOKEN_ROTATION_TEST_LEASE="3",
        TOKEN_ROTATION_TEST_TIMEOUT="1",
    )
    [worker] = start_workers(
        1, alias="default", user_id=user.pk, provider="dot", threads=1, env=env
    )
    worker.communicate(timeout=120)
    assert worker.returncode == -signal.SIGKILL
    assert provider.stats()["refresh_calls"] == 1
    assert TokenState.objects.get().lease_id  # the dead worker's lease, running out

    client.force_login(user)
    pages = [client.get("/page/") for _ in range(3)]

    assert [page.status_code for page in pages] == [200, 200, 200]
    assert all(error_in(page) == REFRESH_ACCESS_TOKEN_ERROR for page in pages)
    state = TokenState.objects.get()
    assert state.needs_reauth and state.last_error == "lost_rotation"
    assert provider.stats()["refresh_calls"] == 2  # one replay, then never again
    assert SocialToken.objects.get(pk=token.pk).token_secret == token.token_secret
