"""``make providers-doc``: ``providers.docs.main`` rewrites the generated tables of
docs/providers.rst, and with ``--check`` says when they are stale (the page's
currency itself is checked in tests/test_provider_conformance.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from django_token_rotation.providers import docs
from tests.helpers import ROOT
from tests.test_provider_conformance import of_the_surveyed_allauth

PAGE = ROOT / "docs" / "providers.rst"


@pytest.fixture
def stale_page(tmp_path: Path) -> Path:
    """A copy of the providers page whose first generated table lost its rows."""
    text = PAGE.read_text()
    start, end = docs.PROVIDER_TABLE
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    page = tmp_path / "providers.rst"
    page.write_text(f"{head}{start}\n\nout of date\n\n{end}{tail}")
    return page


def test_check_fails_on_a_stale_page_and_changes_nothing(
    stale_page: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = stale_page.read_text()
    assert docs.main([str(stale_page), "--check"]) == 1
    assert stale_page.read_text() == before
    assert "is not current: run make providers-doc" in capsys.readouterr().err


@of_the_surveyed_allauth  # the page is generated from the allauth it was surveyed on
def test_main_rewrites_a_stale_page_to_the_current_one(
    stale_page: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert docs.main([str(stale_page)]) == 0
    assert "generated tables rewritten" in capsys.readouterr().out
    assert stale_page.read_text() == PAGE.read_text()
    assert docs.main([str(stale_page), "--check"]) == 0


def test_a_page_without_the_markers_is_an_error(tmp_path: Path) -> None:
    page = tmp_path / "providers.rst"
    page.write_text("Providers\n=========\n\nNo generated parts here.\n")
    with pytest.raises(ValueError, match="provider-table-start"):
        docs.main([str(page)])
    assert "No generated parts" in page.read_text()
