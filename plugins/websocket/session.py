"""One WebSocket connection's life under heartbeat supervision: reader, writer, liveness.

:meth:`Session.run` runs a session in the caller's task; :meth:`Session.launch` runs it
with no task of its own (a server's way on plain sockets: tasks are started only to write,
to wait for a full inbox, and once to close). Either way the session's timer is the
process's one engine (:mod:`pulse._driver.engine`), and so is its reader on a plain socket:

* the **reader** reports every complete frame to the liveness core (a finished frame proves
  the peer alive: a timestamp, nothing re-armed), then handles it: pings are answered,
  pongs are matched to the ping they name, messages go to the inbox, a close frame ends the
  session;
* the **writer** sends queued control frames first (between two fragments of a long message
  too), then messages from the :class:`~.outbox.Outbox`. A message leaves the outbox only
  after its last byte was handed to the socket;
* the **engine** calls :meth:`Session.handle_timer` when the liveness core's deadline falls
  due: pings, and finally the verdict. Never blocked by the writer, so a peer that stopped
  reading (and filled our socket buffer) is still declared dead on time.

Control frames skip the writer when it is idle: a pong (written by the reader) or a
heartbeat (written by the engine) goes straight to the non-blocking socket; only when the
writer is busy, the socket buffer is full or the stream is not a plain socket (``wss://``)
is it queued for the writer.

Delivery bookkeeping: a ping written after message *n* proves, once its pong arrives, that
the peer's WebSocket layer read messages up to *n* (TCP keeps order and a peer answers a ping
after reading what came before it). Messages written but not yet covered by a pong are the
*unconfirmed window*; the writer asks for one confirmation ping at a time while the window
is not empty. When the connection dies, the owner either reports the window as possibly lost
or sends it again (:class:`Delivery`).

When the application stops consuming and the inbox is full, the reader stops reading. The
liveness core then asks the kernel instead (``evidence_pending``): bytes that keep arriving
in the socket prove the peer alive, a receive queue that may be full withholds the verdict
(the peer cannot send, so its silence means nothing), and a small queue that does not grow
is real silence, judged as such. Over a stream without a socket (memory streams) pulse
cannot tell and withholds the verdict.

Under the lossy-link profile (``policy.lossy``) the engine's timer call first samples the TCP
socket's ``TCP_INFO`` (also under ``wss://``) and hands the facts to the liveness core, which
decides whether a due verdict waits for retransmission (:mod:`pulse._core.lossy`).
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.abc
import trio

from pulse._core.detectors import FailureDetector
from pulse._core.liveness import Liveness, PeerStats
from pulse._core.policy import HeartbeatPolicy
from pulse._core.rate import TokenBucket
from pulse._driver.connection import DEFAULT_MAX_PING_RATE
from pulse._driver.engine import current_engine
from pulse._driver.phase import Phase, bounded
from pulse._driver.tcpinfo import read_tcp_progress, tcp_socket
from pulse._driver.writer import raw_socket
from pulse._log import get_logger
from pulse.actions import Action, Close, LocalPause, PeerAlive, PeerDead, PeerSuspect, SendPing
from pulse.delivery import Delivery as Delivery
from pulse.frames import Ping as FramePing

from .connection import (
    READ_CHUNK,
    CloseReceived,
    MessageReceived,
    PingReceived,
    PongReceived,
    ReceivedEvent,
    WebSocketConnection,
)
from .errors import WebSocketClosed, WebSocketProtocolError
from .heartbeat import HeartbeatMode, classify_inband, inband_ping, inband_pong, ping_payload, pong_seq
from .inbox import Inbox
from .outbox import Entry, Outbox, Payload

log = get_logger("pulse.websocket")

DEFAULT_FRAGMENT_SIZE: Final = 64 * 1024
"""Messages longer than this are sent as fragments, so pings can pass between them."""

DEFAULT_WINDOW: Final = 1024
"""Default bound on the unconfirmed window, in messages."""

BATCH_BYTES: Final = 64 * 1024
"""Small frames ready at the same time are written together, up to about this many bytes."""

BATCH_MESSAGES: Final = 256
"""At most this many messages per write."""

LEFTOVER_READ_TIME: Final = 0.05
"""After a session ended without a close handshake, how long to read what the socket still
holds (it is already here: this only bounds a read that would wait for more)."""

BACKLOG_FULL_FRACTION: Final = 4
"""Unread bytes above 1/4 of the socket's receive buffer (as the kernel reports it, i.e.
doubled) may mean the buffer is full and the peer flow-controlled."""

CLOSE_GOING_AWAY: Final = 1001
CLOSE_INTERNAL_ERROR: Final = 1011
#: Control frames queued for the writer at most (our own pings aside): a peer that sends
#: pings and never reads cannot grow the queue.
MAX_QUEUED_CONTROL: Final = 16
CLOSE_NORMAL: Final = 1000
CLOSE_POLICY_VIOLATION: Final = 1008
OFFENDER_CLOSE_CODES: Final = frozenset({1002, 1003, 1007, CLOSE_POLICY_VIOLATION, 1009})
"""Codes of a close we send because the peer broke the rules (protocol error, unacceptable
or invalid data, policy such as a ping flood, a message too big)."""
CLOSE_ABNORMAL: Final = 1006
CLOSE_PEER_TIMEOUT: Final = CLOSE_INTERNAL_ERROR
"""The close code sent to a peer declared dead (as the websockets library does)."""


class Initiator(enum.Enum):
    """Who ended a session."""

    PEER = "peer"        # the peer sent a close frame
    LOCAL = "local"      # we closed: the application, a protocol error, a dead peer
    NETWORK = "network"  # the transport broke (close code 1006)


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """Why a connection ended: the close code, who ended it, and whether the peer was dead."""

    reason: str
    code: int
    initiator: Initiator
    peer_dead: bool = False


class _Kind(enum.Enum):
    PING = "ping"
    PONG = "pong"
    INBAND = "inband"  # a data frame (in-band heartbeat): only between whole messages


@dataclass(frozen=True, slots=True)
class _Control:
    kind: _Kind
    payload: bytes
    seq: int | None = None  # the ping's sequence number, for delivery confirmation


@dataclass(slots=True)
class _Direct:
    message: Payload
    done: anyio.Event


class Session:
    """Runs one open :class:`~.connection.WebSocketConnection` until it ends."""

    __slots__ = ("_backlog_seen", "_confirm_pending", "_confirm_seq", "_control", "_direct",
        "_end", "_ended", "_engine", "_failure", "_finishing", "_gate_open", "_going_away", "_helpers",
        "_inbound_pending", "_inbox", "_inbox_blocked", "_markers", "_nursery", "_on_closed",
        "_on_end", "_on_liveness", "_owed", "_pings", "_raw", "_reading", "_target", "_tcp", "_unconfirmed",
        "_writer_stopped", "_writing", "_written", "close_timeout", "conn",
        "delivery", "fragment_size", "heartbeat", "liveness", "opened_at", "outbox", "peer",
        "policy", "presumed_delivered", "transport", "window")

    def __init__(
        self,
        conn: WebSocketConnection,
        *,
        policy: HeartbeatPolicy,
        outbox: Outbox,
        inbox: Inbox,
        heartbeat: HeartbeatMode = HeartbeatMode.CONTROL,
        detector: FailureDetector | None = None,
        delivery: Delivery = Delivery.AT_MOST_ONCE,
        window: int = DEFAULT_WINDOW,
        fragment_size: int = DEFAULT_FRAGMENT_SIZE,
        close_timeout: float = 2.0,
        hold_outbox: bool = False,
        peer: str = "",
        transport: str = "ws",
        on_liveness: Callable[[Action], None] | None = None,
        max_ping_rate: float = DEFAULT_MAX_PING_RATE,
        on_end: Callable[[SessionEnd], None] | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window!r}")
        if fragment_size < 0:
            raise ValueError(f"fragment_size must be >= 0 (0: never fragment), got {fragment_size!r}")
        self.conn = conn
        self.policy = policy
        self.outbox = outbox
        self.heartbeat = heartbeat
        self.delivery = delivery
        self.window = window
        self.fragment_size = fragment_size
        self.close_timeout = close_timeout
        self.peer = peer
        self.transport = transport
        self._on_liveness = on_liveness
        #: Called once, synchronously, the moment the session ends (before the close frame
        #: is written): the server starts an offender's cooldown there, so a client that
        #: reconnects as soon as it sees the close is already refused.
        self._on_end = on_end
        self._inbox = inbox
        self._target = inbox
        self._engine = current_engine()
        self.liveness = Liveness(policy, self._engine.now(), detector=detector)
        #: (reason, code, deadline) while ending after the outbox is written (finish()).
        self._finishing: tuple[str, int, float] | None = None
        #: The peer's pings answered per second at most (0: no limit); a flood past that
        #: for about a second ends the session with 1008, so one client cannot keep the
        #: server busy writing pongs.
        self._pings = TokenBucket(max_ping_rate, self._engine.now())
        conn.on_receive = self._received
        self._raw = raw_socket(conn.stream)
        #: The TCP socket the lossy-link profile asks the kernel about (None: not asked).
        self._tcp = tcp_socket(conn.stream) if self.liveness.wants_transport_progress else None
        self._owed = b""  # the rest of a control frame the socket took only part of
        self._reading: socket.socket | None = None  # set while the engine reads for us
        self._nursery: anyio.abc.TaskGroup | None = None
        self._failure: Exception | None = None
        # Short FIFOs as lists: an empty deque costs ~600 bytes, a list 56, and these stay
        # small (bounded by the window) or empty most of the time.
        self._control: list[_Control] = []
        self._direct: list[_Direct] = []
        self._writing = False  # a writer task is running (started on demand, ends when idle)
        self._writer_stopped: anyio.Event | None = None
        self._gate_open = not hold_outbox
        self._unconfirmed: list[tuple[Entry, int]] = []
        self._markers: list[tuple[int, int]] = []  # (ping seq, messages written before)
        self._written = 0
        self._confirm_pending = False
        self._confirm_seq: int | None = None
        self.presumed_delivered = 0
        self._inbox_blocked = False
        self._backlog_seen: int | None = None
        self._inbound_pending: Payload | None = None
        self._end: SessionEnd | None = None
        self._ended: anyio.Event | None = None  # made only when a task waits for the end
        self._going_away = False  # ended because the server stops (no leftovers read)
        # Launched sessions (no task of their own, see launch): the cancel scopes of the
        # helper tasks they started, and what to call once closed.
        self._helpers: list[anyio.CancelScope] | None = None
        self._on_closed: Callable[[SessionEnd], Awaitable[None]] | None = None
        outbox.subscribe(self._wake)  # undone by outbox.unsubscribe (no closure kept)
        self.opened_at = self._engine.now()

    # -- public controls ------------------------------------------------------------------

    @property
    def ended(self) -> SessionEnd | None:
        """Why the session ended, once it has."""
        return self._end

    def end(
        self,
        reason: str,
        code: int = CLOSE_NORMAL,
        initiator: Initiator = Initiator.LOCAL,
        *,
        peer_dead: bool = False,
    ) -> None:
        """End the session (idempotent: the first reason wins)."""
        if self._end is None:
            self._end = SessionEnd(reason, code, initiator, peer_dead)
            if self._on_end is not None:
                self._on_end(self._end)
            if self._ended is not None:
                self._ended.set()
            if self._helpers is not None:  # launched: no task waits for the end, start one
                assert self._nursery is not None
                self._nursery.start_soon(self._close_launched)

    def finish(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        """End once everything queued was written — or ``close_timeout`` from now, whichever
        comes first (the bound runs on the session's timer). Idempotent."""
        if self._end is not None or self._finishing is not None:
            return
        if not len(self.outbox):
            self.end(reason, code)
            return
        self._finishing = (reason, code, self._engine.now() + self.close_timeout)
        self._engine.watch(self)
        self._wake()

    def _finish_if_written(self) -> None:
        finishing = self._finishing
        if finishing is not None and not len(self.outbox):
            self.end(finishing[0], finishing[1])

    def release_outbox(self) -> None:
        """Let the writer start on the outbox (after an ``on_connect`` hook)."""
        self._gate_open = True
        self._wake()

    async def send_direct(self, message: Payload) -> None:
        """Send ``message`` ahead of the outbox; return once it was handed to the socket."""
        item = _Direct(message, anyio.Event())
        self._direct.append(item)
        self._wake()
        async with anyio.create_task_group() as nursery:
            async def watch_end() -> None:
                await self._end_event().wait()
                nursery.cancel_scope.cancel()
            nursery.start_soon(watch_end)
            await item.done.wait()
            nursery.cancel_scope.cancel()
        if not item.done.is_set():
            raise WebSocketClosed(self._end.reason if self._end else "closed", self.close_code)

    def divert(self, inbox: Inbox) -> None:
        """Deliver received messages to ``inbox`` until :meth:`undivert`."""
        self._target = inbox

    def undivert(self) -> None:
        """Move what is left in the diverted inbox to the main one, in order, and deliver
        there again (nothing is lost or reordered: no await happens in between)."""
        diverted = self._target
        if diverted is self._inbox:
            return
        while True:
            try:
                message = diverted.get_nowait()
            except anyio.WouldBlock:
                break
            self._inbox.put_leftover(message)
        self._target = self._inbox

    def _end_event(self) -> anyio.Event:
        if self._ended is None:
            self._ended = anyio.Event()
            if self._end is not None:
                self._ended.set()
        return self._ended

    @property
    def close_code(self) -> int:
        """The close code the session ended with (1006 until it ends)."""
        return self._end.code if self._end else CLOSE_ABNORMAL

    def stats(self) -> PeerStats:
        """RTT, missed beats and silence of the peer now."""
        return self.liveness.stats(self._engine.now())

    def unconfirmed(self) -> list[Entry]:
        """Messages written but not yet confirmed by a pong, oldest first."""
        return [entry for entry, _ in self._unconfirmed]

    # -- running --------------------------------------------------------------------------

    async def run(self) -> SessionEnd:
        """Run until the session ends; closes the connection; returns why it ended."""
        try:
            async with anyio.create_task_group() as nursery:
                self._nursery = nursery
                raw = self._raw if self._engine.can_read else None
                if raw is not None:
                    self._reading = raw
                    self._engine.add_reader(raw, self)
                    self._drain()  # events that came with the handshake
                else:
                    nursery.start_soon(self._reader)
                self._wake()  # anything queued before the session started
                self._engine.watch(self)
                try:
                    await self._end_event().wait()
                finally:
                    # The closing phase starts: the writer may finish the frame it is
                    # writing (a frame cut short breaks the stream for the close frame)
                    # within the grace, which bounds every write from here on.
                    self.conn.abort_write(self._grace())
                nursery.cancel_scope.cancel()  # waits for the writer's shielded write
        finally:
            await self._wind_down()
        if self._failure is not None:
            raise self._failure
        assert self._end is not None
        return self._end

    @property
    def launchable(self) -> bool:
        """True when :meth:`launch` can run this session (the engine reads its socket)."""
        return self._raw is not None and self._engine.can_read

    def launch(self, nursery: anyio.abc.TaskGroup,
               on_closed: Callable[[SessionEnd], Awaitable[None]]) -> None:
        """Run the session without a task of its own (only when :attr:`launchable`).

        The engine reads the socket and keeps the time, heartbeats and pongs go straight
        to the socket; tasks are started in ``nursery`` only while there is something to
        wait for (a write, a full inbox) and once to close the connection, after which
        ``on_closed(end)`` is awaited there. An idle connection costs no task. The owner
        must call :meth:`go_away` (or :meth:`end`) on every launched session before
        ``nursery`` closes, e.g. when the server stops.
        """
        if not self.launchable or self._nursery is not None:
            raise RuntimeError("launch() needs an engine-readable socket and a fresh session")
        self._nursery = nursery
        self._helpers = []
        self._on_closed = on_closed
        assert self._raw is not None
        self._reading = self._raw
        self._engine.add_reader(self._raw, self)
        self._drain()  # events that came with the handshake
        self._wake()  # anything queued before the session started
        self._engine.watch(self)

    @property
    def launched(self) -> bool:
        """True when the session runs through :meth:`launch` (without a task of its own)."""
        return self._helpers is not None

    def go_away(self) -> None:
        """The server stops: end with 1001 (going away), as a cancelled :meth:`run` does."""
        if self._end is None:
            self._going_away = True
            self.end("going away", CLOSE_GOING_AWAY, Initiator.LOCAL)

    async def _close_launched(self) -> None:
        """A launched session ended: what :meth:`run` does after the end, in a task of the
        owner's nursery, shielded (the server may be stopping) and bounded by the grace."""
        assert self._end is not None and self._on_closed is not None
        with anyio.CancelScope(shield=True):
            try:
                self.conn.abort_write(self._grace())  # the closing phase bounds every write
                if self._writing:  # the writer only awaits writes: it stops by the limit
                    self._writer_stopped = anyio.Event()
                    await self._writer_stopped.wait()
                for scope in self._helpers or ():
                    scope.cancel()
                await self._wind_down()
            finally:
                end = self._end
                if self._failure is not None:
                    log.error("session_failed", peer=self.peer, transport=self.transport,
                              reason=repr(self._failure))
                await self._on_closed(end)

    async def _wind_down(self) -> None:
        self._engine.forget(self)
        self._stop_reading()
        self.outbox.unsubscribe(self._wake)
        self.outbox.release(interrupted=self.conn.write_interrupted)
        with anyio.CancelScope(shield=True):
            await self._shutdown()

    async def _helper(self, work: Callable[[Payload], Awaitable[None]], data: Payload) -> None:
        """A launched session's helper task: cancelled when the session closes."""
        assert self._helpers is not None
        with anyio.CancelScope() as scope:
            self._helpers.append(scope)
            try:
                await work(data)
            finally:
                self._helpers.remove(scope)

    async def _shutdown(self) -> None:
        cancelled = self._end is None or self._going_away
        end = self._end or SessionEnd("going away", CLOSE_GOING_AWAY, Initiator.LOCAL)
        self._end = end
        if self._ended is not None:
            self._ended.set()
        conn = self.conn
        graceful = not cancelled and self._waits_on_peer(end)
        deadline = conn.abort_write(self._grace())  # the end of the closing phase
        if end.initiator is not Initiator.NETWORK and not conn.write_interrupted:
            try:
                if conn.can_send_close:
                    code = CLOSE_NORMAL if end.code in (1005, 1006) else end.code
                    owed, self._owed = self._owed, b""  # a control frame's rest first
                    await conn.write(owed + conn.encode_close(code, end.reason))
            except WebSocketClosed:
                pass
        # What the peer sent before the end is still the application's: read what is
        # already here (after our close frame: up to the peer's answer) and queue it beyond
        # the inbox's bound, so closing never waits for a slow application.
        if cancelled:
            leftovers = [self._inbound_pending] if self._inbound_pending is not None else []
        else:
            leftovers = await self._read_leftovers(deadline, until_close=graceful)
        for message in leftovers:
            self._target.put_leftover(message)
        await conn.aclose()
        log.debug("closed", peer=self.peer, transport=self.transport, reason=end.reason,
                  code=end.code, initiator=end.initiator.value)

    def _grace(self) -> float:
        """How long closing may wait on the peer: short when it is dead, gone or broke the
        rules."""
        end = self._end
        if end is not None and self._waits_on_peer(end):
            return self.close_timeout
        return min(self.close_timeout, 0.25)

    @staticmethod
    def _waits_on_peer(end: SessionEnd) -> bool:
        """A close we started for a reason of our own waits for the peer's answer (and reads
        what it still sends); not one for a dead peer, nor one for a peer that broke the
        protocol or flooded us (reading on would only serve the offender)."""
        return (end.initiator is Initiator.LOCAL and not end.peer_dead
                and end.code not in OFFENDER_CLOSE_CODES)

    async def _read_leftovers(self, deadline: float, *, until_close: bool) -> list[Payload]:
        """Messages received but not delivered when the session ended: the one the reader
        held, those wsproto already parsed, and those still in the socket (read until
        ``deadline``, or only what is already there unless ``until_close``)."""
        leftovers: list[Payload] = []
        if self._inbound_pending is not None:
            leftovers.append(self._inbound_pending)
            self._inbound_pending = None
        if not until_close:
            deadline = min(deadline, self._engine.now() + LEFTOVER_READ_TIME)
        with bounded(Phase.CLOSE, max(0.0, deadline - self._engine.now()), move_on=True):
            try:
                while True:
                    event = await self.conn.receive_event()
                    if isinstance(event, CloseReceived):
                        if until_close and event.code != CLOSE_ABNORMAL:
                            # The peer answered our close frame: it read all we sent before.
                            self._unconfirmed.clear()
                        break
                    if isinstance(event, MessageReceived) and not self._is_heartbeat(event.data):
                        leftovers.append(event.data)
            except (WebSocketClosed, WebSocketProtocolError):
                pass
        return leftovers

    def _is_heartbeat(self, data: Payload) -> bool:
        return (self.heartbeat is HeartbeatMode.FRAMES and isinstance(data, bytes)
                and classify_inband(data) is not None)

    # -- reading: the engine's readiness set, or a task -----------------------------------

    def on_readable(self, now: float) -> None:
        """The engine saw bytes (or the end) in the socket: read once, handle the events."""
        assert self._reading is not None
        try:
            data = self._reading.recv(READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # reset: wsproto reports 1006
        if not data:
            self._stop_reading()
        self.conn.feed(data)
        self._drain()

    def _drain(self) -> None:
        """Handle every event already parsed, until one must wait for the application."""
        try:
            while self._end is None and not self._inbox_blocked:
                event = self.conn.next_event()
                if event is None:
                    return
                self._on_event(event)
        except WebSocketProtocolError as exc:
            self._protocol_error(exc)
        except WebSocketClosed as exc:
            self.end(exc.reason, CLOSE_ABNORMAL, Initiator.NETWORK)

    def _stop_reading(self) -> None:
        if self._reading is not None:
            self._engine.remove_reader(self._reading)
            self._reading = None

    def _on_event(self, event: ReceivedEvent) -> None:
        if isinstance(event, MessageReceived):
            self._on_message_now(event.data)
        elif isinstance(event, PingReceived):
            pings = self._pings
            if pings.take(self._engine.now()):
                self._send_control(_Control(_Kind.PONG, event.payload))
            elif pings.refused > pings.burst:  # a second's worth unanswered
                self.end(f"ping flood: more than {pings.rate:g} pings per second",
                         CLOSE_POLICY_VIOLATION, Initiator.LOCAL)
        elif isinstance(event, PongReceived):
            seq = pong_seq(event.payload)
            if seq is not None:
                self._on_pong(seq)
        elif event.code == CLOSE_ABNORMAL:
            self.end("connection lost (no close frame)", CLOSE_ABNORMAL, Initiator.NETWORK)
        else:
            text = f"closed by peer with code {event.code}"
            self.end(text + (f": {event.reason}" if event.reason else ""), event.code,
                     Initiator.PEER)

    def _on_message_now(self, data: Payload) -> None:
        """A message, handled without waiting: heartbeats at once, the rest to the inbox;
        a full inbox stops reading until a task has handed the message over."""
        if self._heartbeat_frame(data):
            return
        try:
            if self._target.put_nowait(data):
                return
        except trio.ClosedResourceError:
            return  # nobody reads any more
        self._block_inbox(data)
        if self._reading is not None:
            self._engine.pause_reader(self._reading)
        assert self._nursery is not None
        if self._helpers is not None:
            self._nursery.start_soon(self._helper, self._hand_over, data)
        else:
            self._nursery.start_soon(self._hand_over, data)

    async def _hand_over(self, data: Payload) -> None:
        try:
            await self._target.put(data)
        except trio.ClosedResourceError:
            pass
        finally:
            self._inbox_blocked = False
        self._inbound_pending = None
        if self._reading is not None and self._end is None:
            self._engine.resume_reader(self._reading)
            self._drain()

    def _block_inbox(self, data: Payload) -> None:
        self._inbox_blocked = True  # we stop reading until the application catches up
        self._inbound_pending = data  # not lost if the session ends meanwhile
        backlog = self.conn.receive_backlog()
        self._backlog_seen = backlog[0] if backlog is not None else None

    def _protocol_error(self, exc: WebSocketProtocolError) -> None:
        log.warning("protocol_error", peer=self.peer, transport=self.transport, reason=str(exc))
        self.end(f"protocol error from peer: {exc}", exc.code, Initiator.LOCAL)

    async def _reader(self) -> None:
        """For streams without a plain socket (``wss://``, memory streams)."""
        try:
            while self._end is None:
                event = await self.conn.receive_event()
                if isinstance(event, MessageReceived):
                    await self._on_message(event.data)
                else:
                    self._on_event(event)
        except WebSocketProtocolError as exc:
            self._protocol_error(exc)
        except WebSocketClosed as exc:
            self.end(exc.reason, CLOSE_ABNORMAL, Initiator.NETWORK)

    async def _on_message(self, data: Payload) -> None:
        if self._heartbeat_frame(data):
            return
        try:
            if self._target.put_nowait(data):
                return
        except trio.ClosedResourceError:
            return  # nobody reads any more
        self._block_inbox(data)
        try:
            await self._target.put(data)
        except trio.ClosedResourceError:
            pass
        finally:
            self._inbox_blocked = False
        self._inbound_pending = None

    def _heartbeat_frame(self, data: Payload) -> bool:
        """Answer or account an in-band heartbeat; False for an application message."""
        if self.heartbeat is HeartbeatMode.FRAMES and isinstance(data, bytes):
            frame = classify_inband(data)
            if isinstance(frame, FramePing):
                self._send_control(_Control(_Kind.INBAND, inband_pong(frame)))
                return True
            if frame is not None:
                self._on_pong(frame.seq)
                return True
        return False

    def _on_pong(self, seq: int) -> None:
        now = self._engine.now()
        self._carry_out(self.liveness.pong(now, seq), now)
        confirmed = None
        while self._markers and self._markers[0][0] <= seq:
            confirmed = self._markers.pop(0)[1]
        if confirmed is not None:
            removed = 0
            while self._unconfirmed and self._unconfirmed[0][1] < confirmed:
                self._unconfirmed.pop(0)
                removed += 1
            if self._confirm_seq is not None and seq >= self._confirm_seq:
                self._confirm_pending = False
                self._confirm_seq = None
            if self._confirmation_due(0):
                self._request_confirmation()
            if removed and len(self.outbox):
                self._wake()  # the window has room again for what waits in the outbox

    # -- liveness (the engine calls next_deadline and handle_timer) ----------------------

    def next_deadline(self) -> float | None:
        """The liveness core's next deadline, or the end of :meth:`finish`'s wait if that
        comes first (None once the session ended)."""
        if self._end is not None:
            return None
        deadline = self.liveness.next_deadline()
        if self._finishing is not None:
            return self._finishing[2] if deadline is None else min(deadline, self._finishing[2])
        return deadline

    def handle_timer(self, now: float) -> None:
        """Carry out what the liveness core says is due at ``now`` (synchronously)."""
        if self._end is not None:
            return
        finishing = self._finishing
        if finishing is not None and now >= finishing[2]:
            self.end(finishing[0], finishing[1])  # what is still queued is reported as unsent
            return
        if self._evidence_pending():
            self._carry_out(self.liveness.data_received(now), now)
        if self._tcp is not None:
            self.liveness.transport_progress(now, read_tcp_progress(self._tcp))
        self._carry_out(self.liveness.handle_timer(now), now)

    def timer_failed(self, exc: Exception) -> None:
        """A callback raised inside the engine: end the session; :meth:`run` re-raises."""
        self._failure = exc
        self.end(f"internal error: {exc!r}", CLOSE_INTERNAL_ERROR, Initiator.LOCAL)

    def _received(self) -> None:
        self.liveness.data_received(self._engine.now())

    def _carry_out(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, SendPing):
                self._send_control(self._ping_control(action))
            else:
                self._on_action(action)

    def _evidence_pending(self) -> bool:
        """Asked before each liveness tick. While the application is behind and we are not
        reading, the kernel's receive queue tells: bytes that arrived since the last look
        prove the peer alive; a queue that may be full (the peer is flow-controlled, so its
        silence says nothing) withholds the verdict; a small queue that did not grow is real
        silence. A stream without a socket (memory streams) withholds the verdict."""
        if not self._inbox_blocked:
            return False
        backlog = self.conn.receive_backlog()
        if backlog is None:
            return True
        unread, capacity = backlog
        grew = self._backlog_seen is None or unread > self._backlog_seen
        self._backlog_seen = unread
        return grew or unread >= capacity // BACKLOG_FULL_FRACTION

    def _ping_control(self, action: SendPing) -> _Control:
        if self.heartbeat is HeartbeatMode.CONTROL:
            return _Control(_Kind.PING, ping_payload(action.seq), action.seq)
        return _Control(_Kind.INBAND, inband_ping(action.seq, action.now), action.seq)

    def _on_action(self, action: Action) -> None:
        fields: dict[str, Any] = {"peer": self.peer, "transport": self.transport}
        if isinstance(action, PeerSuspect):
            log.info("peer_suspect", missed=action.missed, silent_for=round(action.silent_for, 3),
                     **fields)
        elif isinstance(action, PeerAlive):
            log.info("peer_alive", after=round(action.after, 3), **fields)
        elif isinstance(action, LocalPause):
            pass  # the engine logs one event per stall, not one per peer
        elif isinstance(action, PeerDead):
            log.warning("peer_dead", reason=action.reason, missed=action.missed, **fields)
        elif isinstance(action, Close):
            self.end(f"peer timeout: {action.reason}", CLOSE_PEER_TIMEOUT, Initiator.LOCAL,
                     peer_dead=True)
        if self._on_liveness is not None:
            self._on_liveness(action)

    # -- writer ---------------------------------------------------------------------------

    def _wake(self) -> None:
        """There is something to write: start the writer task unless it runs already. An idle
        connection has no writer task at all (heartbeats skip it: they go to the socket)."""
        if self._writing or self._end is not None or self._nursery is None:
            return
        self._writing = True
        self._nursery.start_soon(self._writer)

    def _queue_control(self, item: _Control) -> None:
        if item.kind is _Kind.PONG:
            # RFC 6455 5.5.3: answering only the latest ping is enough. A peer that pings
            # and never reads keeps one pong queued, not one per ping.
            for index, queued in enumerate(self._control):
                if queued.kind is _Kind.PONG:
                    self._control[index] = item
                    return
        elif item.seq is None and len(self._control) >= MAX_QUEUED_CONTROL:
            return  # an in-band pong to a peer that does not read: dropped
        self._control.append(item)
        self._wake()

    def _send_control(self, item: _Control) -> None:
        """Write a control frame now when the writer is idle, else queue it for the writer.
        Never blocks, so a stuck writer cannot stall a pong or the verdict."""
        conn = self.conn
        if (self._raw is None or conn.writing or self._control or self._owed
                or self._end is not None or conn.write_interrupted):
            self._queue_control(item)
            return
        try:
            data = self._encode_control(item)
        except WebSocketClosed:
            return  # closing: no more control frames
        try:
            sent = self._raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.end(f"connection lost while sending: {exc}", CLOSE_ABNORMAL, Initiator.NETWORK)
            return
        conn.bytes_sent += sent
        if sent < len(data):
            self._owed = data[sent:]
            self._wake()
        else:
            self.liveness.data_sent(self._engine.now())

    def _room(self) -> int:
        """How many more messages the unconfirmed window admits now."""
        if self.delivery is Delivery.AT_LEAST_ONCE:
            return max(0, self.window - len(self._unconfirmed))
        return self.window

    def _is_long(self, message: Payload) -> bool:
        return self.fragment_size > 0 and len(message) > self.fragment_size

    async def _writer(self) -> None:
        try:
            while self._end is None and await self._write_some():
                pass  # ends when there is nothing left to write; _wake starts it again
            self._finish_if_written()
        except WebSocketClosed as exc:
            self.end(exc.reason, CLOSE_ABNORMAL, Initiator.NETWORK)
        finally:
            self._writing = False
            if self._writer_stopped is not None:
                self._writer_stopped.set()

    async def _write_some(self) -> bool:
        """Write what is ready, small frames batched into one write; False when idle.

        Order: control frames, then messages of the ``on_connect`` hook, then the outbox.
        A long message is written alone, in fragments, with control frames between them.
        """
        conn = self.conn
        buffer = bytearray(self._owed)
        self._owed = b""
        while self._control and len(buffer) < BATCH_BYTES:
            buffer += self._encode_control(self._control.pop(0))
        directs: list[_Direct] = []
        for item in self._direct:
            if self._is_long(item.message) or len(buffer) >= BATCH_BYTES:
                break
            buffer += conn.encode_message(item.message)
            directs.append(item)
        entries: list[Entry] = []
        if len(directs) == len(self._direct) and self._gate_open:
            head = self.outbox.peek()
            if head is not None and not self._is_long(head.message):
                room = min(self._room(), BATCH_MESSAGES)
                batch = self.outbox.begin_batch(room, BATCH_BYTES - len(buffer))
                for index, entry in enumerate(batch):
                    if self._is_long(entry.message):  # written alone, in the next round
                        self.outbox.unpin_last(len(batch) - index)
                        break
                    buffer += conn.encode_message(entry.message)
                    entries.append(entry)
        if entries and self._confirmation_due(len(entries)):
            # The confirmation ping travels in the same write, right behind the messages.
            ping = self._confirmation_ping()
            if ping is not None:
                buffer += self._encode_control(ping, written=self._written + len(entries))
        if buffer:
            await conn.write(bytes(buffer))
            self.liveness.data_sent(self._engine.now())
            for _ in directs:
                self._direct.pop(0).done.set()
            for entry in entries:
                self.outbox.sent(entry)
                self._track(entry)
            if self._confirmation_due(0):
                self._request_confirmation()
            return True
        return await self._write_long()

    async def _write_long(self) -> bool:
        """Write the next message if it is a long one; False when there is nothing to do."""
        if self._direct:
            item = self._direct[0]
            if await self._write_fragments(item.message):
                self._direct.pop(0)
                item.done.set()
            return True
        if not self._gate_open or self._room() == 0:
            return False
        entry = self.outbox.begin()
        if entry is None:
            return False
        if await self._write_fragments(entry.message):
            self.outbox.sent(entry)
            self._track(entry)
            if self._confirmation_due(0):
                self._request_confirmation()
        return True

    def _track(self, entry: Entry) -> None:
        self._unconfirmed.append((entry, self._written))
        self._written += 1
        if len(self._unconfirmed) > self.window:  # only AT_MOST_ONCE gets here
            self._unconfirmed.pop(0)
            self.presumed_delivered += 1

    def _confirmation_due(self, pending: int) -> bool:
        """True when a confirmation ping should follow what is written now (``pending``
        more messages than tracked): the writer is about to go idle or half the window is
        unconfirmed, so a burst costs one ping per half window, not one per message."""
        if self._confirm_pending or not (self._unconfirmed or pending):
            return False
        idle = not self._direct and (len(self.outbox) <= pending or not self._gate_open)
        return idle or len(self._unconfirmed) + pending >= max(1, self.window // 2)

    def _confirmation_ping(self) -> _Control | None:
        """A new confirmation ping (registered with the liveness machine), or None."""
        action = next(iter(self.liveness.request_ping(self._engine.now())), None)
        if not isinstance(action, SendPing):
            return None
        self._confirm_pending = True
        self._confirm_seq = action.seq
        return self._ping_control(action)

    def _request_confirmation(self) -> None:
        if self._unconfirmed and not self._confirm_pending:
            ping = self._confirmation_ping()
            if ping is not None:
                self._queue_control(ping)

    def _encode_control(self, item: _Control, *, written: int | None = None) -> bytes:
        conn = self.conn
        if item.seq is not None:
            # Messages written before this ping are confirmed by its pong.
            self._markers.append((item.seq, self._written if written is None else written))
        if item.kind is _Kind.PING:
            return conn.encode_ping(item.payload)
        if item.kind is _Kind.PONG:
            return conn.encode_pong(item.payload)
        return conn.encode_message(item.payload)

    async def _write_fragments(self, message: Payload) -> bool:
        """Write a long message in fragments; False if the session ended first."""
        conn = self.conn
        size = self.fragment_size
        for start in range(0, len(message), size):
            final = start + size >= len(message)
            if self._end is not None:
                return False  # it stays queued; a close frame may follow a fragment
            await conn.write(conn.encode_message(message[start:start + size], final=final))
            self.liveness.output_progress(self._engine.now())
            # RFC 6455 lets control frames (not data frames) pass between fragments.
            control = bytearray()
            while self._control and self._control[0].kind is not _Kind.INBAND:
                control += self._encode_control(self._control.pop(0))
            await conn.write(bytes(control))
        self.liveness.data_sent(self._engine.now())
        return True
