"""Benchmark 2: many clients hit pages just after the access token expired.

One user, one token, ``clients`` sessions (tabs, devices, API clients) on a gunicorn server
with several worker processes of several threads. Each round:

1. the token is made due in a few seconds, and every client loads a page (the middleware
   stores its summary in the session: "look again at expiry");
2. the token is made expired in the database, and the clients' summaries come due;
3. all clients request a page at the same instant; the token endpoint counts the refresh
   calls it received.
"""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass, field

import requests

from .common import Gunicorn, median, percentile, session_cookie
from .endpoint import EndpointProcess

#: Seconds the warm-up has before the token comes due.
WARM_WINDOW = 3.0


@dataclass
class BurstRound:
    calls: int
    rejected: int
    errors: int
    latencies: list[float]
    refresh_count: int


@dataclass
class BurstResult:
    variant: str
    clients: int
    workers: int
    threads: int
    latency: float
    rounds: list[BurstRound] = field(default_factory=list)

    def calls(self) -> list[int]:
        return [r.calls for r in self.rounds]

    def p50_ms(self) -> float:
        return median([percentile(r.latencies, 50) * 1000 for r in self.rounds])

    def p99_ms(self) -> float:
        return median([percentile(r.latencies, 99) * 1000 for r in self.rounds])

    def max_p99_ms(self) -> float:
        return max(percentile(r.latencies, 99) * 1000 for r in self.rounds)


def _fire(sessions: list[requests.Session], url: str) -> tuple[list[float], int]:
    """Every session requests ``url`` at the same instant; latencies and failures."""
    latencies = [0.0] * len(sessions)
    failed = [False] * len(sessions)
    barrier = threading.Barrier(len(sessions))

    def run(i: int) -> None:
        barrier.wait()
        t0 = time.perf_counter()
        try:
            response = sessions[i].get(url, timeout=30, allow_redirects=False)
            failed[i] = response.status_code != 200
        except requests.RequestException:
            failed[i] = True
        latencies[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sessions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, sum(failed)


def burst(
    variant: str,
    endpoint: EndpointProcess,
    env: dict[str, str],
    *,
    clients: int,
    workers: int,
    threads: int,
    latency: float,
    rounds: int,
    expire: bool = True,
) -> BurstResult:
    """``expire=False`` is the control: the same burst, every session looks at the database,
    but the token was refreshed elsewhere meanwhile, so nobody calls the endpoint."""
    from allauth.socialaccount.models import SocialToken
    from django.conf import settings
    from django.utils import timezone

    from django_token_rotation.conf import app_settings
    from django_token_rotation.models import TokenState

    from .common import make_tokens

    (user_id,) = make_tokens(
        1, expires_in=3600, prefix=f"burst-{variant}-{int(expire)}-", with_state=False
    )
    token = SocialToken.objects.get(account__user_id=user_id)
    result = BurstResult(variant, clients, workers, threads, latency)
    server = Gunicorn(variant, workers=workers, threads=threads, env=env)
    sessions = [requests.Session() for _ in range(clients)]
    url = f"{server.url}/page/"
    try:
        for _ in range(rounds):
            # A token as first stored: no refresh history, so the leeway is the setting's.
            TokenState.objects.filter(token=token).delete()
            due_at = time.time() + WARM_WINDOW
            SocialToken.objects.filter(pk=token.pk).update(
                expires_at=timezone.now()
                + datetime.timedelta(seconds=WARM_WINDOW + app_settings.LEEWAY)
            )
            for session in sessions:  # new sign-ins: no summary yet
                session.cookies.clear()
                session.cookies.set(
                    settings.SESSION_COOKIE_NAME,
                    session_cookie(user_id),
                    domain="127.0.0.1",
                    path="/",
                )
            _latencies, warm_errors = _fire(sessions, url)
            if warm_errors or time.time() > due_at - 0.2:
                raise RuntimeError("the burst's warm-up failed or took too long")
            # Time passes: the token expires, the sessions' summaries come due.
            SocialToken.objects.filter(pk=token.pk).update(
                expires_at=timezone.now() + datetime.timedelta(seconds=-1 if expire else 3600)
            )
            time.sleep(max(0.0, due_at - time.time()) + 0.05)
            endpoint.reset(latency)
            latencies, errors = _fire(sessions, url)
            stats = endpoint.stats()
            state = TokenState.objects.filter(token=token).first()
            result.rounds.append(
                BurstRound(
                    calls=int(stats["calls"]),
                    rejected=int(stats["rejected"]),
                    errors=errors,
                    latencies=latencies,
                    refresh_count=state.refresh_count if state is not None else 0,
                )
            )
    finally:
        server.stop()
        for session in sessions:
            session.close()
    return result
