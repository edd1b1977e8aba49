"""Settings: a bad value is a clear error naming the setting; the project's addresses
come from the installed metadata or, in a checkout, from setup.cfg."""

from __future__ import annotations

from importlib import metadata
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_token_rotation import conf
from django_token_rotation.conf import Settings, app_settings

#: (setting, a value it refuses, what the error says).
BAD_VALUES = [
    ("LEEWAY", -1, "must be a number >= 0"),
    ("LEEWAY", True, "must be a number"),
    ("TIMEOUT", 0, "must be a number >= 0.001"),
    ("DEFAULT_LIFETIME", 0, "must be a number >= 1"),
    ("ID_TOKEN_LEEWAY", 601, "must be at most 600 seconds"),
    ("CACHE", None, "must be a cache alias"),
    ("PROVIDER_ERRORS", {"google": {"x": "no_such_meaning"}}, "must map provider ids"),
    ("PROVIDER_ERRORS", ["invalid_grant"], "must map provider ids"),
    ("REVOCATION_ENDPOINTS", {"google": 42}, "must map provider ids to URLs"),
    ("PROVIDERS", "google", "must be a list of provider ids"),
    ("PROVIDERS", ["google", 1], "must be a list of provider ids"),
    ("CONTEXT_NAME", "token session", "must be an identifier"),
    ("EXEMPT_PATHS", r"^/health/", "must be a list of patterns"),
]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [pytest.param(*case, id=f"{case[0]}={case[1]!r}") for case in BAD_VALUES],
)
def test_a_bad_value_is_an_error_naming_the_setting(
    settings: Any, name: str, value: Any, message: str
) -> None:
    if not hasattr(Settings, name):
        pytest.skip(f"TOKEN_ROTATION_{name} is no longer a setting: drop its cases")
    setattr(settings, f"TOKEN_ROTATION_{name}", value)
    with pytest.raises(ImproperlyConfigured, match=message) as excinfo:
        getattr(app_settings, name)
    assert str(excinfo.value).startswith(f"TOKEN_ROTATION_{name} ")


def test_good_values_are_read_as_their_type(settings: Any) -> None:
    assert app_settings.PROVIDERS is None
    settings.TOKEN_ROTATION_PROVIDERS = ["google", "fake"]
    assert sorted(app_settings.PROVIDERS or ()) == ["fake", "google"]
    assert app_settings.DEFAULT_LIFETIME is None
    settings.TOKEN_ROTATION_DEFAULT_LIFETIME = 900
    assert app_settings.DEFAULT_LIFETIME == 900
    settings.TOKEN_ROTATION_ID_TOKEN_LEEWAY = 600
    assert app_settings.ID_TOKEN_LEEWAY == 600


def test_the_timeout_defaults_to_allauths(settings: Any) -> None:
    settings.SOCIALACCOUNT_REQUESTS_TIMEOUT = 7
    assert app_settings.TIMEOUT == 7
    settings.TOKEN_ROTATION_TIMEOUT = 2.5
    assert app_settings.TIMEOUT == 2.5


def test_a_changed_exempt_paths_setting_is_read_again(settings: Any) -> None:
    settings.TOKEN_ROTATION_EXEMPT_PATHS = [r"^/health/"]
    assert [p.pattern for p in app_settings.EXEMPT_PATHS] == [r"^/health/"]
    settings.TOKEN_ROTATION_EXEMPT_PATHS = []
    assert app_settings.EXEMPT_PATHS == ()


# -- the project's addresses --------------------------------------------------------


@pytest.fixture
def uncached_urls() -> Any:
    conf.project_urls.cache_clear()
    yield
    conf.project_urls.cache_clear()


def test_a_checkout_that_is_not_installed_reads_setup_cfg(
    uncached_urls: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = conf.project_urls()
    assert installed["Documentation"].startswith("https://")

    def not_installed(name: str) -> Any:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "metadata", not_installed)
    conf.project_urls.cache_clear()
    assert conf.project_urls() == installed


def test_without_a_documentation_address_hints_name_the_pages_of_docs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(conf, "project_urls", dict)
    assert conf.docs_url() == "docs/index.rst"
    assert conf.docs_url("settings", "token-rotation-leeway") == (
        "docs/settings.rst#token-rotation-leeway"
    )


def test_hints_link_into_the_hosted_manual() -> None:
    base = conf.project_urls()["Documentation"].rstrip("/")
    assert conf.docs_url() == f"{base}/en/stable/"
    assert conf.docs_url("errors", "codes") == f"{base}/en/stable/errors.html#codes"


def test_a_setting_documented_without_its_type_and_default_stops_the_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a maintainer who adds a setting sees from ``make settings-doc``.
    undocumented = property(lambda self: 1, doc="Seconds of something.")
    monkeypatch.setattr(Settings, "LEEWAY", undocumented)
    with pytest.raises(ValueError, match="Settings.LEEWAY: its docstring needs a :type:"):
        conf.settings_reference()


def test_settings_kept_as_read_follow_every_change(settings: Any) -> None:
    """Settings are kept once read (conf.Settings._setting) until a setting changes,
    including another one their default comes from."""
    settings.TOKEN_ROTATION_TIMEOUT = 5
    assert (app_settings.TIMEOUT, app_settings.LEASE) == (5, 30)
    settings.TOKEN_ROTATION_TIMEOUT = 20
    assert (app_settings.TIMEOUT, app_settings.LEASE) == (20, 60)
    del settings.TOKEN_ROTATION_TIMEOUT  # pytest-django sends no setting_changed for this
    assert (app_settings.TIMEOUT, app_settings.LEASE) == (5, 30)
    settings.SOCIALACCOUNT_REQUESTS_TIMEOUT = 12
    assert (app_settings.TIMEOUT, app_settings.LEASE) == (12, 36)
    settings.TOKEN_ROTATION_LEEWAY = 10
    assert app_settings.LEEWAY == 10
    settings.TOKEN_ROTATION_LEEWAY = -1
    with pytest.raises(ImproperlyConfigured):
        _ = app_settings.LEEWAY
