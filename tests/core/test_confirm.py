"""ConfirmWindow: which written messages a pong confirms, and when to ask for a confirmation
(plain floats, no I/O)."""

from __future__ import annotations

import pytest

from pulse._core.confirm import ConfirmWindow, RequestConfirmation


def window(limit: int = 8, keep_all: bool = False) -> ConfirmWindow[str]:
    return ConfirmWindow(limit, spacing=0.05, retry_after=1.0, keep_all=keep_all)


def test_a_pong_confirms_only_what_was_written_before_its_ping() -> None:
    """Messages written after the ping stay unconfirmed when its pong arrives."""
    w = window()
    assert w.written("a", 0.0) == [RequestConfirmation()]
    w.ping_written(1, 0.0, confirmation=True)
    w.written("b", 0.01)
    w.pong(1, 0.02)
    assert w.unconfirmed() == ["b"]


def test_a_heartbeat_pong_confirms_too() -> None:
    """Any ping written after a message confirms it, not only confirmation pings."""
    w = window()
    w.written("a", 0.0)
    w.ping_written(7, 0.5)
    w.pong(7, 0.6)
    assert len(w) == 0 and w.next_deadline() is None


def test_confirmations_are_spaced_and_one_at_a_time() -> None:
    """A second confirmation waits for the spacing and for the first one's pong (or for
    retry_after when it is never answered)."""
    w = window()
    assert w.written("a", 0.0) == [RequestConfirmation()]
    w.ping_written(1, 0.0, confirmation=True)
    assert w.written("b", 0.01) == []
    assert w.next_deadline() == 1.0  # the first is unanswered: retry_after
    assert w.pong(1, 0.02) == []  # answered early: the spacing still holds
    assert w.next_deadline() == pytest.approx(0.05)
    assert w.handle_timer(0.04) == []
    assert w.handle_timer(0.05) == [RequestConfirmation()]


def test_an_unwritten_confirmation_does_not_spin() -> None:
    """A requested confirmation the driver could not write is retried after retry_after,
    never at the same instant again."""
    w = window()
    assert w.written("a", 0.0) == [RequestConfirmation()]
    assert w.handle_timer(0.0) == []
    assert w.next_deadline() == 1.0
    assert w.handle_timer(1.0) == [RequestConfirmation()]


def test_at_most_once_forgets_the_oldest_beyond_the_limit() -> None:
    """Without keep_all the window never holds more than ``limit`` messages."""
    w = window(limit=2)
    for message in "abc":
        w.written(message, 0.0)
    assert w.unconfirmed() == ["b", "c"] and w.full


def test_at_least_once_keeps_everything_and_reports_full() -> None:
    """With keep_all nothing is forgotten; the writer is told to wait instead."""
    w = window(limit=2, keep_all=True)
    for message in "abc":
        w.written(message, 0.0)
    assert w.unconfirmed() == ["a", "b", "c"] and w.full


def test_take_empties_the_window() -> None:
    """take() hands over the unconfirmed messages in order and leaves nothing due."""
    w = window()
    w.written("a", 0.0)
    w.written("b", 0.0)
    assert w.take() == ["a", "b"]
    assert len(w) == 0 and w.next_deadline() is None


@pytest.mark.parametrize("limit, spacing, retry", [(0, 0.05, 1.0), (1, 0.0, 1.0), (1, 0.05, 0.0)])
def test_bad_parameters_are_refused(limit: int, spacing: float, retry: float) -> None:
    """A window of no messages, or a zero spacing or retry, is a ValueError."""
    with pytest.raises(ValueError):
        ConfirmWindow(limit, spacing=spacing, retry_after=retry, keep_all=False)
