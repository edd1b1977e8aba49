"""The API reference (docs/api.rst) covers the public API, and the examples of
the docstrings I can run, run."""

from __future__ import annotations

import doctest
import inspect
import re
from pathlib import Path

import pytest

import django_token_rotation
from django_token_rotation import http, signals

API_PAGE = Path(__file__).resolve().parent.parent / "docs" / "api.rst"


def documented() -> set[str]:
    text = API_PAGE.read_text()
    names = re.findall(r"^\.\. auto\w+:: ([\w.]+)", text, flags=re.MULTILINE)
    return {name.rsplit(".", 1)[-1] for name in names}


@pytest.mark.parametrize("module", [django_token_rotation, http, signals], ids=lambda m: m.__name__)
def test_every_public_name_is_in_the_api_reference(module: object) -> None:
    public = getattr(module, "__all__", None) or [
        name for name in vars(module) if not name.startswith("_") and name.startswith("token_")
    ]
    assert set(public) - documented() == set()


FUNCTIONS = [
    django_token_rotation.get_access_token,
    django_token_rotation.aget_access_token,
    django_token_rotation.refresh,
    django_token_rotation.arefresh,
    http.TokenAuth,
    http.HttpxTokenAuth,
    http.google_credentials,
    http.should_refresh,
    django_token_rotation.TokenRotationError,
    django_token_rotation.ReauthenticationRequired,
    django_token_rotation.ProviderNotRefreshable,
    django_token_rotation.TokenRefreshUnavailable,
]


@pytest.mark.parametrize("obj", FUNCTIONS, ids=lambda f: f.__qualname__)
def test_each_function_and_client_has_an_example(obj: object) -> None:
    doc = inspect.getdoc(obj) or ""
    assert "Example::" in doc or ">>>" in doc


def test_the_signals_document_their_metric_arguments() -> None:
    doc = signals.__doc__ or ""
    for argument in ("provider", "outcome", "code", "duration"):
        assert f"``{argument}``" in doc


def test_the_doctests_of_the_http_module_pass() -> None:
    result = doctest.testmod(http)
    assert result.attempted >= 3 and result.failed == 0
