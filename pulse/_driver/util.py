"""Small helpers shared by the drivers (on either loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

T = TypeVar("T")


@asynccontextmanager
async def background_nursery() -> AsyncIterator[anyio.abc.TaskGroup]:
    """A nursery for a context manager's background tasks that re-raises a lone error bare.

    Drivers hand the user an object inside ``async with``; the user's block runs inside
    this task group. trio and anyio wrap errors in an ``ExceptionGroup`` (nested, when nurseries nest);
    when there is exactly one (the usual case: the user's own exception, or a cancellation),
    it is re-raised as is, so ``except ValueError`` in user code keeps working. The same holds
    when the one error comes with cancellations (the scope around the block was cancelled
    while it failed): the error is raised, the cancellations are dropped.
    """
    try:
        async with anyio.create_task_group() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        lone = lone_exception(group)
        if lone is None:
            # One real error while the surrounding scope is being cancelled (the peer died
            # as the application cancelled): the error is what the caller must see; the
            # cancellation still ends the cancelled scope at its next checkpoint.
            _, errors = group.split(anyio.get_cancelled_exc_class())
            lone = lone_exception(errors) if errors is not None else None
        if lone is None:
            raise
        raise lone from lone.__cause__


def lone_exception(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The single leaf of a (possibly nested) exception group, or None if there are several."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup):
        if len(inner.exceptions) != 1:
            return None
        inner = inner.exceptions[0]
    return inner


class Doorbell:
    """Wakes the tasks waiting for a queue (read with ``receive_nowait``) to have something:
    its owner rings after every put and at close."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: anyio.Event | None = None  # made only while someone waits

    def ring(self) -> None:
        """Wake every waiter (the next one gets a fresh event)."""
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        """Wait for the next :meth:`ring`."""
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


async def receive_keeping(stream: MemoryObjectReceiveStream[T], bell: Doorbell) -> T:
    """The next item of ``stream``, like ``stream.receive()``, but never lost to a
    cancellation: ``receive()`` hands an item straight to a waiting receiver, and on asyncio
    a receiver cancelled before it resumes (``asyncio.timeout``, ``wait_for``,
    ``task.cancel()``) drops it. Here the receiver waits for ``bell`` (rung by the sender
    after each item and at close) and takes the item itself, with no await after it.
    Raises what ``receive_nowait`` raises at the end (``EndOfStream``, ``ClosedResourceError``)."""
    await anyio.lowlevel.checkpoint()
    while True:
        try:
            return stream.receive_nowait()
        except anyio.WouldBlock:
            await bell.wait()
