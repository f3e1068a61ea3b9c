"""The resilient WebSocket client: one object that stays usable across reconnects.

Rules this module keeps:

* Reconnecting follows the one reconnect supervisor (:mod:`pulse._core.reconnect`, driven
  by :mod:`pulse._driver.reconnect`): at most one connect attempt is in flight however many
  triggers fire at once (dead peer, socket error, close frame,
  :meth:`ResilientWebSocket.reconnect`): each of them only ends the current session.
* Reconnects wait the :class:`~pulse._core.backoff.Backoff` delay, with full jitter on every
  attempt including the first after a loss; the backoff resets only after a connection
  stayed up ``reset_after`` seconds. A connection counts as up once the ``on_connect`` hook
  succeeded.
* The client stops for good (state ``failed``) when the backoff runs out of attempts, when
  the server closes with a code in ``no_reconnect_codes`` (1008 by default), when the
  handshake is refused with a status in ``give_up_statuses`` (401, 403 by default) or when
  ``on_connect`` raises :class:`~pulse.errors.ReconnectGaveUp`.
* Messages wait in a bounded :class:`~.outbox.Outbox` while there is no connection and are
  sent in order once ``on_connect`` is done; what can no longer be sent is reported through
  ``on_drop``, never discarded silently (see :class:`~.session.Delivery`).
"""

from __future__ import annotations

import enum
import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import anyio
import trio

from pulse._core.backoff import Backoff
from pulse._core.detectors import FailureDetector
from pulse._core.liveness import PeerStats
from pulse._core.policy import HeartbeatPolicy
from pulse._core.reconnect import ReconnectMachine, default_backoff
from pulse._deprecation import deprecated
from pulse._driver.feed import EventFeed, EventHub
from pulse._driver.phase import Phase, bounded
from pulse._driver.reconnect import AttemptHandle, ReconnectDriver
from pulse._driver.util import background_nursery
from pulse._log import get_logger
from pulse.actions import Action, Reconnect
from pulse.errors import ConnectionClosed, PulseError, ReconnectGaveUp

from .connection import DEFAULT_MAX_MESSAGE_SIZE, WebSocketConnection
from .errors import HandshakeRejected
from .handshake import Accepted, Headers, open_connection
from .heartbeat import HeartbeatMode
from .inbox import Inbox
from .outbox import DropHandler, Outbox, Overflow, Payload, log_drop
from .session import (
    CLOSE_NORMAL,
    DEFAULT_FRAGMENT_SIZE,
    DEFAULT_WINDOW,
    Delivery,
    Initiator,
    Session,
    SessionEnd,
)
from .transport import Opener, WebSocketURL, open_stream, parse_ws_url

log = get_logger("pulse.websocket")

DEFAULT_POLICY: Final = HeartbeatPolicy(interval=10.0, timeout=20.0)
"""Ping after 10 s without hearing from the peer; dead after 20 s of silence."""

NO_RECONNECT_CODES: Final = frozenset({1008})
"""Close codes after which the client does not come back (1008: policy violation)."""

GIVE_UP_STATUSES: Final = frozenset({401, 403})
"""Handshake refusals that retrying cannot fix (unauthorized, forbidden)."""


class ClientState(enum.Enum):
    """Where a :class:`ResilientWebSocket` stands."""

    CONNECTING = "connecting"      # no connection yet
    OPEN = "open"                  # connected, on_connect done, queue flowing
    RECONNECTING = "reconnecting"  # lost a connection, trying again
    CLOSED = "closed"              # closed by the application
    FAILED = "failed"              # gave up (attempts used up, or told not to come back)


@dataclass(frozen=True, slots=True)
class StateChange:
    """A client state transition or a failed attempt, with its reason.

    ``attempt`` counts reconnect attempts since the backoff last reset; ``delay`` is the
    wait before the next attempt (for ``connecting`` / ``reconnecting``); ``code`` is the
    close code of the connection that just ended, when there was one.
    """

    state: ClientState
    reason: str
    attempt: int = 0
    delay: float = 0.0
    code: int | None = None


