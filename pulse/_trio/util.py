"""Small trio helpers shared by the drivers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def background_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for a context manager's background tasks that re-raises a lone error bare.

    Drivers hand the user an object inside ``async with``; the user's block runs inside
    this nursery. trio wraps errors in an ``ExceptionGroup``; when there is exactly one
    (the usual case: the user's own exception, or a cancellation), it is re-raised as is,
    so ``except ValueError`` in user code keeps working.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from group.exceptions[0].__cause__
        raise
