"""Start Debian's glewlwyd for the tests and drive it as its users and admin do.

One glewlwyd per pytest process (``glewlwyd_server``, session scope): a free
port on 127.0.0.1, a SQLite database seeded from the package's own schema
(which creates the ``admin`` user), then, through glewlwyd's admin REST API
as that admin: the ``profile`` and ``email`` scopes, an OpenID Connect plugin
instance (one-use refresh tokens, 30 s access tokens, RS256) and a
confidential client allowed ``authorization_code`` and ``refresh_token``.
Each test adds its own user, so that counts read from glewlwyd's database are
per test.

What the provider received is read from glewlwyd itself: every access token
it issued is a row of ``gpo_access_token`` (a refresh is authorization type
6), every refresh token it refused is a ``Security - Token invalid`` line of
its log.
"""

from __future__ import annotations

import contextlib
import gzip
import secrets
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import pytest
import requests

HERE = Path(__file__).resolve().parent
#: Where Debian's package (bookworm: 2.7.5) puts what the fixture needs.
SCHEMAS = (
    Path("/usr/share/doc/glewlwyd/database/init.sqlite3.sql.gz"),
    Path("/usr/share/doc/glewlwyd/database/init.sqlite3.sql"),
    # What dbconfig-common runs at install: the same tables and rows, no DROPs.
    Path("/usr/share/dbconfig-common/data/glewlwyd/install/sqlite3"),
)
OIDC_PLUGIN = Path("/usr/lib/glewlwyd/plugin/libprotocol_oidc.so")
#: The admin the package's schema creates.
ADMIN = ("admin", "password")
PLUGIN = "oidc"
CLIENT_ID = "django-token-rotation"
SCOPES = ("openid", "profile", "email")
ACCESS_TOKEN_LIFETIME = 30
#: glewlwyd's authorization type of an access token issued by a refresh.
REFRESH_GRANT = 6
TIMEOUT = 10


def problem() -> str | None:
    """Why glewlwyd cannot run here, or ``None``."""
    if shutil.which("glewlwyd") is None:
        return (
            "glewlwyd is not installed (Debian: `apt-get install glewlwyd`, "
            "or run .ci/services/50-glewlwyd.sh)"
        )
    if not OIDC_PLUGIN.exists():
        return f"the glewlwyd package lacks its OpenID Connect plugin ({OIDC_PLUGIN})"
    if schema() is None:
        return (
            f"the glewlwyd package lacks its SQLite schema (any of {', '.join(map(str, SCHEMAS))})"
        )
    return None


def schema() -> Path | None:
    return next((path for path in SCHEMAS if path.exists()), None)


def version() -> str:
    """``glewlwyd --version``: what the recorded answers are checked against."""
    done = subprocess.run(["glewlwyd", "--version"], capture_output=True, text=True, timeout=10)
    return (done.stdout or done.stderr).strip()


