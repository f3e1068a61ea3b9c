"""``pulse.heartbeat(stream)``: heartbeats multiplexed with application messages on any
``trio.abc.Stream`` (TCP, TLS, Unix sockets, memory streams).

The wire format is pulse's msgpack frames (:mod:`pulse.frames`). Both sides send ``HELLO``
first and agree on one policy (:func:`pulse._core.policy.negotiate`); then application data
travels in ``DATA`` frames and heartbeats in ``PING``/``PONG`` frames. Three tasks run per
connection: a reader (never blocked by writes), a control sender (pings and pongs) and the
liveness runner that sleeps until the core's next deadline. Application writes and control
frames share one lock so frames never interleave; a long application write reports its
progress to the core so it is not taken for idleness.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from pulse._core.detectors import FailureDetector
from pulse._core.liveness import Liveness, LivenessState, PeerStats
from pulse._core.policy import HeartbeatPolicy, NegotiationBounds, negotiate
from pulse._log import get_logger
from pulse._trio.feed import EventFeed
from pulse._trio.runner import LivenessRunner
from pulse._trio.util import background_nursery
from pulse.actions import Action, Close, LocalPause, PeerAlive, PeerDead, PeerSuspect, SendPing
from pulse.errors import (
    AuthFailed,
    ConnectionClosed,
    PeerTimeout,
    PulseError,
    RemoteProtocolError,
)
from pulse.frames import (
    PROTOCOL_VERSION,
    Data,
    Frame,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    encode_frame,
)
from pulse.frames import Close as CloseFrame

log = get_logger("pulse.connection")

#: Bytes handed to the stream per ``send_all`` call for application frames, so that a long
#: write reports progress (Netty's ``observeOutput``).
WRITE_CHUNK = 64 * 1024
#: Largest read per ``receive_some``.
READ_CHUNK = 64 * 1024
#: How long a graceful close (a CLOSE frame, a TLS close_notify) may take before the stream
#: is closed forcefully.
CLOSE_TIMEOUT = 1.0

DetectorFactory = Callable[[HeartbeatPolicy], FailureDetector]
Authenticator = Callable[[str | None], bool]


class HeartbeatConnection:
    """One heartbeat-supervised connection; create it with :func:`heartbeat`.

    ``send`` / ``receive`` / ``async for`` carry application messages; ``events()`` reports
    liveness changes (:class:`~pulse.actions.PeerSuspect`, :class:`~pulse.actions.PeerAlive`,
    :class:`~pulse.actions.PeerDead`, :class:`~pulse.actions.LocalPause`, and a final
    :class:`~pulse.actions.Close`); ``stats()`` gives RTT, missed beats and suspicion.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        policy: HeartbeatPolicy,
        remote: Hello,
        decoder: FrameDecoder,
        *,
        detector: FailureDetector | None,
        receive_buffer: int,
        peer: str,
        transport: str,
        on_event: Callable[[Action], None] | None,
    ) -> None:
        self.stream = stream
        self.policy = policy
        self.remote = remote
        self.peer = peer
        self.transport = transport
        self._decoder = decoder
        self._liveness = Liveness(policy, trio.current_time(), detector=detector)
        self._runner = LivenessRunner(self._liveness, self._queue_ping, self._on_action,
                                      evidence_pending=lambda: self._delivering)
        self._send_lock = trio.StrictFIFOLock()
        self._control_send, self._control_receive = trio.open_memory_channel[Ping | Pong](32)
        self._inbound_send, self._inbound_receive = trio.open_memory_channel[Any](receive_buffer)
        self._events: EventFeed[Action] = EventFeed()
        self._on_event = on_event
        self._close_reason: str | None = None
        self._close_error: PulseError | None = None
        self._closed = trio.Event()
        self._delivering = False
        self._goodbye: tuple[str, PulseError | None] | None = None
        self._early_frames: list[Frame] = []
        self._pong_waiters: dict[int, trio.Event] = {}
        self._pong_rtts: dict[int, float] = {}
        self._nursery: trio.Nursery | None = None
        self._log = log.bind(peer=peer, transport=transport)

    # -- public API ----------------------------------------------------------------------

    @property
    def remote_peer_id(self) -> str:
        """The peer id the other side announced in its HELLO."""
        return self.remote.peer_id

    @property
    def state(self) -> LivenessState:
        """``alive``, ``suspect`` or ``dead`` (as judged by the failure detector)."""
        return self._liveness.state

    @property
    def closed(self) -> bool:
        """True once the connection is closed, for whatever reason."""
        return self._closed.is_set()

    @property
    def close_reason(self) -> str | None:
        """Why the connection closed (None while open)."""
        return self._close_reason

    def stats(self) -> PeerStats:
        """RTT summary, missed beats, pings sent, pongs received, silence and suspicion."""
        return self._liveness.stats(trio.current_time())

    def events(self) -> EventFeed[Action]:
        """The feed of liveness changes (one consumer; bounded, never blocks the driver)."""
        return self._events

    async def send(self, payload: object) -> None:
        """Send one application message (bytes, or any msgpack-serialisable object)."""
        self._raise_if_closed()
        await self._write(encode_frame(Data(payload)), progress=True)

    async def receive(self) -> Any:
        """The next application message; raises :class:`ConnectionClosed` (or its subclass
        :class:`PeerTimeout` when the peer was declared dead) once closed and drained."""
        try:
            return await self._inbound_receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            error = self._closed_error()
            raise error from error.__cause__

    def __aiter__(self) -> AsyncIterator[Any]:
        """Messages until the connection closes.

        The loop ends quietly when the peer closes or the connection drops (``close_reason``
        says which); it raises :class:`PeerTimeout` when the peer was declared dead and
        :class:`ConnectionClosed` (caused by the :class:`RemoteProtocolError`) when the peer
        broke the protocol.
        """
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            try:
                yield await self.receive()
            except ConnectionClosed:
                if self._close_error is not None:
                    raise
                return

    async def ping(self, timeout: float | None = None) -> float:
        """Send a heartbeat now and return its round-trip time in seconds.

        Raises :class:`PeerTimeout` if no pong arrives within ``timeout`` (default: the
        policy's timeout) and :class:`ConnectionClosed` if the connection closes first.
        """
        self._raise_if_closed()
        request = self._runner.request_ping()
        if request is None:
            raise self._closed_error()
        done = self._pong_waiters[request.seq] = trio.Event()
        limit = self.policy.dead_after if timeout is None else timeout
        try:
            await self._write(encode_frame(Ping(request.seq, request.now)), progress=False)
            with trio.move_on_after(limit if limit > 0 else math.inf):
                await done.wait()  # set by the pong, or by the connection closing
        finally:
            self._pong_waiters.pop(request.seq, None)
            rtt = self._pong_rtts.pop(request.seq, None)  # also when cancelled: no leak
        if rtt is not None:
            return rtt
        if self.closed:
            raise self._closed_error()
        raise PeerTimeout(f"no pong for heartbeat {request.seq} within {limit:g}s")

    async def aclose(self, reason: str = "closed by application") -> None:
        """Say goodbye (a CLOSE frame, best effort) and close the stream."""
        if self.closed:
            return
        await self._say_goodbye(reason, reason, None, shield=True)

    # -- tasks ---------------------------------------------------------------------------

    async def _supervise(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # The connection's own tasks live in a nursery of their own: closing the connection
        # cancels them, never the application code using the connection.
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._read_loop)
            nursery.start_soon(self._control_loop)
            nursery.start_soon(self._runner.run)
            task_status.started()

    async def _read_loop(self) -> None:
        try:
            for frame in self._early_frames:
                await self._on_frame(frame)
            while True:
                chunk = await self.stream.receive_some(READ_CHUNK)
                if not chunk:
                    await self._finish("connection closed by peer", None)
                    return
                for frame in self._decoder.feed(chunk):
                    await self._on_frame(frame)
                if self.closed:
                    return
        except RemoteProtocolError as exc:
            self._log.warning("protocol_error", reason=str(exc))
            reason = f"protocol error: {exc}"
            await self._say_goodbye(reason, reason, exc, shield=False)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await self._finish(f"connection lost: {exc!r}", None, graceful=False)

    async def _on_frame(self, frame: object) -> None:
        if isinstance(frame, Pong):
            self._runner.pong(frame.seq)
            waiter = self._pong_waiters.get(frame.seq)
            if waiter is not None:
                self._pong_rtts[frame.seq] = trio.current_time() - frame.ts
                waiter.set()
            return
        self._runner.received()
        if isinstance(frame, Ping):
            try:
                self._control_send.send_nowait(frame.pong())
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass  # the peer pings faster than we can answer; the next pong serves
        elif isinstance(frame, Data):
            self._delivering = True
            try:
                await self._inbound_send.send(frame.payload)
            finally:
                self._delivering = False
        elif isinstance(frame, CloseFrame):
            await self._finish(f"closed by peer: {frame.reason}", None)
        elif isinstance(frame, Hello):
            raise RemoteProtocolError("HELLO received twice")

    async def _control_loop(self) -> None:
        async for frame in self._control_receive:
            try:
                await self._write(encode_frame(frame), progress=False)
            except ConnectionClosed:
                return  # _write has closed the connection and said why

    async def _queue_ping(self, action: SendPing) -> None:
        try:
            self._control_send.send_nowait(Ping(action.seq, action.now))
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # a full queue already holds a ping; a closed one means we are done

    def _on_action(self, action: Action) -> None:
        if isinstance(action, PeerSuspect):
            self._log.info("peer_suspect", missed=action.missed, silent_for=action.silent_for)
        elif isinstance(action, PeerAlive):
            self._log.info("peer_alive", after=action.after)
        elif isinstance(action, LocalPause):
            self._log.warning("local_pause", late_by=action.late_by)
        elif isinstance(action, PeerDead):
            self._log.warning("peer_dead", reason=action.reason, missed=action.missed)
        elif isinstance(action, Close):
            # The peer is dead: no goodbye can reach it, so the stream is closed at once.
            # Scheduled first, so that the stream is released even if a callback raises.
            assert self._nursery is not None
            self._nursery.start_soon(self._release, False)
            self._mark_closed(action.reason, PeerTimeout(action.reason))
            return
        self._publish(action)

    def _publish(self, action: Action) -> None:
        self._events.publish(action)
        if self._on_event is not None:
            self._on_event(action)

    # -- helpers -------------------------------------------------------------------------

    async def _say_goodbye(self, said: str, reason: str, error: PulseError | None, *,
                           shield: bool) -> None:
        """Send CLOSE(``said``) for at most :data:`CLOSE_TIMEOUT`, then close for ``reason``."""
        self._goodbye = (reason, error)  # the reason even if the CLOSE frame is cut short
        with trio.move_on_after(CLOSE_TIMEOUT) as scope:
            scope.shield = shield
            try:
                await self._write(encode_frame(CloseFrame(said)), progress=False)
            except ConnectionClosed:
                pass
        await self._finish(reason, error)

    async def _write(self, data: bytes, *, progress: bool) -> None:
        """Write one whole frame, or close the connection: a frame cut short (an error, or a
        cancellation in the middle of ``send_all``) leaves the stream unframed for good."""
        async with self._send_lock:
            if self.closed:
                raise self._closed_error()
            view = memoryview(data)
            try:
                for start in range(0, len(view), WRITE_CHUNK):
                    await self.stream.send_all(view[start:start + WRITE_CHUNK])
                    if progress and start + WRITE_CHUNK < len(view):
                        self._runner.progress()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                await self._finish(f"connection lost: {exc!r}", None, graceful=False)
                raise self._closed_error() from exc
            except trio.Cancelled:
                reason, error = self._goodbye or ("a write was cancelled part-way through a frame",
                                                  None)
                await self._finish(reason, error, graceful=False)
                raise
            self._runner.sent()

    async def _finish(self, reason: str, error: PulseError | None, *, graceful: bool = True) -> None:
        """Close for ``reason`` (first caller wins); ``graceful`` lets a transport say goodbye
        (TLS close_notify) for at most :data:`CLOSE_TIMEOUT` before the stream is dropped."""
        if self.closed:
            return
        try:
            self._mark_closed(reason, error)
        finally:
            await self._release(graceful)

    def _mark_closed(self, reason: str, error: PulseError | None) -> None:
        """The synchronous half of closing: record why, wake and end every waiter, then
        publish the final :class:`~pulse.actions.Close` (whose callback may raise)."""
        if self.closed:
            return
        self._close_reason = reason
        self._close_error = error
        self._closed.set()
        for waiter in self._pong_waiters.values():
            waiter.set()  # wake pending pings: they report the close
        self._inbound_send.close()
        self._control_send.close()
        self._log.info("connection_closed", reason=reason)
        try:
            self._publish(Close(reason))
        finally:
            self._events.close()

    async def _release(self, graceful: bool) -> None:
        """Close the stream (never hanging: a stuck graceful close becomes a forceful one) and
        stop the connection's tasks."""
        with trio.CancelScope(shield=True):
            if graceful:
                with trio.move_on_after(CLOSE_TIMEOUT):
                    try:
                        await self.stream.aclose()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
            await trio.aclose_forcefully(self.stream)
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _raise_if_closed(self) -> None:
        if self.closed:
            raise self._closed_error()

    def _closed_error(self) -> ConnectionClosed:
        if isinstance(self._close_error, ConnectionClosed):
            return self._close_error
        error = ConnectionClosed(self._close_reason or "closed")
        if self._close_error is not None:
            error.__cause__ = self._close_error
        return error


