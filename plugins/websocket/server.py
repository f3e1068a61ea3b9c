"""A WebSocket server that heartbeats every client and drops dead ones.

Each client gets its own session (reader, writer, liveness; see :mod:`.session`), its own
bounded outgoing queue and receive buffer, and the task that accepted it runs the handler.
On a plain socket the session has no task of its own (the engine reads and times it; a
writer task runs only while something is written, one task closes the connection), and the
built-in :func:`echo` needs no task at all: the reader hands each message straight back to
the outgoing queue. Whatever one client does — a stalled handshake, garbage bytes, an
oversized message, a frozen process, a handler that raises — ends only that client's
connection:

* handshake (TLS + HTTP upgrade) bounded by ``handshake_timeout``; a bad upgrade gets HTTP
  400 and the socket is closed;
* a protocol error is answered with its close code (1002, 1007; 1009 for a message over
  ``max_message_size``);
* a client declared dead (no frame within ``policy.timeout``) is closed with code **1011**
  and the detector's reason (1011, "internal error", is what the websockets library sends
  on a keepalive timeout, so clients of either library see the same code; 1001 is kept for
  its RFC meaning, the server going away, and is what clients get when the server stops);
* an exception in the handler is logged and closes that connection with 1011.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.abc
import trio

from pulse._core.detectors import FailureDetector
from pulse._core.liveness import PeerStats
from pulse._core.offenders import OffenderCooldown
from pulse._core.policy import HeartbeatPolicy
from pulse._deprecation import deprecated
from pulse._driver.connection import DEFAULT_MAX_PING_RATE
from pulse._driver.offenders import OffenderDoor
from pulse._driver.phase import Phase, bounded
from pulse._driver.streams import (
    Listener,
    SocketStream,
    accept_forever,
    aclose_forcefully,
    open_tcp_listeners,
    peer_name,
    start_tls,
)
from pulse._log import get_logger
from pulse.errors import ConnectionClosed, PeerTimeout, PulseError

from .connection import DEFAULT_MAX_MESSAGE_SIZE, WebSocketConnection
from .errors import WebSocketClosed
from .handshake import Headers, RequestCheck, UpgradeRequest, server_handshake
from .heartbeat import HeartbeatMode
from .inbox import EchoInbox, Inbox
from .outbox import DropHandler, Outbox, Overflow, Payload, log_drop
from .session import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    DEFAULT_FRAGMENT_SIZE,
    Initiator,
    Session,
    SessionEnd,
)

log = get_logger("pulse.websocket")

DEFAULT_SERVER_POLICY = HeartbeatPolicy(interval=10.0, timeout=30.0)
"""Ping a client after 10 s of silence; drop it after 30 s (three intervals)."""


class ServerConnection:
    """One connected client, as the handler sees it."""

    __slots__ = ("_inbox", "_outbox", "_session", "remote", "request", "subprotocol")

    def __init__(self, session: Session, inbox: Inbox,
                 outbox: Outbox, request: UpgradeRequest, subprotocol: str | None,
                 remote: str) -> None:
        self._session = session
        self._inbox = inbox
        self._outbox = outbox
        self.request = request
        """The upgrade request (path, headers, offered subprotocols)."""
        self.subprotocol = subprotocol
        self.remote = remote
        """The client's ``host:port``."""

    @property
    def path(self) -> str:
        """The request target (path and query)."""
        return self.request.path

    @property
    def closed(self) -> bool:
        """True once the connection ended."""
        return self._session.ended is not None

    @property
    def close_code(self) -> int | None:
        """The close code the connection ended with (None while open)."""
        end = self._session.ended
        return end.code if end is not None else None

    @property
    def close_reason(self) -> str | None:
        """Why the connection ended (None while open)."""
        end = self._session.ended
        return end.reason if end is not None else None

    def stats(self) -> PeerStats:
        """Liveness statistics of this client."""
        return self._session.stats()

    @property
    def pending(self) -> int:
        """Messages queued for this client and not yet handed to its socket."""
        return len(self._outbox)

    async def send(self, message: Payload) -> None:
        """Queue a message for this client (the overflow policy applies when full).

        Raises :class:`~pulse.errors.PeerTimeout` once the client was declared dead and
        :class:`~.errors.WebSocketClosed` once the connection closed otherwise.
        """
        await self._outbox.put(message)

    def send_nowait(self, message: Payload) -> None:
        """Queue without waiting (a full ``wait`` queue raises ``QueueFull``)."""
        self._outbox.put_nowait(message)

    async def receive(self) -> Payload:
        """The next message from this client; raises once the connection ended."""
        try:
            return await self._inbox.get()
        except anyio.EndOfStream:
            raise closed_error(self._session.ended) from None

    def __aiter__(self) -> AsyncIterator[Payload]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Payload]:
        while True:
            try:
                message = await self.receive()
            except ConnectionClosed:
                return
            yield message

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start closing this connection with ``code`` and ``reason``."""
        self._session.end(reason or "closed by server", code, Initiator.LOCAL)


def closed_error(end: SessionEnd | None) -> ConnectionClosed:
    """The exception that tells a handler how its connection ended."""
    if end is None:
        return WebSocketClosed("closed", 1006)
    if end.peer_dead:
        return PeerTimeout(end.reason)
    return WebSocketClosed(end.reason, end.code)


Handler = Callable[[ServerConnection], Awaitable[None]]


@dataclass(slots=True)
class WebSocketServer:
    """A running server: where it listens and who is connected."""

    listeners: list[Listener]
    connections: set[ServerConnection] = field(default_factory=set)
    #: Addresses refused for a while after one of their connections was closed for a
    #: ping flood (1 s, doubling per repeat up to 60 s), as on the ``tcp://`` server.
    offenders: OffenderCooldown = field(default_factory=OffenderCooldown)
    _nursery: anyio.abc.TaskGroup | None = field(default=None, repr=False)
    """Where sessions without a task of their own start theirs (set while serving)."""
    _door: OffenderDoor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._door = OffenderDoor(log, self.offenders)

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.listeners[0].socket.getsockname()[1])


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the server applies to every client (see :func:`serve_websocket` for the meaning);
    :func:`serve_stream` takes one to serve a single accepted stream."""

    policy: HeartbeatPolicy = DEFAULT_SERVER_POLICY
    heartbeat: HeartbeatMode = HeartbeatMode.CONTROL
    detector: Callable[[HeartbeatPolicy], FailureDetector] | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    queue_size: int = 256
    overflow: Overflow = Overflow.WAIT
    on_drop: DropHandler | None = None
    receive_buffer: int = 64
    handshake_timeout: float = 10.0
    close_timeout: float = 2.0
    ssl_context: ssl.SSLContext | None = None
    subprotocols: Sequence[str] = ()
    headers: Headers = ()
    check: RequestCheck | None = None
    fragment_size: int = DEFAULT_FRAGMENT_SIZE
    max_ping_rate: float = DEFAULT_MAX_PING_RATE

    def __post_init__(self) -> None:
        for name in ("queue_size", "receive_buffer", "max_message_size"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value!r}")
        if not self.handshake_timeout > 0 or math.isnan(self.handshake_timeout):
            raise ValueError(f"handshake_timeout must be positive, got {self.handshake_timeout!r}")
        if self.close_timeout < 0:
            raise ValueError(f"close_timeout must not be negative, got {self.close_timeout!r}")
        if self.fragment_size < 0:
            raise ValueError(f"fragment_size must be >= 0, got {self.fragment_size!r}")


