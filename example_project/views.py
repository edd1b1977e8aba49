"""The demo site's pages: sign in, look at the stored token, call the provider's API."""

from __future__ import annotations

import datetime
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
)
from django_token_rotation.conf import app_settings
from django_token_rotation.models import TokenState
from example_project import demo_config as demo

API_TIMEOUT = 10


def home(request: HttpRequest) -> HttpResponse:
    """Signed out: the sign-in button. Signed in: straight to the dashboard."""
    if request.user.is_authenticated:
        return redirect("dashboard")
    return render(
        request,
        "home.html",
        {
            "provider_id": demo.PROVIDER_ID,
            "provider_url": demo.PROVIDER_URL,
            "access_token_seconds": demo.ACCESS_TOKEN_SECONDS,
            "demo_username": demo.DEMO_USERNAME,
            "demo_password": demo.DEMO_PASSWORD,
        },
    )


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The stored token (masked) and its refresh state."""
    return render(request, "dashboard.html", _token_context(request))


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
        outcome["retry_at"] = getattr(exc, "retry_at", None)
    else:
        try:
            response = requests.get(
                demo.USERINFO_URL,
                headers={"Authorization": f"Bearer {access_token}"},
                timeout=API_TIMEOUT,
            )
        except requests.RequestException as exc:
            outcome["api_error"] = f"The provider did not answer ({type(exc).__name__})."
        else:
            outcome["api_status"] = response.status_code
            if not response.ok:
                outcome["api_error"] = (
                    f"The provider refused the access token (HTTP {response.status_code}),"
                    " although it has not expired: most likely it was revoked at the provider."
                    " The site finds out for sure when the token is due and the refresh fails."
                )
            else:
                try:
                    outcome["userinfo_json"] = json.dumps(response.json(), indent=2, sort_keys=True)
                except ValueError:
                    outcome["api_error"] = "The provider's answer is not JSON."
    # Read the token again: get_access_token may just have replaced it.
    return render(request, "dashboard.html", {**_token_context(request), **outcome})


def _token_context(request: HttpRequest) -> dict[str, Any]:
    token = (
        SocialToken.objects.filter(account__user=request.user, account__provider=demo.PROVIDER_ID)
        .select_related("account")
        # The token django_token_rotation picks: the one that expires last.
        .order_by(F("expires_at").desc(nulls_last=True), "-pk")
        .first()
    )
    context: dict[str, Any] = {
        "provider_id": demo.PROVIDER_ID,
        "provider_name": demo.PROVIDER_NAME,
        "provider_url": demo.PROVIDER_URL,
        "userinfo_url": demo.USERINFO_URL,
        "leeway": app_settings.LEEWAY,
        "token": None,
    }
    if token is None:
        return context
    state = TokenState.objects.filter(token=token).first()
    expires_at: datetime.datetime | None = token.expires_at
    due_at = expires_at - datetime.timedelta(seconds=app_settings.LEEWAY) if expires_at else None
    context.update(
        {
            "token": token,
            "account_uid": token.account.uid,
            # Never the whole token: its last four characters tell two tokens apart.
            "token_tail": _tail(token.token),
            "has_refresh_token": bool(token.token_secret),
            "expires_at": expires_at,
            "expires_at_ms": int(expires_at.timestamp() * 1000) if expires_at else None,
            "due_at": due_at,
            "due_at_ms": int(due_at.timestamp() * 1000) if due_at else None,
            "state": state,
            "refresh_count": state.refresh_count if state else 0,
        }
    )
    return context


def _tail(secret: str) -> str:
    return f"…{secret[-4:]}" if len(secret) >= 12 else "…"
