"""BoundedDeque: a FIFO whose limit is given at construction and refused past, never dropped."""

from __future__ import annotations

import pytest

from pulse._core.bounded import BoundedDeque
from pulse.errors import PulseError, QueueFull


def test_append_past_the_limit_raises_queue_full_and_keeps_the_items() -> None:
    """The limit+1-th append raises QueueFull (a PulseError) and the queue is unchanged."""
    queue: BoundedDeque[int] = BoundedDeque(3, "test queue")
    for item in range(3):
        queue.append(item)
    with pytest.raises(QueueFull, match="test queue holds its maximum of 3") as info:
        queue.append(3)
    assert isinstance(info.value, PulseError)
    assert list(queue) == [0, 1, 2]
    assert queue.popleft() == 0
    queue.append(3)  # room again after a pop
    assert list(queue) == [1, 2, 3]


def test_every_way_of_growing_is_bounded() -> None:
    """appendleft, extend, extendleft, insert and += all refuse to pass the limit."""
    queue: BoundedDeque[int] = BoundedDeque(2)
    queue.extend([1])
    with pytest.raises(QueueFull):
        queue.extend([2, 3])  # all or nothing
    assert list(queue) == [1]
    queue.appendleft(0)
    for grow in (lambda: queue.appendleft(9), lambda: queue.extendleft([9]),
                 lambda: queue.insert(1, 9), lambda: queue.__iadd__([9]),
                 lambda: queue.append(9)):
        with pytest.raises(QueueFull):
            grow()
    assert list(queue) == [0, 1]


def test_limit_must_be_positive() -> None:
    """A queue that could hold nothing is a configuration error."""
    with pytest.raises(ValueError, match="at least 1"):
        BoundedDeque(0)