async def serve_stream(
    stream: trio.abc.Stream,
    handler: Handler,
    settings: ServerSettings | None = None,
    *,
    peer: str | None = None,
    server: WebSocketServer | None = None,
) -> None:
    """Serve one client on an accepted ``stream`` (TCP, or memory streams in tests).

    Never raises for anything the client does; returns when the connection is over (the
    stream is closed by then).
    """
    options = settings or ServerSettings()
    peer = peer or peer_name(stream)
    transport = "wss" if options.ssl_context is not None else "ws"
    door = server._door if server is not None else None
    if door is not None and door.refuses(peer, transport):
        # Closed for a ping flood moments ago: no handshake, just the door.
        await aclose_forcefully(stream)
        return
    wrapped: trio.abc.Stream = stream
    try:
        with bounded(Phase.HANDSHAKE, options.handshake_timeout, peer=peer):
            if options.ssl_context is not None:
                wrapped = await start_tls(stream, options.ssl_context, server_side=True,
                                          https_compatible=True)
            ws, request, subprotocol = await server_handshake(
                wrapped, subprotocols=options.subprotocols, headers=options.headers,
                check=options.check,
            )
    except (PulseError, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        reason = str(exc) or repr(exc)
        log.info("handshake_failed", peer=peer, transport=transport, reason=reason)
        await aclose_forcefully(wrapped)
        return
    except BaseException:  # cancelled (the server stops): the stream is ours to close
        await aclose_forcefully(wrapped)
        raise
    conn = WebSocketConnection(wrapped, ws, max_message_size=options.max_message_size)
    del ws  # the opening handshake's state is not needed any more
    outbox = Outbox(options.queue_size, options.overflow, options.on_drop or log_drop, peer=peer)
    inbox = EchoInbox(outbox) if handler is echo else Inbox(options.receive_buffer)
    detector = (options.detector(options.policy)
                if options.detector is not None else None)
    session = Session(
        conn, policy=options.policy, outbox=outbox, inbox=inbox, heartbeat=options.heartbeat,
        detector=detector, fragment_size=options.fragment_size,
        close_timeout=options.close_timeout, peer=peer, transport=transport,
        max_ping_rate=options.max_ping_rate,
        on_end=partial(_cool_down_offender, door, peer, transport) if door is not None else None,
    )
    client = ServerConnection(session, inbox, outbox, request, subprotocol, peer)
    connections = server.connections if server is not None else set()
    connections.add(client)
    log.info("client_connected", peer=peer, transport=transport, path=request.path)
    if server is not None and server._nursery is not None and session.launchable:
        # The session needs no task of its own: the engine reads the socket and keeps the
        # time; the session starts tasks in the server's nursery only while it has
        # something to wait for, and once to close. The built-in echo needs none either
        # (EchoInbox hands each message straight back to the outbox), so this task ends
        # here; an application's handler runs in this task.
        if handler is echo:
            session.launch(server._nursery, partial(_launched_closed, connections, client, None,
                                                    options.close_timeout))
            return
        run = _HandlerRun()
        session.launch(server._nursery, partial(_launched_closed, connections, client, run,
                                                options.close_timeout))
        await run.call(handler, client, options)
        return
    try:
        if handler is echo:
            # The built-in echo needs no handler task (EchoInbox); this task runs the session.
            _finish(session, await session.run(), inbox, outbox, peer, transport)
        else:
            await _run_with_handler(handler, client, session, options, peer, transport)
    except Exception:  # pragma: no cover - last line of defence for the other clients
        log.exception("connection_failed", peer=peer, transport=transport)
    finally:
        connections.discard(client)
        await aclose_forcefully(wrapped)


class _HandlerRun:
    """The application's handler of a launched session, as its closing sees it."""

    __slots__ = ("_done", "_finished", "scope")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self._finished = False
        self._done: anyio.Event | None = None  # made only when the closing waits for it

    async def call(self, handler: Handler, client: ServerConnection,
                   options: ServerSettings) -> None:
        """Run the handler (cancelled by :meth:`stop`); note when it is over."""
        try:
            with self.scope:
                await _call_handler(handler, client, options)
        finally:
            self._finished = True
            if self._done is not None:
                self._done.set()

    async def stop(self, grace: float) -> None:
        """Give the handler ``grace`` seconds to return by itself, then cancel it."""
        if not self._finished:
            self._done = anyio.Event()
            with bounded(Phase.CLOSE, grace, move_on=True):
                await self._done.wait()
        self.scope.cancel()


async def _launched_closed(connections: set[ServerConnection], client: ServerConnection,
                           run: _HandlerRun | None, close_timeout: float,
                           end: SessionEnd) -> None:
    """A launched session closed: what serve_stream does after a session it ran."""
    session = client._session
    try:
        _finish(session, end, client._inbox, client._outbox, client.remote, session.transport)
        if run is not None:
            await run.stop(close_timeout)
    finally:
        connections.discard(client)
        await aclose_forcefully(session.conn.stream)


def _finish(session: Session, end: SessionEnd, inbox: Inbox, outbox: Outbox, peer: str,
            transport: str) -> None:
    """The session ended: close the queues, report what was not delivered, log why."""
    inbox.close()
    outbox.close(closed_error(end), f"not sent: connection closed ({end.reason})")
    outbox.report(session.unconfirmed(), f"unconfirmed when the connection ended: "
                  f"{end.reason}", possibly_delivered=True)
    log.info("client_gone", peer=peer, transport=transport, reason=end.reason,
             code=end.code, initiator=end.initiator.value)


def _cool_down_offender(door: OffenderDoor, peer: str, transport: str, end: SessionEnd) -> None:
    """A session ends: if this server closed it for a ping flood (its one policy close),
    the address starts cooling down now, before the close frame goes out."""
    if end.code == CLOSE_POLICY_VIOLATION and end.initiator is Initiator.LOCAL:
        door.offence(peer, transport)


async def _call_handler(handler: Handler, client: ServerConnection,
                        options: ServerSettings) -> None:
    """Run the application's handler; end the session the way its outcome says."""
    session = client._session
    try:
        await handler(client)
    except ConnectionClosed:
        pass  # the client went away; the session knows why
    except Exception as exc:  # a bug in one handler must not take the server down
        log.exception("handler_failed", peer=client.remote, transport=session.transport)
        session.end(f"handler failed: {type(exc).__name__}", CLOSE_INTERNAL_ERROR)
    else:
        session.finish("handler finished", CLOSE_NORMAL)  # after the queue, within close_timeout


async def _run_with_handler(handler: Handler, client: ServerConnection, session: Session,
                            options: ServerSettings, peer: str, transport: str) -> None:
    """Run the session and the application's handler side by side until both are done."""
    run = _HandlerRun()
    async with anyio.create_task_group() as nursery:
        nursery.start_soon(run.call, handler, client, options)
        _finish(session, await session.run(), client._inbox, client._outbox, peer, transport)
        await run.stop(options.close_timeout)


async def serve_websocket(
    handler: Handler,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    policy: HeartbeatPolicy | None = None,
    heartbeat: HeartbeatMode = HeartbeatMode.CONTROL,
    detector: Callable[[HeartbeatPolicy], FailureDetector] | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    queue_size: int = 256,
    overflow: Overflow = Overflow.WAIT,
    on_drop: DropHandler | None = None,
    receive_buffer: int = 64,
    handshake_timeout: float = 10.0,
    close_timeout: float = 2.0,
    ssl_context: ssl.SSLContext | None = None,
    subprotocols: Sequence[str] = (),
    headers: Headers = (),
    check: RequestCheck | None = None,
    fragment_size: int = DEFAULT_FRAGMENT_SIZE,
    max_ping_rate: float = DEFAULT_MAX_PING_RATE,
    task_status: anyio.abc.TaskStatus[WebSocketServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve WebSocket clients on ``host:port`` until cancelled; ``handler(conn)`` per client.

    Every argument after ``handler`` is a keyword, as for every ``serve_*`` in pulse.
    ``detector(policy)`` builds each client's failure detector (default: a fixed timeout).

    ``task_status.started`` receives the :class:`WebSocketServer` (its ``port`` is the bound
    one when ``port`` is 0). ``policy`` defaults to :data:`DEFAULT_SERVER_POLICY`.
    Per client: ``queue_size`` outgoing messages under ``overflow``, ``receive_buffer``
    received messages not yet taken by the handler (beyond that the server stops reading
    that client and pauses its liveness verdict), messages up to ``max_message_size`` bytes.
    ``check(request)`` may refuse an upgrade by returning an HTTP status. When the handler
    returns, queued messages are flushed (up to ``close_timeout``) and the connection closes
    with 1000; a handler still running ``close_timeout`` after its connection ended is
    cancelled. When the server is cancelled every client gets 1001 (going away). A client's
    pings are answered up to ``max_ping_rate`` per second (200; 0: no limit); one that keeps
    pinging faster for about a second is closed with 1008 ("ping flood").

    Each client costs one task, its handler's; with ``handler=echo`` an idle client costs
    none (see :class:`~.inbox.EchoInbox`). Over ``wss://`` the session needs a task of its
    own besides.
    """
    settings = ServerSettings(
        policy=policy or DEFAULT_SERVER_POLICY, heartbeat=heartbeat,
        detector=detector, max_message_size=max_message_size,
        queue_size=queue_size, overflow=overflow, on_drop=on_drop,
        receive_buffer=receive_buffer, handshake_timeout=handshake_timeout,
        close_timeout=close_timeout, ssl_context=ssl_context, subprotocols=subprotocols,
        headers=headers, check=check, fragment_size=fragment_size,
        max_ping_rate=max_ping_rate,
    )
    listeners = await open_tcp_listeners(port, host=host)
    server = WebSocketServer(listeners)

    async def accept(stream: SocketStream) -> None:
        await serve_stream(stream, handler, settings, server=server)

    async with anyio.create_task_group() as nursery:
        server._nursery = nursery
        task_status.started(server)
        try:
            async with anyio.create_task_group() as accepting:
                for listener in listeners:
                    accepting.start_soon(_accept_loop, listener, nursery, accept)
        finally:
            # Sessions without a task are not reached by the cancellation: end each with
            # 1001 (going away); each closes in a task of this nursery, waited for here.
            server._nursery = None
            for client in list(server.connections):
                if client._session.launched:
                    client._session.go_away()


async def _accept_loop(listener: Listener, nursery: anyio.abc.TaskGroup,
                       accept: Callable[[SocketStream], Coroutine[Any, Any, None]]) -> None:
    """Start ``accept(stream)`` in ``nursery`` for every client of ``listener``; the stream
    stays open when ``accept`` returns (:func:`serve_stream` closes it, and a session
    without a task outlives the task that accepted it)."""
    def take(stream: SocketStream) -> None:
        nursery.start_soon(accept, stream)

    async with listener:
        await accept_forever(listener, take)


async def serve(handler: Handler, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
    """Deprecated: :func:`serve_websocket` with ``host`` and ``port`` as keywords
    (``detector_factory=`` is accepted as the old name of ``detector=``)."""
    deprecated("pulse.plugins.websocket.serve(handler, host, port)",
               "serve_websocket(handler, host=..., port=...)")
    if "detector_factory" in options:
        if "detector" in options:
            raise TypeError("got both detector_factory= (deprecated) and detector=")
        deprecated("serve(detector_factory=...)", "detector=")
        options["detector"] = options.pop("detector_factory")
    await serve_websocket(handler, host=host, port=port, **options)


async def echo(conn: ServerConnection) -> None:
    """A handler that sends every message back to its client."""
    async for message in conn:
        await conn.send(message)
