"""Translations (issue #18, item 3): the prompt and the JSON error in each shipped
language, catalogues current with the source, compiled catalogues in the wheel."""

from __future__ import annotations

import gettext
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.test import RequestFactory
from django.utils import translation

from django_token_rotation.middleware import TokenRefreshMiddleware
from django_token_rotation.session import TokenSession
from tests.helpers import IN_CI, ROOT
from tests.test_templatetags import ERROR, render, request_with, summary

PACKAGE = ROOT / "django_token_rotation"
LOCALE = PACKAGE / "locale"
#: ``makemessages`` as the catalogues are made (``make messages``): no source
#: locations, so that moving code does not change them.
MAKEMESSAGES = ["makemessages", "--no-location", "--no-obsolete"]

LANGUAGES = {
    "de": (
        "Ihre Anmeldung bei Google ist abgelaufen. Bitte melden Sie sich erneut an, "
        "um fortzufahren.",
        "Erneut mit Google anmelden",
    ),
    "fr": (
        "Votre connexion avec Google a expiré. Veuillez vous reconnecter pour continuer.",
        "Se reconnecter avec Google",
    ),
    "es": (
        "Su sesión con Google ha caducado. Vuelva a iniciar sesión para continuar.",
        "Volver a iniciar sesión con Google",
    ),
    "pt-br": (
        "Seu login com Google expirou. Entre novamente para continuar.",
        "Entrar novamente com Google",
    ),
    "ja": (
        "Google でのログインの有効期限が切れました。続行するには再度ログインしてください。",
        "Google で再度ログイン",
    ),
}
REFUSED = TokenSession(
    error="RefreshAccessTokenError", provider="google", code="invalid_grant", provider_name="Google"
)


def json_error(request: Any) -> Any:
    return TokenRefreshMiddleware(lambda request: None).json_response(request, REFUSED)


ENGLISH = "Your sign-in with Google has expired. Please sign in again to continue."


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_the_prompt_in_each_language(language: str) -> None:
    message, button = LANGUAGES[language]
    with translation.override(language):
        html = render("{% reauth_prompt %}", request_with(summary(ERROR)))
        redirect = render("{% reauth_redirect %}", request_with(summary(ERROR)))
    assert message in html and button in html
    assert "Your sign-in" not in html and "Sign in again" not in html
    assert button in redirect and "Sign in again" not in redirect


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_the_json_error_in_each_language(language: str) -> None:
    request = RequestFactory().get("/api/", HTTP_ACCEPT="application/json")
    with translation.override(language):
        response = json_error(request)
    assert response is not None and response.status_code == 401
    body = json.loads(response.content)
    assert body["message"] == LANGUAGES[language][0]
    assert body["error"] == "RefreshAccessTokenError"


def test_english_is_the_source() -> None:
    request = RequestFactory().get("/api/", HTTP_ACCEPT="application/json")
    with translation.override("en"):
        response = json_error(request)
        html = render("{% reauth_prompt %}", request_with(summary(ERROR)))
    assert response is not None
    assert json.loads(response.content)["message"] == ENGLISH
    assert ENGLISH in html


PROMPT_MESSAGES = [
    "Your sign-in with %(provider)s has expired. Please sign in again to continue.",
    "Your sign-in with %(provider)s has expired.",
    "Sign in again with %(provider)s",
]


def test_every_catalogue_translates_what_the_user_sees() -> None:
    """The prompt and the JSON message in every shipped language. (Other strings
    may wait for a translator: an untranslated one falls back to English.)"""
    for language in LANGUAGES:
        folder = translation.to_locale(language)
        with (LOCALE / folder / "LC_MESSAGES" / "django.mo").open("rb") as mo:
            catalog = gettext.GNUTranslations(mo)
        for message in PROMPT_MESSAGES:
            assert catalog.gettext(message) != message, (folder, message)


def _gettext_tools() -> None:
    if shutil.which("xgettext") is None or shutil.which("msgfmt") is None:
        if IN_CI:
            pytest.fail("GNU gettext is not installed, and CI=true (apt-get install gettext)")
        pytest.skip("GNU gettext (xgettext, msgfmt) is not installed")


def _without_creation_date(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if "POT-Creation-Date" not in line)


def test_makemessages_produces_no_diff(tmp_path: Path) -> None:
    """The catalogues hold exactly the strings the source marks (``make messages``
    updates them)."""
    _gettext_tools()
    copy = tmp_path / "django_token_rotation"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "tests.settings"}
    languages = [f"--locale={folder.name}" for folder in sorted(LOCALE.iterdir())]
    subprocess.run(
        # -P: the package's own http.py must not shadow the standard library's.
        [sys.executable, "-P", "-m", "django", *MAKEMESSAGES, *languages],
        cwd=copy,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    for po in sorted(LOCALE.glob("*/LC_MESSAGES/django.po")):
        made = copy / po.relative_to(PACKAGE)
        assert _without_creation_date(made.read_text()) == _without_creation_date(po.read_text()), (
            f"{po.relative_to(ROOT)} is out of date: run `make messages`"
        )


def test_the_compiled_catalogues_are_current(tmp_path: Path) -> None:
    _gettext_tools()
    for po in sorted(LOCALE.glob("*/LC_MESSAGES/django.po")):
        compiled = tmp_path / f"{po.parent.parent.name}.mo"
        subprocess.run(["msgfmt", "--check-format", "-o", compiled, po], check=True)
        with compiled.open("rb") as fresh, po.with_suffix(".mo").open("rb") as shipped:
            assert gettext.GNUTranslations(fresh)._catalog == (  # type: ignore[attr-defined]
                gettext.GNUTranslations(shipped)._catalog  # type: ignore[attr-defined]
            ), f"{po.with_suffix('.mo').relative_to(ROOT)} is stale: run `make messages`"


def test_the_wheel_carries_the_compiled_catalogues(tmp_path: Path) -> None:
    """Built as pip builds it (isolated: setuptools and wheel from the registry)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for language in LANGUAGES:
        folder = translation.to_locale(language)
        assert f"django_token_rotation/locale/{folder}/LC_MESSAGES/django.mo" in names
