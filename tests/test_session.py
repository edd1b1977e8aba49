"""The session summary: which session holds it, when it is trusted, and what
templates see of it (the middleware's tests cover it through requests)."""

from __future__ import annotations

import datetime
from importlib import import_module
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY
from django.contrib.auth import SESSION_KEY as AUTH_USER_KEY
from django.contrib.sessions.backends.base import SessionBase
from django.http import HttpRequest
from django.test import RequestFactory
from django.utils import timezone

from django_token_rotation import REFRESH_ACCESS_TOKEN_ERROR, session

NOW = 1_800_000_000.0


def new_session(**values: Any) -> SessionBase:
    """A saved session of the project's engine holding ``values``."""
    engine = import_module(django_settings.SESSION_ENGINE)
    store: SessionBase = engine.SessionStore()
    store.update(values)
    store.save()
    return store


def saved(store: SessionBase) -> dict[str, Any]:
    """What the session store has for ``store``'s key now."""
    engine = import_module(django_settings.SESSION_ENGINE)
    loaded: SessionBase = engine.SessionStore(store.session_key)
    return dict(loaded.items())


def cookie_request(store: SessionBase | None, **headers: str) -> HttpRequest:
    request = RequestFactory().get("/", headers=headers)
    if store is not None:
        request.session = store
    return request


def test_build_keeps_whole_seconds_and_only_what_is_known() -> None:
    assert session.build("7", NOW + 0.9, None, None) == {"u": "7", "c": int(NOW)}
    error = {"provider": "fake", "code": "invalid_grant"}
    assert session.build("7", NOW, NOW + 60.5, error) == {
        "u": "7",
        "c": int(NOW),
        "x": int(NOW) + 60,
        "e": error,
    }


@pytest.mark.django_db
def test_a_summary_is_trusted_until_its_check_time_and_for_its_user_only() -> None:
    summary = session.build("7", NOW + 30, None, None)
    request = cookie_request(new_session(**{AUTH_USER_KEY: 7, session.KEY: summary}))
    assert session.lookup(request, NOW) == ("7", summary)
    assert session.lookup(request, NOW + 30) == ("7", None)  # the check time has come
    request.session[AUTH_USER_KEY] = "8"  # another user signed in on this session
    assert session.lookup(request, NOW) == ("8", None)
    request.session[session.KEY] = "not a summary"
    assert session.lookup(request, NOW) == ("8", None)


@pytest.mark.django_db
async def test_alookup_answers_as_lookup() -> None:
    summary = session.build("7", NOW + 30, None, None)
    store = await _anew_session(**{AUTH_USER_KEY: 7, session.KEY: summary})
    request = cookie_request(store)
    assert await session.alookup(request, NOW) == ("7", summary)
    assert await session.alookup(request, NOW + 30) == ("7", None)
    assert await session.alookup(cookie_request(None), NOW) == (None, None)
    anonymous = cookie_request(await _anew_session())
    assert await session.alookup(anonymous, NOW) == (None, None)


async def _anew_session(**values: Any) -> SessionBase:
    return await sync_to_async(new_session)(**values)


def test_a_request_without_a_session_has_nobody_signed_in() -> None:
    request = cookie_request(None)
    assert session.lookup(request, NOW) == (None, None)
    assert session.auth_user_id(request) is None
    assert session.summary(request) is None
    assert session.for_request(request) == session.TokenSession()
    session.store(request, session.build("7", NOW, None, None))  # nowhere to keep it: no error
    session.clear(request)


# -- allauth headless app clients (X-Session-Token) ---------------------------------


@pytest.mark.django_db
def test_an_app_session_is_written_at_once_and_the_cookie_left_alone(user: Any) -> None:
    signed_in = {
        AUTH_USER_KEY: str(user.pk),
        BACKEND_SESSION_KEY: "django.contrib.auth.backends.ModelBackend",
        HASH_SESSION_KEY: user.get_session_auth_hash(),
    }
    app = new_session(**signed_in)
    cookie = new_session(**{AUTH_USER_KEY: str(user.pk)})
    request = cookie_request(cookie, **{"X-Session-Token": app.session_key or ""})
    assert session.is_app(request)
    assert session.user(request) == user
    summary = session.build(str(user.pk), NOW + 30, None, None)

    session.store(request, summary)
    assert saved(app)[session.KEY] == summary  # saved before the view runs
    assert session.KEY not in cookie
    assert session.lookup(request, NOW) == (str(user.pk), summary)

    session.clear(request)
    assert session.KEY not in saved(app)


@pytest.mark.django_db
def test_an_unknown_session_token_is_nobody() -> None:
    cookie = new_session(**{AUTH_USER_KEY: "7"})
    request = cookie_request(cookie, **{"X-Session-Token": "no-such-session"})
    assert session.is_app(request)
    assert session.user(request) is None
    assert session.auth_user_id(request) is None
    assert session.lookup(request, NOW) == (None, None)  # never the cookie's user
    assert session.for_request(request) == session.TokenSession()


@pytest.mark.django_db
def test_a_session_token_without_allauth_headless_is_an_ordinary_header(settings: Any) -> None:
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "allauth.headless"]
    cookie = new_session(**{AUTH_USER_KEY: "7"})
    request = cookie_request(cookie, **{"X-Session-Token": "anything"})
    assert not session.is_app(request)
    assert session.lookup(request, NOW) == ("7", None)


# -- what templates see ------------------------------------------------------------


def test_token_session_of_a_failure_names_the_provider_and_never_a_token() -> None:
    value = session.build(
        "7",
        NOW,
        NOW + 60,
        {"provider": "google", "code": "invalid_grant", "login_url": "/accounts/google/login/"},
    )
    seen = session.token_session(value)
    assert bool(seen)
    assert (seen.error, seen.provider, seen.code, seen.provider_name) == (
        REFRESH_ACCESS_TOKEN_ERROR,
        "google",
        "invalid_grant",
        "google",  # no display name stored: the id
    )
    assert seen.expires_at == datetime.datetime.fromtimestamp(int(NOW) + 60, tz=datetime.UTC)
    assert seen.as_json() == {
        "error": REFRESH_ACCESS_TOKEN_ERROR,
        "provider": "google",
        "code": "invalid_grant",
        # Naive local time under USE_TZ = False, as the rest of the site's JSON.
        "expires_at": (
            seen.expires_at if django_settings.USE_TZ else timezone.make_naive(seen.expires_at)
        ).isoformat(),
    }


def test_token_session_without_a_failure_is_falsy() -> None:
    seen = session.token_session(session.build("7", NOW, None, None))
    assert not seen
    assert seen.as_json()["expires_at"] is None
    assert session.token_session({"u": "7", "c": 1, "e": "not a dict"}) == session.TokenSession()


@pytest.mark.django_db
def test_another_users_summary_is_not_shown() -> None:
    error = {"provider": "google", "code": "invalid_grant"}
    stale = session.build("8", NOW, None, error)  # left by a user who signed out
    request = cookie_request(new_session(**{AUTH_USER_KEY: "7", session.KEY: stale}))
    assert session.for_request(request) == session.TokenSession()
