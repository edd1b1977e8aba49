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
from typing import cast

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

# The shapes below change these (database sessions, Django's user: the base shape).
SESSION_ENGINE = "django.contrib.sessions.backends.db"
SESSION_CACHE_ALIAS = "default"
AUTH_USER_MODEL = "auth.User"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]

SOCIALACCOUNT_STORE_TOKENS = True
SOCIALACCOUNT_PROVIDERS: dict[str, dict[str, object]] = {}

CACHES: dict[str, dict[str, object]] = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

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


# -- shapes ----------------------------------------------------------------------
# The shapes real sites have, switched on from the environment, several at once:
#   TOKEN_ROTATION_TEST_SHAPES=usetz_false,atomic_requests .venv/bin/python -m pytest
# `nox -s shapes` runs the marked subset (``shapes`` marker, tests/conftest.py)
# once per shape; `nox -s usetz_false` runs the whole suite under USE_TZ = False.
# Subprocesses the tests start inherit the environment, so they run in the same
# shape. To add a shape: a function below that changes these settings, and its
# name in SHAPES (and in noxfile.SHAPES, so that CI runs it).


def _usetz_false() -> None:
    global USE_TZ
    USE_TZ = False


def _atomic_requests() -> None:
    # On the site's database. On every alias, each view would open a transaction on
    # each database (the server aliases too), which tests of ``default`` forbid.
    DATABASES["default"]["ATOMIC_REQUESTS"] = True


def _conn_max_age() -> None:
    for db in DATABASES.values():
        if "pool" in cast("dict[str, object]", db.get("OPTIONS", {})):
            continue  # Django: a pooled alias cannot also keep persistent connections
        db["CONN_MAX_AGE"] = 60
        db["CONN_HEALTH_CHECKS"] = True


def _psycopg_pool() -> None:
    # Django's connection pool (psycopg_pool) on every PostgreSQL alias, sized as
    # docs/databases.rst tells a site to: one connection per thread (the suite's
    # workers run tests.helpers.THREADS = 8 threads a process) plus one for the
    # refresh made inside a transaction, which writes on a second connection.
    # With 8, eight threads holding their transactions left the refreshing one
    # no connection: it waited on the pool, the others gave up after
    # TOKEN_ROTATION_WAIT (refresh_in_progress).
    for db in DATABASES.values():
        if db["ENGINE"] == "django.db.backends.postgresql":
            options = cast("dict[str, object]", db.get("OPTIONS", {}))
            db["OPTIONS"] = {**options, "pool": {"min_size": 1, "max_size": 8 + 1}}


def _signed_cookie_sessions() -> None:
    global SESSION_ENGINE
    SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"


def _cache_sessions() -> None:
    # Sessions in Redis through Django's own Redis cache backend, in an alias of
    # their own: tests clear the default cache, and Redis's FLUSHDB would reach
    # the other processes of the run. Keys carry this process's id.
    global SESSION_ENGINE, SESSION_CACHE_ALIAS
    CACHES["sessions"] = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ.get("TOKEN_ROTATION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "KEY_PREFIX": f"token-rotation-tests-{os.getpid()}",
        "TIMEOUT": 600,
    }
    SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    SESSION_CACHE_ALIAS = "sessions"


def _cached_db_sessions() -> None:
    _cache_sessions()
    global SESSION_ENGINE
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"


def _custom_user() -> None:
    global AUTH_USER_MODEL
    INSTALLED_APPS.append("tests.uuid_user")
    AUTH_USER_MODEL = "uuid_user.User"


def _default_postgres() -> None:
    # The engine's tests run against ``default``: make it PostgreSQL.
    if not POSTGRES_AVAILABLE:
        raise RuntimeError("the default_postgres shape needs PostgreSQL (see tests/settings.py)")
    DATABASES["default"] = {**PG, "TEST": {"NAME": f"test_token_rotation_default_{os.getpid()}"}}


def _default_mariadb() -> None:
    if not MARIADB_AVAILABLE:
        raise RuntimeError(f"the default_mariadb shape needs MariaDB: {MARIADB_PROBLEM}")
    DATABASES["default"] = {
        **MARIADB,
        "TEST": {"NAME": f"test_token_rotation_default_{os.getpid()}", "CHARSET": "utf8mb4"},
    }


def _replica() -> None:
    """Applied at the end of this module, after a worker's own database is set."""


#: Shape name -> what it changes.
SHAPES = {
    "replica": _replica,
    "usetz_false": _usetz_false,
    "atomic_requests": _atomic_requests,
    "conn_max_age": _conn_max_age,
    "psycopg_pool": _psycopg_pool,
    "signed_cookie_sessions": _signed_cookie_sessions,
    "cache_sessions": _cache_sessions,
    "cached_db_sessions": _cached_db_sessions,
    "custom_user": _custom_user,
    "default_postgres": _default_postgres,
    "default_mariadb": _default_mariadb,
}
# The database shapes first: the others change every alias, "default" included.
_ORDER = ["default_postgres", "default_mariadb"]
ACTIVE_SHAPES = [
    name.strip()
    for name in os.environ.get("TOKEN_ROTATION_TEST_SHAPES", "").split(",")
    if name.strip()
]
for _shape in sorted(ACTIVE_SHAPES, key=lambda name: name not in _ORDER):
    if _shape not in SHAPES:
        raise RuntimeError(
            f"TOKEN_ROTATION_TEST_SHAPES: unknown shape {_shape!r}; known: {', '.join(SHAPES)}"
        )
    SHAPES[_shape]()

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
