"""The generated parts of ``docs/providers.rst``, from the registry and allauth.

``make providers-doc`` rewrites them (:func:`main`, run once Django is set up:
allauth's provider classes need the app registry);
``tests/test_provider_conformance.py`` only checks that the page is current.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path
from typing import Any

from . import refusal_reason
from .registry import ENTRIES, MEANINGS

#: Each generated part: (start marker, end marker).
PROVIDER_TABLE = (".. provider-table-start", ".. provider-table-end")
ERROR_TABLE = (".. error-shapes-start", ".. error-shapes-end")

#: allauth provider packages that cannot be imported here, none of them OAuth
#: 2.0: SAML 2.0 (python3-saml needs libxmlsec1).
OPTIONAL_PACKAGES = {"saml"}


def provider_classes() -> list[type[Any]]:
    """Every provider class of the installed allauth, by id."""
    import allauth.socialaccount.providers as allauth_providers
    from allauth.socialaccount.providers.base import Provider
    from django.core.exceptions import ImproperlyConfigured

    found: dict[str, type[Any]] = {}
    for module in pkgutil.iter_modules(allauth_providers.__path__):
        if not module.ispkg:
            continue
        name = f"{allauth_providers.__name__}.{module.name}.provider"
        try:
            provider_module = importlib.import_module(name)
        except ImportError as exc:
            if exc.name == name:
                continue  # a helper package (base, oauth, oauth2)
            if module.name in OPTIONAL_PACKAGES:
                continue
            raise
        except ImproperlyConfigured:
            if module.name in OPTIONAL_PACKAGES:
                continue
            raise
        for cls in getattr(provider_module, "provider_classes", []):
            found[cls.id] = cls
        # Some register themselves instead (providers.registry.register(...)):
        # Clever, Dropbox, Figma, Salesforce.
        for obj in vars(provider_module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, Provider)
                and obj.__module__ == name
                and "id" in vars(obj)
            ):
                found.setdefault(vars(obj)["id"], obj)
    return [found[key] for key in sorted(found)]


def _opt_in(offline: tuple[str, str] | None) -> str:
    if offline is None:
        return "-"
    kind, wanted = offline
    return f"``{wanted}`` in the scope" if kind == "scope" else f"AUTH_PARAMS ``{wanted}``"


def provider_table(classes: list[type[Any]]) -> str:
    """The classification table: one row per allauth provider class."""
    from .registry import entry

    rows = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 16 12 10 26 22 14",
        "",
        "   * - Provider",
        "     - Refreshed",
        "     - Rotation",
        "     - Quirks handled",
        "     - Settings needed",
        "     - Refresh tokens need",
    ]
    refreshable = 0
    for cls in classes:
        known = entry(cls.id)
        reason = refusal_reason(cls)
        refreshable += reason is None
        rows += [
            f"   * - ``{cls.id}`` ({cls.name})",
            f"     - {'yes' if reason is None else f'no: ``{reason}``'}",
            f"     - {known.rotation or '-'}",
            f"     - {known.handled or '-'}",
            f"     - {known.settings or '-'}",
            f"     - {_opt_in(known.offline)}",
        ]
    return "\n".join(
        [
            f"{len(classes)} provider classes, {refreshable} refreshed, "
            f"{len(classes) - refreshable} left alone with a reason.",
            "",
            *rows,
        ]
    )


def error_table() -> str:
    """The providers' own error shapes: one row per provider."""
    rows = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 14 30 56",
        "",
        "   * - Provider",
        "     - Their error answers",
        "     - Shape: meaning",
    ]
    for provider_id, known in ENTRIES.items():
        if not known.errors:
            continue
        for shape, meaning in known.errors.items():
            assert meaning in MEANINGS, (provider_id, shape)
        shapes = "; ".join(f"``{shape}``: ``{meaning}``" for shape, meaning in known.errors.items())
        rows += [
            f"   * - ``{provider_id}``",
            f"     - {known.errors_note or '-'}",
            f"     - {shapes}",
        ]
    return "\n".join(rows)


def render(page: str, classes: list[type[Any]]) -> str:
    """``page`` with its generated parts replaced by what the code says now."""
    for (start, end), part in (
        (PROVIDER_TABLE, provider_table(classes)),
        (ERROR_TABLE, error_table()),
    ):
        head, _, rest = page.partition(start)
        _, found, tail = rest.partition(end)
        if not found:
            raise ValueError(f"{start} ... {end} not found in the page")
        page = f"{head}{start}\n\n{part}\n\n{end}{tail}"
    return page


def main(argv: list[str]) -> int:
    """``main([PAGE])`` rewrites PAGE's generated parts; ``main([PAGE, "--check"])``
    returns 1 when they are not current."""
    page = Path(argv[0])
    text = page.read_text()
    current = render(text, provider_classes())
    if current == text:
        return 0
    if "--check" in argv[1:]:
        print(f"{page} is not current: run make providers-doc", file=sys.stderr)
        return 1
    page.write_text(current)
    print(f"{page}: generated tables rewritten")
    return 0
