"""The WebSocket plugin's bounded outgoing queue and its overflow policies."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pulse.errors import ConnectionClosed, QueueFull
from pulse.plugins.websocket.outbox import Dropped, Outbox, Overflow


def make(maxsize: int, overflow: Overflow) -> tuple[Outbox, list[Dropped]]:
    drops: list[Dropped] = []
    return Outbox(maxsize, overflow, drops.append, peer="p"), drops


def drain(outbox: Outbox) -> list[str | bytes]:
    """Send everything (as a writer would) and return it in order."""
    out = []
    while (entry := outbox.begin()) is not None:
        out.append(entry.message)
        outbox.sent(entry)
    return out


async def test_fifo_and_a_message_leaves_only_once_sent() -> None:
    """Messages come out in order; begin() alone does not remove the head."""
    outbox, drops = make(10, Overflow.WAIT)
    for m in ("a", b"b", "c"):
        await outbox.put(m)
    head = outbox.begin()
    assert head is not None and head.message == "a"
    assert len(outbox) == 3
    outbox.release()
    assert drain(outbox) == ["a", b"b", "c"]
    assert drops == []


async def test_drop_oldest_never_drops_the_message_being_written() -> None:
    """The pinned head survives; the next oldest goes, and the report says so."""
    outbox, drops = make(3, Overflow.DROP_OLDEST)
    for m in ("a", "b", "c"):
        outbox.put_nowait(m)
    writing = outbox.begin()  # "a" is being written
    assert writing is not None
    outbox.put_nowait("d")
    assert [d.message for d in drops] == ["b"]
    assert drops[0].peer == "p" and not drops[0].possibly_delivered
    outbox.sent(writing)
    assert drain(outbox) == ["c", "d"]


async def test_drop_oldest_with_only_the_pinned_message_drops_the_new_one() -> None:
    """With room for one message, being written, the newcomer is the one dropped."""
    outbox, drops = make(1, Overflow.DROP_OLDEST)
    outbox.put_nowait("a")
    writing = outbox.begin()
    assert writing is not None
    outbox.put_nowait("b")
    assert [d.message for d in drops] == ["b"]
    outbox.sent(writing)
    assert drain(outbox) == []


async def test_raise_policy_raises_and_keeps_the_queue() -> None:
    """A full queue under raise refuses the message with QueueFull."""
    outbox, drops = make(2, Overflow.RAISE)
    outbox.put_nowait("a")
    await outbox.put("b")
    with pytest.raises(QueueFull):
        await outbox.put("c")
    assert drain(outbox) == ["a", "b"]
    assert drops == []


async def test_wait_policy_blocks_until_a_message_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """put() waits for room and proceeds as soon as the writer sends the head."""
    outbox, _ = make(1, Overflow.WAIT)
    await outbox.put("a")
    with pytest.raises(QueueFull):
        outbox.put_nowait("b")
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def producer() -> None:
            await outbox.put("b")
            done.set()

        nursery.start_soon(producer)
        await trio.sleep(5)
        assert not done.is_set()
        entry = outbox.begin()
        assert entry is not None
        outbox.sent(entry)
        await done.wait()
    assert drain(outbox) == ["b"]


async def test_close_reports_every_queued_message_and_refuses_new_ones() -> None:
    """Closing reports all queued messages once; later puts raise the closing error."""
    outbox, drops = make(5, Overflow.WAIT)
    for m in ("a", "b"):
        outbox.put_nowait(m)
    error = ConnectionClosed("bye")
    reported = outbox.close(error, "not sent: closed")
    assert [d.message for d in drops] == ["a", "b"] == [d.message for d in reported]
    assert all(d.reason == "not sent: closed" for d in drops)
    with pytest.raises(ConnectionClosed):
        await outbox.put("c")
    assert outbox.close(error, "again") == []


async def test_waiting_producer_is_released_by_close() -> None:
    """A producer blocked on a full queue gets the closing error."""
    outbox, _ = make(1, Overflow.WAIT)
    outbox.put_nowait("a")
    errors: list[Exception] = []

    async def producer() -> None:
        try:
            await outbox.put("b")
        except ConnectionClosed as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        outbox.close(ConnectionClosed("gone"), "closed")
    assert [str(e) for e in errors] == ["gone"]


async def test_requeue_puts_unconfirmed_messages_first_in_order() -> None:
    """Re-queued entries go before newer messages, in their original order."""
    outbox, _ = make(10, Overflow.WAIT)
    for m in ("a", "b", "c"):
        outbox.put_nowait(m)
    sent = []
    for _ in range(2):
        entry = outbox.begin()
        assert entry is not None
        outbox.sent(entry)
        sent.append(entry)
    outbox.put_nowait("d")
    outbox.requeue(reversed(sent))
    assert drain(outbox) == ["a", "b", "c", "d"]


async def test_interrupted_write_is_reported_as_possibly_delivered() -> None:
    """A message whose write was abandoned half-way is never reported as surely unsent."""
    outbox, drops = make(5, Overflow.WAIT)
    outbox.put_nowait("half")
    outbox.begin()
    outbox.release(interrupted=True)
    outbox.close(ConnectionClosed(), "closed")
    assert drops == [Dropped("half", "closed", True, "p")]


async def test_only_text_and_bytes_are_accepted() -> None:
    """Anything but str or bytes is a TypeError, and bad arguments are refused."""
    outbox, _ = make(5, Overflow.WAIT)
    with pytest.raises(TypeError):
        outbox.put_nowait(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Outbox(0)
    with pytest.raises(ValueError):
        Outbox(1, "wait")  # type: ignore[arg-type]


async def test_batches_respect_count_and_size_and_leave_in_order() -> None:
    """A batch takes at most max_count messages and max_bytes (but at least one)."""
    outbox, _ = make(10, Overflow.WAIT)
    for m in ("aaaa", "bbbb", "cccc", "dddddddddddd"):
        outbox.put_nowait(m)
    batch = outbox.begin_batch(2, 100)
    assert [e.message for e in batch] == ["aaaa", "bbbb"]
    second = outbox.begin_batch(10, 6)
    assert [e.message for e in second] == ["cccc"]
    with pytest.raises(ValueError):
        outbox.sent(second[0])  # not the oldest being written
    for entry in batch + second:
        outbox.sent(entry)
    assert [e.message for e in outbox.begin_batch(10, 1)] == ["dddddddddddd"]


async def test_drop_oldest_skips_a_whole_batch_being_written() -> None:
    """Every message of the batch being written is safe from drop-oldest."""
    outbox, drops = make(3, Overflow.DROP_OLDEST)
    for m in ("a", "b", "c"):
        outbox.put_nowait(m)
    batch = outbox.begin_batch(2, 100)
    outbox.put_nowait("d")
    assert [d.message for d in drops] == ["c"]
    outbox.release(interrupted=True)
    outbox.close(ConnectionClosed(), "closed")
    assert [(d.message, d.possibly_delivered) for d in drops] == [
        ("c", False), ("a", True), ("b", True), ("d", False)]
    assert len(batch) == 2
