"""``manage.py refresh_tokens``: refresh the tokens that expire soon, in the background.

Thin: it selects tokens, asks the engine to refresh each one and counts the
outcomes. The engine's single-flight is the only coordination, so the command
is safe beside web traffic refreshing the same tokens, and on several hosts at
once. Exit status: 0 when nothing failed permanently, 1 when a token failed
permanently (its user must sign in again), 2 when the command could not run.
"""

from __future__ import annotations

import datetime
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from allauth.socialaccount.models import SocialToken
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.db.models import Q, QuerySet
from django.utils import timezone

from django_token_rotation import health, rotation
from django_token_rotation.conf import app_settings
from django_token_rotation.exceptions import (
    ProviderNotRefreshable,
    ReauthenticationRequired,
    TokenRefreshUnavailable,
)

REFRESHED = "refreshed"
SKIPPED = "skipped"
FAILED_PERMANENTLY = "failed permanently"
FAILED_TRANSIENTLY = "failed transiently"
ERROR = "error"
OUTCOMES = (REFRESHED, SKIPPED, FAILED_PERMANENTLY, FAILED_TRANSIENTLY)

#: Engine codes that mean "someone else is on it / not now", not a failure of this run.
NOT_NOW = frozenset({"backoff", "refresh_in_progress", "unsupported_provider"})


@dataclass(frozen=True)
class Result:
    token_id: int
    outcome: str
    code: str = ""


