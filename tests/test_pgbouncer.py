"""pgbouncer in transaction pooling mode in front of PostgreSQL (issue #16, item 4).

Debian's pgbouncer on 127.0.0.1:6432 (``.ci/services/pgbouncer.sh``,
``pool_mode = transaction``), the ``pgbouncer`` alias of tests/settings.py:
the same test database as ``postgres``, through the proxy. Each statement or
transaction may run on another server connection, so nothing may rely on
session state: the single-flight across processes, the ATOMIC_REQUESTS
rollbacks and the helper connection that must not wait on the caller's row
lock are run through it.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp
from django.conf import settings as django_settings
from django.db import connections

from django_token_rotation.models import TokenState
from tests import test_transactions as through
from tests.helpers import (
    ALIASES,
    PROCESSES,
    THREADS,
    collect,
    seed,
    start_workers,
    worker_env,
)
from tests.scripted_server import Reply, ScriptedServer, tokens

BOUNCER = "pgbouncer"
DATABASES = [*ALIASES, BOUNCER]

pytestmark = [pytest.mark.pgbouncer, pytest.mark.usefixtures("hidden_secrets")]


@pytest.fixture(scope="module", autouse=True)
def server_connections_dropped() -> Iterator[None]:
    """pgbouncer keeps its server connections to the test database open (its
    pool): drop them after these tests, or the test database cannot be dropped."""
    yield
    connections[BOUNCER].close()
    name = connections["postgres"].settings_dict["NAME"]
    for command in (f'KILL "{name}"', f'RESUME "{name}"'):
        subprocess.run(
            [
                "psql",
                f"--host={django_settings.PGBOUNCER_HOST}",
                f"--port={django_settings.PGBOUNCER_PORT}",
                "--username=postgres",
                "--dbname=pgbouncer",
                f"--command={command}",
            ],
            check=False,
            capture_output=True,
            timeout=30,
        )


@pytest.mark.timeout(180)
@pytest.mark.django_db(transaction=True, databases=DATABASES)
def test_one_refresh_for_many_processes_through_pgbouncer(scripted: ScriptedServer) -> None:
    scripted.script(Reply(200, tokens().body, delay=0.5))
    app = SocialApp.objects.using(BOUNCER).create(
        provider="fake", name="Fake", client_id="c", secret="s"
    )
    user = seed(BOUNCER, provider="fake", app=app)
    env = worker_env(BOUNCER, TOKEN_ROTATION_TEST_FAKE_TOKEN_URL=scripted.token_url)
    results = collect(
        start_workers(
            PROCESSES, alias=BOUNCER, user_id=user.pk, provider="fake", threads=THREADS, env=env
        )
    )
    outcomes = Counter(r.get("token") or f"error:{r.get('error')}" for r in results)
    calls = len(scripted.token_requests)
    print(f"\n[pgbouncer] {PROCESSES} x {THREADS}: {dict(outcomes)}, {calls} call(s)")
    assert outcomes == {"new-access": PROCESSES * THREADS}
    assert len(scripted.token_requests) == 1
    state = TokenState.objects.using("postgres").get()
    assert (state.refresh_count, state.lease_id, state.inflight_fingerprint) == (1, "", "")


@pytest.mark.timeout(180)
@pytest.mark.django_db(transaction=True, databases=DATABASES)
def test_a_rolled_back_request_keeps_the_rotation_through_pgbouncer(provider: Any) -> None:
    through.test_a_rolled_back_request_keeps_the_rotation(BOUNCER, provider)


@pytest.mark.timeout(180)
@pytest.mark.django_db(transaction=True, databases=DATABASES)
def test_a_burst_of_rolled_back_transactions_through_pgbouncer(provider: Any) -> None:
    through.test_a_burst_of_rolled_back_transactions_refreshes_once(BOUNCER, provider)


@pytest.mark.django_db(transaction=True, databases=DATABASES)
def test_nobody_waits_for_someone_elses_open_transaction_through_pgbouncer(
    scripted: ScriptedServer, settings: Any
) -> None:
    through.test_nobody_waits_for_someone_elses_open_transaction(BOUNCER, scripted, settings)


@pytest.mark.parametrize("with_state", [True, False], ids=["state-row", "no-state-row"])
@pytest.mark.django_db(transaction=True, databases=DATABASES)
def test_the_helper_does_not_wait_on_the_callers_row_lock_through_pgbouncer(
    with_state: bool, scripted: ScriptedServer, settings: Any
) -> None:
    through.test_a_transaction_holding_the_token_row_gets_no_refresh_and_loses_nothing(
        BOUNCER, with_state, scripted, settings
    )
