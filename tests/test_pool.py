"""Nothing set on a connection outlives the refresh that set it (issue #16, item 4).

With Django's psycopg pool (``OPTIONS["pool"]``) a connection goes back to
the pool when Django closes it, and serves the next, unrelated request as it
is. The helper connection of a refresh made inside the caller's transaction
(``transactions.outside``) bounds its lock waits by ``TOKEN_ROTATION_WAIT``
with ``SET LOCAL lock_timeout``, which ends with each transaction; a session
``SET`` would stay on the pooled connection (``lock_timeout = 7s`` was seen).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken
from django.conf import settings as django_settings
from django.db import connections, transaction

from django_token_rotation.rotation import access_token_for
from tests.helpers import ALIASES, seed
from tests.scripted_server import ScriptedServer

POOL = "postgres_pool"

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.usefixtures("hidden_secrets"),
    pytest.mark.skipif(
        POOL not in django_settings.DATABASES, reason="psycopg_pool is not installed"
    ),
]


@pytest.fixture
def pool() -> Iterator[Any]:
    """The pool of two connections behind ``postgres_pool``, closed afterwards (else
    its connections would keep the test database from being dropped)."""
    yield connections[POOL]
    connections[POOL].close()
    connections[POOL].close_pool()  # type: ignore[attr-defined]


def session_of(raw: Any) -> dict[str, Any]:
    with raw.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        (lock_timeout,) = cursor.fetchone()
    return {"lock_timeout": lock_timeout, "status": raw.info.transaction_status.name}


@pytest.mark.django_db(transaction=True, databases=[*ALIASES, POOL])
def test_a_pooled_connection_comes_back_clean(
    pool: Any, scripted: ScriptedServer, settings: Any
) -> None:
    settings.TOKEN_ROTATION_WAIT = 7
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    app = SocialApp.objects.using("postgres").create(
        provider="fake", name="F", client_id="c", secret="s"
    )
    # A name of its own: "postgres_pool" mirrors "postgres", where rows other
    # tests of the session seeded may still be (the default "racer" clashed).
    user = seed("postgres", provider="fake", app=app, username=f"pool-{secrets.token_hex(4)}")

    # The caller's transaction holds one pooled connection; the refresh runs on
    # a helper thread, on the pool's other one.
    with transaction.atomic(using=POOL):
        token = SocialToken.objects.using(POOL).select_related("account").get(account__user=user)
        assert access_token_for(token) == "new-access"
    connections[POOL].close()  # back to the pool
    assert len(scripted.token_requests) == 1

    # Both connections of the pool, as the next requests would get them.
    with pool.pool.connection() as first, pool.pool.connection() as second:
        sessions = [session_of(first), session_of(second)]
        helper_used_one = first.info.backend_pid != second.info.backend_pid
    print(f"\n[pool] the pooled connections after a refresh: {sessions}")
    assert helper_used_one
    assert sessions == [{"lock_timeout": "0", "status": "IDLE"}] * 2
