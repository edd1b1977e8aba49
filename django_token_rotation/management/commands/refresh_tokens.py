"""``manage.py refresh_tokens``: refresh the tokens that are due, in the background.

Thin: arguments, progress, output and exit status over
:func:`django_token_rotation.background.refresh_due`. Exit status: 0 when
nothing failed permanently, 1 when a token failed permanently (its user must
sign in again), 2 when the command could not run or a token hit an unexpected
error.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_token_rotation import background, health
from django_token_rotation.expiry import expiry
from django_token_rotation.store import state_of


class Command(BaseCommand):
    help = (
        "Refresh stored allauth tokens that expire within --within seconds (default: "
        "TOKEN_ROTATION_LEEWAY), and those whose refresh token expires within "
        "--refresh-within seconds, through the same single-flight as web requests."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--within",
            type=float,
            metavar="SECONDS",
            help="Refresh tokens expiring within this many seconds (default: the leeway).",
        )
        parser.add_argument(
            "--refresh-within",
            type=float,
            metavar="SECONDS",
            help="Also refresh tokens whose refresh token expires within this many seconds, "
            "to keep idle grants alive (default: as --within).",
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
            "--processes",
            type=int,
            default=1,
            metavar="N",
            help="Refresh in N processes of --concurrency threads each (for more than one "
            "core's worth of work).",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=500,
            metavar="N",
            help="Tokens read from the database at a time.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        for name in ("within", "refresh_within"):
            if options[name] is not None and options[name] < 0:
                raise CommandError(f"--{name.replace('_', '-')} must be >= 0.", returncode=2)
        for name in ("concurrency", "processes", "batch_size"):
            if options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be >= 1.", returncode=2)
        self.verbosity = int(options["verbosity"])
        self.dry_run = bool(options["dry_run"])
        self.progress = self.stdout.isatty() and self.verbosity >= 1
        self.started = self.shown = time.monotonic()
        self.done = 0
        report = background.refresh_due(
            within=options["within"],
            refresh_within=options["refresh_within"],
            providers=options["provider"] or (),
            users=[self._user(options["user"])] if options["user"] is not None else (),
            concurrency=options["concurrency"],
            processes=options["processes"],
            batch_size=options["batch_size"],
            dry_run=self.dry_run,
            on_result=self._show,
        )
        if self.progress:
            self._show_progress(force=True)
            self.stdout.write("")
        self._summary(report)
        if report.counts[background.ERROR]:
            raise CommandError(
                f"{report.counts[background.ERROR]} token(s) could not be processed "
                "(unexpected errors).",
                returncode=2,
            )
        if report.failed_permanently:
            raise CommandError(
                f"{report.failed_permanently} token(s) failed permanently: "
                "their users must sign in again.",
                returncode=1,
            )

    def _user(self, value: str) -> Any:
        """The user named by --user: a username (natural key) or a primary key of any type."""
        User = get_user_model()
        try:
            return User._default_manager.get_by_natural_key(value)
        except User.DoesNotExist:
            pass
        try:
            pk = User._meta.pk.to_python(value)
        except ValidationError:
            raise CommandError(
                f"No user {value!r}: not a username, and not a valid primary key "
                f"for {User._meta.label} ({User._meta.pk.get_internal_type()}).",
                returncode=2,
            ) from None
        found = User._default_manager.filter(pk=pk).first()
        if found is None:
            raise CommandError(f"No user {value!r}.", returncode=2)
        return found

    # -- output -------------------------------------------------------------

    def _show(self, result: background.Result) -> None:
        """One token done (called one at a time, from the worker threads)."""
        self.done += 1
        if result.token is not None:  # a dry run
            self.stdout.write(self._describe(result))
        elif result.outcome in (
            background.FAILED_PERMANENTLY,
            background.FAILED_TRANSIENTLY,
            background.ERROR,
        ):
            self.stderr.write(f"token {result.token_id}: {result.outcome} ({result.code})")
        elif self.verbosity >= 2:
            detail = f" ({result.code})" if result.code else ""
            self.stdout.write(f"token {result.token_id}: {result.outcome}{detail}")
        if self.progress:
            self._show_progress()

    def _show_progress(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.shown < 0.2:
            return
        self.shown = now
        elapsed = now - self.started
        rate = f", {self.done / elapsed:.0f}/s" if elapsed > 0 else ""
        self.stdout.write(f"\r{self.done} tokens done{rate}", ending="")
        self.stdout.flush()

    def _describe(self, result: background.Result) -> str:
        token = result.token
        assert token is not None
        expires = expiry(token, state_of(token))
        when = health.format_time(expires) if expires else "unknown"
        what = f"skip ({result.code})" if result.code else "would refresh"
        return (
            f"{what}: token {token.pk}, user {token.account.user}, "
            f"provider {token.account.provider}, expires {when}"
        )

    def _summary(self, report: background.Report) -> None:
        skipped = self._codes(report.codes.get(background.SKIPPED))
        if self.dry_run:
            self.stdout.write(
                f"Dry run: {report.counts[background.DUE]} token(s) would be refreshed, "
                f"{report.counts[background.SKIPPED]} skipped{skipped}."
            )
            return
        outcomes = background.OUTCOMES[:-1]  # errors only when there are some
        parts = [
            f"{outcome} {report.counts[outcome]}{self._codes(report.codes.get(outcome))}"
            for outcome in outcomes
        ]
        if report.counts[background.ERROR]:
            errors = self._codes(report.codes.get(background.ERROR))
            parts.append(f"errors {report.counts[background.ERROR]}{errors}")
        line = ", ".join(parts).capitalize()
        line += f" in {report.duration:.1f} s ({report.tokens_per_s:.0f} tokens/s)."
        failed = report.failed_permanently or report.counts[background.ERROR]
        self.stdout.write(line, style_func=self.style.ERROR if failed else None)

    @staticmethod
    def _codes(codes: Counter[str] | None) -> str:
        if not codes:
            return ""
        return " (" + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())) + ")"
