"""Benchmark 1b: the fresh-token fast path against its floor, side by side in one process.

Four middleware stacks serve the same minimal ``@login_required`` page through the Django
test client, with database sessions (the default engine), in interleaved rounds:

* ``bare``: no token middleware;
* ``read``: a middleware that reads one session key and does nothing else - the floor any
  session-based check pays;
* ``oidc``: mozilla-django-oidc's ``SessionRefresh`` with a valid ID token (its fast path);
* ``ours``: ``TokenRefreshMiddleware`` with a fresh token.

Every session holds the same keys (the auth keys, mozilla-django-oidc's expiry, our summary)
and names the same authentication backend, so the four requests differ only by the
middleware. What is reported is the time per request and what each stack adds over
``bare``, as the median of same-round differences and ratios.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.http import HttpRequest

from .common import median

#: The four stacks, in the order of the table.
STACKS = ("bare", "read", "oidc", "ours")
STACK_LABELS = {
    "bare": "(a) no token middleware",
    "read": "(f) floor: read one session key",
    "oidc": "(m) mozilla-django-oidc SessionRefresh",
    "ours": "(c) TokenRefreshMiddleware",
}
MIDDLEWARE = {
    "bare": [],
    "read": ["benchmarks.fastpath.SessionReadMiddleware"],
    "oidc": ["mozilla_django_oidc.middleware.SessionRefresh"],
    "ours": ["django_token_rotation.middleware.TokenRefreshMiddleware"],
}
#: A backend that mozilla-django-oidc recognises as its own (so its middleware does its
#: whole check) and that every stack's session names.
BACKEND = "benchmarks.fastpath.OIDCBackend"


def oidc_available() -> bool:
    try:
        import mozilla_django_oidc  # noqa: F401
    except ImportError:
        return False
    return True


class SessionReadMiddleware:
    """The floor: one session read, nothing else."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        request.session.get("_token_rotation")
        return self.get_response(request)


if oidc_available():
    from mozilla_django_oidc.auth import OIDCAuthenticationBackend

    class OIDCBackend(OIDCAuthenticationBackend):  # type: ignore[misc]
        pass

else:  # pragma: no cover - without the bench extra the (m) row is left out
    from django.contrib.auth.backends import ModelBackend

    class OIDCBackend(ModelBackend):  # type: ignore[no-redef]
        pass


@dataclass
class Stack:
    name: str
    #: Seconds per request, one figure per round (the round's median request: a
    #: request preempted by another process on a shared machine does not count).
    per_request: list[float] = field(default_factory=list)
    queries: int = 0
    errors: int = 0

    def us(self) -> float:
        return median(self.per_request) * 1e6


@contextmanager
def _settings() -> Iterator[None]:
    from django.conf import settings
    from django.test import override_settings

    ours = getattr(settings, "TOKEN_MIDDLEWARE", {})["ours"]
    with override_settings(
        SESSION_ENGINE="django.contrib.sessions.backends.db",
        AUTHENTICATION_BACKENDS=["django.contrib.auth.backends.ModelBackend", BACKEND],
        OIDC_OP_AUTHORIZATION_ENDPOINT="https://127.0.0.1:9/authorize",
        OIDC_OP_TOKEN_ENDPOINT="https://127.0.0.1:9/token",
        OIDC_OP_USER_ENDPOINT="https://127.0.0.1:9/userinfo",
        OIDC_RP_CLIENT_ID="bench-client",
        OIDC_RP_CLIENT_SECRET="bench-client-secret",
        MIDDLEWARE=[m for m in settings.MIDDLEWARE if m not in ours],
    ):
        yield


def _session_key(user_id: int, extra: dict[str, Any]) -> str:
    """A database session in which ``user_id`` is signed in through :data:`BACKEND`."""
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.sessions.backends.db import SessionStore

    user = get_user_model().objects.get(pk=user_id)
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = BACKEND
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session["oidc_id_token_expiration"] = time.time() + 24 * 3600
    session.update(extra)
    session.save()
    key = session.session_key
    assert key is not None
    return key


