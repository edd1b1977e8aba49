"""The tasks (``django_token_rotation.tasks``) with a real Celery worker and Redis.

The worker is its own OS process (``celery -A tests.celery_app worker``, prefork,
2 processes) on this run's own Redis database and queue, sharing the test's
SQLite file database; the token endpoint is a real HTTP server in this process.
Redis unreachable: skipped with the reason, a failure under ``CI=true``.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken

from django_token_rotation import background, tasks
from django_token_rotation.models import TokenState
from tests.helpers import (
    IN_CI,
    ROOT,
    SECRETS,
    TOKENS,
    MakeToken,
    call_refresh_tokens,
    seed_many,
    worker_env,
)
from tests.scripted_server import Reply, ScriptedServer, tokens

REDIS = ("127.0.0.1", int(os.environ.get("TOKEN_ROTATION_TEST_REDIS_PORT", "6379")))

# This run's own Redis database and queue, so that parallel runs never share tasks.
BROKER = f"redis://{REDIS[0]}:{REDIS[1]}/{random.randint(1, 15)}"
QUEUE = f"token-rotation-tests-{os.getpid()}-{uuid.uuid4().hex[:8]}"

pytestmark = pytest.mark.usefixtures("hidden_secrets")


def _redis_reachable() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=0.5):
            return True
    except OSError:
        return False


def _need(ok: bool, reason: str) -> None:
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{reason}, and CI=true: the Celery tests must run in CI (see .ci/run).")
    pytest.skip(reason)


@pytest.fixture
def celery_worker(tmp_path: Path, scripted: ScriptedServer, settings: Any) -> Iterator[Any]:
    """A real Celery worker process on this run's own Redis database and queue."""
    try:
        import celery  # noqa: F401
    except ImportError:
        _need(False, "Celery is not installed (pip install -e '.[test]')")
    _need(_redis_reachable(), f"Redis is not reachable at {REDIS[0]}:{REDIS[1]}")
    from tests.celery_app import app

    # Set once per run: the app keeps its broker connections.
    broker, queue = BROKER, QUEUE
    if app.conf.task_default_queue != queue:
        app.conf.update(
            broker_url=broker, result_backend=broker, task_default_queue=queue, result_expires=600
        )
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    env = worker_env(
        "default",
        TOKEN_ROTATION_TEST_FAKE_TOKEN_URL=scripted.token_url,
        TOKEN_ROTATION_TEST_CELERY_BROKER=broker,
        TOKEN_ROTATION_TEST_CELERY_QUEUE=queue,
    )
    log = tmp_path / "worker.log"
    with log.open("w") as output:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.celery_app",
                "worker",
                "--pool=prefork",
                "--concurrency=2",
                "--loglevel=INFO",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                f"--queues={queue}",
            ],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with its children
        )
    try:
        yield app
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        text = log.read_text()
        print(f"\n-- worker log (last lines) --\n{text[-2000:]}")
        for secret in SECRETS:
            assert secret not in text, "the worker logged a secret"


def _reports(app: Any, task_ids: list[str]) -> background.Report:
    total = background.Report()
    for task_id in task_ids:
        total.merge(background.Report.from_dict(app.AsyncResult(task_id).get(timeout=90)))
    return total


@pytest.mark.django_db(transaction=True)
def test_worker_sweep_beside_the_command_refreshes_each_token_once(
    celery_worker: Any, scripted: ScriptedServer
) -> None:
    """The beat task fans out batches to a 2-process worker while ``refresh_tokens``
    runs on the same tokens: one refresh per token reaches the provider."""
    scripted.script(Reply(200, tokens().body, delay=0.2))
    app = SocialApp.objects.create(provider="fake", name="F", client_id="c", secret="s")
    seed_many(app)
    command_out: list[str] = []
    command = threading.Thread(
        target=lambda: command_out.append(call_refresh_tokens("--concurrency", "3")[0])
    )

    sweep = tasks.refresh_due_tokens.apply_async(kwargs={"batch_size": 4, "concurrency": 3})
    command.start()
    fanned = sweep.get(timeout=90)
    command.join(90)
    report = _reports(celery_worker, fanned["ids"])

    sent = Counter(r.form["refresh_token"] for r in scripted.token_requests)
    print(f"sweep: {fanned['tokens']} tokens in {fanned['batches']} batches; {report.counts}")
    assert sent == {f"old-refresh-{i}": 1 for i in range(TOKENS)}
    assert set(SocialToken.objects.values_list("token", flat=True)) == {"new-access"}
    assert sum(TokenState.objects.values_list("refresh_count", flat=True)) == TOKENS
    assert report.errors == [] and report.failed_permanently == 0
    assert "Refreshed" in command_out[0]

    # The same batches delivered again (a retry, a redelivery): nothing is due, no call.
    ids = sorted(SocialToken.objects.values_list("pk", flat=True))
    again = _reports(celery_worker, [tasks.refresh_token_batch.apply_async(args=(ids,)).id])
    assert again.skipped == {"not_due": TOKENS}
    assert len(scripted.token_requests) == TOKENS


