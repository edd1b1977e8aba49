"""Start the provider process from a test and talk to it.

Usage::

    with start_provider(tmp_path) as provider:
        tokens = provider.password_grant()
        response = provider.refresh(tokens["refresh_token"])

Only the standard library and ``requests`` are imported here: the test process
has its own Django settings, which this module must not disturb.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import requests

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SETTINGS_MODULE = "tests.provider_server.settings"
DEFAULT_SCOPE = "openid profile email read"
REQUEST_TIMEOUT = 30.0

ClientKind = Literal["confidential", "public"]


class ProviderError(RuntimeError):
    """The provider answered a helper's request with an unexpected status."""


class ProviderStartupError(RuntimeError):
    """The provider process did not come up."""


def _error_code(response: requests.Response) -> str:
    """The ``error`` member of an OAuth2 error response, without anything else."""
    try:
        body = response.json()
    except ValueError:
        return "<no JSON body>"
    return str(body.get("error", "<no error code>")) if isinstance(body, dict) else "<not JSON>"


@dataclass(frozen=True)
class ProviderHandle:
    """A running provider: its URLs, credentials and helpers."""

    port: int
    base_url: str
    server_url: str
    token_url: str
    revoke_url: str
    discovery_url: str
    client_id: str
    client_secret: str
    public_client_id: str
    username: str = "alice"
    password: str = "alice-password"
    email: str = "alice@example.com"

    @classmethod
    def from_announcement(cls, announcement: dict[str, Any]) -> ProviderHandle:
        """Build the handle from the JSON line ``serve.py`` prints."""
        port = int(announcement["port"])
        base_url = f"http://127.0.0.1:{port}"
        server_url = f"{base_url}/o"
        return cls(
            port=port,
            base_url=base_url,
            server_url=server_url,
            token_url=f"{server_url}/token/",
            revoke_url=f"{server_url}/revoke_token/",
            discovery_url=f"{server_url}/.well-known/openid-configuration",
            client_id=str(announcement["client_id"]),
            client_secret=str(announcement["client_secret"]),
            public_client_id=str(announcement["public_client_id"]),
        )

    def client_credentials(self, client: ClientKind = "confidential") -> dict[str, str]:
        """Form fields authenticating ``client`` (``client_secret_post`` when confidential)."""
        if client == "confidential":
            return {"client_id": self.client_id, "client_secret": self.client_secret}
        if client == "public":
            return {"client_id": self.public_client_id}
        raise ValueError(f"unknown client kind {client!r}")

    def password_grant(
        self, scope: str = DEFAULT_SCOPE, client: ClientKind = "confidential"
    ) -> dict[str, Any]:
        """Log ``alice`` in with the password grant; the token response as a dict."""
        response = requests.post(
            self.token_url,
            data={
                "grant_type": "password",
                "username": self.username,
                "password": self.password,
                "scope": scope,
                **self.client_credentials(client),
            },
            timeout=REQUEST_TIMEOUT,
        )
        if response.status_code != 200:
            raise ProviderError(
                f"password grant failed: HTTP {response.status_code} {_error_code(response)}"
            )
        result: dict[str, Any] = response.json()
        return result

    def refresh(
        self,
        refresh_token: str,
        client: ClientKind = "confidential",
        scope: str | None = None,
    ) -> requests.Response:
        """One raw refresh grant; the response is returned whatever its status."""
        data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if scope is not None:
            data["scope"] = scope
        return requests.post(
            self.token_url,
            data={**data, **self.client_credentials(client)},
            timeout=REQUEST_TIMEOUT,
        )

    def revoke(
        self,
        token: str,
        token_type_hint: str = "refresh_token",
        client: ClientKind = "confidential",
    ) -> None:
        """Revoke ``token`` (RFC 7009); raises unless the provider answers 200."""
        response = requests.post(
            self.revoke_url,
            data={
                "token": token,
                "token_type_hint": token_type_hint,
                **self.client_credentials(client),
            },
            timeout=REQUEST_TIMEOUT,
        )
        if response.status_code != 200:
            raise ProviderError(
                f"revocation failed: HTTP {response.status_code} {_error_code(response)}"
            )

    def discovery(self) -> dict[str, Any]:
        """The OpenID Connect discovery document."""
        response = requests.get(self.discovery_url, timeout=REQUEST_TIMEOUT)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def stats(self) -> dict[str, Any]:
        """``GET /_stats``: token_calls, refresh_calls, refresh_tokens_seen (SHA-256 hex)..."""
        response = requests.get(f"{self.base_url}/_stats", timeout=REQUEST_TIMEOUT)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def control(self, **settings: Any) -> dict[str, Any]:
        """``POST /_control`` with ``settings`` as the JSON body; the new stats."""
        response = requests.post(
            f"{self.base_url}/_control", json=settings, timeout=REQUEST_TIMEOUT
        )
        if response.status_code != 200:
            raise ProviderError(
                f"control failed: HTTP {response.status_code} {_error_code(response)}"
            )
        result: dict[str, Any] = response.json()
        return result

    def reset(self) -> dict[str, Any]:
        """Zero the counters (the delay and the access token lifetime stay as they are)."""
        return self.control(reset=True)

    def set_delay(self, ms: int) -> dict[str, Any]:
        """Make each later token-endpoint request wait ``ms`` before it is processed."""
        return self.control(delay_ms=ms)

    def set_access_token_lifetime(self, seconds: int) -> dict[str, Any]:
        """``expires_in`` of the access tokens issued from now on."""
        return self.control(access_token_lifetime=seconds)

    def set_serialize(self, serialize: bool) -> dict[str, Any]:
        """Process token/revocation requests one at a time (the default) or concurrently."""
        return self.control(serialize=serialize)


