"""Settings of the benchmark's Django site: one login-required page, three middleware stacks.

Chosen by environment variables, which ``benchmarks.run`` sets for the servers it starts:

* ``TOKEN_ROTATION_BENCH_VARIANT``: ``none`` (no token middleware), ``naive`` (the
  per-request database lookup of ``benchmarks.naive``) or ``ours`` (``TokenRefreshMiddleware``).
* ``TOKEN_ROTATION_BENCH_DB``: the ``default`` database, as JSON.
* ``TOKEN_ROTATION_BENCH_TOKEN_URL``: the loopback token endpoint of the ``bench`` provider.

Sessions are signed cookies in all three stacks (no session query, so the database queries
counted are the token layer's and the user lookup every login-required page makes), and
database connections are persistent, as on a production site.
"""

from __future__ import annotations

import json
import os
import tempfile

SECRET_KEY = "benchmarks-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "benchmarks.urls"
WSGI_APPLICATION = "benchmarks.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "benchmarks.benchprovider",
    "django_token_rotation",
]

VARIANT = os.environ.get("TOKEN_ROTATION_BENCH_VARIANT", "ours")
TOKEN_MIDDLEWARE = {
    "none": [],
    "naive": ["benchmarks.naive.NaiveTokenMiddleware"],
    "ours": ["django_token_rotation.middleware.TokenRefreshMiddleware"],
}
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    *TOKEN_MIDDLEWARE[VARIANT],
]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
SILENCED_SYSTEM_CHECKS = ["token_rotation.W003"]  # the "none" and "naive" stacks

TEMPLATES: list[dict[str, object]] = []
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
LOGIN_URL = "/login/"

SOCIALACCOUNT_STORE_TOKENS = True
SOCIALACCOUNT_PROVIDERS = {
    "bench": {"APP": {"client_id": "bench-client", "secret": "bench-client-secret"}}
}
BENCH_TOKEN_URL = os.environ.get("TOKEN_ROTATION_BENCH_TOKEN_URL", "http://127.0.0.1:9/token")

DATABASES: dict[str, dict[str, object]] = {
    "default": json.loads(os.environ["TOKEN_ROTATION_BENCH_DB"])
    if os.environ.get("TOKEN_ROTATION_BENCH_DB")
    else {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(tempfile.gettempdir(), "token_rotation_bench.sqlite3"),
        "OPTIONS": {"timeout": 30},
    }
}
DATABASES["default"].setdefault("CONN_MAX_AGE", None)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django_token_rotation": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
        "benchmarks": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
    },
}
