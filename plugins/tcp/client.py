"""TCP clients: one heartbeat connection, or a client that reconnects with backoff (under
the one reconnect supervisor, :mod:`pulse._driver.reconnect`).

The reconnecting client keeps the WebSocket client's delivery contract
(:mod:`pulse.delivery`): a message ``send`` handed to a connection that then died before
the server confirmed it (a pong to a heartbeat written after it) is never lost silently. Under
``Delivery.AT_MOST_ONCE`` (the default) it is reported through ``on_drop`` as a
:class:`~pulse.delivery.Dropped` with ``possibly_delivered=True``; under
``Delivery.AT_LEAST_ONCE`` it is sent again on the next connection, first and in order.
After a local pause (the process was stopped) a send first checks that the connection still
stands, so a connection the server dropped meanwhile does not swallow it.
"""

from __future__ import annotations

import enum
import math
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import trio

from pulse._core.backoff import Backoff
from pulse._core.policy import HeartbeatPolicy
from pulse._core.reconnect import ReconnectMachine, default_backoff
from pulse._driver.connection import DEFAULT_WINDOW, HeartbeatConnection, heartbeat
from pulse._driver.feed import EventFeed, EventHub
from pulse._driver.phase import Phase, bounded
from pulse._driver.reconnect import AttemptHandle, ReconnectDriver
from pulse._driver.streams import SocketStream, dial, peer_name
from pulse._driver.util import Doorbell, background_nursery, receive_keeping
from pulse._log import get_logger
from pulse.actions import Reconnect
from pulse.delivery import Delivery, Dropped
from pulse.errors import ConnectionClosed, PulseError, ReconnectGaveUp

from .keepalive import TcpKeepalive
from .server import tune_socket

log = get_logger("pulse.tcp")

DropHandler = Callable[[Dropped], None]


def log_drop(dropped: Dropped) -> None:
    """The default ``on_drop``: one structlog warning per message given up on."""
    log.warning("message_dropped", peer=dropped.peer, transport="tcp", reason=dropped.reason,
                possibly_delivered=dropped.possibly_delivered)


async def open_stream(
    host: str,
    port: int,
    *,
    keepalive: TcpKeepalive | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    connect_timeout: float = 10.0,
    on_transport: Callable[[], None] | None = None,
    local_address: str | None = None,
) -> tuple[trio.abc.Stream, str]:
    """Connect (and TLS-handshake) within ``connect_timeout``; returns the stream and peer
    (:class:`~pulse.errors.PhaseTimeout` when it takes longer). ``on_transport`` is called
    once the TCP connection is up (before TLS); ``local_address`` is the local address to
    connect from (None: the kernel picks)."""

    def prepare(sock: SocketStream) -> None:
        if on_transport is not None:
            on_transport()
        tune_socket(sock, keepalive)

    stream = await dial(
        host, port, ssl_context=ssl_context, server_hostname=server_hostname,
        prepare=prepare, timeout=connect_timeout, local_address=local_address,
    )
    return stream, peer_name(stream)


@asynccontextmanager
async def connect_tcp(
    host: str,
    port: int,
    policy: HeartbeatPolicy | None = None,
    *,
    keepalive: TcpKeepalive | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    connect_timeout: float = 10.0,
    on_transport: Callable[[], None] | None = None,
    local_address: str | None = None,
    **heartbeat_options: Any,
) -> AsyncIterator[HeartbeatConnection]:
    """One heartbeat connection to ``host:port`` for the ``async with`` block (no reconnect).

    Raises ``OSError`` (:class:`~pulse.errors.PhaseTimeout` after ``connect_timeout``) when
    the server cannot be reached and a :class:`~pulse.errors.PulseError` when the handshake
    fails. ``on_transport`` is called once the TCP connection is up (before TLS and the
    handshake). ``local_address`` binds the local end (connect from that interface).
    """
    stream, peer = await open_stream(
        host, port, keepalive=keepalive, ssl_context=ssl_context,
        server_hostname=server_hostname, connect_timeout=connect_timeout,
        on_transport=on_transport, local_address=local_address,
    )
    transport = "tls" if ssl_context is not None else "tcp"
    heartbeat_options.setdefault("handshake_timeout", connect_timeout)
    async with heartbeat(stream, policy, peer=peer, transport=transport,
                         **heartbeat_options) as conn:
        yield conn


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class ClientState(enum.Enum):
    """States of a :class:`ReconnectingClient`."""

    CONNECTING = "connecting"
    OPEN = "open"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StateChange:
    """A client state transition: why it happened, and for reconnects which attempt and delay."""

    state: ClientState
    reason: str
    attempt: int = 0
    delay: float = 0.0


