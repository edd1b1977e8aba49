"""Settings of the demo OAuth2 / OpenID Connect provider (django-oauth-toolkit).

A separate Django project from the demo site: its own database, its own
cookies, its own port. Not for production: fixed secrets, DEBUG on.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from example_project import demo_config as demo

BASE_DIR = Path(__file__).resolve().parent


def _oidc_private_key(path: Path) -> str:
    """The RSA key that signs id_tokens, created on first use and kept in ``path``."""
    if not path.exists():
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".oidc-key-")
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(tmp, path)
    return path.read_text(encoding="ascii")


SECRET_KEY = "demo-provider-only-not-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "example_project.demo_provider.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oauth2_provider",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Ours first: oauth2_provider/base.html here restyles DOT's own pages.
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]

DATABASES = {"default": demo.sqlite_database(demo.PROVIDER_DB)}

# Same host as the demo site (127.0.0.1): different cookie names.
SESSION_COOKIE_NAME = "demo_provider_sessionid"
CSRF_COOKIE_NAME = "demo_provider_csrftoken"

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"

OAUTH2_PROVIDER: dict[str, Any] = {
    "OIDC_ENABLED": True,
    "OIDC_RSA_PRIVATE_KEY": _oidc_private_key(demo.PROVIDER_KEY_FILE),
    # Fixed, so that ``iss`` is the same whatever Host header a client sends.
    "OIDC_ISS_ENDPOINT": demo.PROVIDER_ISSUER,
    "SCOPES": {
        "openid": "Sign you in (OpenID Connect)",
        "profile": "Your name and username",
        "email": "Your email address",
    },
    "DEFAULT_SCOPES": ["openid", "profile", "email"],
    # Short-lived access tokens, so that the demo refreshes within a minute.
    "ACCESS_TOKEN_EXPIRE_SECONDS": demo.ACCESS_TOKEN_SECONDS,
    # Each refresh returns a new refresh token and retires the old one; replaying
    # a retired one revokes the whole family (what "exactly once" protects against).
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    # allauth sends PKCE anyway (oauth_pkce_enabled in the site's settings).
    "PKCE_REQUIRED": False,
    "OAUTH2_VALIDATOR_CLASS": "example_project.demo_provider.oidc.DemoValidator",
}

LOGGING = demo.logging_config()
