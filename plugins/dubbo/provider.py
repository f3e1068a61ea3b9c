"""The provider side: accept Dubbo 2 consumers, answer and send heartbeats, close the silent.

Every accepted connection becomes a :class:`~.channel.DubboChannel` with the provider role on
the provider's one :class:`~pulse.rpc.HeartbeatTimer`. Requests that are not heartbeats go
to the application's ``handler``; the default one answers every two-way request with
``SERVICE_NOT_FOUND`` so a Java consumer gets an error at once instead of a timeout.

A channel that breaks the protocol is closed alone; the listener and every other channel
carry on.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import anyio.abc
import trio

from pulse._core.channel_heartbeat import ChannelTiming, Role
from pulse._deprecation import renamed
from pulse._driver.engine import current_engine
from pulse._driver.streams import SocketStream, open_tcp_listeners, serve_listeners
from pulse._log import get_logger
from pulse.errors import ConnectionClosed
from pulse.rpc import HeartbeatTimer, RequestIds

from . import codec
from .channel import DubboChannel
from .codec import DEFAULT_MAX_BODY, Frame, Status

log = get_logger("pulse.dubbo")

#: Application handler: called for each non-heartbeat frame, with the channel to reply on.
RequestHandler = Callable[[Frame, DubboChannel], Awaitable[None]]

#: Requests one channel may have in its handler at once; more wait (backpressure).
DEFAULT_MAX_CONCURRENT = 64


async def not_found_handler(frame: Frame, channel: DubboChannel) -> None:
    """Answer two-way requests with ``SERVICE_NOT_FOUND`` (pulse itself offers no services)."""
    if frame.is_request and frame.two_way:
        message = "this pulse provider answers heartbeats only; it exports no services"
        await channel.send(codec.error_response(frame.request_id, Status.SERVICE_NOT_FOUND, message))


@dataclass(frozen=True, slots=True)
class ClosedChannel:
    """Why and when a channel of the provider closed (kept for inspection and tests)."""

    peer: str
    reason: str
    timed_out: bool
    at: float
    heartbeats_received: int
    heartbeats_sent: int
    heartbeats_answered: int


class DubboProvider:
    """Serves Dubbo 2 consumers on listeners (:meth:`serve` or :meth:`handle_stream`)."""

    def __init__(
        self,
        timer: HeartbeatTimer,
        *,
        timing: ChannelTiming | None = None,
        handler: RequestHandler = not_found_handler,
        max_frame_size: int = DEFAULT_MAX_BODY,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        history: int = 1000,
        max_body_size: int | None = None,
    ) -> None:
        max_frame_size = renamed("DubboProvider", "max_body_size", "max_frame_size",
                                 max_body_size, max_frame_size)
        self.timer = timer
        self.timing = timing or ChannelTiming()
        self.handler = handler
        self.max_frame_size = max_frame_size
        self.max_concurrent = max_concurrent
        self.ids = RequestIds()  # the provider's own requests are heartbeats only
        self.channels: set[DubboChannel] = set()
        self.accepted = 0
        self.closed: deque[ClosedChannel] = deque(maxlen=history)  # the latest closes
        self.closed_total = 0
        self.changed = anyio.Event()  # set (and replaced) whenever a channel opens or closes

    def _notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def handle_stream(self, stream: trio.abc.Stream, peer: str = "") -> None:
        """Serve one accepted connection until it closes."""
        if not peer and isinstance(stream, SocketStream):
            try:
                host, port = stream.socket.getpeername()[:2]
                peer = f"{host}:{port}"
            except OSError:
                peer = "?"
        channel = DubboChannel(
            stream, self.timer, Role.PROVIDER, timing=self.timing, ids=self.ids,
            max_frame_size=self.max_frame_size, peer=peer,
        )
        self.accepted += 1
        self.channels.add(channel)
        self._notify()
        log.info("channel_opened", peer=peer, role="provider")
        slots = anyio.Semaphore(self.max_concurrent)

        async def call_handler(frame: Frame) -> None:
            try:
                await self.handler(frame, channel)
            except ConnectionClosed:
                pass  # the channel closed under the handler: nobody to answer
            except Exception as exc:  # the application's bug must not take the server down
                log.error("handler_failed", peer=peer, reason=repr(exc))
                if frame.is_request and frame.two_way:
                    error = codec.error_response(frame.request_id, Status.SERVER_ERROR, repr(exc))
                    with contextlib.suppress(ConnectionClosed):
                        await channel.send(error)
            finally:
                slots.release()

        try:
            async with anyio.create_task_group() as nursery:

                async def on_frame(frame: Frame) -> None:
                    await slots.acquire()  # a full house makes the reader wait: backpressure
                    nursery.start_soon(call_handler, frame)

                await channel.run(on_frame)
                nursery.cancel_scope.cancel()
        finally:
            self.channels.discard(channel)
            self.closed_total += 1
            stats = channel.rpc.stats()
            self.closed.append(
                ClosedChannel(
                    peer, channel.closed_reason or "closed", channel.rpc.timed_out,
                    current_engine().now(), stats.heartbeats_received, stats.heartbeats_sent,
                    stats.heartbeats_answered,
                )
            )
            self._notify()

    async def serve(
        self,
        host: str | None,
        port: int,
        *,
        task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (port 0: any free port) and serve until cancelled;
        ``task_status.started`` receives the bound ``(host, port)``."""
        listeners = await open_tcp_listeners(port, host=host)
        first = listeners[0].socket.getsockname()
        log.info("listening", host=first[0], port=first[1], transport="dubbo")

        async def handle(stream: SocketStream) -> None:
            await self.handle_stream(stream)

        async with anyio.create_task_group() as nursery:
            await nursery.start(serve_listeners, handle, listeners)
            task_status.started((first[0], first[1]))
