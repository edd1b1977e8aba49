"""Every ``TOKEN_ROTATION_*`` setting, read on each access.

Reading through properties (instead of copying values at import time) means
``override_settings`` just works and nothing needs reloading.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


class Settings:
    prefix = "TOKEN_ROTATION_"

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
        """Assumed lifetime (seconds) of access tokens that carry no expiry at all.

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
        be longer than ``TIMEOUT``.
        """
        return self._number("LEASE", 30, minimum=1)

    @property
    def WAIT(self) -> float:
        """Seconds a caller waits for another worker's refresh of the same token."""
        return self._number("WAIT", 10)

    @property
    def RETRY_BACKOFF(self) -> float:
        """First delay (seconds) before retrying after a transient failure; doubles each time."""
        return self._number("RETRY_BACKOFF", 5)

    @property
    def RETRY_BACKOFF_MAX(self) -> float:
        """Longest delay (seconds) between retries after transient failures."""
        return self._number("RETRY_BACKOFF_MAX", 300)

    @property
    def MAX_RESPONSE_BYTES(self) -> int:
        """Largest token-endpoint response body accepted, in bytes."""
        return int(self._number("MAX_RESPONSE_BYTES", 256 * 1024, minimum=1024))

    @property
    def DISCOVERY_CACHE_SECONDS(self) -> float:
        """How long an OpenID Connect discovery document is cached."""
        return self._number("DISCOVERY_CACHE_SECONDS", 24 * 3600)

    @property
    def CACHE(self) -> str:
        """Alias of the Django cache that holds discovery documents."""
        value = self._get("CACHE", "default")
        if not isinstance(value, str):
            raise ImproperlyConfigured(f"{self.prefix}CACHE must be a cache alias.")
        return value


app_settings = Settings()
