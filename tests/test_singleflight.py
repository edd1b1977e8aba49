"""The single-flight's waiters and the wake-ups (``singleflight`` with ``wakeup``).

No test judges seconds: waiters are given a poll interval and a wait far longer
than the test (:data:`NEVER`), so returning at all means a wake-up reached them.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken
from django.db import OperationalError, connection, connections, router
from django.test.utils import CaptureQueriesContext

from django_token_rotation import rotation, singleflight, wakeup
from django_token_rotation.exceptions import ReauthenticationRequired, TokenRefreshUnavailable
from django_token_rotation.models import TokenState
from tests.helpers import MakeToken, table
from tests.scripted_server import Reply, ScriptedServer, tokens

#: Far longer than any of these tests: a waiter back before it was woken.
NEVER = 120.0

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def patient(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Waiters that would wait and poll far longer than the test."""
    settings.TOKEN_ROTATION_WAIT = NEVER
    monkeypatch.setattr(singleflight, "POLL_FIRST", NEVER)
    monkeypatch.setattr(singleflight, "POLL_MAX", NEVER)
    wakeup._reset()
    yield
    wakeup._reset()


def in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``target`` in a thread with its own database connection; its result or error."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(target())
        except Exception as exc:
            result.append(exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def held_refresh(scripted: ScriptedServer) -> threading.Event:
    """The provider answers the next refresh only once the returned event is set."""
    answer = threading.Event()
    scripted.script(Reply(200, tokens().body, hold=answer))
    return answer


def wait_for_request(scripted: ScriptedServer) -> None:
    for _ in range(600):
        if scripted.token_requests:
            return
        threading.Event().wait(0.05)
    pytest.fail("the refresh never reached the provider")


def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(600):
        if condition():
            return
        threading.Event().wait(0.05)
    pytest.fail("never happened")


def test_a_waiter_in_another_process_is_woken_when_the_refresh_lands(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two flights that do not share the per-process lock (as in two processes):
    the one that lost the lease is woken by the winner, not by its poll."""
    monkeypatch.setattr(singleflight, "_process_lock", lambda token: threading.Lock())
    token = make_token(expires_in=-5)
    answer = held_refresh(scripted)

    holder, held = in_thread(lambda: rotation.refresh(SocialToken.objects.get(pk=token.pk)))
    wait_for_request(scripted)
    versions = wakeup._versions.copy()
    waiter, waited = in_thread(lambda: rotation.refresh(SocialToken.objects.get(pk=token.pk)))
    # The waiter has read the token, lost the claim and waits (for NEVER seconds).
    wait_until(lambda: _waiting(waiter))
    answer.set()
    holder.join(timeout=30)
    waiter.join(timeout=30)

    assert not waiter.is_alive(), "the waiter was not woken"
    assert [t.token for t in held + waited] == ["new-access", "new-access"]
    assert len(scripted.token_requests) == 1
    assert wakeup._versions != versions
    assert TokenState.objects.get(token=token).refresh_count == 1


def _waiting(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked in the single-flight's wait for a wake-up."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code is singleflight.wait_for_change.__code__:
            return True
        frame = frame.f_back
    return False


def test_a_waiter_gives_up_after_the_wait_even_if_no_wake_up_comes(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    settings: Any,
) -> None:
    """A lost wake-up never holds a caller past ``TOKEN_ROTATION_WAIT``, however
    long the poll interval."""
    settings.TOKEN_ROTATION_WAIT = 0.2
    token = make_token(expires_in=-5)
    assert TokenState.objects.for_token(token.pk)
    TokenState.objects.claim_lease(token.pk, "another-process", 60)
    with pytest.raises(TokenRefreshUnavailable) as excinfo:
        rotation.refresh(SocialToken.objects.get(pk=token.pk))
    assert excinfo.value.code == "refresh_in_progress"
    assert scripted.token_requests == []


def test_threads_of_one_process_read_once_after_the_holder_instead_of_claiming(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    """A thread that queued behind another on this process's lock finds the
    token refreshed with one read (no claim, no release)."""
    token = make_token(expires_in=-5)
    answer = held_refresh(scripted)
    holder, held = in_thread(lambda: rotation.refresh(SocialToken.objects.get(pk=token.pk)))
    wait_for_request(scripted)

    def queued() -> tuple[SocialToken, int]:
        mine = SocialToken.objects.select_related("rotation_state").get(pk=token.pk)
        with CaptureQueriesContext(connection) as queries:
            refreshed = rotation.refresh(mine)
        return refreshed, len(queries)

    waiter, waited = in_thread(queued)
    wait_until(lambda: _blocked_on_the_process_lock(waiter))
    answer.set()
    holder.join(timeout=30)
    waiter.join(timeout=30)

    refreshed, queries = waited[0]
    assert (held[0].token, refreshed.token) == ("new-access", "new-access")
    # Under a primary/replica router (shape "replica") the waiter's token was
    # read from the replica, which may lag: the engine re-reads it on the
    # primary before deciding (store.reload, rotation.py), one read more.
    from_replica = router.db_for_read(SocialToken) != router.db_for_write(SocialToken)
    assert queries == (2 if from_replica else 1)
    assert len(scripted.token_requests) == 1


def _blocked_on_the_process_lock(thread: threading.Thread) -> bool:
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code is singleflight.process_turn.__wrapped__.__code__:  # type: ignore[attr-defined]
            return frame.f_locals.get("first") is False
        frame = frame.f_back
    return False


def test_a_refresh_that_sends_nothing_leaves_no_in_flight_mark(
    make_token: MakeToken, scripted: ScriptedServer
) -> None:
    """The refresh token is marked in flight only by the last check before it is
    written; a holder that then sends nothing (here: no app configured for the
    provider) leaves no mark, so a later ``invalid_grant`` is not taken for a
    lost rotation."""
    token = make_token(expires_in=-5)
    TokenState.objects.create(token=token)
    with pytest.raises(ReauthenticationRequired) as excinfo:
        rotation.refresh(SocialToken.objects.select_related("rotation_state").get(pk=token.pk))
    assert excinfo.value.code == "provider_not_configured"
    state = TokenState.objects.get(token=token)
    assert (state.lease_id, state.inflight_fingerprint, state.inflight_since) == ("", "", None)
    assert scripted.token_requests == []


def test_the_token_is_kept_when_its_bookkeeping_cannot_be_written(
    fake_app: SocialApp,
    make_token: MakeToken,
    scripted: ScriptedServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The new token is written in a statement of its own: a database error in
    the state's update after it (and in the lease's release) loses nothing."""
    token = make_token(expires_in=-5)
    TokenState.objects.create(token=token)
    claimed: list[str] = []

    def failing_state_writes(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        if sql.startswith(f"UPDATE {table('token_rotation_tokenstate')}"):
            # The claim and the in-flight mark go through; what follows fails.
            if len(claimed) == 2:
                raise OperationalError("disk I/O error (injected)")
            claimed.append(sql)
        return execute(sql, *args)

    mine = SocialToken.objects.select_related("rotation_state").get(pk=token.pk)
    with connection.execute_wrapper(failing_state_writes):
        refreshed = rotation.refresh(mine)
    assert refreshed.token == "new-access"
    stored = SocialToken.objects.get(pk=token.pk)
    assert (stored.token, stored.token_secret) == ("new-access", "new-refresh")
    assert "but not its refresh state" in caplog.text
    assert "Could not release the lease" in caplog.text
    assert len(scripted.token_requests) == 1
