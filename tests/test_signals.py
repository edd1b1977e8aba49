"""The signals carry what a metrics exporter needs (issue #18, item 4), the
Prometheus recipe of their docs works as written, and ``TOKEN_ROTATION_ADMIN``
keeps allauth's own token admin."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp

from django_token_rotation import (
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    get_access_token,
    signals,
)
from django_token_rotation.models import RefreshEvent
from tests.helpers import ROOT, MakeToken
from tests.scripted_server import ScriptedServer, oauth_error

pytestmark = [pytest.mark.usefixtures("hidden_secrets"), pytest.mark.django_db(transaction=True)]


@pytest.fixture
def received() -> Iterator[list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    def receiver(sender: Any, signal: Any, **kwargs: Any) -> None:
        calls.append({"signal": signal, **kwargs})

    signals.token_refreshed.connect(receiver, dispatch_uid="test.refreshed")
    signals.token_refresh_failed.connect(receiver, dispatch_uid="test.failed")
    yield calls
    signals.token_refreshed.disconnect(dispatch_uid="test.refreshed")
    signals.token_refresh_failed.disconnect(dispatch_uid="test.failed")


METRIC_KEYS = {"provider", "outcome", "code", "duration"}


def test_a_refresh_sends_provider_outcome_code_and_duration(
    make_token: MakeToken,
    fake_app: SocialApp,
    scripted: ScriptedServer,
    user: Any,
    received: list[dict[str, Any]],
) -> None:
    make_token()
    assert get_access_token(user, "fake") == "new-access"
    [call] = received
    assert call["signal"] is signals.token_refreshed
    assert set(call) >= METRIC_KEYS
    assert (call["provider"], call["outcome"], call["code"]) == ("fake", "refreshed", None)
    assert isinstance(call["duration"], float) and 0 < call["duration"] < 10
    assert call["rotated"] is True
    assert call["outcome"] == RefreshEvent.Outcome.REFRESHED.value


@pytest.mark.parametrize(
    ("reply", "error", "outcome", "code", "permanent"),
    [
        (
            oauth_error("temporarily_unavailable", 503),
            TokenRefreshUnavailable,
            "failed_transient",
            "temporarily_unavailable",
            False,
        ),
        (
            oauth_error("invalid_grant"),
            ReauthenticationRequired,
            "failed_permanent",
            "invalid_grant",
            True,
        ),
    ],
    ids=["transient", "permanent"],
)
def test_a_failure_sends_provider_outcome_code_and_duration(
    make_token: MakeToken,
    fake_app: SocialApp,
    scripted: ScriptedServer,
    user: Any,
    received: list[dict[str, Any]],
    reply: Any,
    error: type[Exception],
    outcome: str,
    code: str,
    permanent: bool,
) -> None:
    make_token()
    scripted.script(reply)
    with pytest.raises(error):
        get_access_token(user, "fake")
    [call] = received
    assert call["signal"] is signals.token_refresh_failed
    assert set(call) >= METRIC_KEYS
    assert (call["provider"], call["outcome"], call["code"]) == ("fake", outcome, code)
    assert call["permanent"] is permanent
    assert (call["retry_at"] is None) is permanent
    assert isinstance(call["duration"], float) and 0 < call["duration"] < 10


def test_no_signal_for_a_call_that_did_not_reach_the_provider(
    make_token: MakeToken,
    fake_app: SocialApp,
    scripted: ScriptedServer,
    user: Any,
    received: list[dict[str, Any]],
) -> None:
    make_token(expires_in=3600)
    assert get_access_token(user, "fake") == "old-access"
    assert received == []


def recipe() -> str:
    """The Prometheus recipe of the signals' documentation, as written there."""
    doc = signals.__doc__ or ""
    block = doc.split("``AppConfig.ready()``::", 1)[1]
    lines = [line[4:] for line in block.splitlines() if line.startswith("    ") or not line]
    return "\n".join(lines).strip()


def test_the_prometheus_recipe_counts_refreshes_and_failures(
    make_token: MakeToken, fake_app: SocialApp, scripted: ScriptedServer, user: Any
) -> None:
    from prometheus_client import REGISTRY

    namespace: dict[str, Any] = {}
    exec(recipe(), namespace)
    try:
        make_token()
        get_access_token(user, "fake")  # refreshed
        make_token(uid="second")
        scripted.script(oauth_error("invalid_grant"))
        with pytest.raises(ReauthenticationRequired):
            from django_token_rotation import refresh
            from django_token_rotation.rotation import find_token

            token = find_token(user, "fake")
            assert token is not None
            refresh(token, force=True)
        sample = REGISTRY.get_sample_value
        assert (
            sample(
                "token_refreshes_total", {"provider": "fake", "outcome": "refreshed", "code": ""}
            )
            == 1
        )
        assert (
            sample(
                "token_refreshes_total",
                {"provider": "fake", "outcome": "failed_permanent", "code": "invalid_grant"},
            )
            == 1
        )
        assert (
            sample("token_refresh_seconds_count", {"provider": "fake", "outcome": "refreshed"}) == 1
        )
    finally:
        signals.token_refreshed.disconnect(dispatch_uid="metrics.token_refreshed")
        signals.token_refresh_failed.disconnect(dispatch_uid="metrics.token_refresh_failed")
        REGISTRY.unregister(namespace["REFRESHES"])
        REGISTRY.unregister(namespace["LATENCY"])


# -- TOKEN_ROTATION_ADMIN ---------------------------------------------------------------

ADMIN_PROBE = """
import django
from django.conf import settings
{setting}
django.setup()
from allauth.socialaccount.models import SocialToken
from django.contrib import admin
from django_token_rotation.models import RefreshEvent
print(type(admin.site._registry[SocialToken]).__module__, RefreshEvent in admin.site._registry)
"""


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("", "django_token_rotation.admin True"),
        ("settings.TOKEN_ROTATION_ADMIN = True", "django_token_rotation.admin True"),
        ("settings.TOKEN_ROTATION_ADMIN = False", "allauth.socialaccount.admin True"),
    ],
    ids=["default", "true", "false"],
)
def test_the_admin_setting_keeps_allauths_token_admin(setting: str, expected: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "-c", ADMIN_PROBE.format(setting=setting)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.sub(r"\s+", " ", result.stdout.strip()) == expected
