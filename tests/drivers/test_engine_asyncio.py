"""The engine under asyncio (and uvloop): its epoll set stays registered with the loop, its
clock is the loop's, and a due client or a readable socket wakes it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from pulse._driver.engine import current_engine

Runner = Callable[[Coroutine[Any, Any, None]], None]


def runners() -> list[Any]:
    """asyncio.run, and uvloop.run when uvloop is installed."""
    found: list[Any] = [pytest.param(asyncio.run, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        return found
    return [*found, pytest.param(uvloop.run, id="uvloop")]


class Reader:
    """Reads one byte per call and tells the test each time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.calls: list[float] = []
        self.called = asyncio.Event()

    def on_readable(self, now: float) -> None:
        self.sock.recv(1)
        self.calls.append(now)
        self.called.set()


class Due:
    """A timer client due at ``deadline`` (once)."""

    def __init__(self, deadline: float) -> None:
        self.deadline: float | None = deadline
        self.calls: list[float] = []
        self.called = asyncio.Event()

    def next_deadline(self) -> float | None:
        return self.deadline

    def handle_timer(self, now: float) -> None:
        self.calls.append(now)
        self.deadline = None
        self.called.set()


@pytest.mark.parametrize("run", runners())
def test_the_epoll_set_is_added_to_the_loop_once_for_many_passes(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five readable passes add the engine's epoll set to the loop's selector once; the
    loop's end takes it out again."""
    added: list[int] = []
    removed: list[int] = []
    epoll_fd: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        add, remove = loop.add_reader, loop.remove_reader

        def counting_add(fd: Any, callback: Callable[..., object], *args: Any) -> None:
            added.append(fd)
            add(fd, callback, *args)

        def counting_remove(fd: Any) -> bool:
            removed.append(fd)
            return remove(fd)

        monkeypatch.setattr(loop, "add_reader", counting_add)
        monkeypatch.setattr(loop, "remove_reader", counting_remove)
        engine = current_engine()
        assert engine._epoll is not None
        epoll_fd.append(engine._epoll.fileno())
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ours.setblocking(False)
            reader = Reader(ours)
            engine.add_reader(ours, reader)
            for _ in range(5):
                reader.called.clear()
                theirs.send(b"x")
                await asyncio.wait_for(reader.called.wait(), 5)
            engine.remove_reader(ours)
        assert len(reader.calls) == 5

    run(main())
    assert added == epoll_fd  # once, for five passes
    assert removed == epoll_fd  # when asyncio.run cancelled the engine


@pytest.mark.parametrize("run", runners())
def test_a_due_client_is_called_with_the_loops_time(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client already due is called at once, with a ``now`` on the loop's clock, and
    ``engine.now()`` reads that clock."""
    monkeypatch.setenv("PULSE_ENGINE_RESOLUTION", "0")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        engine = current_engine()
        before = loop.time()
        assert before <= engine.now() <= loop.time()
        client = Due(before)
        engine.watch(client)
        await asyncio.wait_for(client.called.wait(), 5)
        assert len(client.calls) == 1
        assert before <= client.calls[0] <= loop.time()

    run(main())
