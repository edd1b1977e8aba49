"""Databases as sites configure them (issue #16, item 1; docs/databases.rst).

With the primary/replica router of Django's guide, everything the engine
decides on is read from, and everything it writes goes to, the database the
router names for writing (read-your-writes). The replica here is a read-only
connection to the primary's own database (``tests/routers.py``), so a stray
write fails (on PostgreSQL: "cannot execute INSERT in a read-only
transaction") instead of landing. Also a router that puts every model,
allauth's and ours, on a database other than ``default``.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
from allauth.socialaccount.models import SocialAccount, SocialApp, SocialToken
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import DatabaseError, connections
from django.db.utils import load_backend
from django.test import override_settings
from django.utils import timezone

from django_token_rotation import get_access_token, refresh
from django_token_rotation.models import RefreshEvent, TokenState
from django_token_rotation.rotation import access_token_for
from tests.helpers import ALIASES, seed
from tests.routers import AllOn, PrimaryReplicaRouter, read_only_replica
from tests.scripted_server import Reply, ScriptedServer, tokens

pytestmark = pytest.mark.usefixtures("hidden_secrets")

PRIMARIES = [
    pytest.param("default", id="sqlite"),
    pytest.param("postgres", id="postgresql", marks=pytest.mark.postgres),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]


@contextlib.contextmanager
def replica_of(alias: str) -> Iterator[str]:
    """A read-only replica alias of ``alias``'s (test) database, and the
    primary/replica router over the two. The replica's connection is made
    here, for this thread (the only one that reads from it)."""
    name = f"{alias}_replica"
    primary = copy.deepcopy(connections[alias].settings_dict)
    replica = {**primary, **read_only_replica(primary, alias), "TEST": primary["TEST"]}
    connections[name] = load_backend(str(replica["ENGINE"])).DatabaseWrapper(replica, name)
    try:
        with override_settings(DATABASE_ROUTERS=[PrimaryReplicaRouter(alias, name)]):
            yield name
    finally:
        connections[name].close()
        del connections[name]


@pytest.fixture
def fake_on(scripted: ScriptedServer, settings: Any) -> Any:
    def make(alias: str) -> Any:
        settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
        app = SocialApp.objects.using(alias).create(
            provider="fake", name="F", client_id="c", secret="s"
        )
        return seed(alias, provider="fake", app=app)

    return make


@pytest.mark.parametrize("alias", PRIMARIES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_the_replica_refuses_writes(alias: str) -> None:
    """The premise of the tests below: a write that reaches the replica fails."""
    with replica_of(alias) as replica, pytest.raises(DatabaseError):
        get_user_model().objects.db_manager(replica).create_user("stray")


@pytest.mark.parametrize("alias", PRIMARIES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_refresh_reads_and_writes_the_primary(
    alias: str, fake_on: Any, scripted: ScriptedServer
) -> None:
    user = fake_on(alias)
    with replica_of(alias):
        assert get_access_token(user, "fake") == "new-access"
        assert get_access_token(user, "fake") == "new-access"  # fresh now: no second refresh
    assert len(scripted.token_requests) == 1
    stored = SocialToken.objects.using(alias).get()
    assert (stored.token, stored.token_secret) == ("new-access", "new-refresh")
    state = TokenState.objects.using(alias).get()
    assert (state.refresh_count, state.lease_id, state.inflight_fingerprint) == (1, "", "")
    assert RefreshEvent.objects.using(alias).get().outcome == "refreshed"


@pytest.mark.parametrize("alias", PRIMARIES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_token_read_from_a_lagging_replica_is_decided_on_the_primarys_values(
    alias: str, fake_on: Any, scripted: ScriptedServer
) -> None:
    """The site read the token from the replica (through the router); the
    primary has rotated it since (the replica lags). The engine sends the
    primary's refresh token, never the replica's spent one."""
    fake_on(alias)
    with replica_of(alias) as replica:
        read = SocialToken.objects.select_related("account").get()
        assert read._state.db == replica
        # Meanwhile, on the primary: another host rotated the token.
        SocialToken.objects.using(alias).update(
            token="rotated-access",
            token_secret="rotated-refresh",
            expires_at=timezone.now() - datetime.timedelta(seconds=1),
        )
        assert access_token_for(read) == "new-access"
    assert [r.form.get("refresh_token") for r in scripted.token_requests] == ["rotated-refresh"]
    assert SocialToken.objects.using(alias).get().token_secret == "new-refresh"


@pytest.mark.parametrize("alias", PRIMARIES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_forced_refresh_of_a_token_from_the_replica(
    alias: str, fake_on: Any, scripted: ScriptedServer
) -> None:
    fake_on(alias)
    SocialToken.objects.using(alias).update(expires_at=timezone.now() + datetime.timedelta(hours=1))
    with replica_of(alias):
        token = SocialToken.objects.select_related("account", "app", "rotation_state").get()
        refresh(token, force=True)
    assert token.token == "new-access"
    assert TokenState.objects.using(alias).get().refresh_count == 1


@pytest.mark.parametrize("alias", PRIMARIES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_a_refused_grant_is_recorded_on_the_primary_and_a_sign_in_lifts_it(
    alias: str, fake_on: Any, scripted: ScriptedServer
) -> None:
    """The refusal, then allauth saving the token of a new sign-in (the receiver)."""
    from django_token_rotation import ReauthenticationRequired

    user = fake_on(alias)
    scripted.script(Reply(400, {"error": "invalid_grant"}))
    with replica_of(alias):
        with pytest.raises(ReauthenticationRequired):
            get_access_token(user, "fake")
        assert TokenState.objects.using(alias).get().needs_reauth
        token = SocialToken.objects.get()  # from the replica, saved through the router
        token.token_secret = "signed-in-again"
        token.save()
    assert not TokenState.objects.using(alias).get().needs_reauth


@pytest.mark.parametrize("alias", PRIMARIES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_the_command_refreshes_on_the_primary(
    alias: str, fake_on: Any, scripted: ScriptedServer
) -> None:
    fake_on(alias)
    with replica_of(alias):
        call_command("refresh_tokens", stdout=StringIO(), stderr=StringIO())
    assert len(scripted.token_requests) == 1
    assert SocialToken.objects.using(alias).get().token == "new-access"
    assert TokenState.objects.using(alias).get().refresh_count == 1


@pytest.mark.parametrize("alias", PRIMARIES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_the_admins_refresh_action_writes_the_primary(
    alias: str, fake_on: Any, scripted: ScriptedServer, client: Any
) -> None:
    fake_on(alias)
    get_user_model().objects.db_manager(alias).create_superuser("admin", "a@example.com", "pw")
    token = SocialToken.objects.using(alias).get()
    with (
        replica_of(alias),
        override_settings(SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies"),
    ):
        client.login(username="admin", password="pw")
        page = client.get("/admin/socialaccount/socialtoken/")
        assert page.status_code == 200
        response = client.post(
            "/admin/socialaccount/socialtoken/",
            {"action": "refresh_now", "_selected_action": [token.pk]},
            follow=True,
        )
        assert response.status_code == 200
    assert len(scripted.token_requests) == 1
    assert SocialToken.objects.using(alias).get().token == "new-access"


@pytest.mark.parametrize(
    "alias",
    [
        pytest.param("postgres", id="postgresql", marks=pytest.mark.postgres),
        pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
    ],
)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_every_model_on_a_database_that_is_not_default(
    alias: str, fake_on: Any, scripted: ScriptedServer
) -> None:
    user = fake_on(alias)
    with override_settings(DATABASE_ROUTERS=[AllOn(alias)]):
        assert get_access_token(user, "fake") == "new-access"
        SocialToken.objects.update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
        scripted.script(tokens(access="newer-access", refresh="newer-refresh"))
        call_command("refresh_tokens", stdout=StringIO(), stderr=StringIO())
        assert SocialToken.objects.get().token == "newer-access"
        assert TokenState.objects.get().refresh_count == 2
        assert RefreshEvent.objects.count() == 2
    assert not SocialToken.objects.using("default").exists()
    assert not TokenState.objects.using("default").exists()
    assert SocialAccount.objects.using(alias).count() == 1


@pytest.mark.parametrize("alias", PRIMARIES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_revocation_on_logout_deletes_on_the_primary(
    alias: str, scripted: ScriptedServer, settings: Any
) -> None:
    from allauth.socialaccount.models import SocialAccount
    from django.contrib.auth.signals import user_logged_out
    from django.core.cache import cache

    cache.clear()  # no discovery document of another test's server
    settings.TOKEN_ROTATION_REVOKE_ON_LOGOUT = True
    scripted.script(Reply(200, ""))
    app = SocialApp.objects.using(alias).create(
        provider="openid_connect",
        provider_id="scripted",
        name="Scripted OIDC",
        client_id="oidc-client",
        secret="oidc-secret",
        settings={
            "server_url": scripted.base_url,
            "openid_configuration_overrides": {
                "revocation_endpoint": f"{scripted.base_url}/revoke"
            },
        },
    )
    user = get_user_model().objects.db_manager(alias).create_user("leaver")
    account = SocialAccount.objects.using(alias).create(user=user, provider="scripted", uid="l1")
    SocialToken.objects.using(alias).create(
        app=app, account=account, token="old-access", token_secret="old-refresh"
    )
    with replica_of(alias):
        user_logged_out.send(sender=type(user), request=None, user=user)
    assert [r.path for r in scripted.received if r.path == "/revoke"] == ["/revoke"]
    assert not SocialToken.objects.using(alias).exists()


@pytest.mark.parametrize("alias", PRIMARIES)
@pytest.mark.django_db(transaction=True, databases=ALIASES)
def test_the_state_changes_write_to_the_routers_primary(alias: str, fake_on: Any) -> None:
    """``TokenState.objects`` without ``using()``: the compiled state changes
    (django_token_rotation.statements) go where ``update()`` would, the
    primary, not the read database a plain queryset names."""
    fake_on(alias)
    token = SocialToken.objects.using(alias).get()
    TokenState.objects.using(alias).for_token(token.pk)
    with replica_of(alias):
        assert TokenState.objects.claim_lease(token.pk, "a" * 32, 30)
        assert TokenState.objects.mark_in_flight(
            token.pk, "f" * 32, lease_id="a" * 32, lease_seconds=30
        )
        TokenState.objects.release_lease(token.pk, "a" * 32)
    state = TokenState.objects.using(alias).get()
    assert (state.lease_id, state.inflight_fingerprint) == ("", "f" * 32)