class ReconnectingClient:
    """A TCP heartbeat client that survives server restarts and dead links.

    Use :func:`reconnecting_tcp`. ``send`` waits (up to its ``timeout``) for a live
    connection; ``receive`` returns messages from whichever connection is current; every
    transition is published on ``events()`` and logged. Messages a dead connection may have
    swallowed are reported or resent according to ``delivery`` (see the module docstring).
    """

    def __init__(self, host: str, port: int, policy: HeartbeatPolicy | None,
                 backoff: Backoff, options: dict[str, Any], *,
                 delivery: Delivery = Delivery.AT_MOST_ONCE,
                 on_drop: DropHandler | None = None,
                 window: int = DEFAULT_WINDOW,
                 shared_probe: bool = True,
                 on_event: Callable[[StateChange], None] | None = None) -> None:
        if not isinstance(delivery, Delivery):
            raise ValueError(f"delivery must be a Delivery, got {delivery!r}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window!r}")
        self.host, self.port = host, port
        self.policy = policy
        self.backoff = backoff
        self.delivery = delivery
        self.on_drop = on_drop or log_drop
        self._options = {**options, "delivery": delivery, "window": window}
        self._resend: list[Any] = []  # unconfirmed on a dead connection, to send again first
        self._closing = False
        #: Messages reported through ``on_drop`` so far.
        self.dropped_count = 0
        self.state = ClientState.CONNECTING
        self.connection: HeartbeatConnection | None = None
        self._changed = anyio.Event()  # set (and replaced) at every state change
        self._failure: PulseError | None = None
        self._inbound_send, self._inbound_receive = anyio.create_memory_object_stream[Any](256)
        self._arrived = Doorbell()  # rung for every message queued and at close (receive)
        self._events: EventHub[StateChange] = EventHub()
        self._on_event = on_event
        self.connects = 0
        self._driver = ReconnectDriver(
            ReconnectMachine(backoff), self._attempt,
            retry_on=(PulseError, OSError, trio.TooSlowError, ssl.SSLError),
            describe=_reason, on_wait=self._waiting, on_give_up=self._gave_up,
            destination=(("tls" if options.get("ssl_context") is not None else "tcp", host, port)
                         if shared_probe else None),
        )

    def events(self) -> EventFeed[StateChange]:
        """A new subscription to the state changes, in order (each call is independent;
        the first also gets what happened before it; bounded, never blocks the client).
        Pass ``on_event`` to :func:`reconnecting_tcp` to see every change synchronously."""
        return self._events.subscribe()

    def _set(self, change: StateChange) -> None:
        self.state = change.state
        self._events.publish(change)
        if self._on_event is not None:
            self._on_event(change)
        log.info("client_state", peer=f"{self.host}:{self.port}", transport="tcp",
                 state=change.state.value, reason=change.reason, attempt=change.attempt,
                 delay=round(change.delay, 3))
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def send(self, payload: object, timeout: float = math.inf) -> None:
        """Send on the current connection, waiting up to ``timeout`` s for one to be open
        (:class:`~pulse.errors.PhaseTimeout` after that).

        A connection that has closed but is not yet replaced is not retried in a loop: the
        send waits for the client's next state change (reconnecting, open, failed, closed).
        """
        with bounded(Phase.CONNECT, timeout, peer=f"{self.host}:{self.port}"):
            while True:
                if self._failure is not None:
                    raise self._failure
                if self.state is ClientState.CLOSED or self._closing:
                    raise ConnectionClosed("client closed")
                conn = self.connection
                changed = self._changed
                if conn is not None and not conn.closed:
                    try:
                        await conn.send(payload)
                    except ConnectionClosed:
                        pass
                    else:
                        if conn.closed:
                            # It closed while our bytes went out, perhaps already settled:
                            # what it left unconfirmed (ours included) is reported or
                            # resent now rather than forgotten.
                            self._settle(conn)
                        return
                await changed.wait()

    async def receive(self) -> Any:
        """The next message from the server (across reconnects)."""
        try:
            return await receive_keeping(self._inbound_receive, self._arrived)
        except anyio.EndOfStream:
            raise self._failure or ConnectionClosed("client closed") from None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            try:
                yield await self.receive()
            except ConnectionClosed:
                return

    async def _run(self) -> None:
        self._set(StateChange(ClientState.CONNECTING, f"connecting to {self.host}:{self.port}"))
        try:
            await self._driver.run()
        finally:
            self._give_up_resends("client closed")
            self._wake()
            self._inbound_send.close()
            self._arrived.ring()
            self._events.close()

    @property
    def unconfirmed(self) -> int:
        """Messages written to the current connection that the server has not confirmed,
        plus those waiting to be sent again (at-least-once)."""
        conn = self.connection
        return len(self._resend) + (conn.unconfirmed if conn is not None else 0)

    async def _attempt(self, handle: AttemptHandle) -> str:
        """One connection: connect, send again what the last one left unconfirmed, relay
        its messages until it ends, say why it ended."""
        opened: HeartbeatConnection | None = None
        try:
            async with connect_tcp(self.host, self.port, self.policy,
                                   on_transport=handle.reached, **self._options) as conn:
                opened = conn
                self.connects += 1
                while self._resend:  # first, in order, before anything sent from now on
                    await conn.send(self._resend[0])
                    self._resend.pop(0)
                self.connection = conn
                handle.connected()
                self._set(StateChange(ClientState.OPEN, "connected"))
                async for message in conn:
                    await self._inbound_send.send(message)
                    self._arrived.ring()
            return conn.close_reason or "connection closed"
        finally:
            self.connection = None
            if opened is not None:
                self._settle(opened)

    def _settle(self, conn: HeartbeatConnection) -> None:
        """The connection is gone: what it left unconfirmed is sent again or reported."""
        unconfirmed = conn.take_unconfirmed()
        if not unconfirmed:
            return
        why = conn.close_reason or "connection closed"
        if self.delivery is Delivery.AT_LEAST_ONCE and not self._closing:
            self._resend[:0] = unconfirmed
            log.info("resending", peer=f"{self.host}:{self.port}", transport="tcp",
                     count=len(unconfirmed), reason=why)
        else:
            self._report(unconfirmed, f"unconfirmed when the connection ended: {why}")

    def _report(self, messages: list[Any], reason: str) -> None:
        peer = f"{self.host}:{self.port}"
        for message in messages:
            self.dropped_count += 1
            self.on_drop(Dropped(message, reason, True, peer))

    def _give_up_resends(self, why: str) -> None:
        """The client ends: what was waiting to be sent again will not be."""
        resend, self._resend = self._resend, []
        self._report(resend, f"not sent again: {why}")

    async def _drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the server to confirm what was sent (a clean exit)."""
        with bounded(Phase.CLOSE, timeout, move_on=True):
            while True:
                conn = self.connection
                if conn is None or conn.closed or not conn.unconfirmed:
                    return
                await conn.wait_confirmed()

    def _waiting(self, wait: Reconnect, reason: str) -> None:
        self._set(StateChange(ClientState.RECONNECTING, reason, wait.attempt, wait.delay))

    def _gave_up(self, error: ReconnectGaveUp) -> None:
        self._failure = error
        self._give_up_resends(f"client failed ({error})")
        self._set(StateChange(ClientState.FAILED, str(error), self.backoff.attempts))

    def _close(self) -> None:
        self._closing = True
        self._driver.stop()
        self._set(StateChange(ClientState.CLOSED, "closed by application"))


@asynccontextmanager
async def reconnecting_tcp(
    host: str,
    port: int,
    policy: HeartbeatPolicy | None = None,
    *,
    backoff: Backoff | None = None,
    shared_probe: bool = True,
    delivery: Delivery = Delivery.AT_MOST_ONCE,
    on_drop: DropHandler | None = None,
    window: int = DEFAULT_WINDOW,
    close_timeout: float = 2.0,
    on_event: Callable[[StateChange], None] | None = None,
    **options: Any,
) -> AsyncIterator[ReconnectingClient]:
    """A :class:`ReconnectingClient` running for the ``async with`` block.

    Reconnects follow :mod:`pulse._core.reconnect` (one attempt at a time, full jitter on
    every attempt including the first after a loss); ``backoff`` defaults to
    :func:`~pulse._core.reconnect.default_backoff`, forever; ``options`` go to
    :func:`connect_tcp` (keepalive, ssl_context, peer_id, token, …). With ``shared_probe``
    (the default) the clients of this process that connect to the same host and port wait
    behind one probe while it refuses connections or cannot be reached, instead of each
    retrying (see ``docs/reconnect.md``); ``shared_probe=False`` keeps this client on its
    own backoff.

    ``delivery`` chooses what happens to messages a dead connection may have swallowed
    (written, not yet confirmed by the server): ``Delivery.AT_MOST_ONCE`` (default) reports
    each through ``on_drop(Dropped(message, reason, possibly_delivered=True, peer))``
    (default: a structlog warning), ``Delivery.AT_LEAST_ONCE`` sends them again on the next
    connection, first and in order. At most ``window`` messages are tracked. Leaving the
    block normally waits up to ``close_timeout`` s for the server to confirm what was sent;
    what is still unconfirmed then is reported.

    ``on_event(change)`` is called synchronously with every :class:`StateChange` (the same
    changes ``client.events()`` yields), as for the WebSocket client.
    """
    client = ReconnectingClient(host, port, policy, backoff or default_backoff(), options,
                                delivery=delivery, on_drop=on_drop, window=window,
                                shared_probe=shared_probe, on_event=on_event)
    async with background_nursery() as nursery:
        nursery.start_soon(client._run)
        try:
            yield client
            await client._drain(close_timeout)
        finally:
            client._close()
            nursery.cancel_scope.cancel()
