from __future__ import annotations

from django.apps import AppConfig


class UuidUserConfig(AppConfig):
    name = "tests.uuid_user"
    label = "uuid_user"
    default_auto_field = "django.db.models.BigAutoField"
