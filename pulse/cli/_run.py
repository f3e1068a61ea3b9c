"""Running a command's trio main so that Ctrl-C ends it cleanly."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import trio


def only_interrupts(error: BaseException) -> bool:
    """True if ``error`` is a KeyboardInterrupt, or a group holding nothing else."""
    if isinstance(error, KeyboardInterrupt):
        return True
    if isinstance(error, BaseExceptionGroup):
        return all(only_interrupts(inner) for inner in error.exceptions)
    return False


def bind_address(text: str) -> tuple[str, int]:
    """``--bind HOST:PORT`` of ``pulse watch`` and ``pulse run``, with a port from 0 (any free
    one) to 65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--bind expects HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def cancel_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope,
                           on_signal: Callable[[int], object] | None = None) -> None:
    """Cancel ``scope`` at the first signal from ``signals`` (a receiver the caller opened
    before starting its work, so no early signal is missed), after ``on_signal(signum)``."""
    async for signum in signals:
        if on_signal is not None:
            on_signal(signum)
        scope.cancel()
        return


async def until_interrupted(body: Callable[[], Awaitable[object]]) -> bool:
    """Run ``body()`` until it returns or Ctrl-C (SIGINT) arrives; True if interrupted.

    The interrupt becomes an ordinary trio cancellation of ``body``, so every ``finally``
    and ``async with`` in it unwinds normally: connections say goodbye, children are reaped,
    and the command still prints its summary.
    """
    interrupted = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal interrupted
            with trio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch)
        await body()
        nursery.cancel_scope.cancel()
    return interrupted
