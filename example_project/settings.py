"""Settings of the demo site: django-allauth signs users in through the demo
OpenID Connect provider, and ``django_token_rotation`` keeps their access
tokens fresh. Start it with ``make demo`` (see ``run_demo.py``).

Not for production: fixed secrets, DEBUG on, a SQLite file.
"""

from __future__ import annotations

from typing import Any

from example_project import demo_config as demo

BASE_DIR = demo.HERE

SECRET_KEY = "demo-site-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "example_project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "django_token_rotation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_token_rotation.middleware.TokenRefreshMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django_token_rotation.context_processors.token_session",
            ],
            # |when and |ms: times and durations in the admin's format.
            "builtins": ["example_project.formatting"],
        },
    }
]

DATABASES = {"default": demo.sqlite_database(demo.SITE_DB)}

# The site and the provider share the host 127.0.0.1, and cookies ignore ports:
# each keeps its cookies under its own names.
SESSION_COOKIE_NAME = "demo_site_sessionid"
CSRF_COOKIE_NAME = "demo_site_csrftoken"
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",  # the admin's own login
    "allauth.account.auth_backends.AuthenticationBackend",
]

LOGIN_URL = "/"
LOGIN_REDIRECT_URL = "/dashboard/"
ACCOUNT_LOGOUT_REDIRECT_URL = "/"
EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"

# --- django-allauth ----------------------------------------------------------

# Users sign in with the provider only; no local passwords, no email round trip.
SOCIALACCOUNT_ONLY = True
ACCOUNT_EMAIL_VERIFICATION = "none"
# Keep the access token, the refresh token (as ``token_secret``) and ``expires_at``:
# django_token_rotation needs all three.
SOCIALACCOUNT_STORE_TOKENS = True
# The login URL needs a POST (with the CSRF token): a GET shows a confirmation page.
SOCIALACCOUNT_LOGIN_ON_GET = False

# The bundled demo provider, or a real one named by DEMO_OIDC_* environment
# variables (see demo_config.py).
_provider = demo.SITE_PROVIDER
_app_settings: dict[str, Any] = {
    "server_url": _provider.issuer,
    "scope": _provider.scopes,
    "oauth_pkce_enabled": True,
}
if _provider.auth_params:
    _app_settings["auth_params"] = _provider.auth_params
if not _provider.external:
    # django-oauth-toolkit serves RFC 7009 revocation but does not advertise it
    # in its discovery document: the dashboard's "revoke" button needs it.
    _app_settings["openid_configuration_overrides"] = {
        "revocation_endpoint": f"{demo.PROVIDER_ISSUER}/revoke_token/"
    }

# token_rotation.W007 (no offline_access scope) does not apply: django-oauth-toolkit
# issues refresh tokens without it, Google with access_type=offline instead.
SILENCED_SYSTEM_CHECKS = (
    ["token_rotation.W007"]
    if not _provider.external or _provider.auth_params.get("access_type") == "offline"
    else []
)

SOCIALACCOUNT_PROVIDERS: dict[str, dict[str, Any]] = {
    "openid_connect": {
        "APPS": [
            {
                "provider_id": _provider.provider_id,
                "name": _provider.name,
                "client_id": _provider.client_id,
                "secret": _provider.secret,
                "settings": _app_settings,
            }
        ],
    }
}

# --- django_token_rotation -----------------------------------------------------

# The provider's access tokens live 30 s; a token counts as due 10 s before it
# expires (the default, 60 s, is longer than the whole lifetime).
TOKEN_ROTATION_LEEWAY = 10

LOGGING = demo.logging_config(
    {
        # One INFO line per refresh ("Refreshed token 1 of provider demo in 40 ms ...").
        "django_token_rotation": {"handlers": ["console"], "level": "INFO", "propagate": False},
    }
)
