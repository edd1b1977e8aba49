"""Recover as soon as the provider does (issue #11, item 4), on every database."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest
from allauth.socialaccount.models import SocialToken
from django.utils import timezone

from django_token_rotation.models import TokenState
from tests.helpers import ALIASES, DATABASES, seed_fake_app, timed
from tests.scripted_server import Reply, ScriptedServer, tokens

pytestmark = pytest.mark.usefixtures("hidden_secrets")


@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_working_token_within_20_s_of_three_500s(
    alias: str, scripted: ScriptedServer, settings: Any
) -> None:
    """The token has expired; the provider answers 500 three times, then works.
    The user keeps using the site (a request every 0.5 s)."""
    seed_fake_app(alias, scripted, settings)
    scripted.script(Reply(500, b""), Reply(500, b""), Reply(500, b""), tokens())
    first_failure = time.monotonic()
    outcomes = []
    while True:
        _took, outcome = timed(alias)
        outcomes.append(outcome)
        if outcome == "new-access" or time.monotonic() - first_failure > 30:
            break
        time.sleep(0.5)
    recovered = time.monotonic() - first_failure
    print(
        f"\n[{alias}] 3 x HTTP 500, then fine: working token after {recovered:.1f} s "
        f"({len(scripted.token_requests)} token requests, {len(outcomes)} page views)"
    )
    assert outcomes[-1] == "new-access"
    assert recovered < 20
    assert len(scripted.token_requests) == 4


@pytest.mark.parametrize("alias", DATABASES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_nobody_waits_for_another_workers_refresh_while_the_token_works(
    alias: str, scripted: ScriptedServer, settings: Any
) -> None:
    settings.TOKEN_ROTATION_WAIT = 5
    seed_fake_app(alias, scripted, settings)
    SocialToken.objects.using(alias).update(
        expires_at=timezone.now() + datetime.timedelta(seconds=30)  # due, still valid
    )
    token = SocialToken.objects.using(alias).get()
    TokenState.objects.using(alias).create(token=token)
    assert TokenState.objects.using(alias).claim_lease(token.pk, "another-worker".ljust(32), 30)
    took, outcome = timed(alias)
    print(f"\n[{alias}] valid token, lease held elsewhere: {outcome} after {took:.3f} s")
    assert outcome == "old-access"
    assert took < 0.5
    assert scripted.token_requests == []
