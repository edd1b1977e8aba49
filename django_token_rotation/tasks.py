"""Background refresh as tasks: Celery (the ``[celery]`` extra) and, on Django 6.0+,
Django's own tasks framework (``django.tasks``).

Both offer the same two tasks over :mod:`django_token_rotation.background`:

* a *sweep* (``refresh_due_tokens``), to schedule with Celery beat (or cron):
  it finds the due tokens, ``batch_size`` at a time, and enqueues one
  ``refresh_token_batch`` task per batch, for any worker on any host;
* ``refresh_token_batch(ids)``: re-reads those tokens in one query and refreshes
  the ones still due through the engine.

No lock of their own: the engine's single-flight (a lease on each token's row)
coordinates workers, web requests and ``manage.py refresh_tokens``. A task that
runs twice - retried, redelivered after a worker died (``acks_late``), or
enqueued again by the next sweep before the first ran - finds its tokens no
longer due and skips them; a token still due goes through the single-flight and
its in-flight fingerprint, which never send a refresh token twice.

Celery tasks are registered with ``shared_task`` under the names
``django_token_rotation.refresh_due_tokens`` and
``django_token_rotation.refresh_token_batch``. The ``django.tasks`` versions are
``django_refresh_due_tokens`` and ``django_refresh_token_batch`` in this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.db import DatabaseError

from . import background

#: Tokens per batch task, by default: big enough to amortise the task's own cost
#: and its one read, small enough to spread over workers.
BATCH_SIZE = 50
#: Threads per batch task, by default: refreshing is waiting on the provider.
CONCURRENCY = 8


def sweep(
    enqueue: Callable[[list[int], dict[str, Any]], Any],
    *,
    within: float | None = None,
    refresh_within: float | None = None,
    providers: Iterable[str] = (),
    batch_size: int = BATCH_SIZE,
    concurrency: int = CONCURRENCY,
) -> dict[str, Any]:
    """Find the due tokens and call ``enqueue(ids, options)`` once per batch.

    What both frameworks' sweep tasks run; returns ``{"tokens": n, "batches": n,
    "ids": [task ids...]}`` (task ids as ``enqueue`` returned them).
    """
    selection = background.Selection(within, refresh_within, tuple(providers))
    options = {"within": within, "refresh_within": refresh_within, "concurrency": concurrency}
    tokens = 0
    task_ids = []
    for ids in background.due_ids(selection, batch_size=batch_size):
        task_ids.append(enqueue(ids, options))
        tokens += len(ids)
    return {"tokens": tokens, "batches": len(task_ids), "ids": task_ids}


def refresh_batch(
    ids: list[int],
    *,
    within: float | None = None,
    refresh_within: float | None = None,
    concurrency: int = CONCURRENCY,
    keep_threads: bool = False,
) -> dict[str, Any]:
    """Refresh the tokens ``ids`` that are still due; the report as a dict.
    ``keep_threads``: see :func:`.background.refresh_ids`."""
    report = background.refresh_ids(
        ids,
        within=within,
        refresh_within=refresh_within,
        concurrency=concurrency,
        keep_threads=keep_threads,
    )
    return report.as_dict()


# -- Celery ---------------------------------------------------------------------

try:
    from celery import shared_task
except ImportError:  # the [celery] extra is not installed
    pass
else:

    @shared_task(  # type: ignore[untyped-decorator,unused-ignore]
        name="django_token_rotation.refresh_token_batch",
        acks_late=True,
        # A worker that dies mid-batch: the batch is redelivered and re-checked.
        reject_on_worker_lost=True,
        # The database went away: try again later (nothing was sent, or the
        # single-flight knows what was).
        autoretry_for=(DatabaseError,),
        retry_backoff=True,
        max_retries=5,
    )
    def refresh_token_batch(
        ids: list[int],
        within: float | None = None,
        refresh_within: float | None = None,
        concurrency: int = CONCURRENCY,
    ) -> dict[str, Any]:
        """Celery: refresh the tokens ``ids`` that are still due.

        In a worker, the batch's threads and their database connections are kept
        for the next batch (``background.refresh_ids(keep_threads=True)``); run
        eagerly (tests, ``task_always_eager``), they end with the batch.
        """
        return refresh_batch(
            ids,
            within=within,
            refresh_within=refresh_within,
            concurrency=concurrency,
            keep_threads=not refresh_token_batch.request.is_eager,
        )

    @shared_task(name="django_token_rotation.refresh_due_tokens")  # type: ignore[untyped-decorator,unused-ignore]
    def refresh_due_tokens(
        within: float | None = None,
        refresh_within: float | None = None,
        providers: list[str] | None = None,
        batch_size: int = BATCH_SIZE,
        concurrency: int = CONCURRENCY,
        expires: float | None = 300,
    ) -> dict[str, Any]:
        """Celery beat: fan the due tokens out as ``refresh_token_batch`` tasks.

        ``expires`` (seconds): batches not started by then are dropped, so a
        backlog never piles up sweep after sweep (the next sweep finds what is
        still due). Routing follows the app's ``task_routes``.
        """

        def enqueue(ids: list[int], options: dict[str, Any]) -> str:
            result = refresh_token_batch.apply_async(args=(ids,), kwargs=options, expires=expires)
            return str(result.id)

        return sweep(
            enqueue,
            within=within,
            refresh_within=refresh_within,
            providers=providers or (),
            batch_size=batch_size,
            concurrency=concurrency,
        )


# -- django.tasks (Django 6.0+) ---------------------------------------------------

try:
    from django.tasks import task  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # Django < 6.0
    pass
else:

    @task  # type: ignore[untyped-decorator,unused-ignore]
    def django_refresh_token_batch(
        ids: list[int],
        within: float | None = None,
        refresh_within: float | None = None,
        concurrency: int = CONCURRENCY,
    ) -> dict[str, Any]:
        """``django.tasks``: refresh the tokens ``ids`` that are still due."""
        return refresh_batch(
            ids, within=within, refresh_within=refresh_within, concurrency=concurrency
        )

    @task  # type: ignore[untyped-decorator,unused-ignore]
    def django_refresh_due_tokens(
        within: float | None = None,
        refresh_within: float | None = None,
        providers: list[str] | None = None,
        batch_size: int = BATCH_SIZE,
        concurrency: int = CONCURRENCY,
    ) -> dict[str, Any]:
        """``django.tasks``: enqueue a ``django_refresh_token_batch`` per batch of due tokens."""

        def enqueue(ids: list[int], options: dict[str, Any]) -> str:
            return str(django_refresh_token_batch.enqueue(ids, **options).id)

        return sweep(
            enqueue,
            within=within,
            refresh_within=refresh_within,
            providers=providers or (),
            batch_size=batch_size,
            concurrency=concurrency,
        )
