"""The WebSocket plugin's inbox: bounded for the reader, unbounded for leftovers."""

from __future__ import annotations

import anyio
import pytest
import trio
import trio.testing

from pulse.plugins.websocket.errors import WebSocketClosed
from pulse.plugins.websocket.inbox import EchoInbox, Inbox
from pulse.plugins.websocket.outbox import Dropped, Outbox, Overflow


async def test_bound_applies_to_the_reader_and_order_is_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """put() waits at the bound; leftovers go beyond it; get() returns all in order."""
    inbox = Inbox(2)
    assert inbox.put_nowait("a")
    await inbox.put("b")
    assert not inbox.put_nowait("c")
    with trio.move_on_after(5) as blocked:
        await inbox.put("c")
    assert blocked.cancelled_caught
    inbox.put_leftover("c")
    inbox.put_leftover("d")
    assert len(inbox) == 4
    assert [await inbox.get() for _ in range(4)] == ["a", "b", "c", "d"]


async def test_a_waiting_reader_resumes_when_the_app_takes_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A put blocked on a full inbox completes as soon as a message is taken."""
    inbox = Inbox(1)
    await inbox.put("a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(inbox.put, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert len(inbox) == 1
        assert inbox.get_nowait() == "a"
    assert inbox.get_nowait() == "b"
    with pytest.raises(anyio.WouldBlock):
        inbox.get_nowait()


async def test_close_lets_the_app_drain_then_ends() -> None:
    """After close, queued messages are still returned, then EndOfChannel; puts refuse."""
    inbox = Inbox(3)
    inbox.put_nowait("last")
    inbox.close()
    assert await inbox.get() == "last"
    with pytest.raises(anyio.EndOfStream):
        await inbox.get()
    with pytest.raises(trio.ClosedResourceError):
        inbox.put_nowait("late")
    inbox.put_leftover("ignored")
    assert len(inbox) == 0
    with pytest.raises(ValueError):
        Inbox(0)


async def test_echo_inbox_hands_messages_to_the_outbox_until_it_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The echo inbox queues each message for sending back and reports no room when full."""
    outbox = Outbox(2)
    echo = EchoInbox(outbox)
    assert echo.put_nowait("a")
    assert echo.put_nowait(b"b")
    assert not echo.put_nowait("c")  # full (WAIT): the reader must stop and wait
    assert [entry.message for entry in outbox.begin_batch(10, 1000)] == ["a", b"b"]
    assert len(echo) == 0  # nothing is kept on the inbox side


async def test_echo_inbox_put_waits_for_the_writer_to_make_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A put on a full outbox completes once the writer sent a message, keeping the order."""
    outbox = Outbox(1)
    echo = EchoInbox(outbox)
    await echo.put("a")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo.put, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert len(outbox) == 1
        entry = outbox.begin()
        assert entry is not None and entry.message == "a"
        outbox.sent(entry)
    assert outbox.peek() is not None and outbox.peek().message == "b"  # type: ignore[union-attr]


async def test_echo_inbox_refuses_once_the_connection_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A put waiting for room ends with ClosedResourceError when the outbox closes; leftovers
    of a closing connection are not echoed."""
    outbox = Outbox(1)
    echo = EchoInbox(outbox)
    await echo.put("a")
    failures: list[BaseException] = []

    async def blocked_put() -> None:
        try:
            await echo.put("b")
        except trio.ClosedResourceError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(blocked_put)
        await trio.testing.wait_all_tasks_blocked()
        outbox.close(WebSocketClosed("gone", 1001), "not sent")
    assert len(failures) == 1
    with pytest.raises(trio.ClosedResourceError):
        echo.put_nowait("c")
    echo.put_leftover("d")
    assert len(outbox) == 0 and len(echo) == 0


def test_echo_inbox_with_drop_oldest_never_stops_the_reader() -> None:
    """Under DROP_OLDEST a full outbox drops its oldest message instead of refusing."""
    dropped: list[Dropped] = []
    outbox = Outbox(1, Overflow.DROP_OLDEST, dropped.append)
    echo = EchoInbox(outbox)
    assert echo.put_nowait("a")
    assert echo.put_nowait("b")
    assert [d.message for d in dropped] == ["a"]
    assert outbox.peek() is not None and outbox.peek().message == "b"  # type: ignore[union-attr]
