"""A token deleted while its refresh is in flight is ``no_token``, not an internal error."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from allauth.socialaccount.models import SocialToken
from django.db import connections

from django_token_rotation import ReauthenticationRequired
from tests.helpers import ALIASES, DATABASES, access, seed_fake_app
from tests.scripted_server import Received, Reply, ScriptedServer, tokens

pytestmark = pytest.mark.usefixtures("hidden_secrets")


@pytest.mark.parametrize("answer", ["tokens", "500"])
@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_token_deleted_mid_refresh_is_no_token(
    alias: str, answer: str, scripted: ScriptedServer, settings: Any, caplog: Any
) -> None:
    seed_fake_app(alias, scripted, settings)

    def delete_the_token(received: Received) -> None:
        try:
            SocialToken.objects.using(alias).all().delete()  # the user disconnected
        finally:
            connections.close_all()  # this server thread's connections

    scripted.on_request = delete_the_token
    scripted.script(tokens() if answer == "tokens" else Reply(500, b""))
    with pytest.raises(ReauthenticationRequired) as excinfo:
        access(alias)
    assert excinfo.value.code == "no_token"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not SocialToken.objects.using(alias).exists()
