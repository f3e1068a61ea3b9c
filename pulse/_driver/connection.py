"""``pulse.heartbeat(stream)``: heartbeats multiplexed with application messages on any
``trio.abc.Stream`` (TCP, TLS, Unix sockets, memory streams).

The wire format is pulse's msgpack frames (:mod:`pulse.frames`). Both sides send ``HELLO``
first and agree on one policy (:func:`pulse._core.policy.negotiate`); then application data
travels in ``DATA`` frames and heartbeats in ``PING``/``PONG`` frames.

One task runs per connection: the reader. Its timer is the process's one engine
(:mod:`pulse._driver.engine`): the connection is a timer client whose deadline is the liveness
machine's, and an arriving byte only stores a timestamp. Control frames never hop tasks: a
pong is written by the reader that read the ping, a heartbeat by the engine when it falls
due, both straight to the non-blocking socket (:class:`ControlWriter`); only when the socket
buffer is full (or the stream is not a plain socket: TLS, memory streams) does a short-lived
task finish the write. Application writes and control frames share one lock so frames never
interleave; a long application write reports its progress to the core so it is not taken
for idleness.
"""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import trio

from pulse._core.bounded import BoundedDeque
from pulse._core.confirm import ConfirmWindow, RequestConfirmation
from pulse._core.detectors import FailureDetector
from pulse._core.liveness import Liveness, LivenessState, PeerStats
from pulse._core.policy import HeartbeatPolicy, NegotiationBounds, negotiate
from pulse._core.rate import TokenBucket
from pulse._deprecation import deprecated
from pulse._driver.engine import current_engine
from pulse._driver.feed import EventFeed, EventHub
from pulse._driver.streams import aclose_forcefully, as_stream
from pulse._driver.tcpinfo import read_tcp_progress, tcp_socket
from pulse._driver.util import Doorbell, background_nursery, receive_keeping
from pulse._driver.writer import ControlWriter, raw_socket
from pulse._log import get_logger
from pulse.actions import Action, Close, LocalPause, PeerAlive, PeerDead, PeerSuspect, SendPing
from pulse.delivery import Delivery
from pulse.errors import (
    AuthFailed,
    ConnectionClosed,
    PeerTimeout,
    PingFlood,
    PulseError,
    QueueFull,
    RemoteProtocolError,
)
from pulse.frames import (
    PROTOCOL_VERSION,
    Data,
    Frame,
    FrameDecoder,
    FrameType,
    Hello,
    Ping,
    Pong,
    encode_frame,
    encode_heartbeat,
)
from pulse.frames import Close as CloseFrame

log = get_logger("pulse.connection")

#: Bytes handed to the stream per ``send_all`` call for application frames, so that a long
#: write reports progress (Netty's ``observeOutput``).
WRITE_CHUNK = 64 * 1024
#: Largest read per ``receive_some``.
READ_CHUNK = 64 * 1024
#: Pings per second a peer may send (on-demand ``pulse ping -i 0.01`` is 100); beyond that
#: they go unanswered, and a flood lasting a second's worth closes the connection.
DEFAULT_MAX_PING_RATE = 200.0
#: How long a graceful close (a CLOSE frame, a TLS close_notify) may take before the stream
#: is closed forcefully.
CLOSE_TIMEOUT = 1.0
#: Default bound on the unconfirmed window (messages) when delivery is tracked.
DEFAULT_WINDOW = 1024
#: Confirmation pings are at most this often (20 a second: a tenth of the default
#: ``max_ping_rate``, so a chatty application never looks like a ping flood).
CONFIRM_SPACING = 0.05

DetectorFactory = Callable[[HeartbeatPolicy], FailureDetector]
Authenticator = Callable[[str | None], bool]


