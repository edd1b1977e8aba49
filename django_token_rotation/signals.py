"""Signals, sent after the change they describe is committed.

``token_refreshed``
    sender: ``SocialToken``; arguments: ``token`` (the updated ``SocialToken``),
    ``provider`` (allauth provider id), ``rotated`` (``True`` when the provider
    sent a new refresh token), ``duration`` (seconds the token endpoint took).

``token_refresh_failed``
    sender: ``SocialToken``; arguments: ``token``, ``provider``, ``code`` (stable
    error code), ``permanent`` (``True``: the user must sign in again;
    ``False``: a later attempt may succeed), ``retry_at`` (datetime or ``None``),
    ``duration`` (seconds the token endpoint took).

Neither is sent for a call that did not reach the provider (the token was
fresh, another worker refreshed it, or a back-off was in force).
"""

from __future__ import annotations

from django.dispatch import Signal

token_refreshed = Signal()
token_refresh_failed = Signal()
