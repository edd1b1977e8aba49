"""The caller's transaction is not ours (issue #11, item 1).

Views under ``ATOMIC_REQUESTS = True`` served by a real gunicorn, against the
real provider (django-oauth-toolkit: single-use refresh tokens, reuse
protection), on every database: a view that raises after it was handed a
token rolls its transaction back, and the rotation survives it. On SQLite the
provider is never called inside a transaction (``in_transaction``).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from allauth.socialaccount.models import SocialApp, SocialToken
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import connections, transaction
from django.utils import timezone

from django_token_rotation import TokenRefreshUnavailable
from django_token_rotation.models import TokenState
from tests.helpers import (
    ALIASES,
    DATABASES,
    PROCESSES,
    ROOT,
    THREADS,
    access,
    collect,
    connect,
    expire,
    free_port,
    seed,
    start_workers,
    userinfo,
    wait_until_serving,
    worker_env,
)
from tests.scripted_server import Reply, ScriptedServer, tokens

pytestmark = pytest.mark.usefixtures("hidden_secrets")


@contextlib.contextmanager
def gunicorn(alias: str, *, workers: int = 2, threads: int = 4) -> Iterator[str]:
    """The test project under gunicorn (gthread), ``ATOMIC_REQUESTS = True``, on ``alias``."""
    db = dict(connections[alias].settings_dict)
    db.pop("TEST", None)
    db["ATOMIC_REQUESTS"] = True
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "TOKEN_ROTATION_TEST_WORKER_DB": json.dumps(db, default=str),
    }
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "tests.wsgi:application",
                f"--bind=127.0.0.1:{port}",
                f"--workers={workers}",
                "--worker-class=gthread",
                f"--threads={threads}",
                "--log-level=warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(process, url, "gunicorn")
            yield url
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.returncode not in (0, -15):
                log.seek(0)
                print(log.read().decode()[-3000:])


@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_rolled_back_request_keeps_the_rotation(alias: str, provider: Any) -> None:
    user, token = connect(alias, provider)
    spent = token.token_secret
    second_writer = connections[alias].vendor != "sqlite"
    users_before = get_user_model().objects.using(alias).count()

    with gunicorn(alias) as url:
        failed = requests.get(f"{url}/token/", params={"user": user.pk, "fail": 1}, timeout=30)
        token.refresh_from_db()
        # The view's own write was rolled back...
        assert get_user_model().objects.using(alias).count() == users_before
        if second_writer:
            # ...the rotation was not.
            assert failed.status_code == 500
            assert token.token_secret != spent
            assert provider.stats()["refresh_calls"] == 1
            assert userinfo(provider, token.token) == 200
        else:
            # SQLite: no provider call inside the transaction, the token is left as it was.
            assert failed.status_code == 503 and failed.json() == {"error": "in_transaction"}
            assert token.token_secret == spent
            assert provider.stats()["refresh_calls"] == 0
            # Outside a transaction (the middleware, a non-atomic view) it refreshes.
            done = requests.get(f"{url}/token-autocommit/", params={"user": user.pk}, timeout=30)
            assert done.status_code == 200
            assert provider.stats()["refresh_calls"] == 1

        # The next request refreshes fine: the grant is alive, nothing was replayed.
        expire(alias)
        view = "token/" if second_writer else "token-autocommit/"
        again = requests.get(f"{url}/{view}", params={"user": user.pk, "mark": "2"}, timeout=30)
        assert again.status_code == 200, again.text
    stats = provider.stats()
    calls = stats["refresh_calls"]
    seen = stats["refresh_tokens_seen"]
    print(f"\n[{alias}] rollback test: refresh calls {calls}, replays {len(seen) - len(set(seen))}")
    assert calls == 2
    assert len(set(seen)) == len(seen)  # no refresh token was sent twice
    token.refresh_from_db()
    assert userinfo(provider, token.token) == 200
    state = TokenState.objects.using(alias).get(token=token)
    assert (state.refresh_count, state.lease_id, state.inflight_fingerprint) == (2, "", "")


@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_nobody_waits_for_someone_elses_open_transaction(
    alias: str, scripted: ScriptedServer, settings: Any
) -> None:
    """A caller refreshes inside a transaction that stays open for 4 s; another
    caller gets the new token within ``TOKEN_ROTATION_WAIT`` (2 s) meanwhile."""
    settings.TOKEN_ROTATION_WAIT = 2
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    scripted.script(Reply(200, tokens().body, delay=0.5))
    app = SocialApp.objects.using(alias).create(
        provider="fake", name="F", client_id="c", secret="s"
    )
    seed(alias, provider="fake", app=app)
    inside: dict[str, Any] = {}
    refreshed = threading.Event()

    def in_a_transaction() -> None:
        try:
            with transaction.atomic(using=alias):
                get_user_model().objects.db_manager(alias).create_user("in-tx")
                try:
                    inside["token"] = access(alias)
                except TokenRefreshUnavailable as exc:
                    inside["error"] = exc.code
                refreshed.set()
                time.sleep(4)
        finally:
            connections.close_all()

    holder = threading.Thread(target=in_a_transaction)
    holder.start()
    try:
        assert refreshed.wait(30)
        started = time.monotonic()
        try:
            outside = access(alias)
        except TokenRefreshUnavailable as exc:
            outside = f"error:{exc.code}"
        finally:
            waited = time.monotonic() - started
    finally:
        holder.join()
    print(f"\n[{alias}] the other caller waited {waited:.2f} s (transaction open 4 s): {outside}")
    if connections[alias].vendor == "sqlite":
        assert inside == {"error": "in_transaction"}
        # SQLite has one writer: the open write transaction holds the other
        # caller's claim for TOKEN_ROTATION_WAIT (not the database's 30-s busy
        # timeout), then it is told to try later, and nothing was sent.
        assert outside == "error:database_locked"
        assert waited < 3.5
        assert scripted.token_requests == []
        assert access(alias) == "new-access"
    else:
        assert outside == "new-access"
        assert inside == {"token": "new-access"}
        assert waited < 2.0
    assert len(scripted.token_requests) == 1


@pytest.mark.parametrize("with_state", [True, False], ids=["state-row", "no-state-row"])
@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_transaction_holding_the_token_row_gets_no_refresh_and_loses_nothing(
    alias: str, with_state: bool, scripted: ScriptedServer, settings: Any
) -> None:
    """The caller saved the token in its transaction, then asks for a refresh:
    the answer could never be stored, so the refresh token is not sent."""
    settings.TOKEN_ROTATION_WAIT = 1
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    scripted.script(tokens())
    app = SocialApp.objects.using(alias).create(
        provider="fake", name="F", client_id="c", secret="s"
    )
    seed(alias, provider="fake", app=app)
    if with_state:
        TokenState.objects.using(alias).create(token=SocialToken.objects.using(alias).get())
    started = time.monotonic()
    with pytest.raises(TokenRefreshUnavailable) as excinfo, transaction.atomic(using=alias):
        token = SocialToken.objects.using(alias).get()
        token.save()
        access(alias)
    took = time.monotonic() - started
    print(f"\n[{alias}] a transaction holding the row: {excinfo.value.code} after {took:.2f} s")
    assert excinfo.value.code in ("in_transaction", "refresh_in_progress")
    assert scripted.token_requests == []
    assert took < 5
    assert access(alias) == "new-access"


#: The databases that refresh inside the caller's transaction: not SQLite (in_transaction
#: there), so "default" only where a shape makes it PostgreSQL or MariaDB.
REFRESHING_IN_TRANSACTIONS = [
    p
    for p in DATABASES
    if p.values[0] != "default"
    or not str(django_settings.DATABASES["default"]["ENGINE"]).endswith("sqlite3")
]


@pytest.mark.parametrize("alias", REFRESHING_IN_TRANSACTIONS)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_burst_of_rolled_back_transactions_refreshes_once(alias: str, provider: Any) -> None:
    """4 processes x 8 threads, each in a transaction that rolls back after it
    was handed the token, against the provider with reuse protection."""
    provider.set_delay(300)
    user, token = connect(alias, provider)
    env = worker_env(alias, TOKEN_ROTATION_TEST_ATOMIC="1")
    results = collect(
        start_workers(
            PROCESSES, alias=alias, user_id=user.pk, provider="dot", threads=THREADS, env=env
        )
    )
    provider.set_delay(0)
    token.refresh_from_db()
    stats = provider.stats()
    seen = stats["refresh_tokens_seen"]
    print(
        f"\n[{alias}] {PROCESSES} x {THREADS} in rolled-back transactions: refresh calls "
        f"{stats['refresh_calls']}, replays {len(seen) - len(set(seen))}"
    )
    failed = [r for r in results if r.get("token") != token.token]
    assert failed == [], failed
    assert len(results) == PROCESSES * THREADS
    assert stats["refresh_calls"] == 1
    assert userinfo(provider, token.token) == 200


@pytest.mark.skipif(
    not str(django_settings.DATABASES["default"]["ENGINE"]).endswith("sqlite3"),
    reason="a test of SQLite's database-wide write lock, and 'default' is not SQLite "
    "in this shape (TOKEN_ROTATION_TEST_SHAPES)",
)
@pytest.mark.django_db(transaction=True)
def test_sqlite_a_due_token_held_up_by_a_write_lock_is_handed_out_as_it_is(
    scripted: ScriptedServer, settings: Any
) -> None:
    """SQLite: another request's write transaction holds the lock; the token
    is due (inside the leeway) but still valid. The claim waits at most
    ``TOKEN_ROTATION_WAIT`` (not the 30-s busy timeout), nothing is sent, the
    current token is handed out; once the lock is gone the next call refreshes."""
    settings.TOKEN_ROTATION_WAIT = 1
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    scripted.script(tokens())
    app = SocialApp.objects.create(provider="fake", name="F", client_id="c", secret="s")
    seed("default", provider="fake", app=app, expires_in=30)
    locked = threading.Event()
    release = threading.Event()

    def hold_the_write_lock() -> None:
        try:
            with transaction.atomic():
                get_user_model().objects.create_user("writer")
                locked.set()
                release.wait(30)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    try:
        assert locked.wait(30)
        started = time.monotonic()
        handed_out = access("default")
        waited = time.monotonic() - started
    finally:
        release.set()
        holder.join()
    print(f"\n[sqlite] a due token behind a write lock: handed out after {waited:.2f} s")
    assert handed_out == "old-access"
    assert waited < 2.5
    assert scripted.token_requests == []
    state = TokenState.objects.filter(token__isnull=False).first()
    assert state is None or (state.lease_id, state.inflight_fingerprint) == ("", "")
    assert access("default") == "new-access"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_helper_statement_meeting_a_concurrent_update_under_repeatable_read_runs_again(
    scripted: ScriptedServer, settings: Any
) -> None:
    """REPEATABLE READ: a claim that waited for another transaction's row lock
    and finds the row changed fails with "could not serialize access". The
    helper runs each statement alone in a transaction (``SET LOCAL
    lock_timeout``), so it runs it again on a new snapshot, as READ COMMITTED
    would: the claim is simply lost, not an ``internal_error``."""
    from django_token_rotation import transactions

    alias = "postgres_rr"
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    app = SocialApp.objects.using(alias).create(
        provider="fake", name="F", client_id="c", secret="s"
    )
    seed(alias, provider="fake", app=app)
    token = SocialToken.objects.using(alias).get()
    TokenState.objects.using(alias).create(token=token)
    holding = threading.Event()

    def another_claim_that_commits_late() -> None:
        try:
            with transaction.atomic(using=alias):
                TokenState.objects.using(alias).filter(pk=token.pk).update(
                    lease_id="other",
                    lease_expires_at=timezone.now() + datetime.timedelta(seconds=60),
                )
                holding.set()
                time.sleep(1)
        finally:
            connections.close_all()

    other = threading.Thread(target=another_claim_that_commits_late)
    other.start()
    try:
        assert holding.wait(30)
        claimed = transactions.outside(
            alias, lambda: TokenState.objects.using(alias).claim_lease(token.pk, "mine", 30)
        )
    finally:
        other.join()
    assert claimed is False
    assert TokenState.objects.using(alias).get().lease_id == "other"
