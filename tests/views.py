from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render


@login_required
def page(request: HttpRequest) -> HttpResponse:
    return render(request, "page.html")


@login_required
async def async_page(request: HttpRequest) -> HttpResponse:
    return HttpResponse("async ok")


def api(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True, "method": request.method})


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("healthy")
