"""How times and durations read on every page and in every command (one format)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from django_token_rotation import health

NOW = datetime.datetime(2026, 12, 7, 12, 0, 0, tzinfo=datetime.UTC)


def test_format_time_is_one_format_with_the_zone() -> None:
    assert health.format_time(NOW) == "2026-12-07 12:00:00 UTC"
    assert health.format_time(None) == health.EMPTY


def test_format_time_in_the_current_time_zone(settings: Any) -> None:
    settings.TIME_ZONE = "Europe/Paris"
    assert health.format_time(NOW) == "2026-12-07 13:00:00 CET"


def test_format_time_of_a_naive_time_without_use_tz(settings: Any) -> None:
    settings.USE_TZ = False
    settings.TIME_ZONE = "Europe/Paris"
    # Django stores naive times in TIME_ZONE under USE_TZ = False.
    assert health.format_time(datetime.datetime(2026, 12, 7, 13, 0, 0)) == (
        "2026-12-07 13:00:00 CET"
    )


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0, "in 0 s"),
        (45, "in 45 s"),
        (-45, "45 s ago"),
        (4 * 60 + 10, "in 4 min"),
        (-59 * 60, "59 min ago"),
        (3 * 3600 + 5, "in 3 h"),
        (-47 * 3600, "47 h ago"),
        (2 * 86400, "in 2 d"),
        (-30 * 86400, "30 d ago"),
    ],
)
def test_format_relative(offset: int, expected: str) -> None:
    value = NOW + datetime.timedelta(seconds=offset)
    assert health.format_relative(value, now=NOW) == expected


def test_format_relative_of_nothing() -> None:
    assert health.format_relative(None) == health.EMPTY


def test_format_relative_mixes_naive_and_aware_times_without_use_tz(settings: Any) -> None:
    settings.USE_TZ = False
    settings.TIME_ZONE = "UTC"
    naive = datetime.datetime(2026, 12, 7, 12, 5, 0)
    assert health.format_relative(naive, now=NOW) == "in 5 min"


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0.5405667960000073, "541 ms"), (0.0004, "0 ms"), (12.0, "12000 ms"), (None, "—")],
)
def test_format_duration_in_milliseconds(seconds: float | None, expected: str) -> None:
    assert health.format_duration(seconds) == expected