async def _handshake(
    stream: trio.abc.Stream,
    decoder: FrameDecoder,
    hello: Hello,
    timeout: float,
) -> tuple[Hello, list[Frame]]:
    """Send our HELLO, read theirs; frames that arrived right behind it are returned too."""
    await stream.send_all(encode_frame(hello))
    with trio.move_on_after(timeout) as scope:
        while True:
            chunk = await stream.receive_some(READ_CHUNK)
            if not chunk:
                raise ConnectionClosed("connection closed during the HELLO exchange")
            frames = decoder.feed(chunk)
            if frames:
                first = frames[0]
                if isinstance(first, CloseFrame):
                    raise ConnectionClosed(f"closed by peer: {first.reason}")
                if not isinstance(first, Hello):
                    raise RemoteProtocolError(f"expected HELLO first, got {type(first).__name__}")
                return first, frames[1:]
    assert scope.cancelled_caught
    raise PeerTimeout(f"no HELLO from peer within {timeout:g}s")


@asynccontextmanager
async def heartbeat(
    stream: trio.abc.Stream,
    policy: HeartbeatPolicy | None = None,
    *,
    peer_id: str = "",
    token: str | None = None,
    authenticate: Authenticator | None = None,
    bounds: NegotiationBounds | None = None,
    detector: DetectorFactory | None = None,
    handshake_timeout: float = 10.0,
    max_frame_size: int = 1024 * 1024,
    receive_buffer: int = 256,
    peer: str = "?",
    transport: str = "stream",
    on_event: Callable[[Action], None] | None = None,
) -> AsyncIterator[HeartbeatConnection]:
    """Wrap ``stream`` in a heartbeat-supervised connection for the ``async with`` block.

    Both sides exchange HELLO frames (version, proposed interval and timeout, ``peer_id``,
    optional ``token``); ``authenticate(token)`` returning False refuses the peer with
    :class:`~pulse.errors.AuthFailed`. The negotiated policy is the lower non-zero proposal,
    clamped by ``bounds``. ``detector(policy)`` builds a custom failure detector (fixed
    timeout by default). Leaving the block closes the connection.
    """
    policy = policy or HeartbeatPolicy()
    decoder = FrameDecoder(max_frame_size=max_frame_size)
    hello = Hello(PROTOCOL_VERSION, policy.interval, policy.dead_after, peer_id, token)
    # The stream is ours from here on: whatever ends the set-up (a refusal, a lost link, a
    # cancellation, an error in a callback) closes it.
    try:
        remote, early_frames = await _handshake(stream, decoder, hello, handshake_timeout)
        if authenticate is not None and not authenticate(remote.token):
            with trio.move_on_after(CLOSE_TIMEOUT):
                await stream.send_all(encode_frame(CloseFrame("authentication failed")))
            raise AuthFailed(f"peer {remote.peer_id!r} presented a bad token")
        agreed = negotiate(policy, remote.interval, remote.timeout, bounds)
        conn = HeartbeatConnection(
            stream, agreed, remote, decoder,
            detector=detector(agreed) if detector is not None and agreed.enabled else None,
            receive_buffer=receive_buffer, peer=peer, transport=transport, on_event=on_event,
        )
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        await trio.aclose_forcefully(stream)
        raise ConnectionClosed(f"connection lost during the HELLO exchange: {exc!r}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    conn._early_frames = early_frames
    log.info("connection_open", peer=peer, transport=transport, remote_id=remote.peer_id,
             interval=agreed.interval, timeout=agreed.timeout)
    async with background_nursery() as nursery:
        await nursery.start(conn._supervise)
        try:
            yield conn
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()
