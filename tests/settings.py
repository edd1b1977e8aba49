"""Settings of the test suite.

The default database is a SQLite *file* (not the in-memory default), so that
the concurrency tests' worker processes can share it. PostgreSQL
(127.0.0.1:5432, database ``test``; ``TOKEN_ROTATION_TEST_PG_*`` to change)
is added as the ``postgres`` alias (READ COMMITTED, PostgreSQL's default) and
the ``postgres_rr`` alias (REPEATABLE READ) when it answers; MariaDB
(127.0.0.1:3306, root, no password; ``TOKEN_ROTATION_TEST_MARIADB_*`` to
change) as the ``mariadb`` alias (REPEATABLE READ, as shipped) when it answers
and its driver (mysqlclient) is installed. The tests that need them are
skipped with a reason when they do not, and fail under ``CI=true``. Test
database names carry the process id, so parallel runs do not collide.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import tempfile

SECRET_KEY = "tests-only-not-secret"
# The gunicorn servers of tests/test_transactions.py serve this project on 127.0.0.1.
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "tests.urls"
STATIC_URL = "/static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # The live server of the browser test serves the admin's CSS through it.
    "django.contrib.staticfiles",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "allauth.socialaccount.providers.google",
    "allauth.socialaccount.providers.twitter",
    "allauth.socialaccount.providers.apple",
    # OpenID 2.0 has models: the provider conformance suite imports every
    # provider package, and without its app those models would be registered
    # under socialaccount (a phantom migration for every later test).
    "allauth.socialaccount.providers.openid",
    "tests.fakeprovider",
    # allauth headless (browser and app clients; tests/test_headless.py), served at /_allauth/.
    "allauth.headless",
    "django_token_rotation",
]

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django_token_rotation.middleware.TokenRefreshMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [os.path.join(os.path.dirname(__file__), "templates")],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django_token_rotation.context_processors.token_session",
            ]
        },
    }
]

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]

SOCIALACCOUNT_STORE_TOKENS = True
SOCIALACCOUNT_PROVIDERS: dict[str, dict[str, object]] = {}

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# Where the plain OAuth2 test provider (tests.fakeprovider) sends token requests;
# tests point it at their scripted server.
FAKE_PROVIDER_TOKEN_URL = os.environ.get(
    "TOKEN_ROTATION_TEST_FAKE_TOKEN_URL", "http://127.0.0.1:9/token"
)

# Worker processes of the concurrency tests take a few settings from the parent.
for _name in ("LEASE", "WAIT", "TIMEOUT"):
    if os.environ.get(f"TOKEN_ROTATION_TEST_{_name}"):
        globals()[f"TOKEN_ROTATION_{_name}"] = float(os.environ[f"TOKEN_ROTATION_TEST_{_name}"])

_SQLITE_TEST_FILE = os.path.join(
    tempfile.gettempdir(), f"token_rotation_tests_{os.getpid()}.sqlite3"
)

DATABASES: dict[str, dict[str, object]] = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": ":memory:",
        # Worker processes write the same file: wait for locks, don't fail.
        "OPTIONS": {"timeout": 30},
        "TEST": {"NAME": _SQLITE_TEST_FILE},
    }
}

PG: dict[str, object] = {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": os.environ.get("TOKEN_ROTATION_TEST_PG_HOST", "127.0.0.1"),
    "PORT": os.environ.get("TOKEN_ROTATION_TEST_PG_PORT", "5432"),
    "NAME": os.environ.get("TOKEN_ROTATION_TEST_PG_NAME", "test"),
    "USER": os.environ.get("TOKEN_ROTATION_TEST_PG_USER", "postgres"),
    "PASSWORD": os.environ.get("TOKEN_ROTATION_TEST_PG_PASSWORD", ""),
    "TEST": {"NAME": f"test_token_rotation_{os.getpid()}"},
}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


POSTGRES_AVAILABLE = _reachable(str(PG["HOST"]), int(str(PG["PORT"])))
if POSTGRES_AVAILABLE:
    DATABASES["postgres"] = PG
    DATABASES["postgres_rr"] = {
        **PG,
        "OPTIONS": {"isolation_level": 3},  # psycopg.IsolationLevel.REPEATABLE_READ
        "TEST": {"NAME": f"test_token_rotation_rr_{os.getpid()}"},
    }

MARIADB: dict[str, object] = {
    "ENGINE": "django.db.backends.mysql",
    "HOST": os.environ.get("TOKEN_ROTATION_TEST_MARIADB_HOST", "127.0.0.1"),
    "PORT": os.environ.get("TOKEN_ROTATION_TEST_MARIADB_PORT", "3306"),
    "NAME": os.environ.get("TOKEN_ROTATION_TEST_MARIADB_NAME", "test"),
    "USER": os.environ.get("TOKEN_ROTATION_TEST_MARIADB_USER", "root"),
    "PASSWORD": os.environ.get("TOKEN_ROTATION_TEST_MARIADB_PASSWORD", ""),
    "OPTIONS": {"charset": "utf8mb4"},
    "TEST": {"NAME": f"test_token_rotation_{os.getpid()}", "CHARSET": "utf8mb4"},
}


def _mariadb_problem() -> str:
    """Why the MariaDB tests cannot run here (``""``: they can)."""
    where = f"{MARIADB['HOST']}:{MARIADB['PORT']}"
    if importlib.util.find_spec("MySQLdb") is None:
        return (
            "the mysqlclient driver is not installed (it needs a MariaDB client library: "
            "apt-get install libmariadb-dev pkg-config, then pip install -e '.[mariadb]')"
        )
    if not _reachable(str(MARIADB["HOST"]), int(str(MARIADB["PORT"]))):
        return (
            f"MariaDB not reachable at {where} "
            "(set TOKEN_ROTATION_TEST_MARIADB_HOST/PORT/USER/PASSWORD to point at one)"
        )
    return ""


MARIADB_PROBLEM = _mariadb_problem()
MARIADB_AVAILABLE = not MARIADB_PROBLEM
if MARIADB_AVAILABLE:
    DATABASES["mariadb"] = MARIADB
    # allauth's EmailAddress has a conditional unique constraint that MariaDB
    # cannot create; Django 6 checks models against every database and says so.
    # Not this package's model: a MariaDB site sees the same warning from allauth.
    SILENCED_SYSTEM_CHECKS = ["models.W036"]

# Pools and proxies in front of the PostgreSQL test database (docs/databases.rst):
# Django's psycopg pool ("postgres_pool") and pgbouncer in transaction mode
# ("pgbouncer", 127.0.0.1:6432, started by .ci/services/pgbouncer.sh). Mirrors of
# "postgres": the same database through another road.
if POSTGRES_AVAILABLE and importlib.util.find_spec("psycopg_pool") is not None:
    DATABASES["postgres_pool"] = {
        **PG,
        "OPTIONS": {"pool": {"min_size": 2, "max_size": 2, "timeout": 10}},
        "TEST": {"MIRROR": "postgres"},
    }
PGBOUNCER_HOST = os.environ.get("TOKEN_ROTATION_TEST_PGBOUNCER_HOST", "127.0.0.1")
PGBOUNCER_PORT = os.environ.get("TOKEN_ROTATION_TEST_PGBOUNCER_PORT", "6432")
PGBOUNCER_AVAILABLE = POSTGRES_AVAILABLE and _reachable(PGBOUNCER_HOST, int(PGBOUNCER_PORT))
if PGBOUNCER_AVAILABLE:
    DATABASES["pgbouncer"] = {
        **PG,
        "HOST": PGBOUNCER_HOST,
        "PORT": PGBOUNCER_PORT,
        # Transaction pooling: no server-side cursors (Django's docs).
        "DISABLE_SERVER_SIDE_CURSORS": True,
        "TEST": {"MIRROR": "postgres"},
    }

# A worker process of the concurrency tests gets the exact database it must use.
if os.environ.get("TOKEN_ROTATION_TEST_WORKER_DB"):
    DATABASES = {"default": json.loads(os.environ["TOKEN_ROTATION_TEST_WORKER_DB"])}

# Site shapes (TOKEN_ROTATION_TEST_SHAPES, comma-separated). "replica": the
# primary/replica router of Django's guide, reads from a read-only replica of
# "default" (see tests/routers.py and docs/databases.rst).
if "replica" in os.environ.get("TOKEN_ROTATION_TEST_SHAPES", "").split(","):
    from tests.routers import read_only_replica

    DATABASES["replica"] = read_only_replica(DATABASES["default"], "default")
    DATABASE_ROUTERS = ["tests.routers.PrimaryReplicaRouter"]
