"""The test matrix and the linters, as CI runs them (``.ci/steps/``): ``nox -l`` lists them.

- ``tests-3.11`` (Django 5.2 LTS) and ``tests-3.13`` (the newest Django): the whole suite.
- ``usetz_false``: the whole suite with ``USE_TZ = False`` (CI runs ``minimum`` with it instead).
- ``shapes`` (Python 3.12, Django 6.0): the ``shapes`` subset (engine, middleware and
  sessions, admin, headless, transactions, processes) once per shape of ``tests/settings.py``
  (``nox -s shapes -- atomic_requests custom_user`` runs only those), with a
  pass count per shape.
- ``minimum``: the whole suite on the lowest version of every runtime
  dependency that ``setup.cfg`` allows (read from its ``install_requires``).
- ``allauth_pre``: the whole suite on the newest django-allauth, pre-releases
  included and our ``<66`` ceiling ignored: the day allauth 66 (or its first
  pre-release) is published, this session tests it. Policy: the ceiling stays
  at the next major of allauth (allauth's majors drop deprecated APIs); when
  this session is green on the new major we release with the ceiling raised,
  when it is red we fix first. Users are held at the last tested major
  meanwhile. With ``ALLAUTH_PRE_ONLY_NEWER=1`` (CI) the tests run only when
  that version is newer than what the ceiling admits (otherwise ``tests-3.13``
  has just run the same version).
- ``lint``: ruff and mypy.

Every test session runs pytest-xdist with ``TEST_WORKERS`` processes (default 3).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "usetz_false", "shapes", "minimum", "allauth_pre", "lint"]

# Django 5.2 LTS on the oldest Python we support; the newest Django on a new Python.
MATRIX = [
    ("3.11", "django>=5.2,<5.3"),
    ("3.13", "django>=6.0,<7"),
]


def minimum_versions() -> list[str]:
    """``name==floor`` for every runtime dependency, read from setup.cfg's
    install_requires (one place for the floors: what is declared is what is tested)."""
    config = configparser.ConfigParser()
    config.read(Path(__file__).with_name("setup.cfg"))
    pins = []
    for line in config["options"]["install_requires"].strip().splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*>=\s*([^,;\s]+)", line)
        if match is None:
            raise ValueError(f"setup.cfg: {line!r} has no >= floor")
        pins.append(f"{match[1]}=={match[3]}")
    return pins


# pytest-xdist workers, as `make test` runs them.
WORKERS = ["-n", os.environ.get("TEST_WORKERS", "3"), "--dist", "loadgroup"]
PYTEST = ["python", "-m", "pytest", "-p", "no:cacheprovider", *WORKERS]

# Shapes the `shapes` session leaves out: the whole suite runs under them elsewhere
# (CI's minimum session runs with USE_TZ = False).
WHOLE_SUITE_SHAPES = {"usetz_false"}
# Shapes run only when named (`nox -s shapes -- cached_db_sessions postgres_site`):
# CI's 40 minutes on two cores hold the shapes a site chooses between, one at a time.
ON_REQUEST_SHAPES = {"cached_db_sessions"}
# The parts of the shapes subset (tests/conftest.py SHAPES_MODULES) each shape can
# change; a shape not named here (a new one) runs the whole subset.
SHAPE_MARKS = {
    "signed_cookie_sessions": "shapes_web",
    "cache_sessions": "shapes_web",
    "cached_db_sessions": "shapes_web",
    "custom_user": "shapes_web or shapes_engine",
    "atomic_requests": "shapes_web or shapes_db",
    "conn_max_age": "shapes_engine or shapes_db",
    # The pool is on the PostgreSQL aliases: the engine's tests run on SQLite. Its runs
    # on SQLite and MariaDB stay: with only the pooled runs, three xdist workers each ran
    # 4 processes x 8 threads on their pools at once and PostgreSQL (max_connections
    # 100, other runs beside it on this machine) refused clients ("too many clients
    # already"; 3 failures in one run).
    "psycopg_pool": "shapes_db",
    # The tests run once per database alias are marked on_<alias> (tests/conftest.py
    # ALIAS_MARKS). These shapes change "default" only: its runs, not those on the other
    # aliases, which run as they would here in the whole suite and in the replica shape.
    "default_postgres": "shapes and not (on_postgres or on_postgres_rr or on_mariadb)",
    "default_mariadb": "shapes and not (on_postgres or on_postgres_rr or on_mariadb)",
}
# Shapes together, as a PostgreSQL site in production has them.
COMBINED_SHAPES = {
    "postgres_site": "default_postgres,atomic_requests,psycopg_pool,cache_sessions,custom_user",
}


def install(session: nox.Session, *extra: str) -> None:
    session.install("-e", ".[test,mariadb]", *extra)


@nox.session(python=["3.11", "3.13"])
def tests(session: nox.Session) -> None:
    django = dict(MATRIX)[str(session.python)]
    install(session, django)
    session.run("python", "-m", "django", "--version")
    session.run(*PYTEST, *session.posargs)


@nox.session(python="3.11")
def usetz_false(session: nox.Session) -> None:
    install(session)
    session.run(*PYTEST, *session.posargs, env={"TOKEN_ROTATION_TEST_SHAPES": "usetz_false"})


def _counts(junit: Path) -> dict[str, int]:
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    total, failures, errors, skipped = (
        int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")
    )
    failed = failures + errors
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


@nox.session(python="3.12")
def shapes(session: nox.Session) -> None:
    # Python 3.12 with Django 6.0: the versions between the whole suite's two runs
    # (3.11 / 5.2 LTS and 3.13 / the newest Django) are tested here, in every shape.
    install(session, "django>=6.0,<6.1")
    session.run("python", "-m", "django", "--version")
    known = session.run(
        "python",
        "-c",
        "import json, tests.settings as s; print(json.dumps(list(s.SHAPES)))",
        silent=True,
    )
    every = list(json.loads(str(known).strip().splitlines()[-1]))
    runs = {name: name for name in every if name not in WHOLE_SUITE_SHAPES | ON_REQUEST_SHAPES}
    if session.posargs:
        runs = {name: COMBINED_SHAPES.get(name, name) for name in session.posargs}
    results: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, value in runs.items():
            junit = Path(folder) / f"{name}.xml"
            session.log(f"shape {name}: TOKEN_ROTATION_TEST_SHAPES={value}")
            marks = SHAPE_MARKS.get(name, "shapes")
            started = time.monotonic()
            session.run(
                *PYTEST,
                "-m",
                marks,
                f"--junitxml={junit}",
                "-q",
                env={"TOKEN_ROTATION_TEST_SHAPES": value},
                success_codes=[0, 1],
            )
            results[name] = (
                _counts(junit) if junit.exists() else {"passed": 0, "failed": 1, "skipped": 0}
            )
            results[name]["seconds"] = round(time.monotonic() - started)
    session.log("shape                      passed  failed  skipped  seconds")
    for name, count in results.items():
        session.log(
            f"{name:<26} {count['passed']:>6} {count['failed']:>7} {count['skipped']:>8}"
            f" {count['seconds']:>8}"
        )
    failed = [name for name, count in results.items() if count["failed"]]
    if failed:
        session.error(f"failures in the shapes: {', '.join(failed)}")


@nox.session(python="3.11")
def minimum(session: nox.Session) -> None:
    constraints = Path(session.create_tmp()) / "minimum.txt"
    constraints.write_text("\n".join(minimum_versions()) + "\n")
    install(session, "-c", str(constraints))
    session.run("python", "-m", "pip", "freeze", silent=False)
    session.run(*PYTEST, *session.posargs)


@nox.session(python="3.13")
def allauth_pre(session: nox.Session) -> None:
    install(session, dict(MATRIX)["3.13"])
    admitted = _allauth_version(session)
    session.install("--pre", "--upgrade", "django-allauth[socialaccount,openid]")
    newest = _allauth_version(session)
    session.log(
        f"django-allauth: {newest} (the newest, pre-releases included); setup.cfg admits {admitted}"
    )
    if newest == admitted and os.environ.get("ALLAUTH_PRE_ONLY_NEWER"):
        session.log(f"nothing newer than {admitted}: tests-3.13 runs the suite on it")
        return
    session.run(*PYTEST, *session.posargs)


def _allauth_version(session: nox.Session) -> str:
    out = session.run("python", "-c", "import allauth; print(allauth.__version__)", silent=True)
    return str(out).strip().splitlines()[-1]


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("-e", ".[test,lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "django_token_rotation", "tests", "benchmarks")
