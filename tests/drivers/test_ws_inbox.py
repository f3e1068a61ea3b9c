"""The WebSocket plugin's inbox: bounded for the reader, unbounded for leftovers."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pulse.plugins.websocket.inbox import Inbox


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
    with pytest.raises(trio.WouldBlock):
        inbox.get_nowait()


async def test_close_lets_the_app_drain_then_ends() -> None:
    """After close, queued messages are still returned, then EndOfChannel; puts refuse."""
    inbox = Inbox(3)
    inbox.put_nowait("last")
    inbox.close()
    assert await inbox.get() == "last"
    with pytest.raises(trio.EndOfChannel):
        await inbox.get()
    with pytest.raises(trio.ClosedResourceError):
        inbox.put_nowait("late")
    inbox.put_leftover("ignored")
    assert len(inbox) == 0
    with pytest.raises(ValueError):
        Inbox(0)
