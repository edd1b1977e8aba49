"""A URLconf that forgot allauth's URLs (token_rotation.W008)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
