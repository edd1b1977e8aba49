"""System checks: each by its id, plus one full ``check`` run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any

import pytest
from allauth.socialaccount.models import SocialApp
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connections

from django_token_rotation import checks
from tests.helpers import free_port

OURS = "django_token_rotation.middleware.TokenRefreshMiddleware"


def ids(messages: list[Any]) -> list[str]:
    return [message.id for message in messages]


@pytest.mark.django_db  # Django 6 runs model checks that open a connection
def test_the_test_settings_pass_every_check() -> None:
    out = StringIO()
    signed_cookies = django_settings.SESSION_ENGINE == checks.SIGNED_COOKIES  # a shape's
    err = StringIO()
    call_command(
        "check", stdout=out, stderr=err, fail_level="ERROR" if signed_cookies else "WARNING"
    )
    if signed_cookies:  # the one warning: app clients cannot sign in (tests/test_headless.py)
        assert "token_rotation.W011" in err.getvalue()
        assert "1 issue" in err.getvalue()
    else:
        assert "no issues" in out.getvalue()


def test_setup_is_clean() -> None:
    assert checks.check_setup() == []


def test_store_tokens_must_be_on(settings: Any) -> None:
    settings.SOCIALACCOUNT_STORE_TOKENS = False
    assert ids(checks.check_setup()) == ["token_rotation.E002"]


def test_socialaccount_must_be_installed(settings: Any) -> None:
    settings.INSTALLED_APPS = [
        app for app in settings.INSTALLED_APPS if not app.startswith("allauth.socialaccount")
    ]
    assert "token_rotation.E001" in ids(checks.check_setup())


def test_missing_middleware_is_a_warning(settings: Any) -> None:
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != OURS]
    [message] = checks.check_setup()
    assert message.id == "token_rotation.W003"
    assert OURS in (message.hint or "")


@pytest.mark.parametrize(
    "prerequisite",
    [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "allauth.account.middleware.AccountMiddleware",
    ],
)
def test_middleware_must_come_after_its_prerequisites(settings: Any, prerequisite: str) -> None:
    middleware = [m for m in settings.MIDDLEWARE if m != OURS]
    middleware.insert(middleware.index(prerequisite), OURS)
    settings.MIDDLEWARE = middleware
    messages = checks.check_setup()
    assert "token_rotation.E004" in ids(messages)
    assert any(prerequisite in m.msg for m in messages)


def test_missing_prerequisite(settings: Any) -> None:
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "AccountMiddleware" not in m]
    [message] = checks.check_setup()
    assert message.id == "token_rotation.E004"
    assert "is missing from" in message.msg


def test_subclassed_middleware_is_recognised(settings: Any) -> None:
    settings.MIDDLEWARE = [
        "tests.test_checks.MyMiddleware" if m == OURS else m for m in settings.MIDDLEWARE
    ]
    assert checks.check_setup() == []


def test_invalid_setting(settings: Any) -> None:
    settings.TOKEN_ROTATION_LEEWAY = "soon"
    messages = checks.check_setup()
    assert ids(messages) == ["token_rotation.E005"]
    assert "TOKEN_ROTATION_LEEWAY" in messages[0].msg


def test_lease_must_outlast_the_timeout(settings: Any) -> None:
    settings.TOKEN_ROTATION_LEASE = 5
    settings.TOKEN_ROTATION_TIMEOUT = 10
    assert ids(checks.check_setup()) == ["token_rotation.E006"]


@pytest.mark.parametrize(("lease", "flagged"), [(2.5, True), (3, False)])
def test_lease_must_outlast_the_timeout_plus_the_database_writes(
    settings: Any, lease: float, flagged: bool
) -> None:
    settings.TOKEN_ROTATION_TIMEOUT = 1
    settings.TOKEN_ROTATION_LEASE = lease
    assert ids(checks.check_setup()) == (["token_rotation.E006"] if flagged else [])


@pytest.mark.parametrize(
    ("providers", "expected"),
    [
        ({"google": {"SCOPE": ["email"]}}, ["token_rotation.W007"]),
        ({"google": {"AUTH_PARAMS": {"access_type": "offline"}}}, []),
        (
            {"google": {"APP": {"client_id": "x", "settings": {"auth_params": {}}}}},
            ["token_rotation.W007"],
        ),
        ({"microsoft": {"SCOPE": ["User.Read"]}}, ["token_rotation.W007"]),
        ({"microsoft": {"SCOPE": ["User.Read", "offline_access"]}}, []),
        (
            {"openid_connect": {"APPS": [{"provider_id": "kc", "settings": {}}]}},
            ["token_rotation.W007"],
        ),
        (
            {
                "openid_connect": {
                    "APPS": [
                        {
                            "provider_id": "kc",
                            "settings": {"scope": ["openid", "offline_access"]},
                        }
                    ]
                }
            },
            [],
        ),
        ({"github": {"SCOPE": ["user"]}}, []),
    ],
)
def test_refresh_tokens_must_be_asked_for(
    settings: Any, providers: dict[str, Any], expected: list[str]
) -> None:
    settings.SOCIALACCOUNT_PROVIDERS = providers
    messages = checks.check_offline_access()
    assert ids(messages) == expected
    for message in messages:
        assert message.hint


@pytest.mark.django_db
def test_database_apps_are_checked_with_database_checks() -> None:
    SocialApp.objects.create(provider="google", name="G", client_id="g", secret="s")
    SocialApp.objects.create(
        provider="google",
        name="G offline",
        client_id="g2",
        secret="s",
        settings={"auth_params": {"access_type": "offline"}},
    )
    messages = checks.check_offline_access_database_apps(databases=["default"])
    assert ids(messages) == ["token_rotation.W007"]
    assert "SocialApp" in messages[0].msg
    assert checks.check_offline_access_database_apps(databases=None) == []


from django_token_rotation.middleware import TokenRefreshMiddleware  # noqa: E402


class MyMiddleware(TokenRefreshMiddleware):
    pass


# -- what a newcomer trips on ---------------------------------------------------


def test_allauth_urls_are_routed() -> None:
    assert checks.check_allauth_urls() == []


def test_allauth_urls_not_routed(settings: Any) -> None:
    settings.ROOT_URLCONF = "tests.urls_without_allauth"
    [message] = checks.check_allauth_urls()
    assert message.id == "token_rotation.W008"
    assert 'include("allauth.urls")' in (message.hint or "")


def test_the_request_context_processor_is_on() -> None:
    assert checks.check_request_context_processor() == []


def test_the_request_context_processor_is_missing(settings: Any) -> None:
    engine = dict(settings.TEMPLATES[0])
    processors = engine["OPTIONS"]["context_processors"]
    engine["OPTIONS"] = {
        **engine["OPTIONS"],
        "context_processors": [p for p in processors if p != checks.REQUEST_PROCESSOR],
    }
    settings.TEMPLATES = [engine]
    [message] = checks.check_request_context_processor()
    assert message.id == "token_rotation.W009"
    assert checks.REQUEST_PROCESSOR in (message.hint or "")


def test_no_django_templates_engine_no_warning(settings: Any) -> None:
    settings.TEMPLATES = []
    assert checks.check_request_context_processor() == []


def test_check_command_reports_the_unrouted_urls(settings: Any) -> None:
    from django.core.management.base import SystemCheckError

    settings.ROOT_URLCONF = "tests.urls_without_allauth"
    out = StringIO()
    # Warnings do not fail the command: it prints them.
    call_command("check", "--tag", "urls", stdout=out, stderr=out)
    assert "token_rotation.W008" in out.getvalue()
    with pytest.raises(SystemCheckError, match="token_rotation.W008"):
        call_command("check", "--tag", "urls", "--fail-level", "WARNING", stdout=StringIO())


# -- a check never crashes on someone else's mistake -------------------------------


def test_an_unimportable_middleware_entry_is_left_to_django(settings: Any) -> None:
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "no_such_module.Middleware"]
    assert checks.check_setup() == []


def test_a_broken_urlconf_is_left_to_django(settings: Any) -> None:
    settings.ROOT_URLCONF = "no_such_module.urls"
    assert checks.check_allauth_urls() == []


def test_allauth_urls_unchecked_without_allauth_account(settings: Any) -> None:
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "allauth.account"]
    assert checks.check_allauth_urls() == []


def test_provider_settings_without_apps_or_scopes_are_skipped(settings: Any) -> None:
    settings.SOCIALACCOUNT_PROVIDERS = {"google": "not a dict", "microsoft": {"VERIFIED_EMAIL": 1}}
    assert checks.check_offline_access() == []


@pytest.mark.django_db
def test_a_database_openid_connect_app_with_the_default_scope_gets_w007() -> None:
    SocialApp.objects.create(
        provider="openid_connect",
        provider_id="kc",
        name="Keycloak",
        client_id="kc",
        secret="s",
        settings={"server_url": "https://sso.example/realms/x"},
    )
    messages = checks.check_offline_access_database_apps(databases=["default"])
    assert ids(messages) == ["token_rotation.W007"]
    assert "offline_access" in messages[0].msg


def test_an_invalid_timeout_is_reported_once_not_raised(settings: Any) -> None:
    # E006 compares LEASE with TIMEOUT: it cannot when TIMEOUT itself is invalid.
    settings.TOKEN_ROTATION_TIMEOUT = "slow"
    # The LEASE derived from it fails with TIMEOUT's error: one message, TIMEOUT's link.
    [message] = checks.check_setup()
    assert message.id == "token_rotation.E005"
    assert message.msg.startswith("TOKEN_ROTATION_TIMEOUT must be a number")
    assert (message.hint or "").endswith("#token-rotation-timeout")


def test_provider_errors_shapes_no_answer_can_match(settings: Any) -> None:
    settings.TOKEN_ROTATION_PROVIDER_ERRORS = {
        "fake": {"invalid_grant": "invalid_grant", "HTTP 400!": "invalid_grant"}
    }
    [message] = checks.check_provider_errors()
    assert message.id == "token_rotation.W010"
    assert "'HTTP 400!'" in message.msg


def test_invalid_provider_errors_are_left_to_e005(settings: Any) -> None:
    settings.TOKEN_ROTATION_PROVIDER_ERRORS = ["not", "a", "dict"]
    assert checks.check_provider_errors() == []
    assert "token_rotation.E005" in ids(checks.check_setup())


@contextmanager
def extra_database(alias: str, **database: Any) -> Iterator[None]:
    """``alias`` added to the connections for the block (as ``check --database`` meets it)."""
    configured = connections.configure_settings(
        {"default": connections.settings["default"], alias: database}
    )
    connections.settings[alias] = configured[alias]
    try:
        yield
    finally:
        connections[alias].close()
        del connections.settings[alias]
        del connections[alias]


def test_a_database_without_tables_yet_is_skipped(tmp_path: Any, django_db_blocker: Any) -> None:
    # ``migrate`` on a new database runs the database checks before any table exists.
    empty = str(tmp_path / "empty.sqlite3")
    with (
        django_db_blocker.unblock(),
        extra_database("empty", ENGINE="django.db.backends.sqlite3", NAME=empty),
    ):
        assert checks.check_offline_access_database_apps(databases=["empty"]) == []


def test_an_unreachable_database_is_skipped(django_db_blocker: Any) -> None:
    nowhere = {"HOST": "127.0.0.1", "PORT": str(free_port()), "NAME": "x", "USER": "x"}
    with (
        django_db_blocker.unblock(),
        extra_database("nowhere", ENGINE="django.db.backends.postgresql", **nowhere),
    ):
        assert checks.check_offline_access_database_apps(databases=["nowhere"]) == []


def test_app_clients_with_signed_cookie_sessions_are_a_warning(settings: Any) -> None:
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    [warning] = checks.check_headless_sessions()
    assert warning.id == "token_rotation.W011"
    assert "410" in warning.msg
    assert warning.hint and "HEADLESS_CLIENTS" in warning.hint
    settings.HEADLESS_CLIENTS = ("browser",)  # browser clients keep their cookie session
    assert checks.check_headless_sessions() == []


@pytest.mark.parametrize(
    "engine",
    ["django.contrib.sessions.backends.db", "django.contrib.sessions.backends.cache"],
)
def test_app_clients_with_server_side_sessions_are_fine(settings: Any, engine: str) -> None:
    settings.SESSION_ENGINE = engine
    assert checks.check_headless_sessions() == []


def test_signed_cookie_sessions_without_headless_are_fine(settings: Any) -> None:
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "allauth.headless"]
    assert checks.check_headless_sessions() == []
