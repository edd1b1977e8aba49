"""Sphinx configuration of the manual (``make docs``; CI builds it with ``-W``)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

# The API reference (api.rst) imports the package: a minimal Django project.
import django  # noqa: E402
from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "allauth",
            "allauth.account",
            "allauth.socialaccount",
            "django_token_rotation",
        ],
        MIDDLEWARE=["allauth.account.middleware.AccountMiddleware"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        USE_TZ=True,
    )
    django.setup()

project = "django-token-rotation"
copyright = "the django-token-rotation authors"
author = "the django-token-rotation authors"

extensions = [
    "myst_parser",  # for the changelog, kept as CHANGELOG.md
    "sphinx.ext.autodoc",
]
source_suffix = {".rst": "restructuredtext"}
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing", "myst.header"]

# Every :func:, :class:, :mod: reference must resolve (-W makes a miss an error).
# There is no network here (no intersphinx), so names of other projects that
# signatures and docstrings mention are not checked.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(django|allauth|requests|httpx|google|prometheus_client|asgiref)(\..*)?"),
    (r"py:.*", r"(datetime|collections|typing|re|concurrent)\..*"),
    (r"py:.*", r"(SocialToken|SocialAccount|HttpRequest|HttpResponse|QuerySet|Credentials)"),
    (r"py:.*", r"(Any|Callable|Awaitable|Generator|AsyncGenerator|Collection|Iterator|P|R)"),
    (r"py:.*", r"(AbstractBaseUser|AnonymousUser|GetResponse|Context|SafeString|Response)"),
    (r"py:.*", r"(TokenState|TokenStateQuerySet|RefreshEvent\.Outcome)"),
    # exceptions.py names the table unqualified; it is documented in the API reference.
    (r"py:data", r"ERROR_CODES"),
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"show-inheritance": False}

html_theme = "furo"
html_title = "django-token-rotation"
exclude_patterns = ["_build"]
