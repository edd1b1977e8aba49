"""``background.refresh_due``: the library function behind ``refresh_tokens`` and the
tasks - its report, idle refresh tokens, threads and forked processes."""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_token_rotation import background
from django_token_rotation import history as history_module
from django_token_rotation.exceptions import TokenRefreshUnavailable
from django_token_rotation.models import RefreshEvent, TokenState
from tests.helpers import TOKENS, MakeToken, seed_many, stored, table
from tests.scripted_server import Reply, ScriptedServer, oauth_error, tokens

pytestmark = pytest.mark.usefixtures("hidden_secrets")


@pytest.mark.django_db
def test_report_counts_outcomes_and_reasons(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    due = make_token(expires_in=-10)
    make_token(expires_in=-10, refresh="")
    make_token(expires_in=3600)
    seen: list[background.Result] = []

    report = background.refresh_due(on_result=seen.append)

    assert stored(due).token == "new-access"
    assert report.refreshed == 1
    assert report.skipped == {"no_refresh_token": 1}
    assert report.total == 2 == len(seen)
    assert report.errors == [] and report.failed_permanently == 0
    assert report.duration > 0
    assert background.Report.from_dict(report.as_dict()).counts == report.counts


@pytest.mark.django_db
def test_dry_run_reports_due_tokens_and_calls_no_one(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    due = make_token(expires_in=-10)
    report = background.refresh_due(dry_run=True, within=0)
    assert report.counts == Counter({background.DUE: 1})
    assert scripted.received == []
    assert stored(due).token == "old-access"


@pytest.mark.django_db
def test_failures_are_counted_by_code(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    make_token(expires_in=-10)
    scripted.script(oauth_error("invalid_grant"))
    report = background.refresh_due()
    assert report.failed_permanently == 1
    assert report.codes[background.FAILED_PERMANENTLY] == {"invalid_grant": 1}
    # Known now: skipped by the shared decision, the provider is not called again.
    scripted.received.clear()
    assert background.refresh_due().skipped == {"sign_in_required": 1}
    assert scripted.received == []


@pytest.mark.django_db
def test_an_unexpected_failure_fails_one_token_transiently_and_the_run_goes_on(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, caplog: Any
) -> None:
    """A bug or the database failing mid-refresh (here: the first write of a token
    raises) is one token failed transiently with the engine's code; the run goes
    on with the next token, and the command would exit 0 (a later run retries)."""
    first, second = make_token(expires_in=-10), make_token(expires_in=-10)
    failed: list[str] = []

    def first_token_write_fails(execute: Any, sql: str, *args: Any) -> Any:
        if sql.startswith(f"UPDATE {table('socialaccount_socialtoken')}") and not failed:
            failed.append(sql)
            raise RuntimeError("injected")
        return execute(sql, *args)

    with connection.execute_wrapper(first_token_write_fails):
        report = background.refresh_due()

    assert failed
    assert report.counts == Counter({background.FAILED_TRANSIENTLY: 1, background.REFRESHED: 1})
    assert report.codes[background.FAILED_TRANSIENTLY] == {"internal_error": 1}
    assert report.failed_permanently == 0
    assert {stored(first).token, stored(second).token} == {"old-access", "new-access"}
    assert "injected" not in caplog.text  # logged by type and place only


@pytest.mark.django_db
def test_idle_refresh_tokens_are_kept_alive(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    """A fresh access token whose refresh token is about to expire is refreshed: the
    provider's idle timeout (``refresh_expires_in``) is reset by the new grant."""
    scripted.script(tokens(refresh_expires_in=1800))
    idle = make_token(expires_in=3600)
    lasting = make_token(expires_in=3600)
    soon = timezone.now() + datetime.timedelta(seconds=30)
    later = timezone.now() + datetime.timedelta(hours=5)
    TokenState.objects.create(token=idle, refresh_expires_at=soon)
    TokenState.objects.create(token=lasting, refresh_expires_at=later)

    report = background.refresh_due()

    assert report.refreshed == 1
    assert stored(idle).token == "new-access" and stored(lasting).token == "old-access"
    state = TokenState.objects.get(pk=idle.pk)
    # The provider's new idle timeout (refresh_expires_in) is stored.
    assert state.refresh_expires_at is not None
    assert state.refresh_expires_at > soon + datetime.timedelta(minutes=20)
    # refresh_within=0: only what has run out; a wider window reaches both.
    assert background.refresh_due(refresh_within=0).total == 0
    assert background.refresh_due(refresh_within=6 * 3600).refreshed == 2


@pytest.mark.django_db
def test_selection_by_provider_and_user(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    mine = make_token(expires_in=-10)
    make_token(expires_in=-10, provider="google")
    report = background.refresh_due(providers=["fake"], users=[user.pk])
    assert report.refreshed == 1 and report.total == 1
    assert stored(mine).token == "new-access"


@pytest.mark.django_db
def test_refresh_ids_skips_what_is_no_longer_due(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    """What a retried task does: the second run of the same ids calls no one."""
    a, b = make_token(expires_in=-10), make_token(expires_in=-10)
    first = background.refresh_ids([a.pk, b.pk, 999999])
    assert first.refreshed == 2 and first.skipped == {"not_due": 1}
    again = background.refresh_ids([a.pk, b.pk])
    assert again.skipped == {"not_due": 2}
    assert len(scripted.token_requests) == 2


@pytest.mark.django_db
def test_due_ids_come_in_batches(fake_app: SocialApp, make_token: MakeToken) -> None:
    made = [make_token(expires_in=-10) for _ in range(5)]
    make_token(expires_in=-10, refresh="")  # blocked: not handed out
    batches = list(background.due_ids(background.Selection(), batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    assert sorted(pk for b in batches for pk in b) == sorted(t.pk for t in made)


@pytest.mark.django_db(transaction=True)
def test_processes_refresh_everything_once(scripted: ScriptedServer, settings: Any) -> None:
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    scripted.script(Reply(200, tokens().body, delay=0.05))
    app = SocialApp.objects.create(provider="fake", name="F", client_id="c", secret="s")
    seed_many(app)
    seen: list[int] = []

    report = background.refresh_due(
        processes=3, concurrency=2, batch_size=2, on_result=lambda r: seen.append(r.token_id)
    )

    assert report.refreshed == TOKENS, report
    assert RefreshEvent.objects.count() == TOKENS  # each process wrote its history
    assert sorted(seen) == sorted(SocialToken.objects.values_list("pk", flat=True))
    sent = Counter(r.form["refresh_token"] for r in scripted.token_requests)
    assert sent == {f"old-refresh-{i}": 1 for i in range(TOKENS)}
    assert set(SocialToken.objects.values_list("token", flat=True)) == {"new-access"}


@pytest.mark.django_db(transaction=True)
def test_queries_per_refresh(scripted: ScriptedServer, settings: Any) -> None:
    """What one background refresh costs the database, counted in autocommit as a
    real run (the page reads, shared by up to ``batch_size`` tokens, apart). The
    provider is resolved once per app and run, not once per token."""
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    settings.TOKEN_ROTATION_HISTORY_RETENTION = 50
    app = SocialApp.objects.create(provider="fake", name="F", client_id="c", secret="s")
    seed_many(app)
    TokenState.objects.bulk_create(
        [TokenState(token_id=pk) for pk in SocialToken.objects.values_list("pk", flat=True)]
    )
    with CaptureQueriesContext(connection) as queries:
        report = background.refresh_due()
    assert report.refreshed == TOKENS
    statements = [q["sql"] for q in queries.captured_queries]
    pages = [sql for sql in statements if sql.startswith("SELECT") and "ORDER BY" in sql]
    apps = [sql for sql in statements if f"FROM {table('socialaccount_socialapp')}" in sql]
    transaction_control = [sql for sql in statements if sql.split()[0] in ("BEGIN", "COMMIT")]
    history = [sql for sql in statements if f"INTO {table('token_rotation_refreshevent')}" in sql]
    per_refresh = (len(statements) - len(pages) - len(apps)) / TOKENS
    print(
        f"\n{per_refresh:.2f} queries per refresh, of which transaction control "
        f"{len(transaction_control) / TOKENS:.2f}; app reads {len(apps)}; pages {len(pages)}"
    )
    assert len(apps) <= 1
    # Exactly 4 per refresh, on every database as "default" (SQLite, PostgreSQL:
    # measured 4.25 on both with 12 tokens): the lease claimed on the token as
    # read (no re-read); the last check before sending (the in-flight mark,
    # renewing the lease); the token; its bookkeeping, releasing the lease (no
    # BEGIN/COMMIT). The 0.25 beyond is no refresh's: it is the run's one batched
    # history INSERT with its BEGIN and COMMIT (3 statements / 12 tokens), one
    # batch per history.BUFFER_SIZE events.
    per_token = len(statements) - len(pages) - len(apps) - len(history) - len(transaction_control)
    assert per_token == 4 * TOKENS
    assert len(history) == -(-TOKENS // history_module.BUFFER_SIZE)
    # Its BEGIN and COMMIT, where the backend logs them (SQLite's BEGIN is a statement
    # only when Django opened the transaction itself; runs differ).
    assert len(transaction_control) <= 2 * len(history)
    # The history is written in batches, all of it.
    assert RefreshEvent.objects.filter(outcome="refreshed").count() == TOKENS


def test_keep_alive_reuses_one_session_per_thread_and_closes_it() -> None:
    from django_token_rotation import client

    outside = client._session()[0]
    assert client._session()[0] is not outside  # web requests: a new session each time
    with client.keep_alive():
        kept = client._session()[0]
        assert client._session()[0] is kept
        other: list[Any] = []
        thread = threading.Thread(target=lambda: other.append(client._session()[0]))
        thread.start()
        thread.join()
        assert other[0] is not kept
    assert getattr(client._keep_alive, "session", None) is None
    assert client._session()[0] is not kept


# -- what a run reports for each kind of failure -------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        {"concurrency": 0},
        {"processes": 0},
        {"batch_size": 0},
        {"within": -1},
        {"refresh_within": -1},
    ],
)
def test_impossible_arguments_are_refused_before_any_work(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=">= "):
        background.refresh_due(**arguments)


@pytest.mark.django_db
def test_a_provider_without_an_app_fails_transiently_for_a_person_to_fix(
    make_token: MakeToken, scripted: ScriptedServer
) -> None:
    make_token(expires_in=-10)  # provider "fake", no SocialApp
    report = background.refresh_due()
    assert report.codes == {background.FAILED_TRANSIENTLY: {"provider_not_configured": 1}}
    assert report.failed_permanently == 0
    assert scripted.received == []


@pytest.mark.django_db
def test_a_provider_that_cannot_be_refreshed_is_skipped(
    make_token: MakeToken, scripted: ScriptedServer
) -> None:
    SocialApp.objects.create(provider="twitter", name="X (OAuth 1)", client_id="t", secret="s")
    token = make_token(expires_in=-10, provider="twitter")
    report = background.refresh_due()
    assert report.skipped == {"unsupported_provider": 1}
    assert report.failed_permanently == 0
    assert stored(token).token == "old-access"


@pytest.mark.django_db
def test_refresh_ids_skips_a_token_in_its_back_off(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    token = make_token(expires_in=-10)
    scripted.script(Reply(503, "down"))
    failed = background.refresh_ids([token.pk])
    assert failed.codes == {background.FAILED_TRANSIENTLY: {"server_error": 1}}
    again = background.refresh_ids([token.pk])  # a task retried at once
    assert again.skipped == {"backoff": 1}
    assert len(scripted.token_requests) == 1


@pytest.mark.django_db(transaction=True)
def test_worker_threads_refresh_every_due_token_once(
    fake_app: SocialApp, scripted: ScriptedServer
) -> None:
    users = seed_many(fake_app)
    seen: list[background.Result] = []
    report = background.refresh_due(concurrency=4, on_result=seen.append)
    assert report.refreshed == TOKENS == len(users) == len(seen)
    assert len({r.token_id for r in seen}) == TOKENS
    assert len(scripted.token_requests) == TOKENS
    assert RefreshEvent.objects.count() == TOKENS  # each thread's buffered history written


def _closed(raw: Any) -> bool:
    """Whether a DB-API connection is closed (psycopg and sqlite3 refuse a cursor)."""
    try:
        raw.cursor().close()
    except Exception:
        return True
    return False


def _kept_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("refresh-kept")]


@pytest.mark.django_db(transaction=True)
def test_kept_threads_run_batch_after_batch_on_their_connections(
    fake_app: SocialApp, scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``refresh_ids(keep_threads=True)``, as a Celery worker runs its batches: the
    next batch runs on the same threads and database connections, each batch's
    history is written when it returns, and idle threads close their
    connections and end."""
    from django_token_rotation import signals

    monkeypatch.setattr(background, "KEEP_THREADS_IDLE", 1.0)
    seed_many(fake_app)
    ids = sorted(SocialToken.objects.values_list("pk", flat=True))
    seen: list[tuple[threading.Thread, Any]] = []

    def refreshed(**kwargs: Any) -> None:
        seen.append((threading.current_thread(), connection.connection))

    signals.token_refreshed.connect(refreshed)
    try:
        first = background.refresh_ids(ids[:6], concurrency=3, keep_threads=True)
        assert first.refreshed == 6 and RefreshEvent.objects.count() == 6
        first_seen, seen[:] = list(seen), []
        second = background.refresh_ids(ids[6:], concurrency=3, keep_threads=True)
        assert second.refreshed == len(ids) - 6 and RefreshEvent.objects.count() == len(ids)
    finally:
        signals.token_refreshed.disconnect(refreshed)
    threads = {thread for thread, _ in first_seen}
    assert {thread for thread, _ in seen} <= threads and len(threads) <= 3
    assert all(thread.name.startswith("refresh-kept") for thread in threads)
    kept = {id(raw): raw for _, raw in first_seen}
    assert {id(raw) for _, raw in seen} <= set(kept)  # no new connection
    assert not any(_closed(raw) for raw in kept.values())
    deadline = time.monotonic() + 10
    while _kept_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _kept_threads()
    assert all(_closed(raw) for raw in kept.values())
    assert len(scripted.token_requests) == len(ids)


@pytest.mark.django_db(transaction=True)
def test_kept_threads_end_when_stopped_and_are_not_kept_by_default(
    fake_app: SocialApp, scripted: ScriptedServer
) -> None:
    seed_many(fake_app)
    ids = sorted(SocialToken.objects.values_list("pk", flat=True))
    assert background.refresh_ids(ids[:4], concurrency=2).refreshed == 4
    assert not _kept_threads()
    assert (
        background.refresh_ids(ids[4:], concurrency=2, keep_threads=True).refreshed == len(ids) - 4
    )
    assert _kept_threads()
    background.stop_kept_threads()
    assert not _kept_threads()


@pytest.mark.django_db(transaction=True)
def test_an_on_result_that_raises_in_a_worker_thread_ends_the_run_with_its_error(
    fake_app: SocialApp, scripted: ScriptedServer
) -> None:
    # As with one thread: the caller's callback error reaches the caller. Every worker
    # dying on it used to leave the run blocked forever on its full work queue.
    seed_many(fake_app)
    calls: list[background.Result] = []

    def on_result(result: background.Result) -> None:
        calls.append(result)
        raise LookupError("the caller's own bug")

    ended: list[BaseException] = []

    def run() -> None:
        try:
            background.refresh_due(concurrency=2, batch_size=2, on_result=on_result)
        except BaseException as exc:
            ended.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive(), "refresh_due hangs when on_result raises in its workers"
    assert [type(exc) for exc in ended] == [LookupError]
    # Each worker stopped at its first error: no more tokens refreshed than workers.
    assert 1 <= len(calls) <= 2
    assert len(scripted.token_requests) == len(calls) < TOKENS


@pytest.mark.django_db(transaction=True)
def test_a_refresh_process_killed_mid_run_fails_the_run(
    scripted: ScriptedServer, settings: Any
) -> None:
    """A child killed from outside (the OOM killer) sends no "done": the run says
    which one died instead of waiting for it forever."""
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    release = threading.Event()
    scripted.script(Reply(200, tokens().body, hold=release))
    app = SocialApp.objects.create(provider="fake", name="F", client_id="c", secret="s")
    seed_many(app)
    failure: list[str] = []

    def run() -> None:
        try:
            background.refresh_due(processes=2)
        except RuntimeError as exc:
            failure.append(str(exc))

    runner = threading.Thread(target=run)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while len(scripted.token_requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # each child holds one request at the provider
        [victim] = [c for c in multiprocessing.active_children() if c.name == "refresh-tokens-0"]
        os.kill(victim.pid or 0, signal.SIGKILL)
    finally:
        release.set()
        runner.join(timeout=60)
    assert failure == ["refresh process(es) died: refresh-tokens-0"]
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("kept", [False, True], ids=["web request", "kept session"])
def test_the_proxy_environment_applies_to_kept_sessions_too(
    kept: bool, scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept session reads the proxy variables once per URL instead of on every
    request (client._environment): they still apply. A proxy on a port where
    nothing listens makes the call fail; excluded by ``no_proxy``, it succeeds."""
    from django_token_rotation import client

    endpoint = client.TokenEndpoint(
        url=scripted.token_url, client_id="c", client_secret="s", provider="fake"
    )
    scripted.script(Reply(200, tokens().body), Reply(200, tokens().body))
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # the discard port: nothing answers
    for excluded in ("example.invalid", "127.0.0.1"):
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.setenv(name, excluded)
        with client.keep_alive() if kept else contextlib.nullcontext():
            try:
                client.refresh_token_grant(endpoint, "old-refresh")
            except TokenRefreshUnavailable as exc:
                outcome = exc.code
            else:
                outcome = "answered"
        assert outcome == ("connection_error" if excluded == "example.invalid" else "answered")
    assert len(scripted.token_requests) == 1
