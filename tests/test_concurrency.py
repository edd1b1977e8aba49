"""Single-flight for real: OS processes x threads racing on one expired token.

Every worker is a separate Python process with its own database connections
(see ``tests/concurrency_worker.py``); the token endpoint is a real HTTP
server in this process that counts what it actually received.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken

from django_token_rotation.models import TokenState
from tests.helpers import (
    ALIASES,
    DATABASES,
    PROCESSES,
    THREADS,
    collect,
    seed,
    start_workers,
    worker_env,
)
from tests.scripted_server import Reply, ScriptedServer, tokens


@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_one_refresh_for_many_processes_and_threads(alias: str, scripted: ScriptedServer) -> None:
    # The endpoint takes its time, so that every caller sees the token expired
    # while the one refresh is in flight.
    scripted.script(Reply(200, tokens().body, delay=0.5))
    app = SocialApp.objects.using(alias).create(
        provider="fake", name="Fake", client_id="c", secret="s"
    )
    user = seed(alias, provider="fake", app=app)
    env = worker_env(alias, TOKEN_ROTATION_TEST_FAKE_TOKEN_URL=scripted.token_url)

    workers = start_workers(
        PROCESSES, alias=alias, user_id=user.pk, provider="fake", threads=THREADS, env=env
    )
    results = collect(workers)

    outcomes = Counter(r.get("token") or f"error:{r.get('error')}" for r in results)
    print(
        f"\n[{alias}] {PROCESSES} processes x {THREADS} threads = {len(results)} callers; "
        f"refresh requests received: {len(scripted.token_requests)}; outcomes: {dict(outcomes)}"
    )
    assert len(results) == PROCESSES * THREADS
    assert outcomes == {"new-access": PROCESSES * THREADS}
    assert len(scripted.token_requests) == 1
    token = SocialToken.objects.using(alias).get()
    assert (token.token, token.token_secret) == ("new-access", "new-refresh")
    assert TokenState.objects.using(alias).get().refresh_count == 1


@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_dead_lease_holder_does_not_wedge_the_token(alias: str, scripted: ScriptedServer) -> None:
    answer = threading.Event()
    scripted.script(Reply(200, tokens().body, hold=answer), tokens(access="second-access"))
    app = SocialApp.objects.using(alias).create(
        provider="fake", name="Fake", client_id="c", secret="s"
    )
    user = seed(alias, provider="fake", app=app)
    env = worker_env(
        alias,
        TOKEN_ROTATION_TEST_FAKE_TOKEN_URL=scripted.token_url,
        # The lease outlives the deadline (check E006), and the holder is
        # killed long before either ends.
        TOKEN_ROTATION_TEST_LEASE="3",
        TOKEN_ROTATION_TEST_TIMEOUT="1",
    )
    try:
        [doomed] = start_workers(
            1, alias=alias, user_id=user.pk, provider="fake", threads=1, env=env
        )
        deadline = time.monotonic() + 60
        while not scripted.token_requests:
            assert time.monotonic() < deadline, "the first worker never called the endpoint"
            time.sleep(0.05)
        # The lease holder dies between sending the refresh and storing the answer.
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(10)
        state = TokenState.objects.using(alias).get()
        assert state.lease_id and state.lease_expires_at is not None

        started = time.monotonic()
        results = collect(
            start_workers(2, alias=alias, user_id=user.pk, provider="fake", threads=2, env=env)
        )
        waited = time.monotonic() - started
    finally:
        answer.set()

    assert [r.get("token") for r in results] == ["second-access"] * 4
    assert len(scripted.token_requests) == 2
    state = TokenState.objects.using(alias).get()
    assert state.lease_id == "" and state.refresh_count == 1
    print(f"\n[{alias}] lease of a killed worker taken over; callers waited {waited:.1f} s")


@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_holder_killed_before_sending_lets_the_next_request_refresh_once(
    alias: str, scripted: ScriptedServer
) -> None:
    """The lease holder is SIGKILLed after its claim, before it sent anything
    (held in name resolution: simulated at ``socket.getaddrinfo``, which stalls
    ``slow.localhost`` 60 s). The next caller waits for the dead lease (5 s)
    to run out, then refreshes: exactly one refresh request in all."""
    token_url = f"http://slow.localhost:{scripted.port}/token"
    app = SocialApp.objects.using(alias).create(
        provider="fake", name="Fake", client_id="c", secret="s"
    )
    user = seed(alias, provider="fake", app=app)
    lease = {"TOKEN_ROTATION_TEST_LEASE": "5", "TOKEN_ROTATION_TEST_TIMEOUT": "3"}
    [doomed] = start_workers(
        1,
        alias=alias,
        user_id=user.pk,
        provider="fake",
        threads=1,
        env=worker_env(
            alias,
            TOKEN_ROTATION_TEST_FAKE_TOKEN_URL=token_url,
            TOKEN_ROTATION_TEST_SLOW_DNS="slow.localhost=60",
            **lease,
        ),
    )
    deadline = time.monotonic() + 60
    while not TokenState.objects.using(alias).filter(lease_expires_at__isnull=False).exists():
        assert time.monotonic() < deadline, "the first worker never claimed the lease"
        time.sleep(0.02)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    state = TokenState.objects.using(alias).get()
    assert state.lease_id and state.inflight_fingerprint == ""  # claimed, nothing sent

    started = time.monotonic()
    results = collect(
        start_workers(
            1,
            alias=alias,
            user_id=user.pk,
            provider="fake",
            threads=2,
            env=worker_env(
                alias,
                TOKEN_ROTATION_TEST_FAKE_TOKEN_URL=token_url,
                TOKEN_ROTATION_TEST_SLOW_DNS="slow.localhost=0",  # resolves at once now
                **lease,
            ),
            start_at=time.time(),
        )
    )
    waited = time.monotonic() - started
    print(
        f"\n[{alias}] holder killed before sending; the next request refreshed after {waited:.1f} s"
    )
    assert [r.get("token") for r in results] == ["new-access", "new-access"]
    assert len(scripted.token_requests) == 1
    state = TokenState.objects.using(alias).get()
    assert state.lease_id == "" and state.refresh_count == 1 and state.inflight_fingerprint == ""
