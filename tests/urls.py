from django.contrib import admin
from django.urls import include, path

from tests import views

urlpatterns = [
    path("page/", views.page, name="page"),
    path("async-page/", views.async_page, name="async-page"),
    path("api/", views.api, name="api"),
    path("health/", views.health, name="health"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
]