@pytest.mark.django_db(transaction=True)
def test_a_batch_delivered_twice_at_once_refreshes_once(
    celery_worker: Any, scripted: ScriptedServer
) -> None:
    """A redelivered batch running beside the first delivery (``acks_late``: a worker
    was presumed lost): the single-flight lets one refresh per token through."""
    scripted.script(Reply(200, tokens().body, delay=0.3))
    app = SocialApp.objects.create(provider="fake", name="F", client_id="c", secret="s")
    seed_many(app)
    ids = sorted(SocialToken.objects.values_list("pk", flat=True))

    first = tasks.refresh_token_batch.apply_async(args=(ids,), kwargs={"concurrency": 4})
    second = tasks.refresh_token_batch.apply_async(args=(ids,), kwargs={"concurrency": 4})
    report = _reports(celery_worker, [first.id, second.id])

    sent = Counter(r.form["refresh_token"] for r in scripted.token_requests)
    assert sent == {f"old-refresh-{i}": 1 for i in range(TOKENS)}
    assert report.total == 2 * TOKENS and report.errors == []
    assert report.failed_permanently == 0 and report.counts[background.FAILED_TRANSIENTLY] == 0
    # Retried afterwards: nothing left to do, nothing sent.
    late = tasks.refresh_token_batch.apply_async(args=(ids,)).get(timeout=90)
    assert background.Report.from_dict(late).skipped == {"not_due": TOKENS}
    assert len(scripted.token_requests) == TOKENS


@pytest.mark.django_db
def test_django_tasks_sweep(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, settings: Any
) -> None:
    """Django 6's tasks framework, with its immediate backend: the same sweep and batches."""
    if not hasattr(tasks, "django_refresh_due_tokens"):
        pytest.skip("django.tasks needs Django 6.0+ (CI runs it on Python 3.13, Django 6)")
    settings.TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
    made = [make_token(expires_in=-10) for _ in range(3)]
    # One thread: worker threads would not see this test's open transaction.
    result = tasks.django_refresh_due_tokens.enqueue(batch_size=2, concurrency=1)
    assert result.return_value["tokens"] == 3 and result.return_value["batches"] == 2
    assert {SocialToken.objects.get(pk=t.pk).token for t in made} == {"new-access"}
    assert len(scripted.token_requests) == 3


@pytest.mark.django_db
def test_celery_tasks_in_process(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    """The Celery tasks run in this process, as with ``CELERY_TASK_ALWAYS_EAGER`` (a
    development setting): the sweep fans the due tokens out in batches, each batch
    refreshes its tokens, and the same batch delivered again sends nothing."""
    try:
        import celery  # noqa: F401
    except ImportError:
        _need(False, "Celery is not installed (pip install -e '.[test]')")
    conf = tasks.refresh_due_tokens.app.conf
    eager, conf.task_always_eager = conf.task_always_eager, True
    try:
        made = [make_token(expires_in=-10) for _ in range(3)]
        # One thread: worker threads would not see this test's open transaction.
        fanned = tasks.refresh_due_tokens.apply(kwargs={"batch_size": 2, "concurrency": 1}).get()
        assert fanned["tokens"] == 3 and fanned["batches"] == 2 and len(fanned["ids"]) == 2
        assert {SocialToken.objects.get(pk=t.pk).token for t in made} == {"new-access"}
        assert len(scripted.token_requests) == 3

        again = tasks.refresh_token_batch.apply(args=([t.pk for t in made],)).get()
        assert background.Report.from_dict(again).skipped == {"not_due": 3}
        assert len(scripted.token_requests) == 3
    finally:
        conf.task_always_eager = eager
