"""``manage.py refresh_tokens``: options, output, exit codes, and runs concurrent
with web requests (and with another run) on the same tokens."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp, SocialToken
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from django_token_rotation import TokenRotationError, get_access_token
from django_token_rotation.models import TokenState
from tests.helpers import (
    ROOT,
    SECRETS,
    TOKENS,
    MakeToken,
    call_refresh_tokens,
    seed_many,
    stored,
    worker_env,
)
from tests.scripted_server import Reply, ScriptedServer, oauth_error, tokens

pytestmark = pytest.mark.usefixtures("hidden_secrets")


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


@pytest.mark.django_db
def test_refreshes_what_is_due_within_the_leeway(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    expired = make_token(expires_in=-10)
    expiring = make_token(expires_in=30)
    fresh = make_token(expires_in=3600)

    out, err = call_refresh_tokens()

    assert len(scripted.token_requests) == 2
    assert stored(expired).token == "new-access" and stored(expiring).token == "new-access"
    assert stored(fresh).token == "old-access"
    assert "Refreshed 2, skipped 0, failed permanently 0, failed transiently 0" in out
    assert err == ""
    assert_no_secret(out, err)


@pytest.mark.django_db
def test_within_reaches_further_ahead(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    soon = make_token(expires_in=600)
    later = make_token(expires_in=7200)
    out, _err = call_refresh_tokens("--within", "900")
    assert stored(soon).token == "new-access"
    assert stored(later).token == "old-access"
    assert "Refreshed 1," in out


@pytest.mark.django_db
def test_provider_and_user_select_tokens(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer, user: Any
) -> None:
    bob = get_user_model().objects.create_user("bob", "b@example.com", "pw")
    alices = make_token(expires_in=-10)
    bobs = make_token(expires_in=-10, owner=bob)
    other = make_token(expires_in=-10, provider="google")

    out, _ = call_refresh_tokens("--user", "bob", "--provider", "fake")
    assert stored(bobs).token == "new-access"
    assert stored(alices).token == "old-access" and stored(other).token == "old-access"
    assert "Refreshed 1," in out

    call_refresh_tokens("--user", str(user.pk), "--provider", "fake")
    assert stored(alices).token == "new-access"
    assert len(scripted.token_requests) == 2


@pytest.mark.django_db
def test_dry_run_lists_and_changes_nothing(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    due = make_token(expires_in=-10)
    no_refresh = make_token(expires_in=-10, refresh="")
    make_token(expires_in=3600)

    out, err = call_refresh_tokens("--dry-run")

    assert scripted.received == []
    assert f"would refresh: token {due.pk}, user alice, provider fake" in out
    # Listed at the default verbosity, times in the admin's format.
    assert re.search(rf"token {due.pk}, .* expires \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC", out)
    assert f"skip (no_refresh_token): token {no_refresh.pk}" in out
    assert "Dry run: 1 token(s) would be refreshed, 1 skipped (no_refresh_token: 1)." in out
    assert stored(due).token == "old-access"
    assert_no_secret(out, err)


@pytest.mark.django_db
def test_permanent_failure_exits_1_transient_exits_0(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    token = make_token(expires_in=-10)
    scripted.script(Reply(503, "down"))
    out, err = call_refresh_tokens()
    assert "failed transiently 1 (server_error: 1)" in out
    assert f"token {token.pk}: failed transiently (server_error)" in err

    # In back-off now: skipped, no call to the provider.
    scripted.script(oauth_error("invalid_grant"))
    out, _ = call_refresh_tokens()
    assert "skipped 1 (backoff: 1)" in out
    assert scripted.received == []

    TokenState.objects.update(next_retry_at=None)
    with pytest.raises(CommandError) as excinfo:
        call_refresh_tokens()
    assert excinfo.value.returncode == 1
    assert "failed permanently" in str(excinfo.value)

    # Known to need a sign-in: skipped from now on, not a failure of each run.
    out, _ = call_refresh_tokens()
    assert "skipped 1 (sign_in_required: 1)" in out


@pytest.mark.django_db
def test_bad_options_exit_2(make_token: MakeToken) -> None:
    for args in (
        ["--user", "nobody"],
        ["--concurrency", "0"],
        ["--processes", "0"],
        ["--within", "-1"],
        ["--refresh-within", "-1"],
    ):
        with pytest.raises(CommandError) as excinfo:
            call_refresh_tokens(*args)
        assert excinfo.value.returncode == 2


@pytest.mark.django_db
def test_progress_only_on_a_tty(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    make_token(expires_in=-10)
    terminal = Terminal()
    call_command("refresh_tokens", stdout=terminal, stderr=io.StringIO())
    assert "\r1 tokens done" in terminal.getvalue()
    out, _ = call_refresh_tokens()
    assert "\r" not in out


@pytest.mark.django_db
def test_exit_codes_of_the_real_command(tmp_path: Path) -> None:
    """``manage.py refresh_tokens`` in its own process: 0 with nothing to do, 2 for a bad option."""
    env = worker_env("default")
    # The system checks have their own tests; this one is about the command's exit status.
    manage = [sys.executable, "-m", "django", "refresh_tokens", "--skip-checks"]
    ok = subprocess.run(manage, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "Refreshed 0" in ok.stdout
    bad = subprocess.run(
        [*manage, "--user", "nobody"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert "No user 'nobody'" in bad.stderr


# -- concurrent with web traffic ------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_command_threads_refresh_everything_once(scripted: ScriptedServer, settings: Any) -> None:
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    app = SocialApp.objects.create(provider="fake", name="F", client_id="c", secret="s")
    seed_many(app)
    out, err = call_refresh_tokens("--concurrency", "4", "--batch-size", "5")
    assert "Refreshed 12," in out, (out, err)
    assert len(scripted.token_requests) == TOKENS
    assert set(SocialToken.objects.values_list("token", flat=True)) == {"new-access"}


@pytest.mark.django_db(transaction=True)
def test_command_processes_refresh_everything_once(scripted: ScriptedServer, settings: Any) -> None:
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    app = SocialApp.objects.create(provider="fake", name="F", client_id="c", secret="s")
    seed_many(app)
    out, err = call_refresh_tokens("--processes", "2", "--concurrency", "3", "--batch-size", "4")
    assert "Refreshed 12," in out, (out, err)
    sent = Counter(r.form["refresh_token"] for r in scripted.token_requests)
    assert sent == {f"old-refresh-{i}": 1 for i in range(TOKENS)}


@pytest.mark.django_db(transaction=True)
def test_command_and_requests_on_the_same_tokens_refresh_each_once(
    scripted: ScriptedServer, settings: Any
) -> None:
    """Two command runs (as on two hosts) and a request per token, all at once:
    the single-flight lets exactly one refresh per token reach the provider."""
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    scripted.script(Reply(200, tokens().body, delay=0.3))
    app = SocialApp.objects.create(provider="fake", name="F", client_id="c", secret="s")
    users = seed_many(app)
    start = threading.Barrier(2 + len(users))
    outputs: list[str] = []
    answers: Counter[str] = Counter()

    def command() -> None:
        start.wait()
        try:
            out, _err = call_refresh_tokens("--concurrency", "3")
            outputs.append(out)
        finally:
            from django.db import connections

            connections.close_all()

    def request(user: Any) -> None:
        start.wait()
        try:
            answers[get_access_token(user, "fake")] += 1
        except TokenRotationError as exc:
            answers[f"error {exc.code}"] += 1
        finally:
            from django.db import connections

            connections.close_all()

    threads = [threading.Thread(target=command) for _ in range(2)]
    threads += [threading.Thread(target=request, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    sent = Counter(r.form["refresh_token"] for r in scripted.token_requests)
    print(f"\nrefresh requests per token: {sorted(sent.values())}; command outputs: {outputs}")
    assert answers == {"new-access": TOKENS}
    assert sent == {f"old-refresh-{i}": 1 for i in range(TOKENS)}
    assert len(outputs) == 2
    assert set(SocialToken.objects.values_list("token", flat=True)) == {"new-access"}
    assert sum(TokenState.objects.values_list("refresh_count", flat=True)) == TOKENS


@pytest.mark.django_db
def test_verbosity_2_lists_every_token_with_its_reason(
    fake_app: SocialApp, make_token: MakeToken, scripted: ScriptedServer
) -> None:
    due = make_token(expires_in=-10)
    no_refresh = make_token(expires_in=-10, refresh="")
    out, err = call_refresh_tokens("-v", "2")
    assert f"token {due.pk}: refreshed\n" in out
    assert f"token {no_refresh.pk}: skipped (no_refresh_token)" in out
    assert err == ""
    quiet, _ = call_refresh_tokens()  # -v 1: the summary line only
    assert "token " not in quiet


@pytest.mark.django_db
def test_a_user_id_that_matches_no_one_exits_2(make_token: MakeToken, user: Any) -> None:
    with pytest.raises(CommandError, match="No user '999999'") as excinfo:
        call_refresh_tokens("--user", "999999")
    assert excinfo.value.returncode == 2
    with pytest.raises(CommandError) as batch:
        call_refresh_tokens("--batch-size", "0")
    assert (batch.value.returncode, str(batch.value)) == (2, "--batch-size must be >= 1.")
