from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TokenRotationConfig(AppConfig):
    name = "django_token_rotation"
    label = "token_rotation"
    verbose_name = _("Token rotation")
    # Pinned so that migrations are the same whatever DEFAULT_AUTO_FIELD a site uses.
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the system checks and connects the signal receivers.
        # history: the refresh history; revocation: optional revocation on logout / disconnect.
        from . import checks, history, receivers, revocation  # noqa: F401
