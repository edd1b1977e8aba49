"""Signals, sent after the change they describe is committed: one per refresh
that reached the provider, with what a metrics exporter needs.

Both carry the same four keys, so that one receiver can count every outcome:

* ``provider``: the allauth provider id (``"google"``, an OpenID Connect
  ``provider_id``);
* ``outcome``: ``"refreshed"``, ``"failed_transient"`` (a later attempt may
  succeed) or ``"failed_permanent"`` (the user must sign in again): the values
  of ``RefreshEvent.Outcome`` (the refresh history's), a ``str``;
* ``code``: the stable error code of :data:`~django_token_rotation.exceptions.ERROR_CODES`
  (``None`` for a success);
* ``duration``: seconds the token endpoint took (``float``).

Neither is sent for a call that did not reach the provider (the token was
fresh, another worker refreshed it, or a back-off was in force). No argument
carries a token value but ``token`` itself, the ``SocialToken``: a receiver
must not log it.

A Prometheus exporter (``prometheus_client``), connected in your app's
``AppConfig.ready()``::

    from prometheus_client import Counter, Histogram
    from django_token_rotation.signals import token_refresh_failed, token_refreshed

    REFRESHES = Counter(
        "token_refreshes_total", "Token refreshes", ["provider", "outcome", "code"]
    )
    LATENCY = Histogram(
        "token_refresh_seconds", "Token endpoint latency", ["provider", "outcome"]
    )

    def observe(sender, provider, outcome, code, duration, **kwargs):
        REFRESHES.labels(provider, outcome, code or "").inc()
        LATENCY.labels(provider, outcome).observe(duration)

    token_refreshed.connect(observe, dispatch_uid="metrics.token_refreshed")
    token_refresh_failed.connect(observe, dispatch_uid="metrics.token_refresh_failed")
"""

from __future__ import annotations

from django.dispatch import Signal

#: A refresh succeeded and is stored. Arguments: ``token`` (the updated
#: ``SocialToken``), ``provider``, ``outcome`` (``"refreshed"``), ``code``
#: (``None``), ``duration``, ``rotated`` (``True`` when the provider sent a new
#: refresh token).
token_refreshed = Signal()

#: A refresh reached the provider and failed. Arguments: ``token``,
#: ``provider``, ``outcome`` (``"failed_transient"`` or ``"failed_permanent"``),
#: ``code``, ``duration``, ``permanent`` (``True``: the user must sign in again),
#: ``retry_at`` (when the next attempt may be made; ``None`` when permanent).
token_refresh_failed = Signal()
