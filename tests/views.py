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
