"""Idle detection: Netty IdleStateHandler semantics on explicit times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse._core.idle import IdleDetector
from pulse.actions import Idle, IdleKind
from pulse.events import DataReceived, DataSent, OutputProgress, Tick


def test_zero_disables_every_timer() -> None:
    """With all idle times 0 nothing is ever due."""
    detector = IdleDetector(0.0)
    assert detector.next_deadline() is None
    assert detector.handle_timer(1e9) == []


def test_reader_idle_first_event_then_repeats() -> None:
    """Reader idle fires first at open+period, then repeats every period while idle."""
    detector = IdleDetector(10.0, reader_idle=5.0)
    assert detector.next_deadline() == 15.0
    assert detector.handle_timer(14.9) == []
    assert detector.handle_timer(15.0) == [Idle(IdleKind.READER, first=True)]
    assert detector.next_deadline() == 20.0
    assert detector.handle_timer(20.0) == [Idle(IdleKind.READER, first=False)]
    assert detector.handle_timer(25.0) == [Idle(IdleKind.READER, first=False)]


def test_activity_ends_the_stretch_so_next_event_is_first_again() -> None:
    """A read after an idle event makes the next event a 'first' one, one period later."""
    detector = IdleDetector(0.0, reader_idle=5.0)
    assert detector.handle_timer(5.0) == [Idle(IdleKind.READER, first=True)]
    detector.read(7.0)
    assert detector.next_deadline() == 12.0
    assert detector.handle_timer(10.0) == []
    assert detector.handle_timer(12.0) == [Idle(IdleKind.READER, first=True)]


def test_reads_are_lazy_and_only_move_the_deadline() -> None:
    """Many reads cost no timer work: the deadline is computed from the last one."""
    detector = IdleDetector(0.0, reader_idle=5.0)
    for t in range(1, 1000):
        detector.read(t * 0.001)
    assert detector.next_deadline() == pytest.approx(5.999)


def test_writer_and_all_idle_are_independent() -> None:
    """Writer idle follows writes, all-idle needs neither reads nor writes."""
    detector = IdleDetector(0.0, writer_idle=3.0, all_idle=4.0)
    detector.read(2.0)
    assert detector.handle_timer(3.0) == [Idle(IdleKind.WRITER, first=True)]
    assert detector.handle_timer(4.0) == []  # the read at 2.0 keeps ALL busy until 6.0
    assert detector.handle_timer(6.0) == [Idle(IdleKind.WRITER, first=False), Idle(IdleKind.ALL, first=True)]


def test_observe_output_keeps_a_slow_writer_from_being_idle() -> None:
    """With observe_output, write progress counts as writer activity; without, it does not."""
    observing = IdleDetector(0.0, writer_idle=3.0, observe_output=True)
    blind = IdleDetector(0.0, writer_idle=3.0, observe_output=False)
    for d in (observing, blind):
        d.output_progress(2.5)
    assert observing.handle_timer(3.0) == []
    assert blind.handle_timer(3.0) == [Idle(IdleKind.WRITER, first=True)]


def test_handle_dispatches_event_objects() -> None:
    """handle() accepts event objects and runs the same code as the methods."""
    detector = IdleDetector(0.0, reader_idle=2.0, writer_idle=2.0, observe_output=True)
    assert detector.handle(DataReceived(1.0)) == []
    assert detector.handle(DataSent(1.5)) == []
    assert detector.handle(OutputProgress(1.8)) == []
    assert detector.handle(Tick(3.0)) == [Idle(IdleKind.READER, first=True)]
    assert detector.handle(Tick(3.8)) == [Idle(IdleKind.WRITER, first=True)]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_periods_are_rejected(bad: float) -> None:
    """Negative, NaN or infinite idle times raise ValueError."""
    with pytest.raises(ValueError, match="reader_idle"):
        IdleDetector(0.0, reader_idle=bad)


@given(st.lists(st.floats(min_value=0.0, max_value=100.0), max_size=30))
def test_never_fires_before_deadline_and_always_at_it(reads: list[float]) -> None:
    """An event is due exactly when next_deadline() says, never earlier."""
    detector = IdleDetector(0.0, reader_idle=1.5)
    for t in sorted(reads):
        detector.read(t)
    deadline = detector.next_deadline()
    assert deadline is not None
    assert detector.handle_timer(deadline - 1e-9) == []
    assert detector.handle_timer(deadline) == [Idle(IdleKind.READER, first=True)]
