"""Refresh what is due, in the background: the library function behind
``manage.py refresh_tokens`` and the Celery (and ``django.tasks``) tasks.

:func:`refresh_due` selects the stored tokens that are due and asks the engine
to refresh each one, in threads and, if asked, in several processes. It takes
no lock of its own: the engine's single-flight (a per-token lease in the
database) is the only coordination, so a run is safe beside web requests,
other runs, Celery workers and other hosts refreshing the same tokens.

A token is *due* when its access token expires within ``within`` seconds (by
default the engine's leeway), or when its refresh token expires within
``refresh_within`` seconds (``TokenState.refresh_expires_at``, known when the
provider sends ``refresh_expires_in``): refreshing it then keeps an idle grant
alive.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from allauth.socialaccount.models import SocialToken
from django.db import connections
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Mod
from django.utils import timezone

from . import client, history, rotation, transactions
from . import providers as provider_resolution
from .conf import app_settings
from .exceptions import (
    ImproperlyConfiguredProvider,
    ProviderNotRefreshable,
    ReauthenticationRequired,
    TokenRefreshUnavailable,
)
from .expiry import expiry, needs_refresh
from .models import refresh_blocker
from .store import state_of

REFRESHED = "refreshed"
SKIPPED = "skipped"
FAILED_PERMANENTLY = "failed permanently"
FAILED_TRANSIENTLY = "failed transiently"
ERROR = "error"
#: What a dry run counts instead of refreshing.
DUE = "due"
OUTCOMES = (REFRESHED, SKIPPED, FAILED_PERMANENTLY, FAILED_TRANSIENTLY, ERROR)

#: Engine codes that mean "someone else is on it / not now", not a failure of this run.
NOT_NOW = frozenset({"backoff", "refresh_in_progress", "unsupported_provider"})

OnResult = Callable[["Result"], None]


@dataclass(frozen=True)
class Result:
    """What happened to one token. Never a token value."""

    token_id: int
    outcome: str
    #: The engine's error code, or why the token was skipped.
    code: str = ""
    #: Set by dry runs only: the token that would be refreshed or skipped.
    token: SocialToken | None = field(default=None, compare=False, repr=False)


@dataclass
class Report:
    """The outcome of a run: counts by outcome, and by code within each outcome."""

    counts: Counter[str] = field(default_factory=Counter)
    codes: dict[str, Counter[str]] = field(default_factory=dict)
    #: Token ids that raised an unexpected error (reported by exception type only).
    errors: list[int] = field(default_factory=list)
    duration: float = 0.0
    dry_run: bool = False

    def add(self, result: Result) -> None:
        self.counts[result.outcome] += 1
        if result.code:
            self.codes.setdefault(result.outcome, Counter())[result.code] += 1
        if result.outcome == ERROR:
            self.errors.append(result.token_id)

    def merge(self, other: Report) -> None:
        self.counts.update(other.counts)
        for outcome, codes in other.codes.items():
            self.codes.setdefault(outcome, Counter()).update(codes)
        self.errors.extend(other.errors)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def refreshed(self) -> int:
        return self.counts[REFRESHED]

    @property
    def failed_permanently(self) -> int:
        return self.counts[FAILED_PERMANENTLY]

    @property
    def skipped(self) -> dict[str, int]:
        """Why tokens were skipped: ``{code: count}``."""
        return dict(self.codes.get(SKIPPED, {}))

    @property
    def tokens_per_s(self) -> float:
        return self.total / self.duration if self.duration else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable, as a task result."""
        return {
            "counts": dict(self.counts),
            "codes": {outcome: dict(codes) for outcome, codes in self.codes.items()},
            "errors": list(self.errors),
            "duration": round(self.duration, 3),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return cls(
            counts=Counter(data.get("counts", {})),
            codes={o: Counter(c) for o, c in data.get("codes", {}).items()},
            errors=list(data.get("errors", [])),
            duration=float(data.get("duration", 0.0)),
        )


@dataclass(frozen=True)
class Selection:
    """Which tokens a run looks at, and how far ahead."""

    #: Seconds ahead of the access token's expiry (``None``: the engine's leeway).
    within: float | None = None
    #: Seconds ahead of the refresh token's expiry (``None``: as far as ``within``).
    refresh_within: float | None = None
    providers: tuple[str, ...] = ()
    users: tuple[Any, ...] = ()

    def queryset(self, *, shard: tuple[int, int] | None = None) -> QuerySet[SocialToken]:
        """The candidate tokens; :meth:`why_due` has the final word on each."""
        # The write database: due or not is decided on the newest values.
        tokens: QuerySet[SocialToken] = SocialToken.objects.using(
            transactions.database()
        ).select_related("account", "app", "rotation_state")
        if self.providers:
            tokens = tokens.filter(account__provider__in=self.providers)
        if self.users:
            tokens = tokens.filter(account__user__in=self.users)
        now = timezone.now()
        access = now + datetime.timedelta(seconds=self.access_horizon)
        refresh = now + datetime.timedelta(seconds=self.refresh_horizon)
        # SQL narrows by ``expires_at``; tokens without one may have a JWT expiry.
        tokens = tokens.filter(
            Q(expires_at__lte=access)
            | Q(expires_at__isnull=True)
            | Q(rotation_state__refresh_expires_at__lte=refresh)
        )
        if shard is not None:
            index, count = shard
            tokens = tokens.alias(shard=Mod(F("pk"), count)).filter(shard=index)
        return tokens

    @property
    def access_horizon(self) -> float:
        return max(self.within or 0.0, app_settings.LEEWAY)

    @property
    def refresh_horizon(self) -> float:
        if self.refresh_within is not None:
            return self.refresh_within
        return self.access_horizon

    def is_due(self, token: SocialToken, now: datetime.datetime) -> bool:
        state = state_of(token)
        if self.within is None:
            if needs_refresh(token, state, now=now):
                return True
        else:
            expires = expiry(token, state)
            if expires is not None and now >= expires - datetime.timedelta(seconds=self.within):
                return True
        idle_until = state.refresh_expires_at if state is not None else None
        return idle_until is not None and now >= idle_until - datetime.timedelta(
            seconds=self.refresh_horizon
        )


def due(
    selection: Selection, *, batch_size: int = 500, shard: tuple[int, int] | None = None
) -> Iterator[tuple[SocialToken, str]]:
    """Every due token with why it must not be refreshed now (``""``: it may).

    Keyset pages by primary key rather than one long ``iterator()``: no cursor
    stays open while tokens are written (on SQLite an open read blocks the
    writers), and memory stays flat however many tokens there are.
    """
    tokens = selection.queryset(shard=shard).order_by("pk")
    last = 0
    while True:
        batch = list(tokens.filter(pk__gt=last)[:batch_size])
        now = timezone.now()
        for token in batch:
            if selection.is_due(token, now):
                yield token, refresh_blocker(token, state_of(token), now=now)
        if len(batch) < batch_size:
            return
        last = batch[-1].pk


def due_ids(selection: Selection, *, batch_size: int = 500) -> Iterator[list[int]]:
    """The due tokens that may be refreshed now, as lists of at most ``batch_size`` ids."""
    ids: list[int] = []
    for token, blocker in due(selection, batch_size=batch_size):
        if not blocker:
            ids.append(token.pk)
            if len(ids) >= batch_size:
                yield ids
                ids = []
    if ids:
        yield ids


def refresh_one(token: SocialToken, selection: Selection) -> Result:
    """Ask the engine to refresh one due token; what happened."""
    pk = token.pk
    now = timezone.now()
    state = state_of(token)
    # Due by the leeway: the engine decides as for a web request. Due only by
    # a longer window (or an idle refresh token): ask for it; the back-off was
    # checked when the token was selected.
    force = not needs_refresh(token, state, now=now)
    before = (token.token, token.expires_at)
    try:
        rotation.refresh(token, force=force)
    except ImproperlyConfiguredProvider as exc:
        # The site's configuration, not the user: fixed by a person, retried after a back-off.
        return Result(pk, FAILED_TRANSIENTLY, exc.code)
    except ProviderNotRefreshable as exc:
        return Result(pk, SKIPPED if exc.code in NOT_NOW else FAILED_PERMANENTLY, exc.code)
    except ReauthenticationRequired as exc:
        return Result(pk, FAILED_PERMANENTLY, exc.code)
    except TokenRefreshUnavailable as exc:
        # Also anything unexpected in the engine (a bug, the database gone):
        # rotation.refresh raises it as TokenRefreshUnavailable("internal_error").
        return Result(pk, SKIPPED if exc.code in NOT_NOW else FAILED_TRANSIENTLY, exc.code)
    if (token.token, token.expires_at) != before:
        return Result(pk, REFRESHED)
    return Result(pk, SKIPPED, "not_due")


def refresh_due(
    *,
    within: float | None = None,
    refresh_within: float | None = None,
    providers: Iterable[str] = (),
    users: Iterable[Any] = (),
    concurrency: int = 1,
    processes: int = 1,
    batch_size: int = 500,
    dry_run: bool = False,
    on_result: OnResult | None = None,
) -> Report:
    """Refresh every stored token that is due; a :class:`Report` of what happened.

    ``within``: seconds ahead of the access token's expiry (default: the
    leeway). ``refresh_within``: seconds ahead of the refresh token's expiry
    (default: as far as ``within``). ``providers``: allauth provider ids;
    ``users``: users or their primary keys (both: all when empty).
    ``concurrency`` threads in each of ``processes`` processes (forked; each
    takes every ``processes``-th token by primary key). ``dry_run`` refreshes
    nothing: each due token is reported as ``due`` (or skipped) with the token
    itself in :attr:`Result.token`. ``on_result`` is called for every token
    (from worker threads, one at a time); an exception it raises ends the run
    (the tokens being refreshed at that moment finish) and is raised here.
    """
    if concurrency < 1 or processes < 1 or batch_size < 1:
        raise ValueError("concurrency, processes and batch_size must be >= 1.")
    if (within is not None and within < 0) or (refresh_within is not None and refresh_within < 0):
        raise ValueError("within and refresh_within must be >= 0.")
    selection = Selection(within, refresh_within, tuple(providers), tuple(users))
    report = Report(dry_run=dry_run)
    lock = threading.Lock()

    def record(result: Result) -> None:
        with lock:
            report.add(result)
            if on_result is not None:
                on_result(result)

    started = time.monotonic()
    with _run_scope():
        if dry_run:
            for token, blocker in due(selection, batch_size=batch_size):
                record(Result(token.pk, SKIPPED if blocker else DUE, blocker, token=token))
        elif processes > 1:
            _in_processes(selection, concurrency, processes, batch_size, record)
        else:
            _in_threads(selection, concurrency, batch_size, record)
    report.duration = time.monotonic() - started
    return report


def refresh_ids(
    ids: Collection[int],
    *,
    within: float | None = None,
    refresh_within: float | None = None,
    concurrency: int = 1,
    keep_threads: bool = False,
) -> Report:
    """Refresh the tokens ``ids`` that are still due (one query reads them all).

    What a Celery task runs for its share of a sweep: a token refreshed
    meanwhile (by a web request, another worker, or this very task before a
    retry) is no longer due and is skipped; one due still goes through the
    engine's single-flight, which never sends a refresh token twice.

    ``keep_threads``: the ``concurrency`` threads (with their database
    connections and HTTP sessions) are kept in this process for the next call,
    up to :data:`KEEP_THREADS_IDLE` seconds: what a worker process running one
    batch task after another wants (a new PostgreSQL connection costs the server
    about 5 ms of CPU). Not for tests that drop their database afterwards: the
    Celery task keeps them only when it is not run eagerly.
    """
    selection = Selection(within, refresh_within)
    report = Report()
    started = time.monotonic()
    tokens = {t.pk: t for t in selection.queryset().filter(pk__in=list(ids))}
    now = timezone.now()
    work = []
    for pk in ids:
        token = tokens.get(pk)
        if token is None or not selection.is_due(token, now):
            report.add(Result(pk, SKIPPED, "not_due"))
            continue
        blocker = refresh_blocker(token, state_of(token), now=now)
        if blocker:
            report.add(Result(pk, SKIPPED, blocker))
        else:
            work.append(token)
    lock = threading.Lock()

    def record(result: Result) -> None:
        with lock:
            report.add(result)

    with _run_scope():
        _run(iter(work), selection, concurrency, record, keep_threads=keep_threads)
    report.duration = time.monotonic() - started
    return report


# -- threads and processes ------------------------------------------------------


@contextmanager
def _run_scope() -> Iterator[None]:
    """What a run over many tokens shares: each app's endpoint resolved once, one
    HTTP session per thread (its connections kept alive), the refresh history
    written in batches."""
    with provider_resolution.resolution_cache(), client.keep_alive(), history.buffered():
        yield


def _in_threads(
    selection: Selection,
    concurrency: int,
    batch_size: int,
    record: OnResult,
    shard: tuple[int, int] | None = None,
) -> None:
    def refreshable() -> Iterator[SocialToken]:
        for token, blocker in due(selection, batch_size=batch_size, shard=shard):
            if blocker:
                record(Result(token.pk, SKIPPED, blocker))
            else:
                yield token

    _run(refreshable(), selection, concurrency, record)


def _run(
    tokens: Iterator[SocialToken],
    selection: Selection,
    concurrency: int,
    record: OnResult,
    *,
    keep_threads: bool = False,
) -> None:
    """Refresh ``tokens`` in this thread, or with ``concurrency`` worker threads.

    Each worker thread keeps its database connection for its whole life (not
    one per token) and closes it when the work is done; with ``keep_threads``,
    the threads are this process's :data:`_crew`, kept for the next run.
    """
    if concurrency == 1:
        for token in tokens:
            record(refresh_one(token, selection))
        return
    work: queue.Queue[SocialToken | None] = queue.Queue(maxsize=2 * concurrency)
    # What ``record`` (the caller's ``on_result``) raised in a worker: no more tokens
    # are handed out, the workers drain the queue, and it is raised here as it would
    # be with one thread (a dead worker must not leave ``work.put`` blocked forever).
    failed: list[BaseException] = []

    crew = keep_threads and _crew.use.acquire(blocking=False)
    finished = threading.Semaphore(0)

    def worker() -> None:
        try:
            if crew:
                _discard_broken_connections()
            with history.buffered():
                while (token := work.get()) is not None:
                    if failed:
                        continue
                    try:
                        result = refresh_one(token, selection)
                    except BaseException as exc:  # reported by type only
                        result = Result(token.pk, ERROR, type(exc).__name__)
                    try:
                        record(result)
                    except BaseException as exc:
                        failed.append(exc)
        finally:
            if crew:
                finished.release()  # the connections stay with the thread
            else:
                connections.close_all()  # this thread's connections
                client.close_sessions()

    threads = []
    try:
        if crew:
            _crew.run(worker, concurrency)
        else:
            threads = [
                threading.Thread(target=worker, name=f"refresh-{n}", daemon=True)
                for n in range(concurrency)
            ]
            for thread in threads:
                thread.start()
        try:
            for token in tokens:
                if failed:
                    break
                work.put(token)
        finally:
            for _ in range(concurrency):
                work.put(None)
            for thread in threads:
                thread.join()
            if crew:
                for _ in range(concurrency):
                    finished.acquire()
    finally:
        if crew:
            _crew.use.release()
    if failed:
        raise failed[0]


#: Seconds a thread of :data:`_crew` waits for the next run before it closes
#: its database connections and HTTP session and ends.
KEEP_THREADS_IDLE = 60.0


class _Crew:
    """Refresher threads kept in this process between runs (``refresh_ids(...,
    keep_threads=True)``: a Celery worker's batch tasks, one after another),
    each with its database connections and HTTP session. One run at a time uses
    them (``use``; a concurrent run starts threads of its own). A thread that
    waits :data:`KEEP_THREADS_IDLE` seconds for a run closes its connections and
    ends; :meth:`stop` ends them all now."""

    def __init__(self) -> None:
        self._forget()

    def _forget(self) -> None:
        """New and empty (also in a forked child: the parent's threads are not there)."""
        self.use = threading.Lock()
        self._guard = threading.Lock()
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._waiting = 0
        self._threads: list[threading.Thread] = []

    def run(self, job: Callable[[], None], count: int) -> None:
        """Have ``count`` threads run ``job`` (waiting threads first, then new ones)."""
        with self._guard:
            self._threads = [t for t in self._threads if t.is_alive()]
            while True:  # a stop's wake-ups not taken (a thread ended idle meanwhile)
                try:
                    self._jobs.get_nowait()
                except queue.Empty:
                    break
            for _ in range(count):
                self._jobs.put(job)
            taken = min(self._waiting, count)
            self._waiting -= taken
            for _ in range(count - taken):
                thread = threading.Thread(
                    target=self._serve, name=f"refresh-kept-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _serve(self) -> None:
        try:
            while True:
                try:
                    job = self._jobs.get(timeout=KEEP_THREADS_IDLE)
                except queue.Empty:
                    with self._guard:
                        if self._jobs.empty():
                            self._waiting -= 1
                            return
                    continue
                if job is None:
                    return
                job()  # reports its own failures (raising, this thread ends uncounted)
                with self._guard:
                    self._waiting += 1
        finally:
            connections.close_all()  # this thread's connections
            client.close_sessions()

    def stop(self) -> None:
        """End every kept thread (after the run in progress, if any)."""
        with self.use, self._guard:
            threads, self._threads = self._threads, []
            for _ in threads:
                self._jobs.put(None)
            self._waiting = 0
        for thread in threads:
            thread.join()


_crew = _Crew()
os.register_at_fork(after_in_child=_crew._forget)


def stop_kept_threads() -> None:
    """End the threads ``refresh_ids(..., keep_threads=True)`` kept, closing
    their database connections (before a test database is dropped, say)."""
    _crew.stop()


def _discard_broken_connections() -> None:
    """This kept thread's connections that failed in an earlier run and no
    longer answer are closed (reopened on next use), as Django does for a
    request's connections between requests."""
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None and connection.errors_occurred:
            if connection.is_usable():
                connection.errors_occurred = False
            else:
                connection.close()


_DONE = None


def _in_processes(
    selection: Selection, concurrency: int, processes: int, batch_size: int, record: OnResult
) -> None:
    """Refresh in ``processes`` forked processes, each taking every
    ``processes``-th token by primary key, with ``concurrency`` threads each.

    Children open their own database connections (the parent closes its own
    before forking: a connection must never be shared across a fork) and send
    back one small result per token, which the parent records.
    """
    context = multiprocessing.get_context("fork")
    results: Any = context.Queue()
    connections.close_all()
    children = [
        context.Process(
            target=_child,
            args=(selection, concurrency, batch_size, (index, processes), results),
            name=f"refresh-tokens-{index}",
            daemon=True,
        )
        for index in range(processes)
    ]
    for child in children:
        child.start()
    running = len(children)
    try:
        while running:
            try:
                item = results.get(timeout=0.5)
            except queue.Empty:
                if any(c.exitcode not in (None, 0) for c in children):
                    dead = [c.name for c in children if c.exitcode not in (None, 0)]
                    raise RuntimeError(f"refresh process(es) died: {', '.join(dead)}") from None
                continue
            if item is _DONE:
                running -= 1
            else:
                record(Result(*item))
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.terminate()


def _child(
    selection: Selection,
    concurrency: int,
    batch_size: int,
    shard: tuple[int, int],
    results: Any,
) -> None:
    def send(result: Result) -> None:
        results.put((result.token_id, result.outcome, result.code))

    try:
        _in_threads(selection, concurrency, batch_size, send, shard=shard)
    finally:
        history.flush()  # this (main) thread's events, when concurrency is 1
        connections.close_all()
        results.put(_DONE)


__all__ = [
    "DUE",
    "ERROR",
    "FAILED_PERMANENTLY",
    "FAILED_TRANSIENTLY",
    "OUTCOMES",
    "REFRESHED",
    "SKIPPED",
    "Report",
    "Result",
    "Selection",
    "due",
    "due_ids",
    "refresh_due",
    "refresh_ids",
]
