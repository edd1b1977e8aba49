from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from allauth.socialaccount.models import SocialAccount, SocialApp, SocialToken
from asgiref.sync import SyncToAsync
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.utils import timezone

from django_token_rotation import background
from tests import scripted_server
from tests.glewlwyd import fixture as glewlwyd
from tests.glewlwyd.fixture import glewlwyd_server  # noqa: F401  (a session fixture)
from tests.helpers import IN_CI, SECRETS, MakeToken


def _unavailable_servers() -> dict[str, str]:
    """Marker name -> why its database server cannot be used here."""
    problems = {}
    if not django_settings.POSTGRES_AVAILABLE:
        pg = django_settings.PG
        problems["postgres"] = (
            f"PostgreSQL not reachable at {pg['HOST']}:{pg['PORT']} "
            "(set TOKEN_ROTATION_TEST_PG_HOST/PORT/NAME/USER to point at one)"
        )
    if not django_settings.MARIADB_AVAILABLE:
        problems["mariadb"] = django_settings.MARIADB_PROBLEM
    if not django_settings.PGBOUNCER_AVAILABLE:
        problems["pgbouncer"] = (
            f"pgbouncer (or PostgreSQL) not reachable at {django_settings.PGBOUNCER_HOST}:"
            f"{django_settings.PGBOUNCER_PORT} (start it: bash .ci/services/pgbouncer.sh)"
        )
    glewlwyd_problem = glewlwyd.problem()
    if glewlwyd_problem:
        problems["glewlwyd"] = glewlwyd_problem
    return problems


def _reading_from_the_replica(items: list[pytest.Item]) -> None:
    """Shape "replica" (tests/settings.py): the router reads from the ``replica``
    alias, so every database test may use it."""
    if "replica" not in django_settings.DATABASES:
        return
    for item in items:
        marker = item.get_closest_marker("django_db")
        fixtures = set(getattr(item, "fixturenames", ()))
        if marker is None and not fixtures & {"db", "transactional_db"}:
            continue
        args = marker.args if marker is not None else ()
        kwargs = dict(marker.kwargs) if marker is not None else {}
        if marker is None and "transactional_db" in fixtures:
            kwargs["transaction"] = True
        databases = kwargs.get("databases") or ["default"]
        if databases != "__all__" and "replica" not in databases:
            kwargs["databases"] = [*databases, "replica"]
        item.add_marker(pytest.mark.django_db(*args, **kwargs), append=False)


#: The modules `nox -s shapes` runs once per shape of tests/settings.py, marked
#: ``shapes`` and by part (``pytest -m shapes_web``): each shape runs the parts it
#: can change (noxfile.SHAPE_MARKS). A name without a module is fine.
SHAPES_MODULES = {
    # Requests, sessions and users: the middleware, templates, headless, the admin.
    "shapes_web": {"test_middleware", "test_templatetags", "test_headless", "test_admin"},
    # The engine on the default database, and its callers.
    "shapes_engine": {
        "test_rotation",
        "test_singleflight",
        "test_store",
        "test_models",
        "test_expiry",
        "test_refresh_tokens",
        "test_background",
    },
    # Transactions, processes and deadlines on every database alias.
    "shapes_db": {"test_transactions", "test_concurrency", "test_deadline", "test_recovery"},
}


#: A test run once per database alias (its ``alias`` parameter, tests.helpers.DATABASES)
#: is marked with the alias of each run: a shape that changes some aliases only
#: leaves the runs on the others out (``pytest -m "shapes and not on_mariadb"``,
#: noxfile.SHAPE_MARKS).
ALIAS_MARKS = {
    "default": "on_default",
    "postgres": "on_postgres",
    "postgres_rr": "on_postgres_rr",
    "mariadb": "on_mariadb",
}


#: The slowest tests (``--durations``; seconds on 3 workers, 2 cores, 2026-12-07), by
#: ``module::name`` prefix, slowest first. Under xdist they are handed out first
#: (``_slow_first``), so that none of them starts when the other workers are done.
SLOW_FIRST = (
    "test_client::test_the_transport_works_with_urllib3_1_26",  # ~100: pip + a nested run
    "test_demo_browser::",  # ~55: the demo, and chromium
    "test_demo::test_demo_signs_in",  # ~25: the demo's processes, real expiry
    "test_user_project::",  # ~20 each: startproject, a site's own suite
    "test_glewlwyd::test_burst_of_processes",  # ~18 each
    "test_locale::test_the_wheel",  # ~19: builds the wheel
    "test_first_contact::",  # ~10-17: startproject, migrate, runserver
    "test_with_provider::test_racing_processes",  # ~12 each
    "test_hostile_responses::test_any_json_answer",  # ~13
    "test_pgbouncer::",  # ~10-13
    "test_async::test_concurrent_async_requests_under_uvicorn",  # ~12
    "test_glewlwyd::",  # ~9-15
    "test_wakeup::test_a_waiter_in_another_process",  # ~11
    "test_concurrency::",  # ~9-10 each
    "test_transactions::",  # ~8-10 each
    "test_deadline::test_race_",  # ~9 each
    "test_refresh_tokens::test_exit_codes_of_the_real_command",  # ~10
)


