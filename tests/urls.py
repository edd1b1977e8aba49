from django.contrib import admin
from django.urls import include, path

from tests import views

urlpatterns = [
    path("page/", views.page, name="page"),
    path("async-page/", views.async_page, name="async-page"),
    path("api/", views.api, name="api"),
    path("health/", views.health, name="health"),
    path("token/", views.token_view, name="token"),
    path("token-autocommit/", views.token_view_autocommit, name="token-autocommit"),
    path("async-token/", views.async_token_view, name="async-token"),
    path("api-call/", views.api_call_view, name="api-call"),
    path("async-api-call/", views.async_api_call_view, name="async-api-call"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("_allauth/", include("allauth.headless.urls")),
]
