from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import TemplateView

from example_project import demo_config as demo

urlpatterns = [
    path(
        "",
        TemplateView.as_view(
            template_name="demo_provider/home.html",
            extra_context={"issuer": demo.PROVIDER_ISSUER, "site_url": demo.SITE_URL},
        ),
        name="home",
    ),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(
            extra_context={"demo_username": demo.DEMO_USERNAME, "demo_password": demo.DEMO_PASSWORD}
        ),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
]
