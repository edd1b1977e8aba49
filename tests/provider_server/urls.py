"""URLs of the provider process: django-oauth-toolkit under ``/o/`` plus test controls.

``GET /_stats``
    ``{"token_calls", "refresh_calls", "refresh_tokens_seen", "revoke_calls",
    "delay_ms", "access_token_lifetime"}``. ``token_calls`` counts every POST to
    ``/o/token/``, ``refresh_calls`` those with ``grant_type=refresh_token``, and
    ``refresh_tokens_seen`` lists the SHA-256 hex digest of each ``refresh_token``
    presented there, in arrival order (never the token itself).
``POST /_control`` (JSON object)
    ``{"reset": true}`` zeroes the counters (only the counters);
    ``{"delay_ms": N}`` makes every later token-endpoint request sleep N ms before
    it is processed (0 turns it off); ``{"access_token_lifetime": S}`` sets the
    ``expires_in`` of tokens issued from now on; ``{"serialize": false}`` lets
    token and revocation requests be processed concurrently (see below). Keys
    combine; ``reset`` applies first. Answers with the same document as ``/_stats``.

Serialization (on by default): after its delay, each request to the token or the
revocation endpoint is processed while holding one process-wide lock. The delays
still overlap, so concurrent clients are still served in parallel; what the lock
removes is a race inside DOT: it checks a refresh token *before* its rotation
transaction, so a request that checks a token while another one is rotating it
passes the check, then finds the token already rotated and answers 200 with the
*same* new pair, whereas a request checking it a moment later gets
``invalid_grant`` and revokes the whole token family. Serialized, a second use of
a rotated refresh token is always the latter: deterministic reuse detection.

This module also holds the two DOT extensions that the settings name: an OIDC
server whose password grant issues an id_token, and a validator adding profile
and email claims.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.views import RevokeTokenView, TokenView
from oauthlib.oauth2.rfc6749.grant_types import (  # type: ignore[import-untyped]
    ResourceOwnerPasswordCredentialsGrant,
)
from oauthlib.openid import Server as OIDCServer  # type: ignore[import-untyped]
from oauthlib.openid.connect.core.grant_types.base import (  # type: ignore[import-untyped]
    GrantTypeBase,
)

from tests.provider_server.settings import ACCESS_TOKEN_LIFETIME


class ProviderState:
    """Counters and knobs of the test-control endpoints, shared by all request threads."""

    def __init__(self, access_token_lifetime: int) -> None:
        self._lock = threading.Lock()
        self._token_calls = 0
        self._refresh_calls = 0
        self._revoke_calls = 0
        self._refresh_tokens_seen: list[str] = []
        self._delay_ms = 0
        self._access_token_lifetime = access_token_lifetime
        self._serialize = True
        self._processing_lock = threading.Lock()

    def record_token_request(self, grant_type: str | None, refresh_token: str | None) -> float:
        """Count one POST to the token endpoint; return the delay to apply, in seconds."""
        with self._lock:
            self._token_calls += 1
            if grant_type == "refresh_token":
                self._refresh_calls += 1
            if refresh_token is not None:
                digest = hashlib.sha256(refresh_token.encode("utf-8")).hexdigest()
                self._refresh_tokens_seen.append(digest)
            return self._delay_ms / 1000.0

    def record_revoke_request(self) -> None:
        """Count one POST to the revocation endpoint."""
        with self._lock:
            self._revoke_calls += 1

    def reset(self) -> None:
        """Zero the counters (the delay and the lifetime are left alone)."""
        with self._lock:
            self._token_calls = 0
            self._refresh_calls = 0
            self._revoke_calls = 0
            self._refresh_tokens_seen = []

    def set_delay_ms(self, delay_ms: int) -> None:
        """Delay every later token-endpoint request by ``delay_ms`` before processing it."""
        with self._lock:
            self._delay_ms = delay_ms

    def set_access_token_lifetime(self, seconds: int) -> None:
        """Set ``expires_in`` of the access tokens issued from now on."""
        with self._lock:
            self._access_token_lifetime = seconds

    def set_serialize(self, serialize: bool) -> None:
        """Whether token and revocation requests are processed one at a time."""
        with self._lock:
            self._serialize = serialize

    @contextlib.contextmanager
    def processing(self) -> Iterator[None]:
        """Hold the processing lock, if serialization is on, while DOT handles a request."""
        with self._lock:
            serialize = self._serialize
        if not serialize:
            yield
            return
        with self._processing_lock:
            yield

    def access_token_lifetime(self) -> int:
        """The access token lifetime in force, in seconds."""
        with self._lock:
            return self._access_token_lifetime

    def snapshot(self) -> dict[str, Any]:
        """The ``/_stats`` document."""
        with self._lock:
            return {
                "token_calls": self._token_calls,
                "refresh_calls": self._refresh_calls,
                "refresh_tokens_seen": list(self._refresh_tokens_seen),
                "revoke_calls": self._revoke_calls,
                "delay_ms": self._delay_ms,
                "access_token_lifetime": self._access_token_lifetime,
                "serialize": self._serialize,
            }


STATE = ProviderState(ACCESS_TOKEN_LIFETIME)

_dot_token_view: Callable[[HttpRequest], HttpResponse] = TokenView.as_view()
_dot_revoke_view: Callable[[HttpRequest], HttpResponse] = RevokeTokenView.as_view()


@csrf_exempt
def token_endpoint(request: HttpRequest) -> HttpResponse:
    """DOT's token endpoint, counted and optionally delayed before any processing."""
    if request.method == "POST":
        delay = STATE.record_token_request(
            request.POST.get("grant_type"), request.POST.get("refresh_token")
        )
        if delay > 0:
            time.sleep(delay)
    with STATE.processing():
        return _dot_token_view(request)