def side_by_side(
    user_id: int, *, requests_per_round: int, rounds: int, block: int = 100
) -> dict[str, Stack]:
    """Time the stacks in ``rounds`` rounds. Within a round the stacks take turns in
    blocks of ``block`` requests (in a rotated order), so that a change of the machine's
    load touches them alike; a round's figure is its median request."""
    from django.conf import settings
    from django.contrib.sessions.backends.db import SessionStore
    from django.db import connection
    from django.test import Client, override_settings
    from django.test.utils import CaptureQueriesContext

    from django_token_rotation.session import KEY

    names = [s for s in STACKS if s != "oidc" or oidc_available()]
    results = {name: Stack(name) for name in names}
    clients: dict[str, Client] = {}
    summary: dict[str, Any] = {}
    with _settings():
        base = list(settings.MIDDLEWARE)
        for name in ("ours", *(n for n in names if n != "ours")):
            # The handler builds its middleware chain on its first request and keeps it.
            with override_settings(MIDDLEWARE=base + MIDDLEWARE[name]):
                client = Client()
                # Every session carries the same keys, ours' summary included: the
                # stacks differ by their middleware only.
                key = _session_key(user_id, summary)
                client.cookies[settings.SESSION_COOKIE_NAME] = key
                for _ in range(20):  # warm: ours writes its summary on the first request
                    assert client.get("/page/").status_code == 200
                if name == "ours":
                    summary = {KEY: SessionStore(key).get(KEY)}
            clients[name] = client
            with CaptureQueriesContext(connection) as queries:
                assert client.get("/page/").status_code == 200
            results[name].queries = len(queries.captured_queries)

        blocks = max(1, requests_per_round // block)
        per_block = max(1, requests_per_round // blocks)
        clock = time.perf_counter
        for _ in range(rounds):
            latencies: dict[str, list[float]] = {name: [] for name in names}
            for b in range(blocks):
                for name in names[b % len(names) :] + names[: b % len(names)]:
                    get, timed = clients[name].get, latencies[name]
                    errors = 0
                    for _ in range(per_block):
                        t0 = clock()
                        errors += get("/page/").status_code != 200
                        timed.append(clock() - t0)
                    results[name].errors += errors
            for name in names:
                results[name].per_request.append(median(latencies[name]))
    return results


def added(results: dict[str, Stack], name: str, base: str) -> tuple[float, float]:
    """Microseconds added over ``base`` and the ratio to it: medians of same-round figures."""
    pairs = list(zip(results[base].per_request, results[name].per_request, strict=True))
    return (
        median([(t - b) * 1e6 for b, t in pairs]),
        median([t / b for b, t in pairs]),
    )


def alone(user_id: int, iterations: int) -> dict[str, float]:
    """Microseconds per call of each stack's middleware alone (best of 5 loops), on a
    request whose database session is already loaded: what the middleware itself
    costs, without the rest of the request's noise."""
    import functools
    import timeit

    from django.conf import settings
    from django.contrib.sessions.backends.db import SessionStore
    from django.http import HttpResponse
    from django.test import RequestFactory, override_settings
    from django.utils.module_loading import import_string

    ok = HttpResponse("ok")
    timings: dict[str, float] = {}
    with _settings():
        # Ours' summary, as the side-by-side run stores it.
        with override_settings(MIDDLEWARE=list(settings.MIDDLEWARE) + MIDDLEWARE["ours"]):
            from django.test import Client

            client = Client()
            key = _session_key(user_id, {})
            client.cookies[settings.SESSION_COOKIE_NAME] = key
            assert client.get("/page/").status_code == 200
        user = client.get("/page/").wsgi_request.user
        for name in STACKS:
            if not MIDDLEWARE[name] or (name == "oidc" and not oidc_available()):
                continue
            middleware = import_string(MIDDLEWARE[name][0])(lambda request: ok)
            request = RequestFactory().get("/page/")
            request.session = SessionStore(key)
            request.session.load()
            request.session._session_cache = request.session.load()  # type: ignore[attr-defined]
            request.user = user
            middleware(request)
            call = functools.partial(middleware, request)
            best = min(timeit.repeat(call, number=iterations, repeat=5))
            timings[name] = best / iterations * 1e6
    return timings
