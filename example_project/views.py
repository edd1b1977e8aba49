"""The demo site's pages: sign in, look at the stored token, call the provider's
API, revoke the grant at the provider.

The two buttons POST and redirect back to the dashboard (post/redirect/get), so
that reloading a page never repeats an action, and so that the "sign in again"
prompt always comes back to the dashboard, a page a GET can load.
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any

import requests
from allauth.socialaccount.models import SocialToken
from django.contrib.auth.decorators import login_required
from django.db.models import F
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from django_token_rotation import (
    ReauthenticationRequired,
    TokenRefreshUnavailable,
    get_access_token,
    revocation,
)
from django_token_rotation.conf import app_settings
from django_token_rotation.models import RefreshEvent, TokenState
from example_project import demo_config as demo

API_TIMEOUT = 10
HISTORY_ROWS = 8
# Session keys of the demo's own (the library keeps its own, in session.py).
OUTCOME_KEY = "demo_outcome"  # what the last button did, shown once
REVOKED_KEY = "demo_revoked"  # the revoked token, until the site notices


def home(request: HttpRequest) -> HttpResponse:
    """Signed out: the sign-in button. Signed in: straight to the dashboard."""
    if request.user.is_authenticated:
        return redirect("dashboard")
    return render(
        request,
        "home.html",
        {
            "provider_id": demo.PROVIDER_ID,
            "provider_name": demo.PROVIDER_NAME,
            "provider_url": demo.PROVIDER_URL,
            "access_token_seconds": demo.ACCESS_TOKEN_SECONDS,
            "leeway": app_settings.LEEWAY,
            "demo_username": demo.DEMO_USERNAME,
            "demo_password": demo.DEMO_PASSWORD,
            "external": demo.EXTERNAL_PROVIDER,
        },
    )


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The stored token (masked), its refresh state and history, and the buttons."""
    outcome = request.session.pop(OUTCOME_KEY, None) or {}
    context = {**_token_context(request), **outcome}
    context["reload_at_ms"] = _reload_at_ms(request, context)
    return render(request, "dashboard.html", context)


@login_required
@require_POST
def call_api(request: HttpRequest) -> HttpResponse:
    """Get a fresh access token (refreshing it if due), then call the userinfo API."""
    outcome: dict[str, Any] = {}
    try:
        access_token = get_access_token(request.user, demo.PROVIDER_ID)
    except ReauthenticationRequired as exc:
        outcome["reauth_code"] = exc.code
    except TokenRefreshUnavailable as exc:
        outcome["unavailable_code"] = exc.code
        retry_at = getattr(exc, "retry_at", None)
        if isinstance(retry_at, datetime.datetime):
            outcome["retry_at"] = f"{retry_at.astimezone(datetime.UTC):%H:%M:%S} UTC"
    else:
        outcome["api_token_tail"] = _tail(access_token)
        outcome.update(_userinfo(access_token))
    request.session[OUTCOME_KEY] = outcome
    return redirect("dashboard")


@login_required
@require_POST
def revoke_grant(request: HttpRequest) -> HttpResponse:
    """Revoke the site's grant at the provider (RFC 7009), as a user would at the
    provider's "connected apps" page, and keep the local token.

    ``revocation.revoke(token, delete=False)`` is the library's own revocation
    (the admin's "Revoke at provider" action, which also deletes the token). Here
    the token stays: the site, like any site whose user revoked it elsewhere,
    finds out only when it next refreshes, gets ``invalid_grant``, and shows
    the "sign in again" prompt.
    """
    token = _current_token(request)
    if token is None:
        return redirect("dashboard")
    result = revocation.revoke(token, delete=False)
    outcome: dict[str, Any] = {"revoke_code": result.code}
    if result.revoked and token.expires_at is not None:
        request.session[REVOKED_KEY] = {
            "token_id": token.pk,
            "expires_at_ms": _ms(token.expires_at),
        }
    request.session[OUTCOME_KEY] = outcome
    return redirect("dashboard")


