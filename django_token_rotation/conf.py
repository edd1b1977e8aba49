"""Every ``TOKEN_ROTATION_*`` setting, read through a property, each described once.

Reading through properties (instead of copying values at import time) means
``override_settings`` just works and nothing needs reloading. The one setting
read on every request (``EXEMPT_PATHS``) is kept compiled, and every setting is
kept as read, until Django's ``setting_changed`` signal (sent by
``override_settings``) says a setting changed, or the settings object changes
(``override_settings`` puts a new one in place; a setting deleted under it sends
no signal). Assigning to ``django.conf.settings`` outside ``override_settings``
is not seen, as by Django's own caches. Reading an unset setting from
``django.conf.settings`` costs an exception, a few microseconds the middleware's
fast path cannot afford, and a refresh reads a dozen (the timeout, the lease,
the leeway...: 4 % of the background refresher's CPU).

Adding a setting
----------------
One typed property on :class:`Settings`, named like the setting without its
prefix. Its docstring is the setting's only description: reStructuredText,
with a ``:type:`` and a ``:default:`` line, as the others. ``make settings-doc``
renders every docstring into ``docs/settings.rst`` (:func:`settings_reference`);
``tests/test_docs.py`` fails while that page is not current, and the system
checks quote the same text. Validate the value in the property (raise
``ImproperlyConfigured``: check ``token_rotation.E005`` reports it).

Retiring a setting
------------------
Derive its value (or fix it) in its property, honour a value still set, and add
it to :data:`DEPRECATED` with what replaces it: check ``token_rotation.W101``
then names the replacement to whoever still sets it, and the settings page lists
it under "Deprecated settings". It is removed in the next major version
(docs/versioning.rst).
"""

from __future__ import annotations

import configparser
import functools
import inspect
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

#: Settings derived or fixed since 1.0.0, with what replaces each. A value still set
#: is honoured until 2.0 and reported by check ``token_rotation.W101``.
DEPRECATED: dict[str, str] = {
    "LEASE": "it is derived from TOKEN_ROTATION_TIMEOUT (the longer of 30 s and "
    "3 x TOKEN_ROTATION_TIMEOUT), which always outlives a whole refresh",
    "RETRY_BACKOFF_MAX": "the longest delay is derived from TOKEN_ROTATION_RETRY_BACKOFF "
    "(60 x TOKEN_ROTATION_RETRY_BACKOFF: 300 s by default)",
    "EXPIRED_BACKOFF_MAX": "retries once the access token has expired come after 0.5, 1, 2 "
    "and then every 4 s (fixed)",
    "RETRY_AFTER_MAX": "a Retry-After is honoured up to 30 s once the access token has "
    "expired (fixed)",
    "MAX_RESPONSE_BYTES": "token-endpoint answers are capped at 256 KiB (fixed)",
    "DISCOVERY_CACHE_SECONDS": "OpenID Connect discovery documents are cached for a day "
    "(fixed; clear TOKEN_ROTATION_CACHE to read them again)",
    "SESSION_RECHECK": "a session looks at the database again every 5 minutes (fixed)",
    "ERROR_RECHECK": "a session showing RefreshAccessTokenError looks at the database "
    "again every 15 s (fixed)",
}


_MISSING = object()
_UNREAD = object()


