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


LINK = re.compile(r"https?://[^\s)>`\"'*]+")


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


def test_the_manuals_pictures_are_the_browser_tests_screenshots_at_1280_px() -> None:
    """docs/*.png come from ``make screenshots`` (tests/test_admin_browser.py and
    tests/test_demo_browser.py, headless Chromium at 1280 px); each is shown on a page."""
    import struct

    pictures = sorted(DOCS.glob("*.png"))
    assert {p.name for p in pictures} >= {
        "admin-token-list.png",
        "admin-token-page.png",
        "admin-refresh-history.png",
    }
    manual = "".join(page.read_text() for page in DOCS.glob("*.rst"))
    for picture in pictures:
        header = picture.read_bytes()[:24]
        assert header[:8] == b"\x89PNG\r\n\x1a\n", picture.name
        width, _ = struct.unpack(">II", header[16:24])
        assert width == 1280, f"{picture.name} is {width} px wide"
        assert f":: {picture.name}" in manual, f"{picture.name} is on no page"


def test_a_bad_setting_links_its_own_entry_of_the_settings_page(settings: Any) -> None:
    """Check E005's hint is the hosted entry of that setting: an anchor the build makes."""
    from django_token_rotation import checks

    settings.TOKEN_ROTATION_LEEWAY = "soon"
    (message,) = [m for m in checks.check_setup() if m.id == "token_rotation.E005"]
    assert message.hint is not None
    assert message.hint.endswith("/settings.html#token-rotation-leeway")
    # The heading that Sphinx turns into that id.
    assert "``TOKEN_ROTATION_LEEWAY``\n-----" in (DOCS / "settings.rst").read_text()


def test_every_link_into_the_hosted_manual_names_a_page_of_docs() -> None:
    """``.../en/stable/<page>.html`` for each ``docs/<page>.rst``: no link to a page that
    the build does not make."""
    base = setup_cfg_urls()["Documentation"].rstrip("/") + "/en/stable/"
    files = [
        ROOT / name for name in ("README.md", "SECURITY.md", "CONTRIBUTING.md", "CHANGELOG.md")
    ]
    for path in files:
        for link in LINK.findall(path.read_text()):
            if link.startswith(base) and link != base:
                page = link[len(base) :].split("#")[0].removesuffix(".html")
                assert (DOCS / f"{page}.rst").exists(), f"{path.name}: {link}"


def test_the_commands_contributors_are_told_to_run_exist() -> None:
    """Every ``make X`` of the README and CONTRIBUTING.md is a target of the Makefile, and
    every ``nox -s NAME`` a session of noxfile.py."""
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w.-]+):", makefile, re.M))
    noxfile = (ROOT / "noxfile.py").read_text()
    for name in ("README.md", "CONTRIBUTING.md"):
        text = (ROOT / name).read_text()
        for target in re.findall(r"\bmake ([a-z][\w-]*)", text):
            assert target in targets, f"{name}: make {target}"
        for session in re.findall(r"nox -s \"?([\w.-]+)", text):
            assert f"def {session.split('-')[0]}(" in noxfile, f"{name}: nox -s {session}"