@csrf_exempt
def revoke_endpoint(request: HttpRequest) -> HttpResponse:
    """DOT's RFC 7009 revocation endpoint, counted."""
    if request.method == "POST":
        STATE.record_revoke_request()
    with STATE.processing():
        return _dot_revoke_view(request)


@csrf_exempt
@require_GET
def stats_view(request: HttpRequest) -> JsonResponse:
    """``GET /_stats``."""
    return JsonResponse(STATE.snapshot())


def _non_negative_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@csrf_exempt
@require_POST
def control_view(request: HttpRequest) -> JsonResponse:
    """``POST /_control``: validate everything first, then apply."""
    try:
        payload = json.loads(request.body or b"{}")
    except ValueError:
        return JsonResponse({"error": "invalid_json"}, status=400)
    if not isinstance(payload, dict):
        return JsonResponse({"error": "expected_object"}, status=400)
    unknown = sorted(set(payload) - {"reset", "delay_ms", "access_token_lifetime", "serialize"})
    if unknown:
        return JsonResponse({"error": "unknown_keys", "keys": unknown}, status=400)
    for flag in ("reset", "serialize"):
        if flag in payload and not isinstance(payload[flag], bool):
            return JsonResponse({"error": f"invalid_{flag}"}, status=400)
    if "delay_ms" in payload and not _non_negative_int(payload["delay_ms"]):
        return JsonResponse({"error": "invalid_delay_ms"}, status=400)
    lifetime = payload.get("access_token_lifetime")
    if lifetime is not None and not (_non_negative_int(lifetime) and lifetime > 0):
        return JsonResponse({"error": "invalid_access_token_lifetime"}, status=400)

    if payload.get("reset"):
        STATE.reset()
    if "delay_ms" in payload:
        STATE.set_delay_ms(payload["delay_ms"])
    if lifetime is not None:
        STATE.set_access_token_lifetime(lifetime)
    if "serialize" in payload:
        STATE.set_serialize(payload["serialize"])
    return JsonResponse(STATE.snapshot())


class _IdTokenAddingHandler:
    """Wraps oauthlib's token handler: each token it creates gets an id_token."""

    def __init__(self, handler: Any, grant: PasswordGrantWithIdToken) -> None:
        self._handler = handler
        self._grant = grant

    def create_token(self, request: Any, refresh_token: bool = False, **kwargs: Any) -> Any:
        token = self._handler.create_token(request, refresh_token, **kwargs)
        return self._grant.add_id_token(token, self._handler, request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handler, name)


class PasswordGrantWithIdToken(GrantTypeBase):
    """The OAuth2 password grant, plus an id_token when the ``openid`` scope is granted.

    oauthlib's OIDC server uses the plain OAuth2 password grant, which never adds an
    id_token, and the grant's token modifiers get no request to build one from; so
    the token handler is wrapped instead. The id_token is added before the token is
    saved, so DOT links it to the access token as for any other grant.
    """

    def __init__(self, request_validator: Any = None, **kwargs: Any) -> None:
        self.proxy_target = ResourceOwnerPasswordCredentialsGrant(
            request_validator=request_validator, **kwargs
        )

    def create_token_response(self, request: Any, token_handler: Any) -> Any:
        return self.proxy_target.create_token_response(
            request, _IdTokenAddingHandler(token_handler, self)
        )


class ProviderOIDCServer(OIDCServer):
    """oauthlib's OIDC server with :class:`PasswordGrantWithIdToken` as password grant."""

    def __init__(self, request_validator: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(request_validator, *args, **kwargs)
        self.password_grant = PasswordGrantWithIdToken(request_validator)
        self.grant_types["password"] = self.password_grant


class ProviderValidator(OAuth2Validator):
    """DOT's validator, with profile and email claims in id_tokens and userinfo."""

    _CLAIMS = ("preferred_username", "name", "email", "email_verified")

    def get_discovery_claims(self, request: Any) -> list[str]:
        return ["sub", *self._CLAIMS]

    def get_additional_claims(self, request: Any) -> dict[str, Any]:
        user = request.user
        return {
            "preferred_username": user.get_username(),
            "name": user.get_full_name() or user.get_username(),
            "email": user.email,
            "email_verified": bool(user.email),
        }


urlpatterns = [
    # Before the include, so these two win; DOT's reverse() still yields the same paths.
    path("o/token/", token_endpoint),
    path("o/revoke_token/", revoke_endpoint),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("_stats", stats_view),
    path("_control", control_view),
]