def _database_use(item: pytest.Item) -> int:
    """pytest-django's order (Django's): 0 database, 1 transactional, 2 none."""
    marker = item.get_closest_marker("django_db")
    fixtures = set(getattr(item, "fixturenames", ()))
    transactional = bool(fixtures & {"transactional_db", "live_server"})
    if marker is not None:
        transactional = transactional or any(marker.args[:2])
        transactional = transactional or bool(
            marker.kwargs.get("transaction") or marker.kwargs.get("reset_sequences")
        )
    if transactional:
        return 1
    return 0 if marker is not None or "db" in fixtures else 2


def _slow_first(items: list[pytest.Item]) -> None:
    """The known-slow tests first (``SLOW_FIRST``), without breaking Django's order:
    a transactional test empties the tables (the migrations' rows too), so the
    slow ones move to the front of their own part; only the slow tests that use no
    database at all go to the very front. (xdist's loadgroup hands out the
    ``xdist_group`` groups before these, the largest first.)"""

    def rank(item: pytest.Item) -> int:
        name = f"{item.path.stem}::{item.name}"
        for position, prefix in enumerate(SLOW_FIRST):
            if name.startswith(prefix):
                return position
        return len(SLOW_FIRST)

    def key(item: pytest.Item) -> tuple[int, int]:
        part, position = _database_use(item), rank(item)
        if part == 2 and position < len(SLOW_FIRST):
            part = -1
        return part, position

    items.sort(key=key)  # stable: pytest-django's order within each part


def _xdist_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """What pytest-xdist's own hook does for ``--dist loadgroup``: the ``xdist_group``
    names as a ``@group`` suffix of the node id, which is how the scheduler groups.
    xdist 3.8 writes ``item._nodeid``, which pytest 9.2 no longer reads (its node ids
    are structured, ``item._id``), so every group was silently ignored
    (pytest-dev/pytest-xdist#1386). Nothing to do where xdist's suffix took effect."""
    if not config.getvalue("loadgroup"):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        if names and "@" not in item.nodeid and isinstance(getattr(item, "_id", None), NodeId):
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(sorted(names))}")