class HeartbeatConnection:
    """One heartbeat-supervised connection; create it with :func:`heartbeat`.

    ``send`` / ``receive`` / ``async for`` carry application messages; ``events()`` reports
    liveness changes (:class:`~pulse.actions.PeerSuspect`, :class:`~pulse.actions.PeerAlive`,
    :class:`~pulse.actions.PeerDead`, :class:`~pulse.actions.LocalPause`, and a final
    :class:`~pulse.actions.Close`); ``stats()`` gives RTT, missed beats and suspicion.
    """

    __slots__ = ("_arrived", "_close_error", "_close_reason", "_control", "_decoder",
                 "_done_reading", "_early_frames", "_engine", "_events", "_goodbye", "_held",
                 "_held_bytes", "_inbound_receive", "_inbound_send", "_is_closed", "_liveness",
                 "_nursery",
                 "_on_liveness", "_paused", "_pings", "_pong_rtts", "_pong_waiters", "_raw",
                 "_resumed", "_room", "_send_lock", "_tcp", "_verified", "_verify_seq",
                 "_window", "hold_limit", "peer", "policy", "remote", "stream", "transport")

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
        on_liveness: Callable[[Action], None] | None,
        hold_limit: int = 1024 * 1024,
        max_ping_rate: float = DEFAULT_MAX_PING_RATE,
        delivery: Delivery | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.stream = stream
        self.policy = policy
        self.remote = remote
        self.peer = peer
        self.transport = transport
        self._decoder = decoder
        self._engine = current_engine()
        self._liveness = Liveness(policy, self._engine.now(), detector=detector)
        self._send_lock = anyio.Lock()
        self._control = ControlWriter(stream, self._send_lock, self._control_failed)
        self._inbound_send, self._inbound_receive = anyio.create_memory_object_stream[Any](receive_buffer)
        self._arrived = Doorbell()  # rung for every message queued and at close (receive)
        self._events: EventHub[Action] = EventHub()
        self._on_liveness = on_liveness
        self._close_reason: str | None = None
        self._close_error: PulseError | None = None
        self._is_closed = False
        # Messages the application's queue had no room for. Reading stops once the bytes read
        # meanwhile pass hold_limit, and every message took at least one byte, so this many
        # items are never reached (past them the connection closes with a protocol error).
        # (Made when the first message is held: most connections never hold one.)
        self._held: BoundedDeque[Any] | None = None
        self._held_bytes = 0  # bytes read since the first of them
        #: Bytes read past a full receive queue before reading stops (TCP then pushes back).
        self.hold_limit = hold_limit
        self._paused = False
        self._done_reading = False  # the end, a goodbye or a protocol error was read
        self._resumed: anyio.Event | None = None  # made by the reader task when it waits
        self._raw: socket.socket | None = None  # set while the engine reads for us
        self._goodbye: tuple[str, PulseError | None] | None = None
        self._early_frames: list[Frame] = []
        self._pong_waiters: dict[int, anyio.Event] = {}
        self._pong_rtts: dict[int, float] = {}
        self._nursery: anyio.abc.TaskGroup | None = None
        #: The peer's pings answered per second at most (0: no limit); a sustained flood
        #: closes the connection, so one client cannot keep the server busy with pongs.
        self._pings = TokenBucket(max_ping_rate, self._engine.now())
        #: The TCP socket the lossy-link profile asks the kernel about (None: not asked).
        self._tcp = tcp_socket(stream) if self._liveness.wants_transport_progress else None
        #: Messages written and not yet confirmed by a pong (None: delivery not tracked).
        self._window: ConfirmWindow[Any] | None = None
        if delivery is not None:
            self._window = ConfirmWindow(
                window, spacing=CONFIRM_SPACING,
                retry_after=policy.interval if policy.enabled else 1.0,
                keep_all=delivery is Delivery.AT_LEAST_ONCE,
            )
        # Made only while someone waits (an idle connection holds no event objects):
        self._room: anyio.Event | None = None  # set when the window shrinks or it closes
        # After a local pause (our process stopped or blocked past a deadline) application
        # writes wait until a pong to a heartbeat sent after the pause shows the connection
        # still stands, or until it is found dead: a peer that dropped us meanwhile must
        # not swallow what the application sends next.
        self._verify_seq: int | None = None
        self._verified: anyio.Event | None = None  # set when that check is over

    def _logger(self) -> Any:
        """The connection's logger, bound to its peer (bound per event: events are rare,
        and a bound logger kept per connection cost 1.5 KiB of its memory)."""
        return log.bind(peer=self.peer, transport=self.transport)

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
        return self._is_closed

    @property
    def close_reason(self) -> str | None:
        """Why the connection closed (None while open)."""
        return self._close_reason

    @property
    def close_error(self) -> PulseError | None:
        """The error the connection closed with, if any (e.g. :class:`~pulse.errors.PeerTimeout`,
        :class:`~pulse.errors.PingFlood`); None while open or after a clean close."""
        return self._close_error

    def stats(self) -> PeerStats:
        """RTT summary, missed beats, pings sent, pongs received, silence and suspicion."""
        return self._liveness.stats(self._engine.now())

    def events(self) -> EventFeed[Action]:
        """A new subscription to the liveness changes (see :class:`~pulse._driver.feed.EventHub`:
        each call is independent, the first also gets what happened before it; bounded,
        never blocks the driver)."""
        return self._events.subscribe()

    async def send(self, payload: object) -> None:
        """Send one application message (bytes, or any msgpack-serialisable object).

        Right after a local pause (this process was stopped or its loop blocked for longer
        than the policy's ``max_local_pause``) the message waits until the peer answers a
        heartbeat sent after the pause, or raises :class:`ConnectionClosed` once the
        connection turns out to be dead: nothing is written into a connection the peer may
        have dropped while we were away. With delivery tracking under
        ``Delivery.AT_LEAST_ONCE`` it also waits while ``window`` messages are unconfirmed.
        """
        self._raise_if_closed()
        if self._verify_seq is not None or self._liveness.overslept(self._engine.now()):
            await self._check_after_pause()
        window = self._window
        if window is not None and window.keep_all:
            while window.full and not self.closed:
                await _wait(self, "_room")
            self._raise_if_closed()
        await self._write(encode_frame(Data(payload)), progress=True)
        if window is not None:
            # Tracked even if the connection closed meanwhile: the bytes were handed over,
            # so the message may have arrived and its owner must hear of it.
            now = self._engine.now()
            self._confirm(window.written(payload, now), now)

    @property
    def unconfirmed(self) -> int:
        """Messages written that no pong has confirmed yet (0 when delivery is not tracked)."""
        return len(self._window) if self._window is not None else 0

    def take_unconfirmed(self) -> list[Any]:
        """Remove and return the unconfirmed messages, oldest first (call it once the
        connection closed: they may or may not have reached the peer)."""
        return self._window.take() if self._window is not None else []

    async def wait_confirmed(self) -> None:
        """Return once every message written is confirmed or the connection closed."""
        while self._window is not None and len(self._window) and not self.closed:
            await _wait(self, "_room")

    async def receive(self) -> Any:
        """The next application message; raises :class:`ConnectionClosed` (or its subclass
        :class:`PeerTimeout` when the peer was declared dead) once closed and drained."""
        try:
            message = await receive_keeping(self._inbound_receive, self._arrived)
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            if self._held:  # what arrived before the end is still the application's
                return self._held.popleft()
            error = self._closed_error()
            raise error from error.__cause__
        if self._held or self._paused:
            self._refill()
        return message

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
        request = next(iter(self._liveness.request_ping(self._engine.now())), None)
        if not isinstance(request, SendPing):
            raise self._closed_error()
        done = self._pong_waiters[request.seq] = anyio.Event()
        limit = self.policy.dead_after if timeout is None else timeout
        try:
            await self._write(encode_frame(Ping(request.seq, request.now)), progress=False)
            if self._window is not None:
                self._window.ping_written(request.seq, self._engine.now())
            with anyio.move_on_after(limit if limit > 0 else math.inf):
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

    # -- the timer (called by the engine) ------------------------------------------------

    def next_deadline(self) -> float | None:
        """The liveness machine's next deadline, or a due confirmation ping (None once
        closed)."""
        if self.closed:
            return None
        due = self._liveness.next_deadline()
        if self._window is not None:
            confirm = self._window.next_deadline()
            if confirm is not None and (due is None or confirm < due):
                due = confirm
        return due

    def handle_timer(self, now: float) -> None:
        """Carry out what the liveness machine says is due at ``now`` (synchronously)."""
        if self.closed:
            return
        if self._paused:
            # We stopped reading for our own slow consumer: the peer's silence means nothing.
            self._carry_out(self._liveness.data_received(now), now)
        if self._tcp is not None:
            self._liveness.transport_progress(now, read_tcp_progress(self._tcp))
        self._carry_out(self._liveness.handle_timer(now), now)
        if self._window is not None and not self.closed:
            self._confirm(self._window.handle_timer(now), now)

    def timer_failed(self, exc: Exception) -> None:
        """A callback (``on_liveness``) raised inside the engine: the connection closes and the
        error surfaces in the application's block."""
        self._drop(f"error in a callback: {exc!r}", None)
        if self._nursery is not None:
            self._nursery.start_soon(_reraise, exc)

    def _carry_out(self, actions: list[Action], now: float) -> None:
        paused = False
        for action in actions:
            if isinstance(action, SendPing):
                if paused:
                    self._verify_seq = action.seq  # its pong shows the connection stands
                self._write_ping(action, now)
            else:
                if isinstance(action, LocalPause):
                    paused = True
                self._on_action(action)

    def _write_ping(self, ping: SendPing, now: float, confirmation: bool = False) -> None:
        if self._control.send(encode_heartbeat(FrameType.PING, ping.seq, ping.now)):
            self._liveness.data_sent(now)
        if self._window is not None and not self.closed:
            self._window.ping_written(ping.seq, now, confirmation)

    def _confirm(self, requests: list[RequestConfirmation], now: float) -> None:
        """Write a confirmation ping when the window asks for one."""
        if not requests or self.closed:
            return
        for action in self._liveness.request_ping(now):
            if isinstance(action, SendPing):
                self._write_ping(action, now, confirmation=True)
        self._engine.watch(self)  # the next confirmation may be due before the liveness

    async def _check_after_pause(self) -> None:
        """Before an application write: notice a pause the engine has not handled yet, and
        wait for the connection to prove itself after one."""
        now = self._engine.now()
        if self._liveness.overslept(now):
            # We are the first to run after the pause. As the engine would: fresh evidence
            # first (what arrived while we were away, e.g. pongs that confirm messages),
            # then report the pause and send the heartbeat that tests the connection now,
            # instead of writing into it blind.
            if self._raw is not None and not self._paused:
                self.on_readable(now)
            if not self.closed:
                self.handle_timer(now)
                self._engine.watch(self)
        while self._verify_seq is not None and not self.closed and not self._paused:
            await _wait(self, "_verified")
        self._raise_if_closed()

    # -- reading: the engine's readiness set, or one task ---------------------------------

    def _start(self, nursery: anyio.abc.TaskGroup) -> None:
        """Start reading and heartbeating; ``nursery`` runs the rare task the connection
        needs (a write that must wait for room, a goodbye, a task reader)."""
        self._nursery = nursery
        self._control.nursery = nursery
        now = self._engine.now()
        for frame in self._early_frames:
            if self.closed or self._done_reading:
                break  # a goodbye, an error or a flood verdict ends them, as in _feed
            self._on_frame(frame, now)
        self._early_frames = []
        if not self.closed:
            self._engine.watch(self)
            raw = raw_socket(self.stream)
            if raw is not None and self._engine.can_read:
                self._raw = raw
                self._engine.add_reader(raw, self)
            else:
                nursery.start_soon(self._read_task)

    def on_readable(self, now: float) -> None:
        """The engine saw bytes (or the end) waiting in the socket: read once, act."""
        assert self._raw is not None
        try:
            chunk = self._raw.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop(f"connection lost: {exc!r}", None)
            return
        if not chunk:
            self._stop_reading()
            self._spawn(self._finish("connection closed by peer", None))
            return
        self._feed(chunk, now)

    async def _read_task(self) -> None:
        """For streams without a plain socket (TLS, memory streams)."""
        try:
            while not self.closed and not self._done_reading:
                if self._paused:
                    await _wait(self, "_resumed")
                    continue
                chunk = await self.stream.receive_some(READ_CHUNK)
                if not chunk:
                    await self._finish("connection closed by peer", None)
                    return
                self._feed(chunk, self._engine.now())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await self._finish(f"connection lost: {exc!r}", None, graceful=False)

    def _feed(self, chunk: bytes | bytearray, now: float) -> None:
        try:
            frames = self._decoder.feed(chunk)
        except RemoteProtocolError as exc:
            self._protocol_error(exc)
            return
        for frame in frames:
            if self.closed or self._done_reading:
                return
            self._on_frame(frame, now)
        if self._held:
            # Reading goes on (pings are answered) while what waits for the application
            # stays under the bound; past it, reading stops and TCP pushes back.
            self._held_bytes += len(chunk)
            if self._held_bytes > self.hold_limit and not self._paused:
                self._paused = True
                if self._raw is not None:
                    self._engine.pause_reader(self._raw)
                if self._verify_seq is not None:
                    # No pong can be read until the application catches up, and it may be
                    # waiting in send(): give up the check rather than deadlock (what is
                    # written from here on is covered by the delivery contract).
                    self._verify_seq = None
                    _wake(self, "_verified")

    def _on_frame(self, frame: Frame, now: float) -> None:
        if isinstance(frame, Pong):
            actions = self._liveness.pong(now, frame.seq)
            if actions:
                self._carry_out(actions, now)
            if self._verify_seq is not None and frame.seq >= self._verify_seq:
                self._verify_seq = None
                _wake(self, "_verified")
            window = self._window
            if window is not None:
                before = len(window)
                requests = window.pong(frame.seq, now)
                if len(window) < before:
                    _wake(self, "_room")
                self._confirm(requests, now)
                if window.next_deadline() is not None:
                    self._engine.watch(self)
            waiter = self._pong_waiters.get(frame.seq)
            if waiter is not None:
                self._pong_rtts[frame.seq] = now - frame.ts
                waiter.set()
            return
        actions = self._liveness.data_received(now)
        if actions:
            self._carry_out(actions, now)
        if isinstance(frame, Ping):
            # Answered at once, from wherever the ping was read; a peer that pings faster
            # than it reads our pongs fills the control backlog and surplus pongs are dropped.
            if not self._pings.take(now):
                if self._pings.refused > self._pings.burst:  # a second's worth unanswered
                    self._protocol_error(PingFlood(
                        f"ping flood: more than {self._pings.rate:g} pings per second"))
                return
            if self._control.send(encode_heartbeat(FrameType.PONG, frame.seq, frame.ts)):
                self._liveness.data_sent(now)
        elif isinstance(frame, Data):
            self._deliver(frame.payload)
        elif isinstance(frame, CloseFrame):
            self._stop_reading()
            self._spawn(self._finish(f"closed by peer: {frame.reason}", None))
        elif isinstance(frame, Hello):
            self._protocol_error(RemoteProtocolError("HELLO received twice"))

    def _deliver(self, payload: Any) -> None:
        """Hand a message to the application; when its queue is full, hold it (and every
        later one, to keep the order) until the application catches up."""
        if not self._held:
            try:
                self._inbound_send.send_nowait(payload)
                self._arrived.ring()
                return
            except anyio.WouldBlock:
                pass
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return  # closed: nobody will read it
        if self._held is None:
            self._held = BoundedDeque(self.hold_limit + READ_CHUNK, "held messages")
        try:
            self._held.append(payload)
        except QueueFull as exc:
            self._protocol_error(RemoteProtocolError(f"{exc}: the application does not read"))

    def _refill(self) -> None:
        """After the application took a message: move held ones in, read again if all fit."""
        held = self._held
        while held:
            try:
                self._inbound_send.send_nowait(held[0])
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                return
            self._arrived.ring()
            held.popleft()
        self._held_bytes = 0
        if self._paused and not self.closed:
            self._paused = False
            _wake(self, "_resumed")
            if self._raw is not None:
                self._engine.resume_reader(self._raw)

    def _protocol_error(self, exc: RemoteProtocolError) -> None:
        self._logger().warning("protocol_error", reason=str(exc))
        self._stop_reading()
        reason = f"protocol error: {exc}"
        self._spawn(self._say_goodbye(reason, reason, exc, shield=False))

    def _stop_reading(self) -> None:
        self._done_reading = True
        if self._raw is not None:
            self._engine.remove_reader(self._raw)
            self._raw = None
        _wake(self, "_resumed")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(_await, work)

    def _control_failed(self, exc: BaseException) -> None:
        """The control writer lost the stream."""
        self._drop(f"connection lost: {exc!r}", None)

    def _drop(self, reason: str, error: PulseError | None) -> None:
        """Close at once from synchronous code: record why, release the stream in the
        connection's nursery."""
        if self.closed:
            return
        if self._nursery is not None:
            self._nursery.start_soon(self._release, False)
        self._mark_closed(reason, error)

    def _on_action(self, action: Action) -> None:
        if isinstance(action, PeerSuspect):
            self._logger().info("peer_suspect", missed=action.missed, silent_for=action.silent_for)
        elif isinstance(action, PeerAlive):
            self._logger().info("peer_alive", after=action.after)
        elif isinstance(action, LocalPause):
            pass  # published below; the engine logs one event per stall, not one per peer
        elif isinstance(action, PeerDead):
            self._logger().warning("peer_dead", reason=action.reason, missed=action.missed)
        elif isinstance(action, Close):
            # The peer is dead: no goodbye can reach it, so the stream is closed at once.
            self._drop(action.reason, PeerTimeout(action.reason))
            return
        self._publish(action)

    def _publish(self, action: Action) -> None:
        self._events.publish(action)
        if self._on_liveness is not None:
            self._on_liveness(action)

    # -- helpers -------------------------------------------------------------------------

    async def _say_goodbye(self, said: str, reason: str, error: PulseError | None, *,
                           shield: bool) -> None:
        """Send CLOSE(``said``) for at most :data:`CLOSE_TIMEOUT`, then close for ``reason``."""
        self._goodbye = (reason, error)  # the reason even if the CLOSE frame is cut short
        with anyio.move_on_after(CLOSE_TIMEOUT) as scope:
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
                await self._control.flush_locked()  # control bytes owed go first, whole
                for start in range(0, len(view), WRITE_CHUNK):
                    await self.stream.send_all(view[start:start + WRITE_CHUNK])
                    if progress and start + WRITE_CHUNK < len(view):
                        self._liveness.output_progress(self._engine.now())
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                await self._finish(f"connection lost: {exc!r}", None, graceful=False)
                raise self._closed_error() from exc
            except anyio.get_cancelled_exc_class():
                reason, error = self._goodbye or ("a write was cancelled part-way through a frame",
                                                  None)
                await self._finish(reason, error, graceful=False)
                raise
            self._liveness.data_sent(self._engine.now())

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
        self._is_closed = True
        self._engine.forget(self)
        self._stop_reading()
        self._control.close()
        for waiter in self._pong_waiters.values():
            waiter.set()  # wake pending pings: they report the close
        _wake(self, "_verified")  # wake writers waiting for a check or for room: they fail
        _wake(self, "_room")
        self._inbound_send.close()
        self._arrived.ring()
        self._logger().info("connection_closed", reason=reason)
        try:
            self._publish(Close(reason))
        finally:
            self._events.close()

    async def _release(self, graceful: bool) -> None:
        """Close the stream (never hanging: a stuck graceful close becomes a forceful one) and
        stop the connection's tasks."""
        with anyio.CancelScope(shield=True):
            if graceful:
                with anyio.move_on_after(CLOSE_TIMEOUT):
                    try:
                        await self.stream.aclose()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        pass
            await aclose_forcefully(self.stream)

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
    with anyio.move_on_after(timeout) as scope:
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
    stream: trio.abc.Stream | anyio.abc.ByteStream,
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
    hold_limit: int = 1024 * 1024,
    max_ping_rate: float = DEFAULT_MAX_PING_RATE,
    peer: str = "?",
    transport: str = "stream",
    on_liveness: Callable[[Action], None] | None = None,
    delivery: Delivery | None = None,
    window: int = DEFAULT_WINDOW,
    on_event: Callable[[Action], None] | None = None,
) -> AsyncIterator[HeartbeatConnection]:
    """Wrap ``stream`` in a heartbeat-supervised connection for the ``async with`` block.

    ``stream`` is any trio stream or any anyio byte stream; :func:`pulse.open_tcp_stream`
    opens a TCP one on whichever loop runs (trio, asyncio, uvloop).

    Both sides exchange HELLO frames (version, proposed interval and timeout, ``peer_id``,
    optional ``token``); ``authenticate(token)`` returning False refuses the peer with
    :class:`~pulse.errors.AuthFailed`. The negotiated policy is the lower non-zero proposal,
    clamped by ``bounds``. ``detector(policy)`` builds a custom failure detector (fixed
    timeout by default). A policy with ``lossy=LossyLink()`` (the lossy-link profile) lets a
    due verdict wait while the kernel's ``TCP_INFO`` shows the peer's segments still
    arriving over a retransmitting path (TCP and TLS streams on Linux; sampled at each timer
    wake-up). Leaving the block closes the connection.

    Memory is bounded: a frame body is at most ``max_frame_size`` bytes; at most
    ``receive_buffer`` messages wait for the application, and when those are taken up the
    connection goes on reading (and answering heartbeats) for at most ``hold_limit`` more
    bytes, then stops reading so that TCP pushes back on the peer. Nothing is dropped.
    The peer's pings are answered up to ``max_ping_rate`` per second (200); a flood beyond
    that for about a second closes the connection with a protocol error ("ping flood").

    ``delivery`` (None: off) tracks which messages the peer has read: every heartbeat
    answered confirms the messages written before it, and a confirmation heartbeat follows
    a burst of writes (at most one every :data:`CONFIRM_SPACING` s). ``unconfirmed`` counts
    the rest and ``take_unconfirmed()`` hands them over once the connection is gone, for a
    reconnecting owner to report or resend (:class:`~pulse.delivery.Delivery`; at most
    ``window`` are kept, and under ``AT_LEAST_ONCE`` ``send`` waits while that many are
    unconfirmed).

    ``on_liveness(action)`` is called synchronously with every liveness change (the same
    actions ``events()`` yields). ``on_event=`` is its deprecated old name: ``on_event``
    now means a client's state changes (:class:`pulse.plugins.tcp.StateChange`).
    """
    if on_event is not None:
        if on_liveness is not None:
            raise TypeError("heartbeat() got both on_event= (deprecated) and on_liveness=")
        deprecated("heartbeat(on_event=...)", "on_liveness=", stacklevel=4)
        on_liveness = on_event
    stream = as_stream(stream)
    policy = policy or HeartbeatPolicy()
    decoder = FrameDecoder(max_frame_size=max_frame_size)
    hello = Hello(PROTOCOL_VERSION, policy.interval, policy.dead_after, peer_id, token)
    # The stream is ours from here on: whatever ends the set-up (a refusal, a lost link, a
    # cancellation, an error in a callback) closes it.
    try:
        remote, early_frames = await _handshake(stream, decoder, hello, handshake_timeout)
        if authenticate is not None and not authenticate(remote.token):
            with anyio.move_on_after(CLOSE_TIMEOUT):
                await stream.send_all(encode_frame(CloseFrame("authentication failed")))
            raise AuthFailed(f"peer {remote.peer_id!r} presented a bad token")
        agreed = negotiate(policy, remote.interval, remote.timeout, bounds)
        conn = HeartbeatConnection(
            stream, agreed, remote, decoder,
            detector=detector(agreed) if detector is not None and agreed.enabled else None,
            receive_buffer=receive_buffer, peer=peer, transport=transport, on_liveness=on_liveness,
            hold_limit=hold_limit, max_ping_rate=max_ping_rate, delivery=delivery,
            window=window,
        )
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        await aclose_forcefully(stream)
        raise ConnectionClosed(f"connection lost during the HELLO exchange: {exc!r}") from exc
    except BaseException:
        await aclose_forcefully(stream)
        raise
    conn._early_frames = early_frames
    log.info("connection_open", peer=peer, transport=transport, remote_id=remote.peer_id,
             interval=agreed.interval, timeout=agreed.timeout)
    async with background_nursery() as nursery:
        conn._start(nursery)
        await anyio.lowlevel.checkpoint()  # let the peer's side of the HELLO exchange settle
        try:
            yield conn
        finally:
            with anyio.CancelScope(shield=True):
                await conn.aclose()


async def _await(work: Coroutine[Any, Any, None]) -> None:
    await work


async def _reraise(exc: Exception) -> None:
    raise exc


async def _wait(owner: HeartbeatConnection, name: str) -> None:
    """Wait for the next ``_wake(owner, name)`` (the event is made by the first waiter)."""
    event = getattr(owner, name)
    if event is None:
        event = anyio.Event()
        setattr(owner, name, event)
    await event.wait()


def _wake(owner: HeartbeatConnection, name: str) -> None:
    """Wake whoever waits on ``owner.<name>``; the next waiter gets a fresh event."""
    event = getattr(owner, name)
    if event is not None:
        event.set()
        setattr(owner, name, None)