def _rsa_key() -> tuple[str, str]:
    """A fresh RSA key pair (private, public) in PEM, to sign glewlwyd's JWTs."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


@dataclass
class Glewlwyd:
    base_url: str
    database: Path
    log_file: Path
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    client_id: str = CLIENT_ID
    admin: requests.Session = field(default_factory=requests.Session)

    # -- addresses -------------------------------------------------------------

    @property
    def api(self) -> str:
        return f"{self.base_url}/api"

    @property
    def issuer(self) -> str:
        """The plugin's URL: allauth's ``server_url`` (discovery lives under it)."""
        return f"{self.api}/{PLUGIN}"

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"

    # -- administration (glewlwyd's admin API, as its admin) ---------------------

    def _admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = self.admin.request(method, f"{self.api}{path}", timeout=TIMEOUT, **kwargs)
        if response.status_code != 200:
            raise RuntimeError(
                f"glewlwyd admin API {method} {path}: {response.status_code} {response.text[:500]}"
            )
        return response

    def configure(self) -> None:
        username, password = ADMIN
        self._admin("POST", "/auth/", json={"username": username, "password": password})
        for scope in SCOPES[1:]:
            self._admin(
                "POST",
                "/scope/",
                json={
                    "name": scope,
                    "display_name": scope,
                    "description": f"OpenID Connect {scope} claims",
                    "password_required": True,
                    "password_max_age": 0,
                    "scheme": {},
                },
            )
        private, public = _rsa_key()
        parameters = {
            "iss": self.issuer,
            "jwt-type": "rsa",
            "jwt-key-size": "256",
            "key": private,
            "cert": public,
            "jwks-show": True,
            "access-token-duration": ACCESS_TOKEN_LIFETIME,
            "refresh-token-duration": 3600,
            "code-duration": 600,
            "refresh-token-rolling": True,
            # One-use refresh tokens: each refresh disables the one it used and
            # issues the next; a replay disables the newest of the chain.
            "refresh-token-one-use": "always",
            "client-refresh-token-one-use-parameter": "refresh-token-one-use",
            "allow-non-oidc": False,
            "auth-type-code-enabled": True,
            "auth-type-code-revoke-replayed": True,
            "auth-type-token-enabled": False,
            "auth-type-id-token-enabled": True,
            "auth-type-none-enabled": False,
            "auth-type-password-enabled": False,
            "auth-type-client-enabled": False,
            "auth-type-device-enabled": False,
            "auth-type-refresh-enabled": True,
            "scope": [],
            "additional-parameters": [],
            "claims": [],
            "secret-type": "public",
            "name-claim": "on-demand",
            "email-claim": "mandatory",
            "scope-claim": "no",
            "address-claim": {"type": "no"},
            "allowed-scope": list(SCOPES),
            "pkce-allowed": True,
            "request-parameter-allow": False,
            "introspection-revocation-allowed": True,
            "introspection-revocation-auth-scope": [],
            "introspection-revocation-allow-target-client": True,
            "session-management-allowed": False,
        }
        self._admin(
            "POST",
            "/mod/plugin/",
            json={
                "module": "oidc",
                "name": PLUGIN,
                "display_name": "OpenID Connect",
                "parameters": parameters,
                "enabled": True,
            },
        )
        self._admin(
            "POST",
            "/client/",
            json={
                "client_id": self.client_id,
                "name": "django-token-rotation tests",
                "confidential": True,
                "password": self.client_secret,
                "enabled": True,
                "redirect_uri": [],
                "authorization_type": ["code", "refresh_token"],
                "token_endpoint_auth_method": ["client_secret_basic", "client_secret_post"],
                "scope": [],
            },
        )

    def allow_redirect_uri(self, uri: str) -> None:
        """Register one more redirect URI for the client (the live server's port varies)."""
        client = self._admin("GET", f"/client/{self.client_id}").json()
        uris = client.get("redirect_uri") or []
        if uri in uris:
            return
        client["redirect_uri"] = [*uris, uri]
        client.pop("source", None)
        client["password"] = self.client_secret
        self._admin("PUT", f"/client/{self.client_id}", json=client)

    def add_user(self, username: str | None = None) -> tuple[str, str]:
        """A new glewlwyd user allowed the OpenID Connect scopes: (username, password)."""
        username = username or f"user-{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(12)
        self._admin(
            "POST",
            "/user/",
            json={
                "username": username,
                "password": password,
                "name": username.title(),
                "email": f"{username}@example.com",
                "scope": list(SCOPES),
                "enabled": True,
            },
        )
        return username, password

    def revoke_grants(self, username: str, password: str) -> int:
        """Disable every refresh token of the user, as the user does on glewlwyd's
        profile page (``DELETE /api/oidc/token/{token_hash}``); returns how many.

        (The admin's ``?username=`` impersonation lists nothing in 2.7.5.)
        """
        browser = requests.Session()
        self.sign_in(browser, username, password)
        url = f"{self.issuer}/token"
        tokens = browser.get(url, timeout=TIMEOUT).json()
        enabled = [t["token_hash"] for t in tokens if t.get("enabled")]
        for token_hash in enabled:
            quoted = quote(token_hash, safe="")
            response = browser.delete(f"{url}/{quoted}", timeout=TIMEOUT)
            response.raise_for_status()
        return len(enabled)

    # -- what glewlwyd received ------------------------------------------------

    def refreshes(self, username: str) -> int:
        """Refresh-token grants glewlwyd answered with tokens, for this user."""
        with contextlib.closing(sqlite3.connect(self.database, timeout=30)) as db:
            [(count,)] = db.execute(
                "SELECT COUNT(*) FROM gpo_access_token "
                "WHERE gpoa_authorization_type = ? AND gpoa_username = ?",
                (REFRESH_GRANT, username),
            ).fetchall()
        return int(count)

    def refused(self) -> int:
        """Refresh tokens glewlwyd refused so far (spent, revoked, unknown), all users."""
        return self.log_file.read_text(errors="replace").count("Security - Token invalid")

    # -- a user at glewlwyd (a requests session is the browser) -----------------

    def sign_in(self, browser: requests.Session, username: str, password: str) -> None:
        """Log in at glewlwyd's auth API and consent to the client's scopes."""
        response = browser.post(
            f"{self.api}/auth/",
            json={"username": username, "password": password},
            timeout=TIMEOUT,
        )
        response.raise_for_status()
        response = browser.put(
            f"{self.api}/auth/grant/{self.client_id}",
            json={"scope": " ".join(SCOPES)},
            timeout=TIMEOUT,
        )
        response.raise_for_status()

    def authorize(self, browser: requests.Session, authorize_url: str) -> str:
        """Follow the authorization request as glewlwyd's login page does once the
        user clicked "continue" (``g_continue``); return where glewlwyd redirects."""
        response = browser.get(
            authorize_url,
            params={"g_continue": ""},
            allow_redirects=False,
            timeout=TIMEOUT,
        )
        location = response.headers.get("Location", "")
        if response.status_code != 302 or "login.html" in location:
            raise AssertionError(f"glewlwyd did not authorize: {response.status_code} {location}")
        return location

    def code_grant(self, username: str, password: str) -> dict[str, Any]:
        """Tokens from the authorization-code flow, without a relying party."""
        redirect_uri = "http://127.0.0.1:9/callback"
        self.allow_redirect_uri(redirect_uri)
        browser = requests.Session()
        self.sign_in(browser, username, password)
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(SCOPES),
                "state": secrets.token_urlsafe(8),
                "nonce": secrets.token_urlsafe(8),
            }
        )
        location = self.authorize(browser, f"{self.issuer}/auth?{query}")
        [code] = parse_qs(urlsplit(location).query)["code"]
        response = requests.post(
            self.token_url,
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri},
            auth=(self.client_id, self.client_secret),
            timeout=TIMEOUT,
        )
        response.raise_for_status()
        tokens: dict[str, Any] = response.json()
        return tokens

    def refresh(self, refresh_token: str, **kwargs: Any) -> requests.Response:
        """One refresh-token grant, sent directly (to record glewlwyd's answers)."""
        return requests.post(
            self.token_url,
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            auth=kwargs.pop("auth", (self.client_id, self.client_secret)),
            timeout=TIMEOUT,
            **kwargs,
        )


