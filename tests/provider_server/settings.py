"""Django settings of the provider process (never of the test process).

Environment:

``PROVIDER_DB_PATH``
    SQLite file of the provider (default: a per-process file in the temp dir).
``PROVIDER_ACCESS_TOKEN_LIFETIME``
    Access token lifetime in seconds (default 30); ``POST /_control`` can change it
    at runtime.
``PROVIDER_ISSUER``
    The OIDC issuer, set by ``serve.py`` once it knows its port, so that ``iss`` is
    the same whatever ``Host`` a client sends.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


def _generate_rsa_private_key_pem() -> str:
    """A fresh RSA key for signing id_tokens; it lives as long as the process."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    ).decode("ascii")


def access_token_expires_in(request: Any) -> int:
    """oauthlib's ``token_expires_in`` callable: the lifetime currently in force."""
    from tests.provider_server.urls import STATE  # imported late: urls needs Django ready

    return STATE.access_token_lifetime()


ACCESS_TOKEN_LIFETIME = int(os.environ.get("PROVIDER_ACCESS_TOKEN_LIFETIME", "30"))

SECRET_KEY = "provider-server-tests-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.provider_server.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "oauth2_provider",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get(
            "PROVIDER_DB_PATH",
            os.path.join(tempfile.gettempdir(), f"provider_server_{os.getpid()}.sqlite3"),
        ),
        "OPTIONS": {
            # Many request threads share the file: wait for locks instead of failing, and
            # take the write lock when a transaction starts (no lock-upgrade deadlocks).
            "timeout": 30,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        },
    }
}

# The password grant authenticates on every call: keep it cheap.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

OAUTH2_PROVIDER: dict[str, Any] = {
    "ROTATE_REFRESH_TOKEN": True,
    "REFRESH_TOKEN_REUSE_PROTECTION": True,
    "REFRESH_TOKEN_GRACE_PERIOD_SECONDS": 0,
    "ACCESS_TOKEN_EXPIRE_SECONDS": ACCESS_TOKEN_LIFETIME,
    "PKCE_REQUIRED": False,
    "OIDC_ENABLED": True,
    "OIDC_RSA_PRIVATE_KEY": _generate_rsa_private_key_pem(),
    "OIDC_ISS_ENDPOINT": os.environ.get("PROVIDER_ISSUER", ""),
    "SCOPES": {
        "openid": "OpenID Connect",
        "profile": "Profile",
        "email": "Email address",
        "read": "Reading scope",
    },
    "DEFAULT_SCOPES": ["openid", "profile", "email", "read"],
    # The stock OIDC server issues no id_token for the password grant; ours does.
    "OIDC_SERVER_CLASS": "tests.provider_server.urls.ProviderOIDCServer",
    "OAUTH2_VALIDATOR_CLASS": "tests.provider_server.urls.ProviderValidator",
    # Read on every token response, so ``POST /_control`` can change the lifetime.
    "EXTRA_SERVER_KWARGS": {"token_expires_in": access_token_expires_in},
}

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["stderr"], "level": "WARNING"},
    "loggers": {
        # Server errors (500s) go to stderr; request lines and 4xx do not.
        "django.request": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
        "django.server": {"handlers": [], "level": "CRITICAL", "propagate": False},
        # oauthlib logs token values at DEBUG; DOT nags about the password grant.
        "oauthlib": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
        "oauth2_provider": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
    },
}