def _announcement(stdout_path: pathlib.Path) -> dict[str, Any] | None:
    """The first complete JSON line with a ``port`` the provider printed, if any yet."""
    try:
        text = stdout_path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n") or not line.startswith("{"):
            continue
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if isinstance(data, dict) and "port" in data:
                return data
    return None


def _tail(path: pathlib.Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return text[-limit:]


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Close stdin (the provider exits on EOF), then terminate, then kill."""
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.contextmanager
def start_provider(
    tmp_dir: pathlib.Path,
    access_token_lifetime: int = 30,
    startup_timeout: float = 60.0,
) -> Iterator[ProviderHandle]:
    """Run the provider in a subprocess, its database and logs in ``tmp_dir``.

    The provider's stdout and stderr go to ``provider.stdout.log`` and
    ``provider.stderr.log`` in ``tmp_dir`` (files, not pipes, so that a chatty
    provider can never block on a full pipe).
    """
    tmp_dir = pathlib.Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    stdout_path = tmp_dir / "provider.stdout.log"
    stderr_path = tmp_dir / "provider.stderr.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    env["PROVIDER_DB_PATH"] = str(tmp_dir / "provider.sqlite3")
    env["PROVIDER_ACCESS_TOKEN_LIFETIME"] = str(access_token_lifetime)
    env.pop("PROVIDER_ISSUER", None)

    with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.provider_server.serve", "--exit-on-stdin-eof"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + startup_timeout
        while (announcement := _announcement(stdout_path)) is None:
            if process.poll() is not None:
                raise ProviderStartupError(
                    f"provider exited with status {process.returncode} before it announced"
                    f" its port; stderr:\n{_tail(stderr_path)}"
                )
            if time.monotonic() > deadline:
                raise ProviderStartupError(
                    f"provider did not announce its port within {startup_timeout:.0f} s;"
                    f" stderr:\n{_tail(stderr_path)}"
                )
            time.sleep(0.05)
        yield ProviderHandle.from_announcement(announcement)
    finally:
        _stop(process)
