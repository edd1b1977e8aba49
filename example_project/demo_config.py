"""What the demo site, the demo provider and ``run_demo.py`` must agree on.

Only the standard library is imported here: ``run_demo.py`` and the test suite
read these values without setting up Django. Environment variables (set by
``run_demo.py`` from its command line) change the ports and where the data goes:

``DEMO_SITE_PORT`` (8000), ``DEMO_PROVIDER_PORT`` (8001)
    Ports of the site and of the provider, both on 127.0.0.1.
``DEMO_DATA_DIR`` (this directory)
    Where the two SQLite databases and the provider's signing key live.
``DEMO_ACCESS_TOKEN_SECONDS`` (30)
    Lifetime of the access tokens the provider issues.

Optionally, the site signs in with a real OpenID Connect provider instead of the
bundled one (which still starts, unused):

``DEMO_OIDC_SERVER_URL``
    The provider's issuer: ``https://accounts.google.com``,
    ``https://login.microsoftonline.com/<tenant id>/v2.0``,
    ``https://<keycloak host>/realms/<realm>``...
``DEMO_OIDC_CLIENT_ID``, ``DEMO_OIDC_SECRET``
    The app registered there, with the redirect URI
    ``http://127.0.0.1:8000/accounts/oidc/external/login/callback/``.
``DEMO_OIDC_SCOPES`` (``openid profile email offline_access``; Google: without ``offline_access``)
    Scopes to ask for, separated by spaces.
``DEMO_OIDC_NAME`` (``OpenID Connect provider``)
    The provider's name on the pages.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
HOST = "127.0.0.1"


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, not {value!r}") from None


SITE_PORT = _int_env("DEMO_SITE_PORT", 8000)
PROVIDER_PORT = _int_env("DEMO_PROVIDER_PORT", 8001)
ACCESS_TOKEN_SECONDS = _int_env("DEMO_ACCESS_TOKEN_SECONDS", 30)
DATA_DIR = Path(os.environ.get("DEMO_DATA_DIR") or HERE).resolve()

SITE_URL = f"http://{HOST}:{SITE_PORT}"
PROVIDER_URL = f"http://{HOST}:{PROVIDER_PORT}"
# The OpenID Connect issuer; discovery is at ISSUER + "/.well-known/openid-configuration".
PROVIDER_ISSUER = f"{PROVIDER_URL}/o"
USERINFO_URL = f"{PROVIDER_ISSUER}/userinfo/"

# The bundled provider's client for the site, known to both sides (the
# provider's copy is seeded on start). Never reuse it anywhere real.
CLIENT_ID = "token-rotation-demo-site"
CLIENT_SECRET = "demo-client-secret-not-a-secret"
# allauth's provider_id of the bundled provider's OpenID Connect app, and the
# callback URLs the bundled provider accepts.
DEMO_PROVIDER_ID = "demo"
DEMO_CALLBACK_PATH = f"/accounts/oidc/{DEMO_PROVIDER_ID}/login/callback/"
REDIRECT_URIS = [
    f"{SITE_URL}{DEMO_CALLBACK_PATH}",
    f"http://localhost:{SITE_PORT}{DEMO_CALLBACK_PATH}",
]


@dataclass(frozen=True)
class SiteProvider:
    """The OpenID Connect provider the site signs in with."""

    provider_id: str
    name: str
    issuer: str
    client_id: str
    secret: str
    scopes: list[str]
    auth_params: dict[str, str]
    external: bool

    @property
    def callback_path(self) -> str:
        return f"/accounts/oidc/{self.provider_id}/login/callback/"


def site_provider() -> SiteProvider:
    """The bundled provider, or the real one named by ``DEMO_OIDC_*`` (see above)."""
    issuer = os.environ.get("DEMO_OIDC_SERVER_URL", "").strip().rstrip("/")
    if not issuer:
        return SiteProvider(
            provider_id=DEMO_PROVIDER_ID,
            name="Demo provider",
            issuer=PROVIDER_ISSUER,
            client_id=CLIENT_ID,
            secret=CLIENT_SECRET,
            scopes=["openid", "profile", "email"],
            auth_params={},
            external=False,
        )
    google = issuer == "https://accounts.google.com"
    return SiteProvider(
        provider_id="external",
        name=os.environ.get("DEMO_OIDC_NAME", "").strip() or "OpenID Connect provider",
        issuer=issuer,
        # run_demo.py refuses to start without them.
        client_id=os.environ.get("DEMO_OIDC_CLIENT_ID", "").strip(),
        secret=os.environ.get("DEMO_OIDC_SECRET", "").strip(),
        # Refresh tokens come with the offline_access scope; Google's come with
        # access_type=offline instead, and on every sign-in only with prompt=consent.
        scopes=os.environ.get("DEMO_OIDC_SCOPES", "").split()
        or ["openid", "profile", "email", *([] if google else ["offline_access"])],
        auth_params={"access_type": "offline", "prompt": "consent"} if google else {},
        external=True,
    )


SITE_PROVIDER = site_provider()
PROVIDER_ID = SITE_PROVIDER.provider_id
PROVIDER_NAME = SITE_PROVIDER.name
EXTERNAL_PROVIDER = SITE_PROVIDER.external
CALLBACK_PATH = SITE_PROVIDER.callback_path

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-password"
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin-password"

SITE_DB = DATA_DIR / "demo-site.sqlite3"
PROVIDER_DB = DATA_DIR / "demo-provider.sqlite3"
PROVIDER_KEY_FILE = DATA_DIR / "demo-provider-oidc-key.pem"


def sqlite_database(path: Path) -> dict[str, Any]:
    """A ``DATABASES`` entry for a SQLite file shared by many request threads."""
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        "OPTIONS": {
            # Wait for locks instead of failing, and take the write lock when a
            # transaction starts (no lock-upgrade deadlocks between threads).
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        },
    }


class HideQueryStrings(logging.Filter):
    """Drop query strings from the development server's request log lines.

    They carry authorization codes and ``state`` values, which have no business
    in a terminal. (Tokens travel in request bodies and headers, never logged.)
    """

    _query = re.compile(r"\?\S*")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args and isinstance(args[0], str):
            record.args = (self._query.sub("?...", args[0]), *args[1:])
        return True


def logging_config(extra_loggers: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """``LOGGING`` of both servers: request lines without query strings, warnings."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"hide_query_strings": {"()": HideQueryStrings}},
        "formatters": {
            "server": {"format": "[{server_time}] {message}", "style": "{"},
            "plain": {"format": "{levelname} {name}: {message}", "style": "{"},
        },
        "handlers": {
            "server": {
                "class": "logging.StreamHandler",
                "formatter": "server",
                "filters": ["hide_query_strings"],
            },
            "console": {"class": "logging.StreamHandler", "formatter": "plain"},
        },
        "root": {"handlers": ["console"], "level": "WARNING"},
        "loggers": {
            # Replaces Django's own console handler, so that nothing is printed twice.
            "django": {"handlers": ["console"], "level": "WARNING", "propagate": False},
            "django.server": {"handlers": ["server"], "level": "INFO", "propagate": False},
            # oauthlib logs token values at DEBUG: never let it below WARNING.
            "oauthlib": {"handlers": ["console"], "level": "WARNING", "propagate": False},
            **(extra_loggers or {}),
        },
    }
