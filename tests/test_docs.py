"""The manual lists what the code defines: error codes and settings, from one place each."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from django_token_rotation import exceptions
from django_token_rotation.conf import DEPRECATED, Settings, settings_reference

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "django_token_rotation"
DOCS = ROOT / "docs"


def documented_codes() -> set[str]:
    """The first column of the code tables in docs/errors.rst."""
    text = (DOCS / "errors.rst").read_text()
    return set(re.findall(r"^   \* - ``([a-z_]+)``$", text, re.M))


def test_errors_page_lists_exactly_the_codes_of_the_table() -> None:
    assert documented_codes() == set(exceptions.ERROR_CODES)


def test_errors_page_puts_each_code_in_its_family() -> None:
    text = (DOCS / "errors.rst").read_text()
    permanent, transient = text.split("``TokenRefreshUnavailable``: try again later", 1)
    for code, (is_permanent, _) in exceptions.ERROR_CODES.items():
        assert f"* - ``{code}``" in (permanent if is_permanent else transient), code


def raised_codes() -> set[str]:
    """Every ``code="..."`` an exception of ours is built with, anywhere in the package,
    and every ``default_code``."""
    codes: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if not (name.endswith(("Required", "Unavailable", "Refreshable", "Rejected"))):
                    continue
                for keyword in node.keywords:
                    if keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                        codes.add(str(keyword.value.value))
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "default_code" for t in node.targets
            ):
                assert isinstance(node.value, ast.Constant)
                codes.add(str(node.value.value))
    codes.discard("error")  # the abstract base class's
    return codes


def test_every_code_the_package_raises_is_in_the_table() -> None:
    from django_token_rotation import client

    raised = raised_codes() | client.PERMANENT_ERRORS | (client.TRANSIENT_ERRORS - {"slow_down"})
    assert raised - set(exceptions.ERROR_CODES) == set()
    assert "lost_rotation" in raised  # the scan sees codes raised outside exceptions.py


def test_the_exceptions_agree_with_the_table() -> None:
    assert exceptions.ERROR_CODES[exceptions.ReauthenticationRequired.default_code][0] is True
    assert exceptions.ERROR_CODES[exceptions.TokenRefreshUnavailable.default_code][0] is False
    for code in exceptions.ERROR_CODES:
        assert re.fullmatch(r"[a-z_]+", code)


def test_no_docstring_keeps_its_own_list_of_codes() -> None:
    """The stale lists of the first release: codes are listed in ERROR_CODES only."""
    for cls in (exceptions.ReauthenticationRequired, exceptions.TokenRefreshUnavailable):
        assert "Codes:" not in (cls.__doc__ or "")


def setting_names() -> set[str]:
    return {name for name in vars(Settings) if name.isupper()}


def test_settings_page_has_one_heading_per_setting() -> None:
    """Each setting: a ``TOKEN_ROTATION_X`` heading, then its ``:type:`` and ``:default:``;
    each deprecated one in the last section, with what replaces it."""
    text = (DOCS / "settings.rst").read_text()
    entries = re.findall(
        r"^``TOKEN_ROTATION_(\w+)``\n-+\n\n:type: (.+)\n:default: (.+)\n", text, re.M
    )
    documented = [name for name, _, _ in entries]
    assert len(documented) == len(set(documented)), "a setting is documented twice"
    assert sorted(documented) == sorted(setting_names() - set(DEPRECATED))
    headings = re.findall(r"^``TOKEN_ROTATION_\w+[^\n]*\n-+$", text, re.M)
    assert len(headings) == len(documented), headings
    deprecated = text.split("Deprecated settings\n")[1]
    assert re.findall(r"^``TOKEN_ROTATION_(\w+)``$", deprecated, re.M) == list(DEPRECATED)


def test_settings_page_is_rendered_from_the_docstrings() -> None:
    """A setting is described once, in its docstring in conf.py: docs/settings.rst is
    what ``make settings-doc`` renders from them. If this fails, run ``make settings-doc``."""
    assert (DOCS / "settings.rst").read_text() == settings_reference()


def test_every_setting_says_its_type_and_default() -> None:
    for name in setting_names():
        doc = getattr(Settings, name).__doc__ or ""
        assert ":type: " in doc and ":default: " in doc, name


def test_a_deprecated_setting_still_set_is_reported_with_its_replacement(settings: Any) -> None:
    from django.core import checks as django_checks

    from django_token_rotation import checks

    assert checks.check_deprecated_settings() == []
    settings.TOKEN_ROTATION_LEASE = 60
    settings.TOKEN_ROTATION_ERROR_RECHECK = 15
    messages = checks.check_deprecated_settings()
    assert [m.id for m in messages] == ["token_rotation.W101"] * 2
    lease = messages[0]
    assert isinstance(lease, django_checks.Warning)
    assert lease.msg.startswith("TOKEN_ROTATION_LEASE is deprecated")
    assert "derived from TOKEN_ROTATION_TIMEOUT" in lease.msg
    assert lease.hint is not None and "settings.html#deprecated-settings" in lease.hint
    # Still honoured until 2.0.
    from django_token_rotation.conf import app_settings

    assert app_settings.LEASE == 60
    del settings.TOKEN_ROTATION_LEASE
    assert app_settings.LEASE == 30
    settings.TOKEN_ROTATION_TIMEOUT = 20
    assert app_settings.LEASE == 60


def test_the_manual_has_every_page_of_the_toctree() -> None:
    index = (DOCS / "index.rst").read_text()
    pages = re.findall(r"^   ([a-z-]+)$", index, re.M)
    assert "settings" in pages and "errors" in pages
    for page in pages:
        assert (DOCS / f"{page}.rst").exists(), page


def test_the_system_checks_table_lists_every_check_id() -> None:
    source = (PACKAGE / "checks.py").read_text()
    defined = set(re.findall(r'id="(token_rotation\.[EW]\d{3})"', source))
    text = (DOCS / "installation.rst").read_text()
    documented = set(re.findall(r"^   \* - ``(token_rotation\.[EW]\d{3})``$", text, re.M))
    assert documented == defined


def test_the_manual_repeats_the_readmes_tested_setup_verbatim() -> None:
    """The README's marked blocks run in tests/test_first_contact.py; the manual's copies
    of them must be the same code."""
    from tests.test_first_contact import readme_blocks

    manual = (DOCS / "installation.rst").read_text() + (DOCS / "usage.rst").read_text()
    for name, code in readme_blocks().items():
        indented = "\n".join(("   " + line) if line else "" for line in code.rstrip().splitlines())
        assert indented in manual, f"docs differ from the README's {name} block"


# -- the project's addresses: set once in setup.cfg, used everywhere -------------


def setup_cfg_urls() -> dict[str, str]:
    import configparser

    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = parser.get("metadata", "project_urls").strip().splitlines()
    return dict(line.split(" = ", 1) for line in lines)


LINK = re.compile(r"https?://[^\s)>`\"']+")


def test_the_package_reads_its_addresses_from_setup_cfg() -> None:
    from django_token_rotation.conf import docs_url, project_urls

    urls = setup_cfg_urls()
    assert set(urls) == {"Source", "Documentation", "Changelog", "Issues"}
    assert project_urls() == urls
    assert docs_url("settings").startswith(urls["Documentation"])


def test_readme_and_docs_link_to_the_addresses_of_setup_cfg() -> None:
    """Links to the project (its repository, its manual) start with a Project-URL, so a
    move is one edit of setup.cfg and a failing test, not a dead link on the index."""
    urls = setup_cfg_urls()
    source, documentation = urls["Source"], urls["Documentation"]
    files = [
        ROOT / name for name in ("README.md", "SECURITY.md", "CONTRIBUTING.md", "CHANGELOG.md")
    ]
    files += sorted(DOCS.glob("*.rst"))
    for path in files:
        for link in LINK.findall(path.read_text()):
            if "django-token-rotation" in link.lower() and "pypi.org" not in link:
                assert link.startswith((source, documentation)), f"{path.name}: {link}"
    readme = (ROOT / "README.md").read_text()
    assert documentation in readme and source in readme
    assert f"{source}/security/advisories/new" in readme
    assert f"{source}/security/advisories/new" in (ROOT / "SECURITY.md").read_text()
    assert source in (DOCS / "index.rst").read_text()


def test_the_readme_has_no_relative_link() -> None:
    """The package index shows the README without the repository: relative links die."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)]+)\)", readme)
    assert targets
    relative = [t for t in targets if not t.startswith(("https://", "http://", "#"))]
    assert relative == []


def test_the_version_is_set_once_in_setup_cfg() -> None:
    import configparser

    import django_token_rotation

    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    version = parser.get("metadata", "version")
    assert django_token_rotation.__version__ == version
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), "a release version (semantic versioning)"
    # The changelog has an entry for it.
    assert f"## [{version}]" in (ROOT / "CHANGELOG.md").read_text()