class Command(BaseCommand):
    help = (
        "Refresh stored allauth tokens that expire within --within seconds (default: "
        "TOKEN_ROTATION_LEEWAY), through the same single-flight as web requests."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--within",
            type=float,
            metavar="SECONDS",
            help="Refresh tokens expiring within this many seconds (default: the leeway).",
        )
        parser.add_argument(
            "--provider",
            action="append",
            metavar="ID",
            help="Only tokens of this allauth provider id (repeatable).",
        )
        parser.add_argument("--user", help="Only this user's tokens (username or primary key).")
        parser.add_argument(
            "--dry-run", action="store_true", help="List what would be refreshed; change nothing."
        )
        parser.add_argument(
            "--concurrency", type=int, default=1, metavar="N", help="Refresh in N threads."
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=500,
            metavar="N",
            help="Tokens read from the database at a time.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        within: float | None = options["within"]
        concurrency: int = options["concurrency"]
        batch_size: int = options["batch_size"]
        if within is not None and within < 0:
            raise CommandError("--within must be >= 0.", returncode=2)
        if concurrency < 1 or batch_size < 1:
            raise CommandError("--concurrency and --batch-size must be >= 1.", returncode=2)
        self.within = within
        self.batch_size = batch_size
        self.verbosity = int(options["verbosity"])
        self.progress = self.stdout.isatty() and self.verbosity >= 1
        tokens = self._selected(options["provider"], options["user"])

        counts: Counter[str] = Counter()
        codes: dict[str, Counter[str]] = {outcome: Counter() for outcome in OUTCOMES}
        started = time.monotonic()

        record_lock = threading.Lock()  # worker threads and the main thread record

        def record(result: Result) -> None:
            with record_lock:
                _record(result)

        def _record(result: Result) -> None:
            counts[result.outcome] += 1
            if result.code:
                codes.setdefault(result.outcome, Counter())[result.code] += 1
            if result.outcome in (FAILED_PERMANENTLY, FAILED_TRANSIENTLY, ERROR):
                self.stderr.write(f"token {result.token_id}: {result.outcome} ({result.code})")
            elif self.verbosity >= 2:
                detail = f" ({result.code})" if result.code else ""
                self.stdout.write(f"token {result.token_id}: {result.outcome}{detail}")
            if self.progress:
                done = sum(counts.values())
                self.stdout.write(f"\r{done} tokens done", ending="")
                self.stdout.flush()

        due = self._due(tokens, record, dry_run=options["dry_run"])
        if options["dry_run"]:
            for _ in due:
                pass
            self._summary(counts, codes, started, dry_run=True)
            return
        if concurrency == 1:
            for token in due:
                record(self._refresh(token.pk))
        else:
            self._run_threads(due, concurrency, record)
        self._summary(counts, codes, started, dry_run=False)
        if counts[ERROR]:
            raise CommandError(
                f"{counts[ERROR]} token(s) could not be processed (unexpected errors).",
                returncode=2,
            )
        if counts[FAILED_PERMANENTLY]:
            raise CommandError(
                f"{counts[FAILED_PERMANENTLY]} token(s) failed permanently: "
                "their users must sign in again.",
                returncode=1,
            )

    # -- selection ----------------------------------------------------------

    def _selected(self, providers: list[str] | None, user: str | None) -> QuerySet[SocialToken]:
        tokens: QuerySet[SocialToken] = SocialToken.objects.select_related(
            "account__user", "app", "rotation_state"
        )
        if providers:
            tokens = tokens.filter(account__provider__in=providers)
        if user is not None:
            tokens = tokens.filter(account__user=self._user(user))
        # SQL narrows by ``expires_at``; tokens without one may have a JWT expiry.
        horizon = max(self.within or 0.0, app_settings.LEEWAY)
        limit = timezone.now() + datetime.timedelta(seconds=horizon)
        return tokens.filter(Q(expires_at__lte=limit) | Q(expires_at__isnull=True))

    def _user(self, value: str) -> Any:
        User = get_user_model()
        try:
            return User._default_manager.get_by_natural_key(value)
        except User.DoesNotExist:
            pass
        if value.isdigit():
            found = User._default_manager.filter(pk=int(value)).first()
            if found is not None:
                return found
        raise CommandError(f"No user {value!r}.", returncode=2)

    def _batches(self, tokens: QuerySet[SocialToken]) -> Iterator[SocialToken]:
        """Every token, ``--batch-size`` at a time, by primary key.

        Keyset pages rather than one long ``iterator()``: no cursor stays open
        while tokens are written (on SQLite an open read blocks the writers).
        """
        last = 0
        size = self.batch_size
        while True:
            batch = list(tokens.filter(pk__gt=last).order_by("pk")[:size])
            yield from batch
            if len(batch) < size:
                return
            last = batch[-1].pk

    def _is_due(self, token: SocialToken, now: datetime.datetime) -> bool:
        state = health.state_of(token)
        if self.within is None:
            return rotation.needs_refresh(token, state, now=now)
        expires = rotation.expiry(token, state)
        return expires is not None and now >= expires - datetime.timedelta(seconds=self.within)

    def _why_not(self, token: SocialToken, now: datetime.datetime) -> str:
        """Why a due token is not refreshed (``""``: it is)."""
        return rotation.refresh_blocker(token, health.state_of(token), now=now)

    def _due(
        self, tokens: QuerySet[SocialToken], record: Callable[[Result], None], *, dry_run: bool
    ) -> Iterator[SocialToken]:
        """The due tokens that the engine should be asked to refresh; the others are
        recorded as skipped on the way."""
        for token in self._batches(tokens):
            now = timezone.now()
            if not self._is_due(token, now):
                continue
            why_not = self._why_not(token, now)
            if dry_run:
                self.stdout.write(self._describe(token, why_not))
                record(Result(token.pk, SKIPPED, why_not) if why_not else Result(token.pk, "due"))
                continue
            if why_not:
                record(Result(token.pk, SKIPPED, why_not))
                continue
            yield token

    def _describe(self, token: SocialToken, why_not: str) -> str:
        expires = rotation.expiry(token, health.state_of(token))
        when = expires.isoformat(timespec="seconds") if expires else "unknown"
        what = f"skip ({why_not})" if why_not else "would refresh"
        return (
            f"{what}: token {token.pk}, user {token.account.user}, "
            f"provider {token.account.provider}, expires {when}"
        )

    # -- refreshing ---------------------------------------------------------

    def _refresh(self, pk: int) -> Result:
        """Refresh one token by id: re-read, re-check, then through the engine."""
        token = (
            SocialToken.objects.select_related("account", "app", "rotation_state")
            .filter(pk=pk)
            .first()
        )
        if token is None:
            return Result(pk, SKIPPED, "deleted")
        now = timezone.now()
        if not self._is_due(token, now):
            return Result(pk, SKIPPED, "refreshed_elsewhere")
        why_not = self._why_not(token, now)
        if why_not:
            return Result(pk, SKIPPED, why_not)
        # Due by the leeway: the engine decides as for a web request. Due only
        # by a longer --within: ask for it (the back-off was checked above).
        force = not rotation.needs_refresh(token, health.state_of(token), now=now)
        before = token.token
        try:
            rotation.refresh(token, force=force)
        except ProviderNotRefreshable as exc:
            outcome = SKIPPED if exc.code in NOT_NOW else FAILED_PERMANENTLY
            return Result(pk, outcome, exc.code)
        except ReauthenticationRequired as exc:
            return Result(pk, FAILED_PERMANENTLY, exc.code)
        except TokenRefreshUnavailable as exc:
            return Result(pk, SKIPPED if exc.code in NOT_NOW else FAILED_TRANSIENTLY, exc.code)
        except Exception as exc:  # reported by type only: a message could quote data
            return Result(pk, ERROR, type(exc).__name__)
        if token.token != before:
            return Result(pk, REFRESHED)
        return Result(pk, SKIPPED, "not_due")

    def _run_threads(
        self, tokens: Iterator[SocialToken], concurrency: int, record: Callable[[Result], None]
    ) -> None:
        """Refresh with ``concurrency`` worker threads. Each keeps its database
        connection for its whole life (not one connection per token) and closes
        it when the work is done."""
        work: queue.Queue[int | None] = queue.Queue(maxsize=2 * concurrency)

        def worker() -> None:
            try:
                while (pk := work.get()) is not None:
                    try:
                        result = self._refresh(pk)
                    except BaseException as exc:  # reported by type only
                        result = Result(pk, ERROR, type(exc).__name__)
                    record(result)
            finally:
                connections.close_all()  # this thread's connections

        threads = [
            threading.Thread(target=worker, name=f"refresh-{n}", daemon=True)
            for n in range(concurrency)
        ]
        for thread in threads:
            thread.start()
        try:
            for token in tokens:
                work.put(token.pk)
        finally:
            for _ in threads:
                work.put(None)
            for thread in threads:
                thread.join()

    # -- output -------------------------------------------------------------

    def _summary(
        self,
        counts: Counter[str],
        codes: dict[str, Counter[str]],
        started: float,
        *,
        dry_run: bool,
    ) -> None:
        if self.progress:
            self.stdout.write("")
        elapsed = time.monotonic() - started
        if dry_run:
            self.stdout.write(
                f"Dry run: {counts['due']} token(s) would be refreshed, "
                f"{counts[SKIPPED]} skipped{self._codes(codes.get(SKIPPED))}."
            )
            return
        parts = [
            f"{outcome} {counts[outcome]}{self._codes(codes.get(outcome))}" for outcome in OUTCOMES
        ]
        if counts[ERROR]:
            parts.append(f"errors {counts[ERROR]}{self._codes(codes.get(ERROR))}")
        line = ", ".join(parts).capitalize() + f" in {elapsed:.1f} s."
        style = self.style.ERROR if counts[FAILED_PERMANENTLY] or counts[ERROR] else None
        self.stdout.write(line, style_func=style)

    @staticmethod
    def _codes(codes: Counter[str] | None) -> str:
        if not codes:
            return ""
        return " (" + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())) + ")"
