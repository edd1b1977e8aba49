from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.urls import path


@login_required
def page(request: HttpRequest) -> HttpResponse:
    """The minimal signed-in page: the cost measured is the stack's, not the view's."""
    return HttpResponse("ok", content_type="text/plain")


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


urlpatterns = [
    path("page/", page),
    path("health/", health),
]