class Settings:
    prefix = "TOKEN_ROTATION_"

    def __init__(self) -> None:
        self._exempt_paths: tuple[re.Pattern[str], ...] | None = None
        #: Django's settings as read (``_MISSING``: unset), for the settings object
        #: they were read from (``override_settings`` and pytest-django's ``settings``
        #: put a new one in place, deleting a setting too) and until any setting
        #: changes.
        self._read: dict[str, Any] = {}
        self._read_from: object = None

    def _setting(self, name: str, default: Any) -> Any:
        """``getattr(django.conf.settings, name, default)``, kept (see ``_read``)."""
        holder = settings._wrapped  # type: ignore[misc]  # LazySettings: the current object
        if holder is not self._read_from:
            self._read = {}
            self._read_from = holder
        value = self._read.get(name, _UNREAD)
        if value is _UNREAD:
            value = self._read[name] = getattr(settings, name, _MISSING)
        return default if value is _MISSING else value

    def _get(self, name: str, default: Any) -> Any:
        return self._setting(self.prefix + name, default)

    def _number(self, name: str, default: float, *, minimum: float = 0) -> float:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise ImproperlyConfigured(
                f"{self.prefix}{name} must be a number >= {minimum}, not {value!r}."
            )
        return value

    @property
    def LEEWAY(self) -> float:
        """Seconds before ``expires_at`` at which a token counts as due. Capped at half the
        token's lifetime when that is known, so that very short-lived tokens are not refreshed
        on every call.

        :type: ``float``
        :default: ``60``
        """
        return self._number("LEEWAY", 60)

    @property
    def DEFAULT_LIFETIME(self) -> float | None:
        """Lifetime in seconds assumed for access tokens with no ``expires_in`` and no JWT
        ``exp``, when no earlier lifetime of the token is known and its provider has no
        documented default (Salesforce: 15 minutes, see :doc:`providers`). Counted from the
        token's last refresh or the user's last sign-in, whichever is later, on every path (the
        middleware too: tokens allauth stored at sign-in need no ``TokenState``). ``None``: such
        tokens are never refreshed proactively.

        :type: ``float | None``
        :default: ``None``
        """
        value = self._get("DEFAULT_LIFETIME", None)
        if value is None:
            return None
        return self._number("DEFAULT_LIFETIME", 0, minimum=1)

    @property
    def TIMEOUT(self) -> float:
        """Seconds one refresh may take at the provider, all its HTTP calls together: the
        OpenID Connect discovery document when it is not cached, the token call, and the JWKS
        that validates a refreshed ID token. One hard wall-clock deadline over name
        resolution, connect, TLS handshake, status line, headers and body: a stalled resolver
        or a provider dripping its headers or answer is cut there. The lease that makes a
        refresh single-flight is derived from it.

        :type: ``float``
        :default: ``SOCIALACCOUNT_REQUESTS_TIMEOUT`` (allauth's, 5)
        """
        default = self._setting("SOCIALACCOUNT_REQUESTS_TIMEOUT", 5)
        return self._number("TIMEOUT", default, minimum=0.001)

    @property
    def LEASE(self) -> float:
        """Seconds one worker may hold the right to refresh a token: a worker that died
        mid-refresh blocks the others at most this long. It must outlive a whole refresh
        (``TIMEOUT`` + 2 s for the database writes, check ``token_rotation.E006``).

        :type: ``float``
        :default: the longer of ``30`` and 3 x ``TOKEN_ROTATION_TIMEOUT``
        """
        return self._number("LEASE", max(30.0, 3 * self.TIMEOUT), minimum=1)

    @property
    def WAIT(self) -> float:
        """Seconds a caller waits for another worker's refresh of the same token before giving
        up with ``TokenRefreshUnavailable("refresh_in_progress")`` (or returning the current
        token while it is still valid).

        :type: ``float``
        :default: ``10``
        """
        return self._number("WAIT", 10)

    @property
    def RETRY_BACKOFF(self) -> float:
        """Delay in seconds after a first transient failure while the access token still
        works; it doubles with each consecutive failure, up to 60 times this value (5 minutes by
        default). Once the access token has expired, retries come quickly instead (0.5, 1, 2,
        then every 4 s, jittered; a ``Retry-After`` honoured up to 30 s).

        :type: ``float``
        :default: ``5``
        """
        return self._number("RETRY_BACKOFF", 5)

    @property
    def RETRY_BACKOFF_MAX(self) -> float:
        """Longest delay (seconds) between retries while the access token is still valid.

        :type: ``float``
        :default: 60 x ``TOKEN_ROTATION_RETRY_BACKOFF``
        """
        return self._number("RETRY_BACKOFF_MAX", 60 * self.RETRY_BACKOFF)

    @property
    def EXPIRED_BACKOFF_MAX(self) -> float:
        """Longest delay (seconds) between retries once the access token has expired
        (steps of 0.5, 1, 2 ... seconds, jittered, up to this).

        :type: ``float``
        :default: ``4``
        """
        return self._number("EXPIRED_BACKOFF_MAX", 4, minimum=0.5)

    @property
    def RETRY_AFTER_MAX(self) -> float:
        """Longest ``Retry-After`` (seconds) honoured once the access token has expired.

        :type: ``float``
        :default: ``30``
        """
        return self._number("RETRY_AFTER_MAX", 30)

    @property
    def MAX_RESPONSE_BYTES(self) -> int:
        """Largest token-endpoint response body accepted, in bytes.

        :type: ``int``
        :default: ``262144``
        """
        return int(self._number("MAX_RESPONSE_BYTES", 256 * 1024, minimum=1024))

    @property
    def DISCOVERY_CACHE_SECONDS(self) -> float:
        """How long an OpenID Connect discovery document is cached.

        :type: ``float``
        :default: ``86400``
        """
        return self._number("DISCOVERY_CACHE_SECONDS", 24 * 3600)

    @property
    def ALLOW_INSECURE_HTTP(self) -> bool:
        """Allow plain-HTTP token, discovery, JWKS and revocation endpoints on hosts other than
        loopback (``127.0.0.0/8``, ``::1``, ``localhost``). For development only: tokens would
        cross the network in clear.

        :type: ``bool``
        :default: ``False``
        """
        return bool(self._get("ALLOW_INSECURE_HTTP", False))

    @property
    def CACHE(self) -> str:
        """The Django cache alias that holds OpenID Connect discovery documents (a day each).

        :type: ``str``
        :default: ``"default"``
        """
        value = self._get("CACHE", "default")
        if not isinstance(value, str):
            raise ImproperlyConfigured(f"{self.prefix}CACHE must be a cache alias.")
        return value

    @property
    def ID_TOKEN_LEEWAY(self) -> float:
        """Seconds of clock skew tolerated when a refreshed OpenID Connect ID token's ``iat``,
        ``exp`` and ``nbf`` are checked: a provider whose clock runs up to this much ahead of or
        behind ours is not an error. Between 0 and 600 (another value: ``token_rotation.E005``).
        An ID token outside it, like any ID token that cannot be verified, does not sign anyone
        out: the refreshed tokens are kept and only the account's stored claims are not updated
        (see :doc:`errors`).

        :type: ``float``
        :default: ``300``
        """
        value = self._number("ID_TOKEN_LEEWAY", 300)
        if value > 600:
            raise ImproperlyConfigured(
                f"{self.prefix}ID_TOKEN_LEEWAY must be at most 600 seconds, not {value!r}: "
                "a larger skew would accept ID tokens long expired."
            )
        return value

    @property
    def PROVIDER_ERRORS(self) -> dict[str, dict[str, str]]:
        """A provider's error answers in its own words, by provider id (``SocialAccount.provider``;
        for an OpenID Connect app its ``provider_id``): error shape -> the standard OAuth code it
        means (``invalid_grant``, ``invalid_client``, ``unauthorized_client``, ``invalid_scope``,
        ``unsupported_grant_type``, ``invalid_request``: sign in again; ``server_error``,
        ``temporarily_unavailable``, ``slow_down``: try later). Added to, and overriding, the
        shapes of the provider's registry entry. The shapes (``<error>``,
        ``http:<status>:empty``, ...) and glewlwyd's example,
        ``{"glewlwyd": {"http:400:empty": "invalid_grant"}}``, are in :doc:`providers`. Another
        value is reported by ``manage.py check`` (``token_rotation.E005``; a shape no answer can
        match: ``token_rotation.W010``).

        :type: ``dict[str, dict[str, str]]``
        :default: ``{}``
        """
        from .providers.registry import MEANINGS

        value = self._get("PROVIDER_ERRORS", {})
        if not isinstance(value, dict) or not all(
            isinstance(provider, str)
            and isinstance(shapes, dict)
            and all(isinstance(k, str) and v in MEANINGS for k, v in shapes.items())
            for provider, shapes in value.items()
        ):
            raise ImproperlyConfigured(
                f"{self.prefix}PROVIDER_ERRORS must map provider ids to dicts of error shape "
                f"-> one of {', '.join(sorted(MEANINGS))}."
            )
        return value

    # -- history and revocation (admin, refresh_tokens) ------------------------

    @property
    def HISTORY_RETENTION(self) -> int:
        """Refresh events kept per token in the refresh history (the oldest are pruned as new
        ones arrive, so the table grows with the number of tokens, never with time). ``0``
        records no history.

        :type: ``int``
        :default: ``50``
        """
        return int(self._number("HISTORY_RETENTION", 50))

    @property
    def REVOKE_ON_LOGOUT(self) -> bool:
        """On logout, revoke the user's tokens at their providers (RFC 7009) and delete them.
        Best effort: a provider that fails or is down never fails the logout; its tokens are
        kept.

        :type: ``bool``
        :default: ``False``
        """
        return bool(self._get("REVOKE_ON_LOGOUT", False))

    @property
    def REVOKE_ON_DISCONNECT(self) -> bool:
        """When a social account is deleted (allauth's "disconnect", or any other delete),
        revoke its tokens at the provider first. Best effort, like the above.

        :type: ``bool``
        :default: ``False``
        """
        return bool(self._get("REVOKE_ON_DISCONNECT", False))

    @property
    def REVOKE_TIMEOUT(self) -> float:
        """Seconds that revocation on logout or disconnect may spend on HTTP, all of the user's
        tokens together (fetching an OpenID Connect discovery document that is not cached yet
        included).

        :type: ``float``
        :default: ``2``
        """
        return self._number("REVOKE_TIMEOUT", 2, minimum=0.001)

    @property
    def REVOCATION_ENDPOINTS(self) -> dict[str, str]:
        """RFC 7009 revocation endpoints by provider id, for providers that advertise none.
        Otherwise the endpoint is the OpenID Connect discovery document's
        ``revocation_endpoint`` (which an app's ``openid_configuration_overrides`` can set), or
        one allauth provider known to the app (``google``:
        ``https://oauth2.googleapis.com/revoke``).

        :type: ``dict[str, str]``
        :default: ``{}``
        """
        value = self._get("REVOCATION_ENDPOINTS", {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ImproperlyConfigured(
                f"{self.prefix}REVOCATION_ENDPOINTS must map provider ids to URLs."
            )
        return value

    @property
    def ADMIN(self) -> bool:
        """Register this app's ``SocialToken`` admin (read-only, token values masked, "Refresh
        now", "Clear error" and "Revoke at provider" actions; see :doc:`admin`) in place of
        allauth's own. ``False`` keeps allauth's admin, which shows and edits both tokens as
        plain text: give its permissions to few people. The refresh history admin is registered
        either way. Read once, when the admin loads.

        :type: ``bool``
        :default: ``True``
        """
        return bool(self._get("ADMIN", True))

    # -- request layer -------------------------------------------------------

    @property
    def PROVIDERS(self) -> frozenset[str] | None:
        """Provider ids the middleware keeps fresh. ``None``: every provider whose stored token
        has a refresh token (tokens of providers that cannot be refreshed are skipped).

        :type: ``list[str] | None``
        :default: ``None``
        """
        value = self._get("PROVIDERS", None)
        if value is None:
            return None
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise ImproperlyConfigured(f"{self.prefix}PROVIDERS must be a list of provider ids.")
        return frozenset(value)

    @property
    def CONTEXT_NAME(self) -> str:
        """Name of the template variable set by the context processor.

        :type: ``str``
        :default: ``"session"``
        """
        value = self._get("CONTEXT_NAME", "session")
        if not isinstance(value, str) or not value.isidentifier():
            raise ImproperlyConfigured(f"{self.prefix}CONTEXT_NAME must be an identifier.")
        return value

    @property
    def EXEMPT_PATHS(self) -> tuple[re.Pattern[str], ...]:
        """Regular expressions matched against ``request.path_info``; the middleware ignores
        matching requests (health checks, static files served by Django, webhooks).

        :type: ``list[str]``
        :default: ``[]``
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
        """Redirect ``GET`` page loads to sign-in at the affected provider (with ``next``) once
        a refresh failed for good, instead of letting the template show ``{% reauth_prompt %}``.

        :type: ``bool``
        :default: ``False``
        """
        return bool(self._get("REDIRECT_ON_ERROR", False))

    @property
    def SESSION_RECHECK(self) -> float:
        """Longest time (seconds) a session trusts its summary of the user's tokens before
        looking at the database again (new tokens, errors seen elsewhere).

        :type: ``float``
        :default: ``300``
        """
        return self._number("SESSION_RECHECK", 300, minimum=1)

    @property
    def ERROR_RECHECK(self) -> float:
        """Longest time (seconds) a session showing ``RefreshAccessTokenError`` trusts it before
        looking at the database again, so that a sign-in on another device or an admin's "Clear
        error" reaches every session of the user.

        :type: ``float``
        :default: ``15``
        """
        return self._number("ERROR_RECHECK", 15, minimum=1)


# -- the settings reference (docs/settings.rst) ---------------------------------

FIELD = re.compile(r"^:(type|default): .*$", re.M)

SETTINGS_PAGE_INTRO = """\
..
   Generated from the docstrings of django_token_rotation/conf.py by
   ``make settings-doc``: edit those, not this page.

Settings
========

All optional: a new project needs none of them. Each is read again whenever a
setting changes (Django's ``setting_changed`` signal), so ``override_settings``
works in tests.
"""


def _entry(name: str) -> str:
    """One setting's section: its heading, ``:type:`` and ``:default:``, its description."""
    doc = inspect.cleandoc(getattr(Settings, name).__doc__ or "")
    fields = [match.group(0) for match in FIELD.finditer(doc)]
    if [field.split(":")[1] for field in fields] != ["type", "default"]:
        raise ValueError(f"Settings.{name}: its docstring needs a :type: then a :default: line")
    heading = f"``{Settings.prefix}{name}``"
    return "\n".join([heading, "-" * len(heading), "", *fields, "", FIELD.sub("", doc).strip(), ""])


def settings_reference() -> str:
    """docs/settings.rst, rendered from the docstrings of :class:`Settings` in the order
    they are defined; deprecated settings last, each with what replaces it."""
    names = [name for name in vars(Settings) if name.isupper()]
    current = [name for name in names if name not in DEPRECATED]
    parts = [SETTINGS_PAGE_INTRO, *(_entry(name) for name in current)]
    parts.append(
        ".. _deprecated-settings:\n\n"
        "Deprecated settings\n"
        "-------------------\n\n"
        "Still honoured when set, until 2.0 (:doc:`versioning`); ``manage.py check`` reports\n"
        "each one still set (``token_rotation.W101``). Remove them from your settings:\n"
    )
    for name, replacement in DEPRECATED.items():
        parts.append(
            f"``{Settings.prefix}{name}``\n   {replacement[0].upper()}{replacement[1:]}.\n"
        )
    return "\n".join(parts)


def deprecated_settings_in_use() -> list[tuple[str, str]]:
    """``(setting, what replaces it)`` for each deprecated setting the project still sets."""
    return [
        (Settings.prefix + name, replacement)
        for name, replacement in DEPRECATED.items()
        if hasattr(settings, Settings.prefix + name)
    ]


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
    app_settings._read = {}


# Connected here rather than in ready(): the cache lives in this module, and the
# signal must reach it even in code that runs before the app registry is ready.
setting_changed.connect(_forget_cached, dispatch_uid="token_rotation.conf_cache")