class _Schedule:
    """The order of an xdist worker's tests and their groups: after pytest-django's
    order and xdist's own hook (trylast), on the tests ``-m`` kept."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        if hasattr(config, "workerinput"):  # an xdist worker: its order is the schedule's
            _slow_first(items)
            _xdist_groups(config, items)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_Schedule(), "token-rotation-schedule")


# tryfirst: the marks must be there before pytest's ``-m`` deselects by them (``-m
# shapes``, ``on_mariadb``...), and the replica's django_db marks before pytest-django
# orders the tests by them.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _reading_from_the_replica(items)
    for item in items:
        for part, modules in SHAPES_MODULES.items():
            if item.path.stem in modules:
                item.add_marker(pytest.mark.shapes)
                item.add_marker(getattr(pytest.mark, part))
        callspec = getattr(item, "callspec", None)
        alias = callspec.params.get("alias") if callspec is not None else None
        if isinstance(alias, str) and alias in ALIAS_MARKS:
            item.add_marker(getattr(pytest.mark, ALIAS_MARKS[alias]))
    for marker, reason in _unavailable_servers().items():
        wanted = [item for item in items if item.get_closest_marker(marker)]
        if not wanted:
            continue
        if IN_CI:
            raise pytest.UsageError(
                f"{reason}, and CI=true: the {marker} tests must run in CI, not be "
                "skipped. Start the server (see .ci/run)."
            )
        skip = pytest.mark.skip(reason=reason)
        for item in wanted:
            item.add_marker(skip)


#: Why app-client tests skip under signed-cookie sessions (the ``app_sessions`` fixture).
APP_SESSIONS_NEED_A_STORE = (
    "allauth headless app clients (X-Session-Token) need a server-side session: "
    "a signed-cookie session cannot be named by a token, allauth headless answers "
    "410 (SESSION_ENGINE = signed_cookies; check token_rotation.W011)"
)


@pytest.fixture(autouse=True)
def _close_the_async_thread_connections() -> Iterator[None]:
    """Close the connections of asgiref's thread-sensitive thread after each test.

    The sync parts of an async test (the ``AsyncClient``'s sync middleware and
    views, ``sync_to_async(thread_sensitive=True)`` calls such as ``arefresh``'s
    token lookup or ``aforce_login``) run on that one thread when no
    ``async_to_sync`` is around them. Django's test client disconnects
    ``close_old_connections`` from ``request_finished``, so nothing closes the
    connections that thread opens: they lived until the worker exited and
    ``DROP DATABASE`` at teardown failed on PostgreSQL ("is being accessed by
    other users"), leaving the test database behind (issue #16).
    """
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=60)
    # The same for the refresher threads refresh_ids(keep_threads=True) keeps.
    background.stop_kept_threads()


@pytest.fixture
def app_sessions(settings: Any) -> None:
    """Skips a test of allauth headless app clients where their sessions cannot live."""
    if settings.SESSION_ENGINE == "django.contrib.sessions.backends.signed_cookies":
        pytest.skip(APP_SESSIONS_NEED_A_STORE)


@pytest.fixture
def hidden_secrets(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """Secrets no log record may contain, from any logger at any level.

    Tests (or module fixtures) append the values they create; the check runs
    after the test.
    """
    values = list(SECRETS)
    caplog.set_level(logging.DEBUG)
    yield values
    # At teardown ``caplog.records`` is the (empty) teardown phase: ask for the others.
    for record in caplog.get_records("setup") + caplog.get_records("call"):
        text = record.getMessage() + (record.exc_text or "")
        for value in values:
            assert value not in text, f"a secret was logged by {record.name}: {text!r}"


@pytest.fixture
def scripted() -> Iterator[scripted_server.ScriptedServer]:
    """A scripted token endpoint on 127.0.0.1, wired to the ``fake`` provider."""
    with scripted_server.running() as server:
        yield server


@pytest.fixture
def fake_app(db: None, settings: Any, scripted: scripted_server.ScriptedServer) -> SocialApp:
    settings.FAKE_PROVIDER_TOKEN_URL = scripted.token_url
    return SocialApp.objects.create(
        provider="fake", name="Fake", client_id="fake-client", secret="fake-secret"
    )


@pytest.fixture
def make_oidc_app(db: None, scripted: scripted_server.ScriptedServer) -> Callable[..., SocialApp]:
    """An OpenID Connect app whose discovery document is served by the scripted server."""

    def make(overrides: dict[str, Any] | None = None, **app_settings: Any) -> SocialApp:
        app_settings = {"server_url": scripted.base_url, **app_settings}
        if overrides:
            app_settings["openid_configuration_overrides"] = overrides
        return SocialApp.objects.create(
            provider="openid_connect",
            provider_id="scripted",
            name="Scripted OIDC",
            client_id="oidc-client",
            secret="oidc-secret",
            settings=app_settings,
        )

    return make


@pytest.fixture
def user(db: None) -> Any:
    return get_user_model().objects.create_user("alice", "alice@example.com", "pw")


@pytest.fixture
def make_token(db: None, user: Any) -> MakeToken:
    """Create a stored allauth token; ``expires_in`` seconds from now (negative: expired)."""

    def make(
        *,
        provider: str = "fake",
        app: SocialApp | None = None,
        access: str = "old-access",
        refresh: str = "old-refresh",
        expires_in: float | None = -10,
        owner: Any = None,
        uid: str | None = None,
    ) -> SocialToken:
        account = SocialAccount.objects.create(
            user=owner or user,
            provider=provider,
            uid=uid or f"uid-{SocialAccount.objects.count() + 1}",
        )
        expires_at = (
            None if expires_in is None else timezone.now() + datetime.timedelta(seconds=expires_in)
        )
        return SocialToken.objects.create(
            app=app, account=account, token=access, token_secret=refresh, expires_at=expires_at
        )

    return make


@pytest.fixture(scope="session")
def oauth_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real OAuth2/OpenID Connect provider (django-oauth-toolkit) in its own
    process: rotating single-use refresh tokens with reuse protection."""
    from tests.provider_server.fixture import start_provider

    with start_provider(tmp_path_factory.mktemp("provider")) as provider:
        yield provider


@pytest.fixture
def provider(oauth_provider: Any) -> Any:
    """The provider with its counters zeroed and no artificial delay."""
    oauth_provider.control(reset=True, delay_ms=0)
    return oauth_provider
