"""A rotating token endpoint on 127.0.0.1 with a configurable latency, in its own process.

``python -m benchmarks.endpoint --latency 0.05`` prints ``PORT <n>`` and serves:

* ``POST /token``: the refresh-token grant. Each refresh token is single-use, as at Okta,
  Auth0 or django-oauth-toolkit: the first use gets new tokens (after ``latency`` seconds),
  a replay gets ``400 invalid_grant`` and is counted as ``rejected``.
* ``GET /stats``: ``{"calls", "refreshed", "rejected", "latency"}`` as JSON;
* ``POST /reset?latency=S``: zero the counters, optionally change the latency.

Its own process, so that the load generator's threads do not slow it down. It never prints
a token.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent


class Endpoint:
    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.lock = threading.Lock()
        self.used: set[str] = set()
        self.calls = self.refreshed = self.rejected = 0

    def grant(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        refresh_token = form.get("refresh_token", "")
        with self.lock:
            self.calls += 1
            replay = not refresh_token or refresh_token in self.used
            if replay:
                self.rejected += 1
            else:
                self.used.add(refresh_token)
                self.refreshed += 1
        time.sleep(self.latency)
        if replay:
            return 400, {"error": "invalid_grant"}
        return 200, {
            "access_token": secrets.token_urlsafe(24),
            "refresh_token": secrets.token_urlsafe(24),
            "token_type": "Bearer",
            "expires_in": 3600,
        }

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "calls": self.calls,
                "refreshed": self.refreshed,
                "rejected": self.rejected,
                "latency": self.latency,
            }

    def reset(self, latency: float | None) -> None:
        with self.lock:
            self.calls = self.refreshed = self.rejected = 0
            if latency is not None:
                self.latency = latency


def serve(endpoint: Endpoint, port: int = 0) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY a kept-alive
        # client waits ~40 ms for each answer (Nagle against delayed ACKs).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._reply(200, endpoint.stats())

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            parts = urlsplit(self.path)
            if parts.path == "/reset":
                query = parse_qs(parts.query)
                latency = float(query["latency"][0]) if "latency" in query else None
                endpoint.reset(latency)
                self._reply(200, endpoint.stats())
                return
            form = {key: values[0] for key, values in parse_qs(raw).items()}
            self._reply(*endpoint.grant(form))

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024  # bursts of connections must not wait for SYN retries

    return Server(("127.0.0.1", port), Handler)


class EndpointProcess:
    """The endpoint in a child process, with a client for its counters."""

    def __init__(self, latency: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.endpoint", f"--latency={latency}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            self.process.kill()
            raise RuntimeError("the token endpoint did not start")
        self.base_url = f"http://127.0.0.1:{line[1]}"
        self.token_url = f"{self.base_url}/token"
        self.http = requests.Session()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.http.get(f"{self.base_url}/stats", timeout=10).json()
        return result

    def reset(self, latency: float | None = None) -> None:
        query = "" if latency is None else f"?latency={latency}"
        self.http.post(f"{self.base_url}/reset{query}", timeout=10).raise_for_status()

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        self.process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = serve(Endpoint(args.latency), args.port)
    sys.stdout.write(f"PORT {server.server_address[1]}\n")
    sys.stdout.flush()
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
