"""The test matrix and the linters, as CI runs them: ``nox`` (or ``nox -s lint``)."""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True

# Django 5.2 LTS on the oldest Python we support; the newest Django on a new Python.
MATRIX = [
    ("3.11", "django>=5.2,<5.3"),
    ("3.13", "django>=6.0,<7"),
]


# pytest-xdist workers, as `make test` runs them.
WORKERS = ["-n", os.environ.get("TEST_WORKERS", "3")]


@nox.session(python=["3.11", "3.13"])
def tests(session: nox.Session) -> None:
    django = dict(MATRIX)[str(session.python)]
    session.install("-e", ".[test,mariadb]", django)
    session.run("python", "-m", "django", "--version")
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", *WORKERS, *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("-e", ".[test,lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "django_token_rotation", "tests", "benchmarks")
