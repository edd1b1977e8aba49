"""What a refresh's parts cost, layer by layer: ``python -m benchmarks.layers``.

The background refresher's CPU per token (``python -m benchmarks.profile``) is one
HTTP round trip and four SQL statements, plus the engine around them. This prints
the CPU of one token POST and of one ``UPDATE`` through each layer the refresher
goes through, from the bare library upwards, side by side, in interleaved rounds
(median of ``--rounds``), as ratios to the lowest: how far each layer is from
the floor, and so what a leaner path could save at most.

HTTP, against the benchmarks' token endpoint answering at once (``--latency 0``),
one kept connection each:

* ``http.client``: the standard library alone;
* ``urllib3``: a connection pool's ``urlopen`` (what requests' adapter calls);
* ``requests send``: a ``PreparedRequest`` copied and sent with ``Session.send``
  (what a background run now does, without the app's deadline guard);
* ``requests request``: ``Session.request``, which prepares and merges anew;
* ``app, kept session``: ``client.refresh_token_grant`` under
  ``client.keep_alive()`` (deadline guard, capped read, answer parsed);
* ``app, one-off session``: the same outside ``keep_alive`` (a web request's
  refresh: a new session from allauth's adapter each time).

SQL (PostgreSQL only), one ``UPDATE`` by primary key of a ``TokenState`` row in
autocommit:

* ``psycopg``: the driver's own cursor, client-side binding as Django's;
* ``Django cursor``: ``connection.cursor().execute`` (Django's wrappers);
* ``Statement.run``: the engine's compiled-once statement (``statements.py``);
* ``QuerySet.update``: the ORM building and compiling it each time;

with the PostgreSQL backend's own CPU per statement (``/proc``), which the
refresher does not pay but the machine does; and, for comparison, one re-read of
a token with its state (``store.reload``, a ``SELECT`` with a join compiled by
the ORM): what the engine's claim "as read" (``TokenState.claim_as_read``) saves
each refresh, against claiming the lease and then reading the token again.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from .common import median
from .endpoint import EndpointProcess


def _http_layers(url: str) -> dict[str, Callable[[int], None]]:
    import http.client

    import requests
    import urllib3

    from django_token_rotation import client

    def form() -> dict[str, str]:
        return {
            "grant_type": "refresh_token",
            "refresh_token": secrets.token_urlsafe(24),
            "client_id": "bench",
            "client_secret": "bench-secret",
        }

    headers = {"Accept": "application/json"}
    parts = urlsplit(url)

    def bare(n: int) -> None:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
        for _ in range(n):
            connection.request(
                "POST",
                parts.path,
                body=urlencode(form()),
                headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
            )
            json.loads(connection.getresponse().read())
        connection.close()

    def pool(n: int) -> None:
        with urllib3.PoolManager() as manager:
            connections = manager.connection_from_url(url)
            for _ in range(n):
                body = urlencode(form())
                response = connections.urlopen(
                    "POST",
                    parts.path,
                    body=body,
                    headers={**headers, "Content-Type": "application/x-www-form-urlencoded"},
                    retries=False,
                    timeout=urllib3.Timeout(5, 5),
                    redirect=False,
                    preload_content=False,
                )
                json.loads(response.read())
                response.release_conn()

    def send(n: int) -> None:
        with requests.Session() as session:
            session.trust_env = False
            template = session.prepare_request(
                requests.Request("POST", url, headers=headers, data={"": ""})
            )
            for _ in range(n):
                prepared = template.copy()
                prepared.prepare_body(form(), None)
                response = session.send(prepared, timeout=(5, 5), allow_redirects=False)
                response.json()

    def request(n: int) -> None:
        with requests.Session() as session:
            session.trust_env = False
            for _ in range(n):
                session.request(
                    "POST", url, data=form(), headers=headers, timeout=(5, 5), allow_redirects=False
                ).json()

    endpoint = client.TokenEndpoint(
        url=url, client_id="bench", client_secret="bench-secret", provider="bench"
    )

    def app_kept(n: int) -> None:
        with client.keep_alive():
            for _ in range(n):
                client.refresh_token_grant(endpoint, secrets.token_urlsafe(24))

    def app_one_off(n: int) -> None:
        for _ in range(n):
            client.refresh_token_grant(endpoint, secrets.token_urlsafe(24))

    return {
        "http.client": bare,
        "urllib3": pool,
        "requests send": send,
        "requests request": request,
        "app, kept session": app_kept,
        "app, one-off session": app_one_off,
    }


def _sql_layers(pk: int) -> dict[str, Callable[[int], None]]:
    from django.db import connection, models
    from django.utils import timezone

    from django_token_rotation.models import TokenState
    from django_token_rotation.statements import Param, Statement

    table = connection.ops.quote_name(TokenState._meta.db_table)
    sql = f"UPDATE {table} SET last_error = %s, last_attempt_at = %s WHERE token_id = %s"

    def psycopg(n: int) -> None:
        raw = connection.connection
        with raw.cursor() as cursor:
            for i in range(n):
                cursor.execute(sql, (f"e{i % 7}", timezone.now(), pk))

    def django_cursor(n: int) -> None:
        with connection.cursor() as cursor:
            for i in range(n):
                cursor.execute(sql, (f"e{i % 7}", timezone.now(), pk))

    statement = Statement(
        lambda rows: (
            rows.filter(token_id=Param("token_id", models.IntegerField())),
            {
                "last_error": Param("error", models.CharField()),
                "last_attempt_at": Param("at", models.DateTimeField()),
            },
        )
    )

    def compiled_once(n: int) -> None:
        for i in range(n):
            statement.run(
                TokenState.objects.all(), token_id=pk, error=f"e{i % 7}", at=timezone.now()
            )

    def queryset_update(n: int) -> None:
        for i in range(n):
            TokenState.objects.filter(token_id=pk).update(
                last_error=f"e{i % 7}", last_attempt_at=timezone.now()
            )

    from allauth.socialaccount.models import SocialToken

    from django_token_rotation import store

    token = SocialToken.objects.get(pk=pk)

    def reread(n: int) -> None:
        for _ in range(n):
            store.reload(token)

    return {
        "psycopg": psycopg,
        "Django cursor": django_cursor,
        "Statement.run": compiled_once,
        "QuerySet.update": queryset_update,
        "re-read (store.reload)": reread,
    }


def _measure(
    layers: dict[str, Callable[[int], None]],
    calls: int,
    rounds: int,
    server: Callable[[], float] | None = None,
) -> dict[str, tuple[float, float | None]]:
    """Median CPU ms per call of each layer (and of the server, if given), in
    interleaved rounds after one warm-up call of each."""
    for run in layers.values():
        run(5)
    own: dict[str, list[float]] = {name: [] for name in layers}
    theirs: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(rounds):
        for name, run in layers.items():
            server_before = server() if server else 0.0
            before = time.process_time()
            run(calls)
            own[name].append((time.process_time() - before) * 1000 / calls)
            if server:
                theirs[name].append((server() - server_before) * 1000 / calls)
    return {name: (median(own[name]), median(theirs[name]) if server else None) for name in layers}


def _table(title: str, results: dict[str, tuple[float, float | None]], server: str) -> list[str]:
    floor = min(ms for ms, _ in results.values())
    lines = [title, f"{'layer':24s}  {'CPU ms/call':>11s}  {'x floor':>7s}  {server:>s}"]
    for name, (ms, theirs) in results.items():
        extra = f"{theirs:.3f}" if theirs is not None else "-"
        lines.append(f"{name:24s}  {ms:11.3f}  {ms / floor:7.2f}  {extra}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.layers", description=__doc__)
    parser.add_argument("--calls", type=int, default=400, help="Calls per layer per round.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pg-name", default="token_rotation_layers")
    args = parser.parse_args(argv)

    from .run import site

    endpoint = EndpointProcess(0.0)
    try:
        with site(args.pg_name, endpoint) as label:
            from django.db import connection

            http = _measure(_http_layers(endpoint.token_url), args.calls, args.rounds)
            print(
                f"{label}, load average {os.getloadavg()[0]:.1f}; {args.calls} calls per layer, "
                f"median of {args.rounds} interleaved rounds"
            )
            print("\n".join(_table("\nHTTP: one token POST", http, "")))
            records: list[dict[str, Any]] = [
                {"name": "layers_http", "layer": name, "cpu_ms": round(ms, 4)}
                for name, (ms, _) in http.items()
            ]
            if connection.vendor == "postgresql":
                from allauth.socialaccount.models import SocialToken

                from django_token_rotation.models import TokenState

                from .background import cpu_seconds, prepare

                prepare(1)
                pk = SocialToken.objects.values_list("pk", flat=True).first()
                TokenState.objects.get_or_create(token_id=pk)
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_backend_pid()")
                    backend = cursor.fetchone()[0]
                sql = _measure(
                    _sql_layers(pk), args.calls, args.rounds, lambda: cpu_seconds(backend)
                )
                print("\n".join(_table("\nSQL: one UPDATE", sql, "PostgreSQL backend CPU ms")))
                records += [
                    {
                        "name": "layers_sql",
                        "layer": name,
                        "cpu_ms": round(ms, 4),
                        "server_cpu_ms": round(theirs or 0.0, 4),
                    }
                    for name, (ms, theirs) in sql.items()
                ]
            for record in records:
                print("BENCH " + json.dumps(record))
    finally:
        endpoint.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
