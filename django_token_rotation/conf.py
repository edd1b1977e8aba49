"""Every ``TOKEN_ROTATION_*`` setting, read on each access.

Reading through properties (instead of copying values at import time) means
``override_settings`` just works and nothing needs reloading. The one setting
read on every request (``EXEMPT_PATHS``) is kept compiled until Django's
``setting_changed`` signal (sent by ``override_settings``) says it changed:
reading an unset setting from ``django.conf.settings`` costs an exception, a
few microseconds the middleware's fast path cannot afford.
"""

from __future__ import annotations

import configparser
import functools
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed


class Settings:
    prefix = "TOKEN_ROTATION_"

    def __init__(self) -> None:
        self._exempt_paths: tuple[re.Pattern[str], ...] | None = None

    def _get(self, name: str, default: Any) -> Any:
        return getattr(settings, self.prefix + name, default)

    def _number(self, name: str, default: float, *, minimum: float = 0) -> float:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise ImproperlyConfigured(
                f"{self.prefix}{name} must be a number >= {minimum}, not {value!r}."
            )
        return value

    @property
    def LEEWAY(self) -> float:
        """Seconds before ``expires_at`` at which a token counts as due."""
        return self._number("LEEWAY", 60)

    @property
    def DEFAULT_LIFETIME(self) -> float | None:
        """Assumed lifetime (seconds) of access tokens that carry no expiry at all,
        when no earlier lifetime and no provider default (``providers.QUIRKS``) is known.

        ``None`` (the default) means such tokens are never refreshed proactively.
        """
        value = self._get("DEFAULT_LIFETIME", None)
        if value is None:
            return None
        return self._number("DEFAULT_LIFETIME", 0, minimum=1)

    @property
    def TIMEOUT(self) -> float:
        """Seconds for one HTTP call to a token endpoint (connect and read).

        Defaults to allauth's ``SOCIALACCOUNT_REQUESTS_TIMEOUT`` (5 s).
        """
        default = getattr(settings, "SOCIALACCOUNT_REQUESTS_TIMEOUT", 5)
        return self._number("TIMEOUT", default, minimum=0.001)

    @property
    def LEASE(self) -> float:
        """Seconds one worker may hold the right to refresh a token.

        A worker that dies mid-refresh blocks others at most this long. It must
        outlive a whole refresh: at least ``TIMEOUT`` + 2 (check E006).
        """
        return self._number("LEASE", 30, minimum=1)

    @property
    def WAIT(self) -> float:
        """Seconds a caller waits for another worker's refresh of the same token."""
        return self._number("WAIT", 10)

    @property
    def RETRY_BACKOFF(self) -> float:
        """First delay (seconds) before retrying after a transient failure while the
        access token is still valid; doubles each time."""
        return self._number("RETRY_BACKOFF", 5)

    @property
    def RETRY_BACKOFF_MAX(self) -> float:
        """Longest delay (seconds) between retries while the access token is still valid."""
        return self._number("RETRY_BACKOFF_MAX", 300)

    @property
    def EXPIRED_BACKOFF_MAX(self) -> float:
        """Longest delay (seconds) between retries once the access token has expired
        (steps of 0.5, 1, 2 ... seconds, jittered, up to this)."""
        return self._number("EXPIRED_BACKOFF_MAX", 4, minimum=0.5)

    @property
    def RETRY_AFTER_MAX(self) -> float:
        """Longest ``Retry-After`` (seconds) honoured once the access token has expired."""
        return self._number("RETRY_AFTER_MAX", 30)

    @property
    def MAX_RESPONSE_BYTES(self) -> int:
        """Largest token-endpoint response body accepted, in bytes."""
        return int(self._number("MAX_RESPONSE_BYTES", 256 * 1024, minimum=1024))

    @property
    def DISCOVERY_CACHE_SECONDS(self) -> float:
        """How long an OpenID Connect discovery document is cached."""
        return self._number("DISCOVERY_CACHE_SECONDS", 24 * 3600)

    @property
    def ALLOW_INSECURE_HTTP(self) -> bool:
        """Allow plain-HTTP token endpoints on non-loopback hosts (development only)."""
        return bool(self._get("ALLOW_INSECURE_HTTP", False))

    @property
    def CACHE(self) -> str:
        """Alias of the Django cache that holds discovery documents."""
        value = self._get("CACHE", "default")
        if not isinstance(value, str):
            raise ImproperlyConfigured(f"{self.prefix}CACHE must be a cache alias.")
        return value

    # -- history and revocation (admin, refresh_tokens) ------------------------

    @property
    def HISTORY_RETENTION(self) -> int:
        """Refresh events kept per token (the oldest are pruned); 0 records none."""
        return int(self._number("HISTORY_RETENTION", 50))

    @property
    def REVOKE_ON_LOGOUT(self) -> bool:
        """Revoke the user's tokens at the provider (RFC 7009) when they log out."""
        return bool(self._get("REVOKE_ON_LOGOUT", False))

    @property
    def REVOKE_ON_DISCONNECT(self) -> bool:
        """Revoke a social account's tokens at the provider when it is disconnected."""
        return bool(self._get("REVOKE_ON_DISCONNECT", False))

    @property
    def REVOKE_TIMEOUT(self) -> float:
        """Seconds logout or disconnect spends on revocation, all tokens together."""
        return self._number("REVOKE_TIMEOUT", 2, minimum=0.001)

    @property
    def REVOCATION_ENDPOINTS(self) -> dict[str, str]:
        """RFC 7009 revocation endpoints by provider id, for providers that do not
        advertise one in an OpenID Connect discovery document."""
        value = self._get("REVOCATION_ENDPOINTS", {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ImproperlyConfigured(
                f"{self.prefix}REVOCATION_ENDPOINTS must map provider ids to URLs."
            )
        return value

    # -- request layer -------------------------------------------------------

    @property
    def PROVIDERS(self) -> frozenset[str] | None:
        """Provider ids the middleware keeps fresh; ``None``: every provider whose
        token has a refresh token."""
        value = self._get("PROVIDERS", None)
        if value is None:
            return None
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ImproperlyConfigured(f"{self.prefix}PROVIDERS must be a list of provider ids.")
        return frozenset(value)

    @property
    def CONTEXT_NAME(self) -> str:
        """Name of the template variable the context processor sets."""
        value = self._get("CONTEXT_NAME", "session")
        if not isinstance(value, str) or not value.isidentifier():
            raise ImproperlyConfigured(f"{self.prefix}CONTEXT_NAME must be an identifier.")
        return value

    @property
    def EXEMPT_PATHS(self) -> tuple[re.Pattern[str], ...]:
        """Regular expressions of paths (``request.path_info``) the middleware ignores.

        Read on every request: kept compiled until ``setting_changed``.
        """
        cached = self._exempt_paths
        if cached is None:
            value = self._get("EXEMPT_PATHS", ())
            if isinstance(value, str):
                raise ImproperlyConfigured(f"{self.prefix}EXEMPT_PATHS must be a list of patterns.")
            cached = self._exempt_paths = tuple(_compiled(pattern) for pattern in value)
        return cached

    @property
    def REDIRECT_ON_ERROR(self) -> bool:
        """Redirect HTML page loads to sign-in once a refresh failed for good
        (instead of letting the template show ``{% reauth_prompt %}``)."""
        return bool(self._get("REDIRECT_ON_ERROR", False))

    @property
    def SESSION_RECHECK(self) -> float:
        """Longest time (seconds) a session trusts its summary of the user's tokens
        before looking at the database again (new tokens, errors seen elsewhere)."""
        return self._number("SESSION_RECHECK", 300, minimum=1)

    @property
    def ERROR_RECHECK(self) -> float:
        """Longest time (seconds) a session showing ``RefreshAccessTokenError`` trusts
        it before looking at the database again, so that a sign-in on another device
        or an admin's "clear error" reaches every session of the user. Only sessions
        that carry the error pay for it (one look at the database per period)."""
        return self._number("ERROR_RECHECK", 15, minimum=1)


# -- the project's own addresses ----------------------------------------------


@functools.lru_cache(maxsize=1)
def project_urls() -> dict[str, str]:
    """The Project-URL entries of setup.cfg (Source, Documentation, Changelog, Issues).

    Read from the installed distribution's metadata; from setup.cfg itself when the
    package runs from a checkout that is not installed; empty when neither is there.
    """
    try:
        entries = metadata.metadata("django-token-rotation").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        setup_cfg = Path(__file__).resolve().parent.parent / "setup.cfg"
        parser = configparser.ConfigParser()
        parser.read(setup_cfg, encoding="utf-8")
        lines = parser.get("metadata", "project_urls", fallback="").strip().splitlines()
        entries = [line.replace(" = ", ", ", 1) for line in lines]
    urls = {}
    for entry in entries:
        label, _, url = entry.partition(",")
        urls[label.strip()] = url.strip()
    return urls


def docs_url(page: str = "", anchor: str = "") -> str:
    """The hosted manual's ``page`` (``"settings"``), for hints and messages;
    ``docs/<page>.rst`` when the documentation's address is unknown."""
    base = project_urls().get("Documentation")
    if not base:
        return f"docs/{page or 'index'}.rst" + (f"#{anchor}" if anchor else "")
    url = base.rstrip("/") + "/en/stable/" + (f"{page}.html" if page else "")
    return url + (f"#{anchor}" if anchor else "")


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


app_settings = Settings()


def _forget_cached(*, setting: str, **kwargs: Any) -> None:
    if setting == Settings.prefix + "EXEMPT_PATHS":
        app_settings._exempt_paths = None


# Connected here rather than in ready(): the cache lives in this module, and the
# signal must reach it even in code that runs before the app registry is ready.
setting_changed.connect(_forget_cached, dispatch_uid="token_rotation.conf_cache")
