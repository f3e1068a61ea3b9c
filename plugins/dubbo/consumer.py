"""The consumer side: one connection to a Dubbo 2 provider, kept alive and reconnected.

:class:`DubboConsumer` heartbeats its channel on a shared :class:`~pulse.rpc.HeartbeatTimer`;
when the provider is declared dead (nothing read for ``heartbeat_timeout``) or the connection
breaks, every pending request fails at once with :class:`~pulse.errors.PeerTimeout` or
:class:`~pulse.errors.ConnectionClosed` and the consumer reconnects with backoff
(:func:`pulse.rpc.reconnect_loop`). Requests made while disconnected fail at once too, as
Dubbo's do: callers retry or fail over, they never hang on a dead link.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import NoReturn

import anyio
import anyio.abc
import trio

from pulse._core.backoff import Backoff
from pulse._core.channel_heartbeat import ChannelTiming, Role
from pulse._deprecation import renamed
from pulse._driver.streams import connect, dial
from pulse._driver.util import background_nursery
from pulse._log import get_logger
from pulse.errors import ConnectionClosed, PulseError
from pulse.rpc import (
    HeartbeatTimer,
    RequestIds,
    open_heartbeat_timer,
    reconnect_loop,
    tick_for,
)

from . import codec
from .channel import DubboChannel
from .codec import DEFAULT_MAX_BODY, HESSIAN2, Frame

log = get_logger("pulse.dubbo")

#: Called for frames from the provider that are not responses (read-only notices, requests).
PushHandler = Callable[[Frame], Awaitable[None]]
#: How many disconnect reasons ``DubboConsumer.disconnects`` keeps (the latest).
MAX_REMEMBERED_DISCONNECTS = 100
#: Opens the transport (TCP by default; TLS, Unix sockets or memory streams in tests).
Connector = Callable[[], Awaitable[trio.abc.Stream]]


class _Pending:
    __slots__ = ("channel", "done", "error", "frame")

    def __init__(self, channel: DubboChannel) -> None:
        self.channel = channel
        self.done = anyio.Event()
        self.frame: Frame | None = None
        self.error: PulseError | None = None


class DubboConsumer:
    """A self-healing consumer connection to the provider at ``host:port``; run it with
    :meth:`run` (or use :func:`open_consumer`). ``connect`` replaces the TCP connect (for
    TLS, say); ``on_push`` receives frames from the provider that are not responses."""

    def __init__(
        self,
        host: str,
        port: int,
        timer: HeartbeatTimer,
        *,
        timing: ChannelTiming | None = None,
        backoff: Backoff | None = None,
        connect_timeout: float = 5.0,
        max_frame_size: int = DEFAULT_MAX_BODY,
        on_push: PushHandler | None = None,
        connect: Connector | None = None,
        shared_probe: bool = True,
        max_body_size: int | None = None,
    ) -> None:
        max_frame_size = renamed("DubboConsumer", "max_body_size", "max_frame_size",
                                 max_body_size, max_frame_size)
        self.host = host
        self.port = port
        self.peer = f"{host}:{port}"
        self.timer = timer
        self.timing = timing or ChannelTiming()
        self.backoff = backoff if backoff is not None else Backoff()
        self.connect_timeout = connect_timeout
        self.max_frame_size = max_frame_size
        self.on_push = on_push
        self._open_stream = connect
        #: Wait behind one probe per provider (and process) while it cannot be reached.
        self.shared_probe = shared_probe
        self.ids = RequestIds()  # one id space for requests and heartbeats, across reconnects
        self.channel: DubboChannel | None = None
        self.connects = 0
        self.disconnects: list[str] = []  # why each connection ended (the latest 100)
        self.disconnect_total = 0
        self.changed = anyio.Event()  # set (and replaced) on every connect and disconnect
        self._pending: dict[int, _Pending] = {}

    def _notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    @property
    def connected(self) -> bool:
        """True while a channel is open."""
        return self.channel is not None and self.channel.closed_reason is None

    async def wait_connected(self) -> DubboChannel:
        """Wait until a channel is open and return it."""
        while True:
            channel = self.channel
            if channel is not None and channel.closed_reason is None:
                return channel
            await self.changed.wait()

    async def request(
        self, body: bytes, *, serialization: int = HESSIAN2, two_way: bool = True
    ) -> Frame | None:
        """Send an ordinary request with a serialized ``body``; return the response frame
        (None for one-way requests). Fails at once when not connected, and as soon as the
        channel dies while waiting. Wrap in ``trio.fail_after`` for a per-call timeout."""
        channel = self.channel
        if channel is None or channel.closed_reason is not None:
            raise channel.error() if channel is not None else ConnectionClosed(
                f"not connected to {self.peer}"
            )
        request_id = channel.next_request_id()
        data = codec.request(request_id, body, two_way=two_way, serialization=serialization)
        if not two_way:
            await channel.send(data)
            return None
        pending = _Pending(channel)
        self._pending[request_id] = pending
        try:
            await channel.send(data)
            await pending.done.wait()
        finally:
            self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        return pending.frame

    async def run(self) -> NoReturn:
        """Connect, serve, reconnect with backoff, forever (raises
        :class:`~pulse.errors.ReconnectGaveUp` if the backoff runs out of attempts)."""
        await reconnect_loop(self._connect, self._session, backoff=self.backoff, peer=self.peer,
                             shared_probe=self.shared_probe)

    async def _connect(self) -> trio.abc.Stream:
        if self._open_stream is not None:
            return await connect(self._open_stream, timeout=self.connect_timeout, peer=self.peer)
        return await dial(self.host, self.port, timeout=self.connect_timeout)

    async def _session(self, stream: trio.abc.Stream) -> None:
        channel = DubboChannel(
            stream, self.timer, Role.CONSUMER, timing=self.timing, ids=self.ids,
            max_frame_size=self.max_frame_size, peer=self.peer,
        )
        self.channel = channel
        self.connects += 1
        self._notify()
        try:
            await channel.run(self._on_frame)
        finally:
            error = channel.error()
            for pending in list(self._pending.values()):
                if pending.channel is channel and not pending.done.is_set():
                    pending.error = error
                    pending.done.set()
            self.disconnects.append(error.reason)
            del self.disconnects[:-MAX_REMEMBERED_DISCONNECTS]
            self.disconnect_total += 1
            self._notify()

    async def _on_frame(self, frame: Frame) -> None:
        if not frame.is_request:
            pending = self._pending.get(frame.request_id)
            if pending is not None:
                pending.frame = frame
                pending.done.set()
                return
            log.debug("unmatched_response", peer=self.peer, request_id=frame.request_id)
            return
        if self.on_push is not None:
            await self.on_push(frame)


@asynccontextmanager
async def open_consumer(
    host: str,
    port: int,
    *,
    timer: HeartbeatTimer | None = None,
    timing: ChannelTiming | None = None,
    backoff: Backoff | None = None,
    connect_timeout: float = 5.0,
    max_frame_size: int = DEFAULT_MAX_BODY,
    on_push: PushHandler | None = None,
    connect: Connector | None = None,
    shared_probe: bool = True,
    max_body_size: int | None = None,
) -> AsyncIterator[DubboConsumer]:
    """A running :class:`DubboConsumer` for the ``async with`` block. Without ``timer`` a
    private one is started; pass a shared timer to put many consumers on one wheel.
    ``shared_probe=False`` keeps this consumer out of the provider's shared probe (while a
    provider cannot be reached, the consumers of one process wait behind one probe).
    ``max_body_size=`` is the deprecated old name of ``max_frame_size=``."""
    max_frame_size = renamed("open_consumer", "max_body_size", "max_frame_size",
                             max_body_size, max_frame_size, stacklevel=5)
    timing = timing or ChannelTiming()
    async with background_nursery() as nursery:
        if timer is None:
            own = await nursery.start(_run_timer, tick_for(timing))
            timer = own
        consumer = DubboConsumer(
            host, port, timer, timing=timing, backoff=backoff, connect_timeout=connect_timeout,
            max_frame_size=max_frame_size, on_push=on_push, connect=connect,
            shared_probe=shared_probe,
        )
        nursery.start_soon(consumer.run)
        try:
            yield consumer
        finally:
            nursery.cancel_scope.cancel()


async def _run_timer(
    tick: float, *, task_status: anyio.abc.TaskStatus[HeartbeatTimer] = anyio.TASK_STATUS_IGNORED
) -> None:
    async with open_heartbeat_timer(tick=tick) as timer:
        task_status.started(timer)
        await anyio.sleep_forever()
