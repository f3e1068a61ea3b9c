"""One Dubbo 2 connection under pulse: heartbeats answered and sent, other frames passed on.

A channel runs two tasks, both for I/O only: a reader (decodes frames, answers heartbeat
requests, hands every other frame to the application) and a writer (drains one bounded
queue, so application frames, heartbeat requests and heartbeat replies never interleave).
No task sleeps for a timer: the heartbeat deadlines of every channel live on the one wheel of
a shared :class:`~pulse.rpc.HeartbeatTimer`, which queues heartbeats here and closes the
channel when the peer is declared dead.

A malformed frame closes only this channel (``closed_reason`` says why); the error never
leaves :meth:`DubboChannel.run`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import trio

from pulse._core.channel_heartbeat import ChannelTiming, Role
from pulse._driver.streams import aclose_forcefully
from pulse._log import get_logger
from pulse.errors import ConnectionClosed, PeerTimeout
from pulse.rpc import HeartbeatTimer, RpcChannel

from . import codec
from .codec import DEFAULT_MAX_BODY, HESSIAN2, DubboProtocolError, Frame, FrameDecoder

log = get_logger("pulse.dubbo")

#: Largest read per ``receive_some``.
READ_CHUNK = 64 * 1024
#: Frames waiting for the writer; a full queue makes application sends wait.
DEFAULT_QUEUE_SIZE = 128
#: Frames the writer joins into one ``send_all`` when several are queued.
WRITE_BATCH = 64
#: Bytes the writer joins into one ``send_all`` at most (a larger frame is written alone).
WRITE_BATCH_BYTES = 64 * 1024
#: Bytes of encoded frames one channel may have queued for its writer; a send that would go
#: above it waits (and so does the reader answering pipelined heartbeats: the peer's own TCP
#: window then holds the rest). A single frame larger than this is still accepted alone.
DEFAULT_MAX_QUEUED_BYTES = 1024 * 1024

FrameHandler = Callable[[Frame], Awaitable[None]]


class _Messages:
    """Dubbo heartbeat frames for :class:`~pulse.rpc.RpcChannel`."""

    def __init__(self, serialization: int) -> None:
        self.serialization = serialization

    def request(self, request_id: int) -> bytes:
        return codec.heartbeat_request(request_id, serialization=self.serialization)

    def response(self, request_id: int) -> bytes:
        return codec.heartbeat_response(request_id, serialization=self.serialization)


class _Hooks:
    """What the timer asks of a channel: queue a heartbeat, or close."""

    def __init__(self, channel: DubboChannel) -> None:
        self._channel = channel

    def send_heartbeat(self, message: bytes) -> None:
        self._channel._queue_heartbeat(message)

    def close(self, reason: str) -> None:
        self._channel.close(reason)


class DubboChannel:
    """A Dubbo 2 connection on ``stream``, heartbeat-supervised by ``timer``.

    ``ids`` is the request-id allocator shared with the application (heartbeat ids come from
    it too); ``serialization`` is the id heartbeats are written in (Hessian2).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        timer: HeartbeatTimer,
        role: Role,
        *,
        timing: ChannelTiming | None = None,
        ids: Callable[[], int] | None = None,
        max_frame_size: int = DEFAULT_MAX_BODY,
        serialization: int = HESSIAN2,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        peer: str = "",
    ) -> None:
        self.stream = stream
        self.peer = peer
        self.role = role
        self.max_frame_size = max_frame_size
        self._to_writer, self._outgoing = anyio.create_memory_object_stream[bytes](queue_size)
        self.max_queued_bytes = max_queued_bytes
        self.queued_bytes = 0
        self._drained = anyio.Event()
        self._scope = anyio.CancelScope()
        self.closed_reason: str | None = None
        self.closed = anyio.Event()
        self.frames_received = 0
        self.heartbeats_dropped = 0
        self.rpc: RpcChannel[bytes] = timer.open_channel(
            role, _Hooks(self), _Messages(serialization), timing=timing, ids=ids, peer=peer
        )

    # -- application side --------------------------------------------------------------------

    def next_request_id(self) -> int:
        """A request id for an application request (shared with heartbeats, never reused)."""
        return self.rpc.next_request_id()

    def error(self) -> ConnectionClosed:
        """The exception that pending calls on this channel should fail with."""
        reason = self.closed_reason or "closed"
        return PeerTimeout(reason) if self.rpc.timed_out else ConnectionClosed(reason)

    async def send(self, data: bytes) -> None:
        """Queue an encoded frame for sending; waits while the queue is full."""
        if self.closed_reason is not None:
            raise self.error()
        size = len(data)
        while self.queued_bytes and self.queued_bytes + size > self.max_queued_bytes:
            if self._drained.is_set():
                self._drained = anyio.Event()
            await self._drained.wait()
            if self.closed_reason is not None:
                raise self.error()
        self.queued_bytes += size
        try:
            await self._to_writer.send(data)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.queued_bytes -= size
            raise self.error() from None
        except BaseException:
            self.queued_bytes -= size
            raise

    def close(self, reason: str = "closed locally") -> None:
        """Close the channel (returns at once; :meth:`run` finishes the teardown)."""
        if self.closed_reason is None:
            self.closed_reason = reason
        self._scope.cancel()
        self._drained.set()  # senders waiting for room wake up and raise

    # -- driving ---------------------------------------------------------------------------

    async def run(self, on_frame: FrameHandler) -> str:
        """Serve the connection until it closes; returns why it closed.

        ``on_frame`` receives every frame that is not a heartbeat, in order; the reader waits
        for it, so it should hand long work to another task.
        """
        try:
            with self._scope:
                async with anyio.create_task_group() as nursery:
                    nursery.start_soon(self._writer)
                    await self._reader(on_frame)
                    nursery.cancel_scope.cancel()
        finally:
            reason = self.closed_reason or "closed"
            self.closed_reason = reason
            self.rpc.close(reason)
            self._to_writer.close()
            await aclose_forcefully(self.stream)
            self.closed.set()
            log.info(
                "channel_closed", peer=self.peer, role=self.role.value, reason=reason,
                timed_out=self.rpc.timed_out,
            )
        return reason

    def _queue_heartbeat(self, message: bytes) -> None:
        try:
            if self.queued_bytes + len(message) > self.max_queued_bytes:
                raise anyio.WouldBlock
            self._to_writer.send_nowait(message)
            self.queued_bytes += len(message)
        except anyio.WouldBlock:
            # The writer is busy with a backlog: the link is not write-idle, and the reply to
            # any of the queued requests will prove the peer alive as well as a heartbeat.
            self.heartbeats_dropped += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def _writer(self) -> None:
        async with self._outgoing:
            async for first in self._outgoing:
                batch = [first]
                size = len(first)
                while len(batch) < WRITE_BATCH and size < WRITE_BATCH_BYTES:
                    try:
                        item = self._outgoing.receive_nowait()
                    except anyio.WouldBlock:
                        break
                    batch.append(item)
                    size += len(item)
                try:
                    await self.stream.send_all(b"".join(batch) if len(batch) > 1 else first)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self.close(f"write failed: {exc!r}")
                    return
                finally:
                    self.queued_bytes -= size
                    self._drained.set()
                self.rpc.wrote()

    async def _reader(self, on_frame: FrameHandler) -> None:
        decoder = FrameDecoder(self.max_frame_size)
        while True:
            try:
                data = await self.stream.receive_some(READ_CHUNK)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.close(f"read failed: {exc!r}")
                return
            try:
                if not data:
                    decoder.feed_eof()
                    self.close("peer closed the connection")
                    return
                frames = decoder.feed(data)
            except DubboProtocolError as exc:
                log.warning("protocol_error", peer=self.peer, reason=str(exc))
                self.close(f"protocol error: {exc}")
                return
            for frame in frames:
                self.frames_received += 1
                if frame.is_heartbeat_request:
                    self.rpc.heartbeat_request(frame.request_id)
                    if frame.two_way:
                        try:
                            await self.send(codec.reply_to_heartbeat(frame))
                        except ConnectionClosed:
                            return  # the writer failed (a reset peer): only this channel ends
                elif frame.is_heartbeat_response:
                    self.rpc.heartbeat_response(frame.request_id)
                else:
                    self.rpc.read()
                    try:
                        await on_frame(frame)
                    except ConnectionClosed:
                        return
