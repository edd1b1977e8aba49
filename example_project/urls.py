from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from example_project import views

urlpatterns = [
    path("", views.home, name="home"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/call-api/", views.call_api, name="call_api"),
    path("dashboard/revoke/", views.revoke_grant, name="revoke_grant"),
    path("accounts/", include("allauth.urls")),
    path("admin/", admin.site.urls),
]
