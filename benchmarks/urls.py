from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, include, path


@login_required
def page(request: HttpRequest) -> HttpResponse:
    """The minimal signed-in page: the cost measured is the stack's, not the view's."""
    return HttpResponse("ok", content_type="text/plain")


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


urlpatterns: list[URLPattern | URLResolver] = [
    path("page/", page),
    path("health/", health),
]

try:  # mozilla-django-oidc (the bench extra): its middleware reverses its own URLs
    import mozilla_django_oidc.urls  # noqa: F401
except ImportError:  # pragma: no cover
    pass
else:
    urlpatterns.append(path("oidc/", include("mozilla_django_oidc.urls")))