def _userinfo(access_token: str) -> dict[str, Any]:
    try:
        response = requests.get(
            _userinfo_url(),
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=API_TIMEOUT,
        )
    except (requests.RequestException, ValueError, KeyError) as exc:
        return {"api_error": f"The provider did not answer ({type(exc).__name__})."}
    if not response.ok:
        return {
            "api_status": response.status_code,
            "api_error": (
                f"The provider refused the access token (HTTP {response.status_code}),"
                " although it has not expired: most likely it was revoked at the provider."
                " The site finds out for sure when the token is due and the refresh fails."
            ),
        }
    try:
        return {
            "api_status": response.status_code,
            "userinfo_json": json.dumps(response.json(), indent=2, sort_keys=True),
        }
    except ValueError:
        return {"api_error": "The provider's answer is not JSON."}


@functools.cache
def _userinfo_url() -> str:
    """The provider's userinfo endpoint, from its discovery document."""
    if not demo.EXTERNAL_PROVIDER:
        return demo.USERINFO_URL
    document = requests.get(
        f"{demo.SITE_PROVIDER.issuer}/.well-known/openid-configuration", timeout=API_TIMEOUT
    ).json()
    return str(document["userinfo_endpoint"])


def _userinfo_url_for_display() -> str:
    try:
        return _userinfo_url()
    except (requests.RequestException, ValueError, KeyError):
        return "the provider's userinfo endpoint (its discovery document did not say)"


def _current_token(request: HttpRequest) -> SocialToken | None:
    return (
        SocialToken.objects.filter(account__user=request.user, account__provider=demo.PROVIDER_ID)
        .select_related("account", "app")
        # The token django_token_rotation picks: the one that expires last.
        .order_by(F("expires_at").desc(nulls_last=True), "-pk")
        .first()
    )


def _token_context(request: HttpRequest) -> dict[str, Any]:
    token = _current_token(request)
    context: dict[str, Any] = {
        "provider_id": demo.PROVIDER_ID,
        "provider_name": demo.PROVIDER_NAME,
        "provider_url": demo.PROVIDER_URL,
        "external": demo.EXTERNAL_PROVIDER,
        "userinfo_url": _userinfo_url_for_display(),
        "leeway": app_settings.LEEWAY,
        "admin_username": demo.ADMIN_USERNAME,
        "admin_password": demo.ADMIN_PASSWORD,
        "token": None,
    }
    if token is None:
        return context
    state = TokenState.objects.filter(token=token).first()
    expires_at: datetime.datetime | None = token.expires_at
    due_at = expires_at - datetime.timedelta(seconds=app_settings.LEEWAY) if expires_at else None
    # The account's, not only this token's: a new sign-in may store a new token row.
    history = RefreshEvent.objects.filter(token__account=token.account).order_by("-at", "-pk")[
        :HISTORY_ROWS
    ]
    context.update(
        {
            "token": token,
            "account_uid": token.account.uid,
            # Never the whole token: its last four characters tell two tokens apart.
            "token_tail": _tail(token.token),
            "has_refresh_token": bool(token.token_secret),
            "expires_at": expires_at,
            "expires_at_ms": _ms(expires_at) if expires_at else None,
            "due_at": due_at,
            "due_at_ms": _ms(due_at) if due_at else None,
            "state": state,
            "refresh_count": state.refresh_count if state else 0,
            "history": list(history),
        }
    )
    return context


def _reload_at_ms(request: HttpRequest, context: dict[str, Any]) -> int | None:
    """When the dashboard should reload itself: once the revoked token is due.

    Only while the token revoked by the button is still the stored one and
    the site has not noticed yet; and only for a due time still ahead, so that
    a refresh that fails for another reason (provider down) cannot make the
    page reload in a loop.
    """
    revoked = request.session.get(REVOKED_KEY)
    if not isinstance(revoked, dict):
        return None
    token = context.get("token")
    still_stored = (
        token is not None
        and revoked.get("token_id") == token.pk
        and revoked.get("expires_at_ms") == context.get("expires_at_ms")
    )
    due_at_ms = context.get("due_at_ms")
    now_ms = _ms(datetime.datetime.now(tz=datetime.UTC))
    if not still_stored or not isinstance(due_at_ms, int) or due_at_ms <= now_ms:
        del request.session[REVOKED_KEY]
        return None
    return due_at_ms + 1000


def _ms(moment: datetime.datetime) -> int:
    return int(moment.timestamp() * 1000)


def _tail(secret: str) -> str:
    return f"…{secret[-4:]}" if len(secret) >= 12 else "…"
