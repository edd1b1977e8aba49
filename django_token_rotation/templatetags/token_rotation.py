"""``{% load token_rotation %}``: ``reauth_prompt``, ``reauth_redirect``, ``token_rotation_error``.

They read the request (``django.template.context_processors.request`` must be
on), not the context processor's variable, so they work with or without it.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.http import HttpRequest

from django_token_rotation import session
from django_token_rotation.middleware import reauth_url

register = template.Library()


def _request(context: template.Context) -> HttpRequest | None:
    request = context.get("request")
    return request if isinstance(request, HttpRequest) else None


def _state(context: template.Context) -> dict[str, Any]:
    request = _request(context)
    if request is None:
        return {"show": False}
    summary = session.summary(request)
    if summary is None or summary.get(session.USER) != session.auth_user_id(request):
        return {"show": False}
    error = session.error_of(summary)
    if error is None:
        return {"show": False}
    url = reauth_url(request, session.token_session(summary), None)
    action, _, query = url.partition("?")
    return {
        "show": True,
        "session": session.token_session(summary),
        "provider_name": error.get("provider_name") or error.get("provider"),
        "action": action,
        "next": request.get_full_path(),
        "csrf_token": context.get("csrf_token"),
        "form_id": f"token-rotation-reauth-{error.get('provider')}",
    }


@register.inclusion_tag("token_rotation/reauth_prompt.html", takes_context=True)
def reauth_prompt(context: template.Context) -> dict[str, Any]:
    """A prompt with a button that signs in again at the affected provider
    (a POST with the CSRF token) and comes back to this page. Renders nothing
    when all is well."""
    return _state(context)


@register.inclusion_tag("token_rotation/reauth_redirect.html", takes_context=True)
def reauth_redirect(context: template.Context) -> dict[str, Any]:
    """Sends the browser through sign-in as soon as the page loads when the
    error is set (an auto-submitting form; a button without JavaScript)."""
    return _state(context)


@register.simple_tag(takes_context=True)
def token_rotation_error(context: template.Context) -> str:
    """``"RefreshAccessTokenError"`` or ``""``, for templates without the context
    processor: ``{% token_rotation_error as error %}{% if error %}...``."""
    request = _request(context)
    if request is None:
        return ""
    return session.for_request(request).error or ""
