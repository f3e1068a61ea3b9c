"""The lease server: a thin driver around :class:`.state.LeaseState`, on the engine.

Plain TCP connections cost no task: one accept task hands each socket to the process's
engine (:mod:`pulse._driver.engine`), which calls the server when the socket is readable. The
server decodes the requests (:class:`pulse.codec.MessageDecoder`), applies them to the state
and writes the responses and the sessions' pending watch events straight to the non-blocking
socket, once per batch; only when a socket's buffer is full does a task finish the write.
A renewal (a whole ``ping`` in one read, :func:`.protocol.parse_ping_message`) skips the
decoder and the request objects: it is applied with :meth:`.state.LeaseState.renew` and
answered with the pre-built :func:`.protocol.ping_reply`, straight to the socket unless
something is already waiting to be written on that connection (then it queues behind it).
Session expiry is a timer client of the same engine: the tracker's next bucket is its
deadline. The handshake deadline (the first request must come in time) and the final
notice's deadline are each connection's own engine timer. TLS connections and other streams
(:meth:`LeaseServer.handle_stream`) run a reader and a writer task instead. All state changes
happen synchronously in the trio thread, so no request interleaves with another.

A connection's first request must be ``connect``. A frame that cannot be decoded, or a
request whose envelope is unreadable, closes only that connection (after an ``error`` notice);
a request with bad arguments gets an error response and the connection carries on. When a
session ends, its connection gets a ``session`` notice and is closed.
"""

from __future__ import annotations

import hmac
import math
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import trio

from pulse._core.bounded import BoundedDeque
from pulse._core.rate import TokenBucket
from pulse._core.sessions import SessionTracker
from pulse._driver.engine import current_engine
from pulse._driver.streams import (
    Listener,
    SocketStream,
    accept_forever,
    accept_tls,
    aclose_forcefully,
    open_tcp_listeners,
    serve_listeners,
)
from pulse._driver.writer import raw_socket
from pulse._log import get_logger
from pulse.codec import MessageDecoder, encode_message
from pulse.errors import LocalProtocolError, PhaseTimeout, RemoteProtocolError

from .protocol import (
    MAX_ID,
    MAX_KEY_LENGTH,
    MAX_PING_MESSAGE,
    BadRequest,
    Connect,
    ErrorCode,
    ErrorNotice,
    Register,
    Response,
    SessionNotice,
    notice_to_wire,
    parse_ping_message,
    parse_request,
    ping_reply,
    response_to_wire,
    watch_event_to_wire,
)
from .state import Ended, LeaseState, Limits, Outcome, RequestFailed, ServerSession
from .store import Store

log = get_logger("pulse.lease")

