"""Signal receivers, connected in ``TokenRotationConfig.ready()``."""

from __future__ import annotations

from typing import Any

from allauth.socialaccount.models import SocialToken
from allauth.socialaccount.signals import (
    social_account_added,
    social_account_removed,
    social_account_updated,
)
from django.contrib.auth.signals import user_logged_in
from django.db.models.signals import post_save
from django.dispatch import receiver
from django.http import HttpRequest

from . import session, transactions
from .models import TokenState


@receiver(user_logged_in, dispatch_uid="token_rotation.forget_summary_on_login")
@receiver(social_account_added, dispatch_uid="token_rotation.forget_summary_on_add")
@receiver(social_account_updated, dispatch_uid="token_rotation.forget_summary_on_update")
@receiver(social_account_removed, dispatch_uid="token_rotation.forget_summary_on_remove")
def forget_session_summary(sender: Any, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """A sign-in (or a connected/removed account) changes the user's tokens:
    the next request looks at the database again, which clears the error."""
    if request is not None:
        session.clear(request)


@receiver(post_save, sender=SocialToken, dispatch_uid="token_rotation.token_saved")
def token_saved(sender: Any, instance: SocialToken, created: bool, **kwargs: Any) -> None:
    """allauth saves the token of every sign-in (the engine itself writes with
    ``update()``, which sends no signal): a new sign-in lifts a recorded failure."""
    if created:
        return
    TokenState.objects.using(transactions.database(instance)).filter(
        token_id=instance.pk
    ).clear_failure()