class ConnectionHandle:
    """The fresh connection as the ``on_connect`` hook sees it.

    :meth:`send` goes out ahead of the queued messages; :meth:`receive` returns what the
    server sends while the hook runs (what the hook leaves unread goes to the application,
    in order).
    """

    def __init__(self, session: Session, inbox: Inbox, accepted: Accepted, number: int) -> None:
        self._session = session
        self._inbox = inbox
        self.subprotocol = accepted.subprotocol
        self.headers = accepted.headers
        self.number = number
        """1 for the first successful connection, 2 after the first reconnect, …"""

    async def send(self, message: Payload) -> None:
        """Send now, ahead of the queue; returns once handed to the socket."""
        await self._session.send_direct(message)

    async def receive(self) -> Payload:
        """The next message from the server."""
        return await self._inbox.get()


OnConnect = Callable[[ConnectionHandle], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Options:
    policy: HeartbeatPolicy
    heartbeat: HeartbeatMode
    detector: Callable[[HeartbeatPolicy], FailureDetector] | None
    delivery: Delivery
    window: int
    fragment_size: int
    headers: Headers
    subprotocols: Sequence[str]
    ssl_context: ssl.SSLContext | None
    server_hostname: str
    handshake_timeout: float
    close_timeout: float
    max_message_size: int
    no_reconnect_codes: frozenset[int]
    give_up_statuses: frozenset[int]
    opener: Opener
    on_connect: OnConnect | None
    on_liveness: Callable[[Action], None] | None
    shared_probe: bool = True


class ResilientWebSocket:
    """A WebSocket client that reconnects by itself; create it with :func:`reconnecting_websocket`.

    ``send`` queues (it never waits for a connection, only for queue room under the ``wait``
    policy); ``receive`` / ``async for`` return messages from whichever connection is
    current; ``state`` and ``events()`` tell where the client stands and why.
    """

    def __init__(
        self,
        url: WebSocketURL,
        options: _Options,
        backoff: Backoff,
        outbox: Outbox,
        receive_buffer: int,
        on_event: Callable[[StateChange], None] | None,
    ) -> None:
        self.url = url
        self.backoff = backoff
        self._options = options
        self._outbox = outbox
        self._inbox = Inbox(receive_buffer)
        self._receive_buffer = receive_buffer
        self._on_event = on_event
        self._events: EventHub[StateChange] = EventHub()
        self.state = ClientState.CONNECTING
        self.connects = 0
        """Successful connections so far (on_connect included)."""
        self.attempts_total = 0
        """Connection attempts so far, successful or not."""
        self.subprotocol: str | None = None
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.last_end: SessionEnd | None = None
        self._session: Session | None = None
        self._attempt_scope: anyio.CancelScope | None = None
        self._last_code: int | None = None
        self._driver = ReconnectDriver(
            ReconnectMachine(backoff), self._attempt,
            retry_on=(OSError, trio.TooSlowError, PulseError, trio.BrokenResourceError),
            describe=_describe, on_wait=self._waiting, on_give_up=self._gave_up,
            destination=(("wss" if url.secure else "ws", url.host, url.port)
                         if options.shared_probe else None),
        )
        self._closing = False
        self._close_reason = "closed by application"
        self._failure: PulseError | None = None
        self._opened = anyio.Event()
        self._finished = anyio.Event()

    # -- observing ------------------------------------------------------------------------

    def events(self) -> EventFeed[StateChange]:
        """A new subscription to the state changes (each call subscribes once more; the
        first also gets what happened before it).

        A subscription keeps the latest 256 events if it is not read; pass ``on_event`` to
        :func:`reconnecting_websocket` to see every event synchronously instead.
        """
        return self._events.subscribe()

    @property
    def pending(self) -> int:
        """Messages queued and not yet handed to a socket."""
        return len(self._outbox)

    @property
    def unconfirmed(self) -> int:
        """Messages written to the current connection that no pong has confirmed yet."""
        session = self._session
        return len(session.unconfirmed()) if session is not None else 0

    @property
    def dropped_count(self) -> int:
        """Messages reported through ``on_drop`` so far."""
        return self._outbox.dropped_count

    def stats(self) -> PeerStats | None:
        """Liveness statistics of the current connection (None while there is none)."""
        session = self._session
        return session.stats() if session is not None else None

    async def wait_open(self) -> None:
        """Return once the client is open; raises if it closes or fails first."""
        while self.state is not ClientState.OPEN:
            self._raise_if_finished()
            await self._opened.wait()
            self._raise_if_finished()

    # -- sending and receiving ------------------------------------------------------------

    async def send(self, message: Payload) -> None:
        """Queue ``message`` (``str``: text, ``bytes``: binary) for the server.

        Applies the overflow policy when the queue is full (``wait`` blocks here). Raises
        :class:`~pulse.errors.QueueFull` under ``raise``,
        :class:`~pulse.errors.ReconnectGaveUp` once failed and
        :class:`~pulse.errors.ConnectionClosed` once closed.
        """
        await self._outbox.put(message)

    def send_nowait(self, message: Payload) -> None:
        """Queue without waiting (a full ``wait`` queue raises :class:`QueueFull`)."""
        self._outbox.put_nowait(message)

    async def receive(self) -> Payload:
        """The next message from the server, across reconnects.

        Raises :class:`~pulse.errors.ReconnectGaveUp` after a failure and
        :class:`~pulse.errors.ConnectionClosed` after close, once the buffered messages are
        consumed.
        """
        try:
            return await self._inbox.get()
        except anyio.EndOfStream:
            raise self._failure or ConnectionClosed(self._close_reason) from None

    def __aiter__(self) -> AsyncIterator[Payload]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Payload]:
        while True:
            try:
                message = await self.receive()
            except ConnectionClosed:
                return
            yield message

    # -- controlling ----------------------------------------------------------------------

    def reconnect(self, reason: str = "reconnect requested by the application") -> None:
        """Drop the current connection and connect again (or skip the backoff wait).

        Idempotent while a reconnect is under way: it never starts a second attempt.
        """
        if self._closing or self._finished.is_set():
            return
        session = self._session
        if session is not None:
            session.end(reason, CLOSE_NORMAL, Initiator.LOCAL)
        else:
            self._driver.retry_now()

    async def aclose(self, reason: str = "closed by application") -> None:
        """Send what is queued (for up to ``close_timeout``), close, report the rest.

        Messages still queued after the flush are reported through ``on_drop``.
        """
        if not self._closing and not self._finished.is_set():
            # Also while (re)connecting: a connection that opens within close_timeout
            # still carries what was queued.
            with bounded(Phase.CLOSE, self._options.close_timeout, move_on=True):
                await self._outbox.wait_empty()
            self._stop(reason)
        await self._finished.wait()

    def _stop(self, reason: str) -> None:
        self._closing = True
        self._close_reason = reason
        self._driver.stop()
        if self._session is not None:
            self._session.end(reason, CLOSE_NORMAL, Initiator.LOCAL)
        if self._attempt_scope is not None:
            self._attempt_scope.cancel()

    # -- the supervisor -------------------------------------------------------------------

    def _set(self, change: StateChange) -> None:
        self.state = change.state
        self._events.publish(change)
        if self._on_event is not None:
            self._on_event(change)
        log.info("client_state", peer=self.url.peer, transport="wss" if self.url.secure else "ws",
                 state=change.state.value, reason=change.reason, attempt=change.attempt,
                 delay=round(change.delay, 3), code=change.code)

    def _raise_if_finished(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self.state is ClientState.CLOSED or self._finished.is_set():
            raise ConnectionClosed(self._close_reason)

    async def _run(self) -> None:
        try:
            await self._driver.run()
        finally:
            self._finish()

    def _finish(self) -> None:
        """Close the queues and feeds (once): at a give-up at once, else when the run ends."""
        if self._finished.is_set():
            return
        if self._failure is None:
            self._set(StateChange(ClientState.CLOSED, self._close_reason))
            error: PulseError = ConnectionClosed(self._close_reason)
            lost = f"not sent: client closed ({self._close_reason})"
        else:
            error = self._failure
            lost = f"not sent: client failed ({self._failure})"
        self._outbox.close(error, lost)
        self._inbox.close()
        self._opened.set()
        self._finished.set()
        self._events.close()

    async def _attempt(self, handle: AttemptHandle) -> str:
        """One attempt: open, run the connection to its end, say why it ended (raise
        :class:`~pulse.errors.ReconnectGaveUp` when the server said not to come back)."""
        options = self._options
        self.attempts_total += 1
        self._last_code = None
        opened: tuple[WebSocketConnection, Accepted] | None = None
        attempt = self._attempt_scope = anyio.CancelScope()
        try:
            with attempt:  # cancelled by _stop: closing never waits for a connect
                opened = await self._open(handle)
        except HandshakeRejected as exc:
            if exc.status_code in options.give_up_statuses:
                raise ReconnectGaveUp(
                    f"handshake refused with HTTP {exc.status_code}; not retrying") from None
            return str(exc)
        finally:
            self._attempt_scope = None
        if opened is None:  # the attempt was cancelled: the client is closing
            return self._close_reason
        end = await self._run_connection(*opened, handle)
        self.last_end = end
        self._last_code = end.code
        if (not self._closing and end.initiator is Initiator.PEER
                and end.code in options.no_reconnect_codes):
            raise ReconnectGaveUp(f"{end.reason} (code {end.code}: not reconnecting)")
        return end.reason

    def _waiting(self, wait: Reconnect, reason: str) -> None:
        state = ClientState.RECONNECTING if self.connects else ClientState.CONNECTING
        self._set(StateChange(state, reason, wait.attempt, wait.delay, self._last_code))

    def _gave_up(self, error: ReconnectGaveUp) -> None:
        self._failure = error
        self._set(StateChange(ClientState.FAILED, str(error), self.backoff.attempts))
        self._finish()  # no attempt is in flight: settle the queue before anyone looks

    async def _open(self, handle: AttemptHandle) -> tuple[WebSocketConnection, Accepted]:
        options = self._options
        url = self.url
        opener = options.opener

        async def reaching(host: str, port: int, ssl_context: ssl.SSLContext | None,
                           server_hostname: str) -> trio.abc.Stream:
            stream = await opener(host, port, ssl_context, server_hostname)
            handle.reached()  # from here on a failure is this client's own, not the server's
            return stream

        return await open_connection(
            url, reaching, options.ssl_context,
            server_hostname=options.server_hostname, headers=options.headers,
            subprotocols=options.subprotocols, max_message_size=options.max_message_size,
            timeout=options.handshake_timeout,
        )

    async def _run_connection(
        self, conn: WebSocketConnection, accepted: Accepted, handle: AttemptHandle
    ) -> SessionEnd:
        """Run one connection to its end (raises the hook's ReconnectGaveUp)."""
        options = self._options
        detector = (options.detector(options.policy)
                    if options.detector is not None else None)
        session = Session(
            conn, policy=options.policy, outbox=self._outbox, inbox=self._inbox,
            heartbeat=options.heartbeat, detector=detector, delivery=options.delivery,
            window=options.window, fragment_size=options.fragment_size,
            close_timeout=options.close_timeout, hold_outbox=options.on_connect is not None,
            peer=self.url.peer, transport="wss" if self.url.secure else "ws",
            on_liveness=options.on_liveness,
        )
        self._session = session
        self.subprotocol = accepted.subprotocol
        self.response_headers = accepted.headers
        gave_up: ReconnectGaveUp | None = None
        end: SessionEnd | None = None
        hook_scope = anyio.CancelScope()

        async def run_session() -> None:
            nonlocal end
            end = await session.run()
            hook_scope.cancel()

        try:
            async with anyio.create_task_group() as nursery:
                nursery.start_soon(run_session)
                with hook_scope:
                    try:
                        await self._run_hook(session, accepted)
                    except ReconnectGaveUp as exc:
                        gave_up = exc
                        session.end(f"on_connect gave up: {exc}", 1011, Initiator.LOCAL)
                    except (PulseError, OSError, trio.TooSlowError) as exc:
                        session.end(f"on_connect failed: {_describe(exc)}", 1011, Initiator.LOCAL)
                    else:
                        if session.ended is None and not self._closing:
                            self.connects += 1
                            handle.connected()
                            session.release_outbox()
                            self._set(StateChange(ClientState.OPEN, "connected",
                                                  self.backoff.attempts))
                            self._opened.set()
                            self._opened = anyio.Event()
                        elif self._closing:
                            session.end(self._close_reason, CLOSE_NORMAL, Initiator.LOCAL)
        finally:
            self._session = None
            self._settle_window(session)
        if gave_up is not None:
            raise gave_up
        assert end is not None
        return end

    async def _run_hook(self, session: Session, accepted: Accepted) -> None:
        hook = self._options.on_connect
        if hook is None:
            return
        inbox = Inbox(self._receive_buffer)
        session.divert(inbox)
        try:
            await hook(ConnectionHandle(session, inbox, accepted, self.connects + 1))
        finally:
            # Also when the hook failed or the connection ended under it: what the server
            # sent and the hook did not read goes to the application, in order.
            session.undivert()

    def _settle_window(self, session: Session) -> None:
        unconfirmed = session.unconfirmed()
        if not unconfirmed:
            return
        end = session.ended
        why = end.reason if end is not None else "connection ended"
        if self._options.delivery is Delivery.AT_LEAST_ONCE and not self._closing:
            self._outbox.requeue(unconfirmed)
            log.info("resending", peer=self.url.peer, count=len(unconfirmed), reason=why)
        else:
            self._outbox.report(unconfirmed, f"unconfirmed when the connection ended: {why}",
                                possibly_delivered=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out (connect or handshake)"
    if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None:
        return _describe(exc.__cause__)  # e.g. the ssl.SSLError behind a TLS failure
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__



@asynccontextmanager
async def reconnecting_websocket(
    url: str,
    *,
    policy: HeartbeatPolicy | None = None,
    backoff: Backoff | None = None,
    queue_size: int = 1024,
    overflow: Overflow = Overflow.WAIT,
    on_drop: DropHandler | None = None,
    on_connect: OnConnect | None = None,
    on_event: Callable[[StateChange], None] | None = None,
    on_liveness: Callable[[Action], None] | None = None,
    delivery: Delivery = Delivery.AT_MOST_ONCE,
    heartbeat: HeartbeatMode = HeartbeatMode.CONTROL,
    detector: Callable[[HeartbeatPolicy], FailureDetector] | None = None,
    headers: Headers = (),
    subprotocols: Sequence[str] = (),
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    handshake_timeout: float = 10.0,
    close_timeout: float = 2.0,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    receive_buffer: int = 256,
    window: int = DEFAULT_WINDOW,
    fragment_size: int = DEFAULT_FRAGMENT_SIZE,
    no_reconnect_codes: Collection[int] = NO_RECONNECT_CODES,
    give_up_statuses: Collection[int] = GIVE_UP_STATUSES,
    opener: Opener | None = None,
    shared_probe: bool = True,
    detector_factory: Callable[[HeartbeatPolicy], FailureDetector] | None = None,
) -> AsyncIterator[ResilientWebSocket]:
    """A :class:`ResilientWebSocket` to ``url`` (``ws://`` or ``wss://``) for the block.

    The client starts connecting at once and keeps reconnecting until the block ends (then
    it flushes the queue for up to ``close_timeout`` and closes with code 1000) or it fails.

    * ``policy``: heartbeat timing (default :data:`DEFAULT_POLICY`: ping after 10 s of
      silence from the server, dead after 20 s). ``heartbeat`` picks RFC 6455 control frames
      (default) or pulse frames in binary messages. ``detector(policy)`` builds the failure
      detector of each connection (default: a fixed timeout); ``detector_factory=`` is its
      deprecated old name.
    * ``backoff``: reconnect delays (default: full jitter below max(3 s, outage age), at most
      30 s, forever, reset after a connection stayed up 30 s; see ``docs/reconnect.md``);
      ``Backoff(max_attempts=n)`` gives up after n.
    * ``queue_size`` / ``overflow`` / ``on_drop``: the outgoing queue's bound, what ``send``
      does when it is full, and who hears about every message given up on (default: a
      structlog warning per message). ``delivery`` chooses at-most-once (report possibly
      lost messages) or at-least-once (send them again) for messages in flight at a crash.
    * ``on_connect(handle)``: awaited after every (re)connect, before queued messages flow.
    * ``headers``, ``subprotocols``, ``ssl_context`` (``wss://``; default: the system's
      trust store), ``server_hostname``: passed to the handshake and TLS.
    * ``handshake_timeout`` bounds TCP connect + TLS + HTTP upgrade; ``max_message_size``
      bounds received messages (close code 1009 beyond it).
    * ``no_reconnect_codes`` / ``give_up_statuses``: server answers that end the client.
    * ``opener``: how to reach the server (tests use memory streams).
    * ``shared_probe``: while the server refuses connections or cannot be reached, the
      clients of this process that connect to the same ``(scheme, host, port)`` wait
      behind one probe instead of each retrying (see ``docs/reconnect.md``); ``False``
      keeps this client on its own backoff.
    * ``on_event(change)`` is called synchronously with every :class:`StateChange`;
      ``on_liveness(action)`` with every liveness change of the current connection.
    """
    if detector_factory is not None:
        if detector is not None:
            raise TypeError("got both detector_factory= (deprecated) and detector=")
        deprecated("reconnecting_websocket(detector_factory=...)", "detector=", stacklevel=4)
        detector = detector_factory
    parsed = parse_ws_url(url)
    if parsed.secure and ssl_context is None:
        ssl_context = ssl.create_default_context()
    if not parsed.secure and ssl_context is not None:
        raise ValueError(f"an ssl_context was given for a plain ws:// URL: {url!r} (use wss://)")
    if handshake_timeout <= 0 or math.isnan(handshake_timeout):
        raise ValueError(f"handshake_timeout must be positive, got {handshake_timeout!r}")
    if close_timeout < 0:
        raise ValueError(f"close_timeout must not be negative, got {close_timeout!r}")
    if receive_buffer < 1:
        raise ValueError(f"receive_buffer must be at least 1, got {receive_buffer!r}")
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window!r}")
    if fragment_size < 0:
        raise ValueError(f"fragment_size must be >= 0 (0: never fragment), got {fragment_size!r}")
    options = _Options(
        policy=policy or DEFAULT_POLICY, heartbeat=heartbeat, detector=detector,
        delivery=delivery, window=window, fragment_size=fragment_size, headers=headers,
        subprotocols=subprotocols, ssl_context=ssl_context,
        server_hostname=server_hostname or parsed.host, handshake_timeout=handshake_timeout,
        close_timeout=close_timeout, max_message_size=max_message_size,
        no_reconnect_codes=frozenset(no_reconnect_codes),
        give_up_statuses=frozenset(give_up_statuses), opener=opener or open_stream,
        on_connect=on_connect, on_liveness=on_liveness, shared_probe=shared_probe,
    )
    outbox = Outbox(queue_size, overflow, on_drop or log_drop, peer=parsed.peer)
    client = ResilientWebSocket(parsed, options, backoff or default_backoff(), outbox,
                                receive_buffer,
                                on_event)
    async with background_nursery() as nursery:
        nursery.start_soon(client._run)
        try:
            yield client
        except BaseException:
            client._stop("the application's block raised")
            raise
        else:
            await client.aclose()



def connect(url: str, **options: Any) -> AbstractAsyncContextManager[ResilientWebSocket]:
    """Deprecated name of :func:`reconnecting_websocket` (in pulse, ``connect*`` opens one
    connection and ``reconnecting_*`` a client that comes back by itself)."""
    deprecated("pulse.plugins.websocket.connect", "pulse.plugins.websocket.reconnecting_websocket")
    return reconnecting_websocket(url, **options)