DEFAULT_TICK = 2.0
CLIENT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Unread responses one connection may queue; past it (or past
#: ``Limits.max_queued_bytes_per_connection`` bytes) the connection gets an ``error`` notice
#: ``quota_exceeded`` and is closed. Its queue is a ``BoundedDeque`` of this many items plus
#: the one that went past and the final notice, so the check in ``queue`` is the bound.
MAX_QUEUED_RESPONSES = 10_000
#: Bytes read from a socket at once (into one buffer the server reuses for every socket).
RECEIVE_SIZE = 65536
FINAL_SEND_TIMEOUT = 1.0
#: The writer never hands more than this (plus one message) to one ``send_all``: a large
#: backlog of responses and watch events goes out in bounded pieces, never joined whole.
WRITE_CHUNK = 256 * 1024
#: Refused requests in a row (beyond the rate) after which a flooding connection is closed:
#: this many, or one second's worth of the rate if that is more (a client re-sending its
#: registrations and watches after a reconnect may overshoot once without being cut off).
MAX_RATE_REFUSALS = 100
#: accept() errors that mean "out of resources for now": wait a little and go on accepting.


PRESENCE_PREFIX = "/pulse/presence"


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Who may connect and what they may register.

    Authentication is required when ``token`` (one secret shared by every client) or
    ``credentials`` (client id → that client's own secret) is set; a client presents its
    ``client_id`` and ``token`` in ``connect`` and a client listed in ``credentials`` must
    present its own secret (the shared token does not stand in for it). Comparisons are
    constant-time (:func:`hmac.compare_digest`).

    An authenticated client may register only ``<presence_prefix>/<its client id>``, plus
    any key at or under one of its ``grants`` prefixes. On every server, authenticated or
    not, the ``reserved`` prefixes and their ancestors (``/pulse/presence`` and ``/pulse``)
    are structural and cannot be registered by anyone: an ephemeral key there would stop
    every agent from registering beneath it.
    """

    token: bytes | None = None
    credentials: Mapping[str, bytes] = field(default_factory=dict)
    grants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    presence_prefix: str = PRESENCE_PREFIX
    reserved: tuple[str, ...] = (PRESENCE_PREFIX,)

    @property
    def required(self) -> bool:
        """True if clients must authenticate."""
        return self.token is not None or bool(self.credentials)

    def authenticate(self, client_id: str | None, token: bytes) -> bool:
        """True if ``token`` proves ``client_id`` (or the server is open)."""
        if not self.required:
            return True
        if client_id is None:
            return False
        own = self.credentials.get(client_id)
        if own is not None:
            return hmac.compare_digest(own, token)
        if self.token is not None:
            return hmac.compare_digest(self.token, token)
        hmac.compare_digest(b"\x00" * 32, token)  # unknown client: same work, refused
        return False

    def is_reserved(self, key: str) -> bool:
        """True if ``key`` is a reserved prefix or an ancestor of one."""
        return any(key == prefix or prefix.startswith(key + "/") for prefix in self.reserved)

    def may_register(self, client_id: str | None, key: str) -> bool:
        """True if ``client_id`` may register ``key`` (reserved keys: nobody)."""
        if self.is_reserved(key):
            return False
        if not self.required:
            return True
        if client_id is None:
            return False
        if key == f"{self.presence_prefix.rstrip('/')}/{client_id}":
            return True
        return any(key == grant or key.startswith(grant.rstrip("/") + "/")
                   for grant in self.grants.get(client_id, ()))


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything a lease server is configured with."""

    tick: float = DEFAULT_TICK
    min_timeout: float | None = None
    max_timeout: float | None = None
    limits: Limits = field(default_factory=Limits)
    server_id: int = 1
    data_dir: str | None = None
    handshake_timeout: float = 10.0
    #: The local-pause guard (:mod:`pulse._core.sessions`): a stall of the server's own loop
    #: longer than ``max_local_pause`` (default ``tick / 2``) is given back to the sessions
    #: that fell due during it instead of expiring them.
    pause_guard: bool = True
    max_local_pause: float | None = None
    #: Authentication and who may register what (an open server by default; the reserved
    #: structural prefixes are protected either way).
    access: AccessPolicy = field(default_factory=AccessPolicy)
    #: Serve TLS (``pulse serve --certfile/--keyfile``); the handshake must finish within
    #: ``handshake_timeout``.
    ssl_context: ssl.SSLContext | None = None

    @property
    def max_message_size(self) -> int:
        """The decoder limit for requests: the largest data plus room for the envelope."""
        return self.limits.max_data_size + 4 * MAX_KEY_LENGTH + 1024


class _Budget:
    """Server-wide counters the connections share (bytes of unread responses)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.queued_bytes = 0
        self.connections = 0


class _Connection:
    """One client connection: its stream, its session and what waits to be written."""

    def __init__(self, stream: trio.abc.Stream, peer: str, budget: _Budget | None = None,
                 now: float = 0.0) -> None:
        self.stream = stream
        self.peer = peer
        self.session: ServerSession | None = None
        self.sent_seq = 0
        self.client_limit = CLIENT_MAX_MESSAGE_SIZE
        self.queued: BoundedDeque[bytes] = BoundedDeque(MAX_QUEUED_RESPONSES + 2,
                                                        "a connection's unread responses")
        self.queued_bytes = 0
        self.finishing = False
        self._wake = anyio.Event()
        self.scope = anyio.CancelScope()
        self.budget = budget or _Budget(Limits())
        self.rate = TokenBucket(self.budget.limits.max_request_rate, now)
        self.authenticated: str | None = None  # the client id proven at connect
        # Engine mode (a plain socket read by the engine; no task unless a write must wait):
        self.raw: socket.socket | None = None
        self.server: LeaseServer | None = None
        self.decoder: MessageDecoder | None = None
        self.handshake_deadline = math.inf
        self.finish_deadline = math.inf
        self.owed = b""  # the part of a write the socket did not take yet
        self.writing = False  # a task is finishing a write
        self.closed = False

    # -- the engine's timer (the handshake's and the final notice's deadlines) ------------

    def next_deadline(self) -> float | None:
        """The final notice's deadline while finishing, the handshake's before a session."""
        if self.closed:
            return None
        if self.finishing:
            return self.finish_deadline
        return self.handshake_deadline if self.session is None else None

    def handle_timer(self, now: float) -> None:
        if self.finishing:  # the peer does not read its final notice
            if self.server is not None:
                self.server._close(self)
            else:
                self.scope.cancel()  # task mode: ends the connection's tasks
                self.closed = True  # and its deadlines with them
        elif self.session is None and now >= self.handshake_deadline:
            self.finish(ErrorNotice(ErrorCode.PROTOCOL_ERROR, "no connect request in time"), now)

    def on_readable(self, now: float) -> None:
        assert self.server is not None
        self.server._on_readable(self, now)

    def timer_failed(self, exc: Exception) -> None:
        log.error("connection_failed", peer=self.peer, reason=repr(exc))
        if self.server is not None:
            self.server._close(self)

    @property
    def refusals(self) -> int:
        """Requests refused for the rate in a row."""
        return self.rate.refused

    def take_chunk(self) -> list[bytes]:
        """Queued messages up to WRITE_CHUNK bytes (at least one), removed from the queue."""
        parts: list[bytes] = []
        size = 0
        queued = self.queued
        while queued and size < WRITE_CHUNK:
            item = queued.popleft()
            parts.append(item)
            size += len(item)
        self.queued_bytes -= size
        self.budget.queued_bytes -= size
        return parts

    def release(self) -> None:
        """Give the unsent bytes back to the server budget (the connection is gone)."""
        self.budget.queued_bytes -= self.queued_bytes
        self.queued_bytes = 0
        self.queued.clear()

    def wake(self) -> None:
        if self.server is not None:
            self.server._dirty.add(self)  # flushed once the current batch is handled
        else:
            self._wake.set()

    async def wait(self) -> None:
        await self._wake.wait()
        self._wake = anyio.Event()

    def queue(self, message: list[Any]) -> None:
        try:
            encoded = encode_message(message, max_frame_size=self.client_limit)
        except LocalProtocolError as exc:
            if message[0] != 1:  # not a response: nothing smaller to send instead
                raise
            too_large = Response(message[1], error=ErrorCode.RESPONSE_TOO_LARGE, message=str(exc))
            encoded = encode_message(response_to_wire(too_large))
        self.queue_encoded(encoded)

    def queue_encoded(self, encoded: bytes) -> None:
        """Queue one message already encoded (within the client's limit)."""
        if self.finishing:
            return  # only the final notice goes out now
        self.queued.append(encoded)
        self.queued_bytes += len(encoded)
        self.budget.queued_bytes += len(encoded)
        # The peer sends but does not read: bounded by count and by bytes, per connection and
        # for the whole server.
        limits = self.budget.limits
        if (len(self.queued) > MAX_QUEUED_RESPONSES
                or self.queued_bytes > limits.max_queued_bytes_per_connection):
            self.finish(ErrorNotice(ErrorCode.QUOTA_EXCEEDED,
                                    f"more than {limits.max_queued_bytes_per_connection} bytes "
                                    "of unread responses"))
        elif self.budget.queued_bytes > limits.max_queued_bytes_total:
            self.finish(ErrorNotice(ErrorCode.QUOTA_EXCEEDED,
                                    "the server's buffer for unread responses is full"))
        self.wake()

    def finish(self, notice: SessionNotice | ErrorNotice, now: float | None = None) -> None:
        """Send ``notice`` after everything queued, then close (within FINAL_SEND_TIMEOUT
        even if the peer stopped reading)."""
        if not self.finishing:
            self.finishing = True
            final = encode_message(notice_to_wire(notice))
            self.queued.append(final)
            self.queued_bytes += len(final)
            self.budget.queued_bytes += len(final)
            engine = current_engine()
            self.finish_deadline = (engine.now() if now is None else now) + FINAL_SEND_TIMEOUT
            engine.watch(self)
            self.wake()


class LeaseServer:
    """A lease server; run :meth:`serve_tcp` (or feed streams to :meth:`handle_stream`)."""

    def __init__(self, config: ServerConfig | None = None, *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config or ServerConfig()
        self._wall_clock = wall_clock
        self.store: Store | None = None
        secret = secrets.token_bytes(32)
        last_id = 0
        snapshot = None
        if self.config.data_dir is not None:
            self.store = Store(self.config.data_dir)
            snapshot = self.store.load()
            secret, last_id = snapshot.secret, snapshot.last_session_id
        tracker = SessionTracker(
            secret=secret, server_id=self.config.server_id, tick=self.config.tick,
            min_timeout=self.config.min_timeout, max_timeout=self.config.max_timeout,
            last_session_id=last_id,
            max_local_pause=(
                None if not self.config.pause_guard
                else self.config.max_local_pause or self.config.tick / 2
            ),
        )
        self.state = LeaseState(tracker, self.config.limits, self.store)
        # Sequence numbers (fencing tokens) never go back: continue above the journal's last
        # one, and above the wall clock in milliseconds (a server without a journal, or whose
        # journal lost its last writes, still starts above what it gave out before, as long
        # as it issued fewer than 1,000 numbers per second on average and the clock did not
        # step back).
        self.state.sequence = max(0 if snapshot is None else snapshot.last_sequence,
                                  int(self._wall_clock() * 1000))
        self._snapshot = snapshot
        self._connections: dict[int, _Connection] = {}  # session id -> its connection
        self._budget = _Budget(self.config.limits)
        self._engine = current_engine()
        self._dirty: set[_Connection] = set()  # connections with something to write
        self._engine_connections: set[_Connection] = set()  # read by the engine, not a task
        self._nursery: anyio.abc.TaskGroup | None = None  # for writes that must wait for room
        self._expiry_armed: float | None = None
        self.restored = 0
        # One receive buffer for every engine-read socket: reads are synchronous, and the
        # decoder copies whatever it keeps.
        self._received = bytearray(RECEIVE_SIZE)
        self._received_view = memoryview(self._received)

    # -- running -------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Restore durable state, then expire sessions until cancelled."""
        if self._snapshot is not None:
            snapshot, self._snapshot = self._snapshot, None
            self.state.restore(snapshot.sessions, snapshot.registrations, self._engine.now())
            self.restored = len(snapshot.sessions)
            if self.restored:
                log.info("sessions_restored", count=self.restored,
                         keys=len(snapshot.registrations))
        task_status.started()
        self._engine.watch(self)
        try:
            await anyio.sleep_forever()
        finally:
            self._engine.forget(self)
            if self.store is not None:
                self.store.close()

    # -- expiry: a timer client of the engine --------------------------------------------

    def next_deadline(self) -> float | None:
        """When the tracker's next expiry bucket is due."""
        self._expiry_armed = self.state.next_deadline()
        return self._expiry_armed

    def handle_timer(self, now: float) -> None:
        """Expire what is due; a wake-up late enough to be a stall of our own is reported."""
        stalls = self.state.tracker.stalls
        armed = self._expiry_armed
        self._apply(self.state.expire(now))
        if self.state.tracker.stalls != stalls:
            log.warning("local_pause_detected", stalls=self.state.tracker.stalls,
                        late_by=round(now - (armed or now), 3),
                        total_stalled=round(self.state.tracker.stalled_for, 3))
        self._flush_dirty()

    async def serve_tcp(
        self, host: str, port: int, *,
        task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0 picks a free port) and serve until cancelled.

        ``task_status.started`` receives the listeners, as with :func:`trio.serve_tcp` (and
        the other transport plugins); :func:`bound_address` gives the first one's address.
        """
        try:
            await self._serve_tcp(host, port, task_status)
        finally:
            for conn in list(self._engine_connections):  # the engine holds them: a stopped server closes them
                self._close(conn)

    async def _serve_tcp(self, host: str, port: int,
                         task_status: anyio.abc.TaskStatus[Any]) -> None:
        async with anyio.create_task_group() as nursery:
            self._nursery = nursery
            await nursery.start(self.run)
            listeners = await open_tcp_listeners(port, host=host)
            bound = bound_address(listeners)
            log.info("lease_server_listening", host=bound[0], port=bound[1],
                     tick=self.config.tick, data_dir=self.config.data_dir)
            task_status.started(listeners)
            if self.config.ssl_context is not None or not self._engine.can_read:
                await serve_listeners(self._handle_tcp, listeners)
            else:
                for listener in listeners:
                    nursery.start_soon(self._accept, listener)

    async def _accept(self, listener: Listener) -> None:
        """Accept connections and hand each socket to the engine: no task per client."""
        await accept_forever(listener, self._open)

    # -- engine mode: one plain socket, no task ------------------------------------------

    def _open(self, stream: SocketStream) -> None:
        try:
            address = str(stream.socket.getpeername()[0])
        except OSError:
            address = "unknown"
        now = self._engine.now()
        conn = _Connection(stream, address, self._budget, now)
        conn.server = self
        conn.raw = raw_socket(stream)
        conn.decoder = MessageDecoder(self.config.max_message_size)
        conn.handshake_deadline = now + self.config.handshake_timeout
        budget = self._budget
        budget.connections += 1
        assert conn.raw is not None
        self._engine_connections.add(conn)
        self._engine.add_reader(conn.raw, conn)
        self._engine.watch(conn)
        if budget.connections > self.config.limits.max_connections:
            conn.finish(ErrorNotice(ErrorCode.QUOTA_EXCEEDED,
                                    f"the server holds its maximum of "
                                    f"{self.config.limits.max_connections} connections"), now)
            log.info("connection_refused", peer=address, reason="max_connections")
            self._flush_dirty()

    def _on_readable(self, conn: _Connection, now: float) -> None:
        assert conn.raw is not None and conn.decoder is not None
        received = self._received
        try:
            size = conn.raw.recv_into(received)
        except BlockingIOError:
            return
        except OSError:
            size = 0
        if not size or conn.finishing:
            # The end (or bytes after our final notice, which are not served): close.
            if not size:
                self._close(conn)
            return
        # The steady state of a session: one whole ping request in one read.
        if size <= MAX_PING_MESSAGE and conn.session is not None and not conn.decoder.buffered:
            ping = parse_ping_message(received, size)
            if ping is not None:
                self._on_ping(conn, ping[0], ping[1], now)
                if self._dirty:
                    self._flush_dirty()
                return
        try:
            for message in conn.decoder.feed(self._received_view[:size]):
                self._on_message(conn, message, now)
                if conn.finishing:
                    break
        except RemoteProtocolError as exc:
            log.info("protocol_error", peer=conn.peer, reason=str(exc),
                     session_id=None if conn.session is None else conn.session.id)
            conn.finish(ErrorNotice(ErrorCode.PROTOCOL_ERROR, str(exc)), now)
        self._flush_dirty()

    def _on_ping(self, conn: _Connection, xid: int, ack: int, now: float) -> None:
        """A ping on a connection with a session (what :meth:`_on_message` does with one,
        without building the request, the outcome or the response as objects)."""
        if not conn.rate.take(now):
            self._over_rate(conn, xid)
            return
        session = conn.session
        assert session is not None
        try:
            session = self.state.renew(session.id, ack, now)
        except RequestFailed as exc:
            self._refuse(conn, session, xid, exc)
            return
        reply = ping_reply(xid)
        if (conn.queued or conn.owed or conn.writing or conn.raw is None
                or (session.outbox and session.outbox[-1].seq > conn.sent_seq)):
            conn.queue_encoded(reply)  # behind what waits already
        else:
            self._send(conn, reply)

    def _flush_dirty(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for conn in dirty:
            self._flush(conn)

    def _flush(self, conn: _Connection) -> None:
        """Write what is queued straight to the socket; a task finishes what does not fit."""
        if conn.writing or conn.closed or conn.raw is None:
            return
        while True:
            data = conn.owed or _joined(self._next_chunk(conn))
            conn.owed = b""
            if not data or not self._send(conn, data):
                break
        if conn.finishing and not conn.writing and not conn.closed:
            self._close(conn)

    def _send(self, conn: _Connection, data: bytes) -> bool:
        """Write ``data`` to the non-blocking socket; True if it all went. What the socket
        does not take is left to a task; an error closes the connection."""
        assert conn.raw is not None
        try:
            sent = conn.raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._close(conn)
            return False
        if sent < len(data):
            conn.owed = data[sent:]
            conn.writing = True
            assert self._nursery is not None
            self._nursery.start_soon(self._finish_writes, conn)
            return False
        return True

    async def _finish_writes(self, conn: _Connection) -> None:
        try:
            while not conn.closed:
                data = conn.owed or _joined(self._next_chunk(conn))
                conn.owed = b""
                if not data:
                    break
                await conn.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._close(conn)
            return
        finally:
            conn.writing = False
        if conn.finishing:
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._engine_connections.discard(conn)
        self._dirty.discard(conn)
        self._engine.forget(conn)
        if conn.raw is not None:
            self._engine.remove_reader(conn.raw)
        self._budget.connections -= 1
        conn.release()
        self._detach(conn)
        assert isinstance(conn.stream, SocketStream)
        conn.stream.socket.close()  # wakes a write task waiting on it

    async def _handle_tcp(self, stream: SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
            address = str(peer[0])
        except OSError:
            address = "unknown"
        served: trio.abc.Stream = stream
        try:
            if self.config.ssl_context is not None:
                try:
                    served = await accept_tls(stream, self.config.ssl_context,
                                              timeout=self.config.handshake_timeout, peer=address)
                except (PhaseTimeout, trio.BrokenResourceError,
                        trio.ClosedResourceError) as exc:
                    log.info("tls_handshake_failed", peer=address, reason=repr(exc))
                    await aclose_forcefully(stream)
                    return
            await self.handle_stream(served, address)
        except Exception as exc:  # a bug must cost one connection, never the server
            log.exception("connection_handler_failed", peer=address, reason=repr(exc))

    def _rearm(self) -> None:
        self._engine.watch(self)  # a new session may expire before every other

    # -- one connection ------------------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream, address: str) -> None:
        """Serve one client connection until it closes, fails or its session ends."""
        now = self._engine.now()
        conn = _Connection(stream, address, self._budget, now)
        conn.handshake_deadline = now + self.config.handshake_timeout
        self._engine.watch(conn)
        budget = self._budget
        budget.connections += 1
        if budget.connections > self.config.limits.max_connections:
            conn.finish(ErrorNotice(ErrorCode.QUOTA_EXCEEDED,
                                    f"the server holds its maximum of "
                                    f"{self.config.limits.max_connections} connections"))
            log.info("connection_refused", peer=address, reason="max_connections")
        try:
            with conn.scope:
                async with anyio.create_task_group() as nursery:
                    nursery.start_soon(self._write_loop, conn)
                    await self._read_loop(conn)
                    nursery.cancel_scope.cancel()
        finally:
            self._engine.forget(conn)
            budget.connections -= 1
            conn.release()
            self._detach(conn)
            with anyio.CancelScope(shield=True):
                await aclose_forcefully(stream)

    async def _read_loop(self, conn: _Connection) -> None:
        decoder = MessageDecoder(self.config.max_message_size)
        while not conn.finishing:
            try:
                data = await conn.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            try:
                if not data:
                    decoder.feed_eof()
                    break
                messages = decoder.feed(data)
                now = self._engine.now()
                for message in messages:
                    self._on_message(conn, message, now)
                    if conn.finishing:
                        break
            except RemoteProtocolError as exc:
                log.info("protocol_error", peer=conn.peer, reason=str(exc),
                         session_id=None if conn.session is None else conn.session.id)
                conn.finish(ErrorNotice(ErrorCode.PROTOCOL_ERROR, str(exc)))
                break
        if conn.finishing:
            # Let the writer deliver the final notice (bounded), then the connection ends.
            await anyio.sleep_forever()

    async def _write_loop(self, conn: _Connection) -> None:
        while True:
            await conn.wait()
            while True:
                chunks = self._next_chunk(conn)
                if not chunks:
                    break
                try:
                    await conn.stream.send_all(b"".join(chunks) if len(chunks) > 1 else chunks[0])
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    conn.scope.cancel()
                    return
            if conn.finishing:
                conn.scope.cancel()
                return

    def _next_chunk(self, conn: _Connection) -> list[bytes]:
        """At most WRITE_CHUNK bytes (plus one message) of responses, then watch events."""
        chunks = conn.take_chunk()
        size = sum(len(chunk) for chunk in chunks)
        session = conn.session
        if session is not None and not conn.finishing and size < WRITE_CHUNK:
            for event in session.pending(conn.sent_seq):
                encoded = encode_message(watch_event_to_wire(event))
                chunks.append(encoded)
                conn.sent_seq = event.seq
                size += len(encoded)
                if size >= WRITE_CHUNK:
                    break
        return chunks

    def _detach(self, conn: _Connection) -> None:
        session = conn.session
        if session is not None and self._connections.get(session.id) is conn:
            del self._connections[session.id]
            log.debug("session_disconnected", session_id=session.id, peer=conn.peer)
        conn.session = None

    # -- requests ------------------------------------------------------------------------

    def _over_rate(self, conn: _Connection, xid: object) -> None:
        """The connection had no token of its rate for request ``xid`` (whatever the
        envelope held there): refuse the request, or close a flooder."""
        rate = self.config.limits.max_request_rate
        if conn.refusals > max(MAX_RATE_REFUSALS, rate):
            log.info("connection_flooding", peer=conn.peer, rate=rate)
            conn.finish(ErrorNotice(ErrorCode.RATE_LIMITED,
                                    f"kept sending beyond {rate:g} requests per second"))
            return
        if isinstance(xid, int) and not isinstance(xid, bool) and 0 <= xid <= MAX_ID:
            self._reply_error(conn, xid, ErrorCode.RATE_LIMITED,
                              f"more than {rate:g} requests per second on this connection")

    def _on_message(self, conn: _Connection, message: object, now: float) -> None:
        if not conn.rate.take(now):
            self._over_rate(conn, message[1] if isinstance(message, list)
                            and len(message) == 5 else None)
            return
        try:
            request = parse_request(message)
        except BadRequest as exc:
            if exc.xid is None:
                raise
            self._reply_error(conn, exc.xid, ErrorCode.BAD_REQUEST, str(exc))
            return
        if isinstance(request.body, Connect):
            self._on_connect(conn, request.xid, request.body, now)
            return
        session = conn.session
        if session is None:
            self._reply_error(conn, request.xid, ErrorCode.NOT_CONNECTED,
                              "the first request on a connection must be connect")
            return
        body = request.body
        if isinstance(body, Register) and not self.config.access.may_register(
                session.client_id, body.key):
            reason = (f"{body.key} is a reserved structural key"
                      if self.config.access.is_reserved(body.key)
                      else f"client {session.client_id!r} may not register {body.key}")
            log.info("register_forbidden", session_id=session.id, peer=conn.peer, key=body.key)
            self._reply_error(conn, request.xid, ErrorCode.FORBIDDEN, reason)
            return
        try:
            outcome = self.state.handle(session.id, request, now)
        except RequestFailed as exc:
            self._refuse(conn, session, request.xid, exc)
            return
        conn.queue(response_to_wire(Response(request.xid, outcome.result)))
        self._apply(outcome)

    def _on_connect(self, conn: _Connection, xid: int, body: Connect, now: float) -> None:
        if conn.session is not None:
            self._reply_error(conn, xid, ErrorCode.BAD_REQUEST,
                              "this connection already has a session")
            return
        access = self.config.access
        if not access.authenticate(body.client_id, body.token):
            log.info("connect_unauthenticated", peer=conn.peer, client_id=body.client_id)
            message = "authentication failed: a valid client_id and token are required"
            self._reply_error(conn, xid, ErrorCode.UNAUTHENTICATED, message)
            conn.finish(ErrorNotice(ErrorCode.UNAUTHENTICATED, message))
            return
        if body.session_id is not None:
            existing = self.state.sessions.get(body.session_id)
            if (existing is not None and access.required and existing.client_id is not None
                    and existing.client_id != body.client_id):
                message = "the session belongs to another client"
                self._reply_error(conn, xid, ErrorCode.FORBIDDEN, message)
                conn.finish(ErrorNotice(ErrorCode.FORBIDDEN, message))
                return
        woken: set[int] = set()
        try:
            session, result, ended = self.state.connect(body, conn.peer, now, self._wall_clock(),
                                                        woken)
        except RequestFailed as exc:
            log.info("connect_refused", peer=conn.peer, reason=exc.message,
                     session_id=body.session_id)
            self._reply_error(conn, xid, exc.code, exc.message)
            conn.finish(ErrorNotice(exc.code, exc.message))
            return
        if body.session_id is None or session.client_id is None:
            session.client_id = body.client_id
        self._apply(Outcome({}, woken, ended))  # watchers of a superseded session's keys
        previous = self._connections.get(session.id)
        if previous is not None and previous is not conn:
            previous.session = None
            previous.finish(SessionNotice("moved", "the session was re-attached elsewhere"))
        self._connections[session.id] = conn
        conn.session = session
        conn.sent_seq = body.last_seq if body.session_id is not None else 0
        if body.max_message_size is not None:
            conn.client_limit = body.max_message_size
        conn.queue(response_to_wire(Response(xid, result)))
        conn.wake()
        self._rearm()
        log.info("session_reattached" if result["reattached"] else "session_opened",
                 session_id=session.id, peer=conn.peer, timeout=session.timeout)

    def _refuse(self, conn: _Connection, session: ServerSession, xid: int,
                exc: RequestFailed) -> None:
        if exc.code in (ErrorCode.RATE_LIMITED, ErrorCode.TOO_MANY_KEYS,
                        ErrorCode.TOO_MANY_WATCHES, ErrorCode.DATA_TOO_LARGE,
                        ErrorCode.QUOTA_EXCEEDED):
            log.info("limit_exceeded", session_id=session.id, peer=conn.peer,
                     reason=exc.message)
        self._reply_error(conn, xid, exc.code, exc.message)

    def _reply_error(self, conn: _Connection, xid: int, code: ErrorCode, message: str) -> None:
        conn.queue(response_to_wire(Response(xid, error=code, message=message)))

    def _apply(self, outcome: Outcome) -> None:
        for session_id in outcome.woken:
            conn = self._connections.get(session_id)
            if conn is not None:
                conn.wake()
        for ended in outcome.ended:
            self._on_ended(ended)

    def _on_ended(self, ended: Ended) -> None:
        log.info("session_" + ended.state, session_id=ended.session_id, reason=ended.reason)
        conn = self._connections.pop(ended.session_id, None)
        if conn is not None:
            conn.session = None
            conn.finish(SessionNotice(ended.state, ended.reason))


def _joined(chunks: list[bytes]) -> bytes:
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


def bound_address(listeners: Sequence[Listener]) -> tuple[str, int]:
    """``(host, port)`` of the first listener (the port a ``:0`` listen was given)."""
    sockname = listeners[0].socket.getsockname()
    return str(sockname[0]), int(sockname[1])
