from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """Django's user with a UUID primary key, as many sites have."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