@contextlib.contextmanager
def start_glewlwyd(workdir: Path) -> Iterator[Glewlwyd]:
    from tests.helpers import free_port  # imports Django models: not at module level

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    database = workdir / "glewlwyd.sqlite3"
    log_file = workdir / "glewlwyd.log"
    source = schema()
    assert source is not None, problem()
    raw = source.read_bytes()
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.executescript((gzip.decompress(raw) if source.suffix == ".gz" else raw).decode())
    # SQLite's WAL lets the tests read counts while glewlwyd writes.
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("PRAGMA journal_mode=WAL")
    config = workdir / "glewlwyd.conf"
    config.write_text(
        Template((HERE / "glewlwyd.conf").read_text()).substitute(
            port=port, base_url=base_url, log_file=log_file, database=database
        )
    )
    process = subprocess.Popen(
        ["glewlwyd", f"--config-file={config}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Glewlwyd(base_url=base_url, database=database, log_file=log_file)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"glewlwyd exited ({process.returncode}): {process.stderr.read()[-2000:]}"
                    if process.stderr
                    else f"glewlwyd exited ({process.returncode})"
                )
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{base_url}/config", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"glewlwyd did not answer on {base_url} within 30 s")
            time.sleep(0.1)
        server.configure()
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="session")
def glewlwyd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Glewlwyd]:
    """Debian's glewlwyd with an OpenID Connect plugin (one-use refresh tokens)."""
    reason = problem()
    if reason:
        # Tests that use this fixture carry the ``glewlwyd`` marker: under
        # CI=true tests/conftest.py fails the run before they get here.
        pytest.skip(reason)
    with start_glewlwyd(tmp_path_factory.mktemp("glewlwyd")) as server:
        yield server
