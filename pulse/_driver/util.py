"""Small helpers shared by the drivers (on either loop)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc


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
