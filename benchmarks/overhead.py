"""Benchmark 1: the per-request cost of the three stacks for a signed-in user with a fresh token."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from .common import VARIANTS, Gunicorn, median, percentile, session_cookie


@dataclass
class Round:
    requests: int
    seconds: float
    latencies: list[float]
    errors: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class Result:
    """One stack's rounds; figures are medians over rounds, ratios over same-round pairs."""

    variant: str
    rounds: list[Round] = field(default_factory=list)
    queries: int | None = None

    def rps(self) -> float:
        return median([r.rps for r in self.rounds])

    def p50_ms(self) -> float:
        return median([percentile(r.latencies, 50) * 1000 for r in self.rounds])

    def p99_ms(self) -> float:
        return median([percentile(r.latencies, 99) * 1000 for r in self.rounds])

    def errors(self) -> int:
        return sum(r.errors for r in self.rounds)


def ratios(results: dict[str, Result], variant: str) -> dict[str, float]:
    """Median over rounds of this stack's figure divided by (a)'s figure of the same round."""
    base, this = results["none"].rounds, results[variant].rounds

    def ratio(metric: Any) -> float:
        return median([metric(t) / metric(b) for b, t in zip(base, this, strict=True)])

    return {
        "rps": ratio(lambda r: r.rps),
        "p50": ratio(lambda r: percentile(r.latencies, 50)),
        "p99": ratio(lambda r: percentile(r.latencies, 99)),
    }


# -- in process -----------------------------------------------------------------


def in_process(
    user_id: int, *, requests_per_round: int, rounds: int
) -> tuple[dict[str, Result], dict[str, str]]:
    """The Django test client against three handlers built with the three stacks.

    Also returns each client's session cookie after the warm-up (ours holds the token
    summary), for :func:`middleware_alone`.
    """
    from django.conf import settings
    from django.db import connection
    from django.test import Client, override_settings
    from django.test.utils import CaptureQueriesContext

    stacks: dict[str, list[str]] = getattr(settings, "TOKEN_MIDDLEWARE", {})
    base = [m for m in settings.MIDDLEWARE if m not in stacks["ours"]]
    clients: dict[str, Client] = {}
    results = {variant: Result(variant) for variant in VARIANTS}
    for variant in VARIANTS:
        # The handler builds its middleware chain on its first request, from the
        # settings of that moment, and keeps it.
        with override_settings(MIDDLEWARE=base + stacks[variant]):
            client = Client()
            client.cookies[settings.SESSION_COOKIE_NAME] = session_cookie(user_id)
            for _ in range(20):  # warm: ours stores its token summary in the session
                assert client.get("/page/").status_code == 200
        clients[variant] = client
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/page/").status_code == 200
        results[variant].queries = len(queries.captured_queries)

    for _ in range(rounds):
        for variant in VARIANTS:  # interleaved: a, b, c, a, b, c, ...
            client = clients[variant]
            latencies = []
            errors = 0
            started = time.perf_counter()
            for _ in range(requests_per_round):
                t0 = time.perf_counter()
                response = client.get("/page/")
                latencies.append(time.perf_counter() - t0)
                errors += response.status_code != 200
            elapsed = time.perf_counter() - started
            results[variant].rounds.append(Round(requests_per_round, elapsed, latencies, errors))
    cookies = {v: c.cookies[settings.SESSION_COOKIE_NAME].value for v, c in clients.items()}
    return results, cookies


def middleware_alone(user_id: int, cookies: dict[str, str], iterations: int) -> dict[str, float]:
    """Microseconds per request spent in (b)'s and (c)'s middleware alone, fresh token.

    The request already has its session decoded and its user loaded, as the page needs
    both anyway: what is timed is only what the token layer adds.
    """
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.signed_cookies import SessionStore
    from django.http import HttpRequest, HttpResponse
    from django.test import RequestFactory

    from django_token_rotation.middleware import TokenRefreshMiddleware

    from .naive import NaiveTokenMiddleware

    user = get_user_model().objects.get(pk=user_id)
    ok = HttpResponse("ok")

    def view(request: HttpRequest) -> HttpResponse:
        return ok

    timings: dict[str, float] = {}
    middlewares: dict[str, Callable[[HttpRequest], Any]] = {
        "naive": NaiveTokenMiddleware(view),
        "ours": TokenRefreshMiddleware(view),
    }
    for variant, middleware in middlewares.items():
        request = RequestFactory().get("/page/")
        request.session = SessionStore(session_key=cookies[variant])
        request.session._session_cache = request.session.load()  # type: ignore[attr-defined]
        request.user = user
        for _ in range(min(iterations, 100)):
            middleware(request)
        best = math.inf
        for _ in range(5):  # best of 5: the floor, without the machine's noise
            started = time.perf_counter()
            for _ in range(iterations):
                middleware(request)
            best = min(best, time.perf_counter() - started)
        timings[variant] = best / iterations * 1e6
    return timings


# -- over HTTP -------------------------------------------------------------------


def _load(url: str, sessions: list[requests.Session], seconds: float) -> Round:
    """Each session requests ``url`` in a closed loop for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in sessions]
    errors = [0] * len(sessions)
    start = threading.Barrier(len(sessions) + 1)
    stop_at = [0.0]

    def run(i: int) -> None:
        session = sessions[i]
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                ok = session.get(url, timeout=30, allow_redirects=False).status_code == 200
            except requests.RequestException:
                ok = False
            latencies[i].append(time.perf_counter() - t0)
            errors[i] += not ok

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    flat = [latency for per_client in latencies for latency in per_client]
    return Round(len(flat), elapsed, flat, sum(errors))


def over_http(
    user_ids: list[int],
    env: dict[str, str],
    *,
    workers: int,
    clients: int,
    seconds: float,
    rounds: int,
) -> dict[str, Result]:
    """Three gunicorn servers, one per stack, loaded in turn by ``clients`` threads."""
    from django.conf import settings

    servers: dict[str, Gunicorn] = {}
    sessions: dict[str, list[requests.Session]] = {}
    results = {variant: Result(variant) for variant in VARIANTS}
    try:
        for variant in VARIANTS:
            servers[variant] = Gunicorn(variant, workers=workers, threads=1, env=env)
            sessions[variant] = []
            for i in range(clients):
                session = requests.Session()
                session.cookies.set(
                    settings.SESSION_COOKIE_NAME,
                    session_cookie(user_ids[i % len(user_ids)]),
                    domain="127.0.0.1",
                    path="/",
                )
                sessions[variant].append(session)
            _load(f"{servers[variant].url}/page/", sessions[variant], min(seconds, 0.5))  # warm
        for _ in range(rounds):
            for variant in VARIANTS:
                results[variant].rounds.append(
                    _load(f"{servers[variant].url}/page/", sessions[variant], seconds)
                )
    finally:
        for server in servers.values():
            server.stop()
        for per_variant in sessions.values():
            for session in per_variant:
                session.close()
    return results
