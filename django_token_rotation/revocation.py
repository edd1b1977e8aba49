"""Token revocation at the provider (RFC 7009): the admin's "Revoke at provider"
action, and the optional revocation on logout and on disconnecting an account.

The endpoint comes from ``TOKEN_ROTATION_REVOCATION_ENDPOINTS``, else the
OpenID Connect discovery document's ``revocation_endpoint``, else the endpoint
of the provider's registry entry (:mod:`.providers.registry`). The client
authenticates exactly as it does to refresh (:func:`providers.resolve`), and the
request goes through :func:`client.revoke_token`. Nothing here logs or returns a token value.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from allauth.socialaccount.models import SocialAccount, SocialToken
from allauth.socialaccount.providers.openid_connect.provider import OpenIDConnectProvider
from django.contrib.auth.signals import user_logged_out
from django.db.models.signals import pre_delete
from django.dispatch import receiver
from django.http import HttpRequest

from . import client, providers, transactions
from .conf import app_settings
from .exceptions import TokenRotationError, contained
from .providers.registry import entry

logger = logging.getLogger("django_token_rotation")


@dataclass(frozen=True)
class Revocation:
    """What became of one token. ``code`` is ``"revoked"`` or why not."""

    token_id: int
    provider: str
    code: str
    deleted: bool = False

    @property
    def revoked(self) -> bool:
        return self.code == "revoked"


def revocation_endpoint(token: SocialToken, *, timeout: float | None = None) -> str | None:
    """The provider's RFC 7009 endpoint for ``token``, or ``None`` if none is known.

    May raise :class:`TokenRotationError` (the provider cannot be resolved, its
    discovery document cannot be fetched).
    """
    key = str(token.account.provider)
    configured = app_settings.REVOCATION_ENDPOINTS.get(key)
    if configured:
        return configured
    provider = providers.get_provider(token)
    if isinstance(provider, OpenIDConnectProvider):
        url = providers.openid_configuration(provider, timeout=timeout).get("revocation_endpoint")
        if isinstance(url, str) and url:
            return url
    return (
        entry(key).revocation_endpoint
        or entry(str(getattr(provider, "id", ""))).revocation_endpoint
        or None
    )


@contained
def revoke(token: SocialToken, *, timeout: float | None = None, delete: bool = True) -> Revocation:
    """Revoke ``token``'s grant at its provider; on success delete it locally
    (with ``delete``). Never raises for a provider's failure: the outcome says it.

    The refresh token is revoked (RFC 7009 says the provider then also
    invalidates the access tokens of the grant); a token without one has its
    access token revoked instead.
    """
    key = str(token.account.provider)
    try:
        url = revocation_endpoint(token, timeout=timeout)
        if url is None:
            return _outcome(token, "no_revocation_endpoint")
        credentials = providers.resolve(token)
        kinds = [("refresh_token", token.token_secret), ("access_token", token.token)]
        answer = None
        for hint, value in kinds:
            if not value:
                continue
            answer = client.revoke_token(url, value, hint, credentials=credentials, timeout=timeout)
            if answer.revoked or answer.error != "unsupported_token_type":
                break
        if answer is None:
            return _outcome(token, "no_token")
        if not answer.revoked:
            return _outcome(token, answer.error or f"http_{answer.status}")
    except TokenRotationError as exc:
        return _outcome(token, exc.code)
    deleted = False
    if delete:
        SocialToken.objects.using(transactions.database(token)).filter(pk=token.pk).delete()
        deleted = True
    logger.info(
        "Revoked token %s of provider %s at the provider%s.",
        token.pk,
        key,
        " and deleted it" if deleted else "",
    )
    return Revocation(token_id=token.pk, provider=key, code="revoked", deleted=deleted)


def _outcome(token: SocialToken, code: str) -> Revocation:
    logger.warning(
        "Could not revoke token %s of provider %s (%s); it is kept.",
        token.pk,
        token.account.provider,
        code,
    )
    return Revocation(token_id=token.pk, provider=str(token.account.provider), code=code)


def revoke_within(
    tokens: Iterable[SocialToken], *, budget: float, delete: bool = True
) -> list[Revocation]:
    """Revoke ``tokens`` one after the other, spending at most about ``budget``
    seconds on HTTP in all; tokens left when it is spent are not revoked."""
    deadline = time.monotonic() + budget
    results = []
    for token in tokens:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            results.append(_outcome(token, "out_of_time"))
            continue
        results.append(revoke(token, timeout=remaining, delete=delete))
    return results


# --------------------------------------------------------------------------
# Optional revocation on logout and on disconnect (settings, default off)
# --------------------------------------------------------------------------


@receiver(user_logged_out, dispatch_uid="token_rotation.revoke_on_logout")
def revoke_on_logout(
    sender: Any, request: HttpRequest | None = None, user: Any = None, **kwargs: Any
) -> None:
    """With ``TOKEN_ROTATION_REVOKE_ON_LOGOUT``: revoke and delete the user's
    tokens. Best effort: a provider that is down never delays logout for more
    than ``TOKEN_ROTATION_REVOKE_TIMEOUT`` nor makes it fail."""
    if user is None or not app_settings.REVOKE_ON_LOGOUT:
        return
    try:
        tokens = (
            SocialToken.objects.using(transactions.database())
            .filter(account__user=user)
            .select_related("account", "app")
        )
        revoke_within(tokens, budget=app_settings.REVOKE_TIMEOUT, delete=True)
    except Exception as exc:  # logout must not fail because of us
        logger.error("Revocation on logout failed (%s).", type(exc).__name__)


@receiver(pre_delete, sender=SocialAccount, dispatch_uid="token_rotation.revoke_on_disconnect")
def revoke_on_disconnect(sender: Any, instance: SocialAccount, **kwargs: Any) -> None:
    """With ``TOKEN_ROTATION_REVOKE_ON_DISCONNECT``: revoke a social account's
    tokens before it is deleted (allauth's disconnect, or any other delete).
    Best effort, within ``TOKEN_ROTATION_REVOKE_TIMEOUT``; the tokens go with
    the account."""
    if not app_settings.REVOKE_ON_DISCONNECT:
        return
    try:
        tokens = SocialToken.objects.using(transactions.database(instance)).filter(account=instance)
        revoke_within(
            tokens.select_related("account", "app"),
            budget=app_settings.REVOKE_TIMEOUT,
            delete=False,
        )
    except Exception as exc:  # the disconnect must not fail because of us
        logger.error("Revocation on disconnect failed (%s).", type(exc).__name__)
