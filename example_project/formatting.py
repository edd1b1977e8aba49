"""Template filters of the demo's pages: times and durations as the admin and the
``refresh_tokens`` command show them (``2026-11-27 10:48:03 UTC``, ``541 ms``),
with ``USE_TZ`` on or off. Built into the demo's templates (settings.TEMPLATES)."""

from __future__ import annotations

import datetime

from django import template

from django_token_rotation import health

register = template.Library()


@register.filter
def when(value: datetime.datetime | None) -> str:
    return health.format_time(value)


@register.filter
def ms(seconds: float | None) -> str:
    return health.format_duration(seconds)
