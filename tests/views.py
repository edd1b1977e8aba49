from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render


@login_required
def page(request: HttpRequest) -> HttpResponse:
    return render(request, "page.html")


# Django runs no async view in a transaction: under ATOMIC_REQUESTS a site marks them.
@transaction.non_atomic_requests
@login_required
async def async_page(request: HttpRequest) -> HttpResponse:
    return HttpResponse("async ok")


def api(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True, "method": request.method})


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("healthy")


def _token_view(request: HttpRequest) -> JsonResponse:
    """Get the user's access token, write a row, then raise when ``fail`` is set:
    a view whose API call failed after it was handed the token."""
    from django.contrib.auth import get_user_model

    from django_token_rotation import TokenRotationError, get_access_token

    user = get_user_model().objects.get(pk=request.GET["user"])
    try:
        get_access_token(user, request.GET.get("provider", "dot"))
    except TokenRotationError as exc:
        return JsonResponse({"error": exc.code}, status=503)
    get_user_model().objects.create_user(f"written-{request.GET.get('mark', 'x')}")
    if request.GET.get("fail"):
        raise RuntimeError("the API call made with the token failed")
    return JsonResponse({"ok": True})


def token_view(request: HttpRequest) -> JsonResponse:
    """Under ``ATOMIC_REQUESTS = True``: in a transaction."""
    return _token_view(request)


@transaction.non_atomic_requests
def token_view_autocommit(request: HttpRequest) -> JsonResponse:
    """Always in autocommit."""
    return _token_view(request)


async def async_token_view(request: HttpRequest) -> JsonResponse:
    """``aget_access_token`` for ``?user=`` in an async view; answers the token's
    SHA-256 (never the token itself)."""
    import hashlib

    from django.contrib.auth import get_user_model

    from django_token_rotation import TokenRotationError, aget_access_token

    user = await get_user_model().objects.aget(pk=request.GET["user"])
    try:
        token = await aget_access_token(user, request.GET.get("provider", "fake"))
    except TokenRotationError as exc:
        return JsonResponse({"error": exc.code}, status=503)
    return JsonResponse({"sha256": hashlib.sha256(token.encode()).hexdigest()})


def api_call_view(request: HttpRequest) -> JsonResponse:
    """Call ``?url=`` for ``?user=`` with the ``requests`` client of
    ``django_token_rotation.http`` (a sync view: under ASGI, in a thread)."""
    import requests
    from django.contrib.auth import get_user_model

    from django_token_rotation import TokenRotationError
    from django_token_rotation.http import TokenAuth

    user = get_user_model().objects.get(pk=request.GET["user"])
    try:
        response = requests.get(request.GET["url"], auth=TokenAuth(user, "fake"), timeout=60)
    except TokenRotationError as exc:
        return JsonResponse({"error": exc.code}, status=503)
    return JsonResponse({"status": response.status_code})


async def async_api_call_view(request: HttpRequest) -> JsonResponse:
    """The same with an ``httpx.AsyncClient`` and ``HttpxTokenAuth``."""
    import httpx
    from django.contrib.auth import get_user_model

    from django_token_rotation import TokenRotationError
    from django_token_rotation.http import HttpxTokenAuth

    user = await get_user_model().objects.aget(pk=request.GET["user"])
    try:
        async with httpx.AsyncClient(auth=HttpxTokenAuth(user, "fake"), timeout=60) as client:
            response = await client.get(request.GET["url"])
    except TokenRotationError as exc:
        return JsonResponse({"error": exc.code}, status=503)
    return JsonResponse({"status": response.status_code})
