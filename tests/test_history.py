"""The refresh history: recorded, bounded per token, batched, and never fatal."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from allauth.socialaccount.models import SocialToken

from django_token_rotation import history
from django_token_rotation.models import RefreshEvent
from tests.helpers import MakeToken

Outcome = RefreshEvent.Outcome


def codes(token: SocialToken) -> list[str]:
    """The error codes of ``token``'s stored events, newest first."""
    return list(RefreshEvent.objects.filter(token_id=token.pk).values_list("error_code", flat=True))


@pytest.mark.django_db
def test_retention_keeps_the_newest_events_of_each_token(
    settings: Any, make_token: MakeToken
) -> None:
    settings.TOKEN_ROTATION_HISTORY_RETENTION = 3
    token, other = make_token(), make_token()
    history.record(other, Outcome.FAILED_TRANSIENT, error_code="other")
    for n in range(5):
        history.record(token, Outcome.FAILED_TRANSIENT, error_code=f"e{n}")
    assert codes(token) == ["e4", "e3", "e2"]
    assert codes(other) == ["other"]  # another token's history is not pruned


@pytest.mark.django_db
def test_a_long_error_code_is_cut_to_the_column(make_token: MakeToken) -> None:
    event = history.record(make_token(), Outcome.FAILED_TRANSIENT, error_code="x" * 100)
    assert event is not None
    assert RefreshEvent.objects.get(pk=event.pk).error_code == "x" * 64


@pytest.mark.django_db
def test_prune_says_how_many_events_went(make_token: MakeToken) -> None:
    token = make_token()
    for n in range(4):
        history.record(token, Outcome.REFRESHED, error_code=f"r{n}")
    assert history.prune(token.pk, keep=10) == 0
    assert history.prune(token.pk, keep=1) == 3
    assert codes(token) == ["r3"]


@pytest.mark.django_db
def test_buffered_events_are_written_when_the_block_ends(make_token: MakeToken) -> None:
    token = make_token()
    with history.buffered():
        with history.buffered():  # nested: only the outer block writes
            history.record(token, Outcome.FAILED_TRANSIENT, error_code="inner")
        assert codes(token) == []
        history.record(token, Outcome.FAILED_PERMANENT, error_code="outer")
        assert codes(token) == []
    assert sorted(codes(token)) == ["inner", "outer"]
    # After the block, events are written one by one again.
    history.record(token, Outcome.FAILED_TRANSIENT, error_code="after")
    assert "after" in codes(token)


@pytest.mark.django_db
def test_buffered_events_are_written_even_when_the_block_raises(make_token: MakeToken) -> None:
    token = make_token()
    with pytest.raises(RuntimeError), history.buffered():
        history.record(token, Outcome.FAILED_TRANSIENT, error_code="kept")
        raise RuntimeError("the run failed")
    assert codes(token) == ["kept"]


@pytest.mark.django_db
def test_a_full_buffer_is_written_at_once_and_pruned(
    settings: Any, make_token: MakeToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.TOKEN_ROTATION_HISTORY_RETENTION = 2
    monkeypatch.setattr(history, "BUFFER_SIZE", 3)
    token = make_token()
    with history.buffered():
        for n in range(3):
            history.record(token, Outcome.FAILED_TRANSIENT, error_code=f"b{n}")
        # The third event filled the buffer: written and pruned inside the block.
        assert codes(token) == ["b2", "b1"]


@pytest.mark.django_db(transaction=True)
def test_an_event_of_a_deleted_token_is_a_warning_not_an_error(
    make_token: MakeToken, caplog: pytest.LogCaptureFixture
) -> None:
    token = make_token()
    SocialToken.objects.filter(pk=token.pk).delete()
    caplog.set_level(logging.WARNING, logger="django_token_rotation")
    assert history.record(token, Outcome.FAILED_TRANSIENT, error_code="gone") is None
    assert not RefreshEvent.objects.exists()
    [warning] = caplog.records
    assert f"token {token.pk}" in warning.getMessage()


@pytest.mark.django_db(transaction=True)
def test_a_batch_with_a_deleted_token_is_a_warning_not_an_error(
    make_token: MakeToken, caplog: pytest.LogCaptureFixture
) -> None:
    token = make_token()
    SocialToken.objects.filter(pk=token.pk).delete()
    caplog.set_level(logging.WARNING, logger="django_token_rotation")
    with history.buffered():
        history.record(token, Outcome.FAILED_TRANSIENT, error_code="gone")
    assert not RefreshEvent.objects.exists()
    [warning] = caplog.records
    assert "Could not record 1 refresh event(s)" in warning.getMessage()
