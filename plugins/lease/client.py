"""The lease client: one :class:`pulse.presence.PresenceSession` on a list of lease servers.

Timing follows ZooKeeper's client (:mod:`.timing`): read timeout 2/3 of the negotiated
session timeout, a ping when nothing was sent for half of that (at most every 10 s), a
connect timeout of session timeout / number of servers, servers tried in a shuffled order.

States (:class:`pulse.presence.SessionState`) and their transitions::

    CONNECTING --connect ok--> CONNECTED --connection lost--> DISCONNECTED
    DISCONNECTED --re-attached (same id + password)--> CONNECTED
    DISCONNECTED --server says expired, or no server reached for a whole timeout--> EXPIRED
    CONNECTED --server says expired/closed--> EXPIRED
    EXPIRED --reregister=True--> CONNECTING (a new session; registrations and watches restored)
    any --aclose()--> CLOSED

Rules this module keeps:

* Requests made while disconnected wait; after a re-attach they are sent again. Every
  operation is idempotent on the server (re-registering one's own key updates it,
  unregistering a missing key succeeds, a watch id already known is not duplicated), so a
  request whose answer was lost with the connection is safe to repeat.
* Watch events are numbered per session; the client acknowledges them in every request and
  drops repeats, so after a re-attach each event is delivered exactly once. If the server no
  longer knows a watch (it restarted, or the session was renewed) it sends a fresh snapshot
  and the client reports only the differences from what it had reported before.
* Client-side expiry: when no server could be reached for a whole session timeout since the
  server was last heard from, the session is reported EXPIRED without waiting for a server
  to say so (the server expires it no earlier than that).
"""

from __future__ import annotations

import itertools
import math
import random
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import trio

from pulse._core.session_timing import ClientTiming
from pulse._log import get_logger
from pulse._trio.util import background_nursery
from pulse.codec import MessageDecoder, encode_message
from pulse.errors import (
    ConnectionClosed,
    LimitExceeded,
    PulseError,
    QueueFull,
    RemoteProtocolError,
    SessionExpired,
)
from pulse.presence import PresenceEvent, SessionEvent, SessionState

from .errors import error_for
from .protocol import (
    CloseSession,
    Connect,
    ErrorCode,
    ErrorNotice,
    Get,
    ListChildren,
    Ping,
    Register,
    Request,
    RequestBody,
    Response,
    SessionNotice,
    Unregister,
    Unwatch,
    Watch,
    WatchEvent,
    check_client_id,
    check_key,
    parse_server_message,
    request_to_wire,
)

log = get_logger("pulse.lease.client")

StreamOpener = Callable[[str, int], Awaitable[trio.abc.Stream]]

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
MAX_BUFFERED_EVENTS = 100_000
MAX_STATE_EVENTS = 1_000


async def _open_tcp(host: str, port: int) -> trio.abc.Stream:
    return await trio.open_tcp_stream(host, port)


def _tls_opener(inner: StreamOpener, context: ssl.SSLContext) -> StreamOpener:
    """Open with ``inner``, then run a TLS handshake (server name = the host)."""

    async def open_tls(host: str, port: int) -> trio.abc.Stream:
        stream = await inner(host, port)
        tls = trio.SSLStream(stream, context, server_hostname=host)
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return tls

    return open_tls


@dataclass(slots=True)
class _Call:
    xid: int
    body: RequestBody
    done: trio.Event = field(default_factory=trio.Event)
    result: dict[str, Any] | None = None
    error: BaseException | None = None

    def finish(self, result: dict[str, Any] | None = None,
               error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


class _Lost(Exception):
    """The current connection is unusable (reason in the message)."""


class _Ended(Exception):
    """The server ended the session (``state`` is expired or closed)."""

    def __init__(self, state: str, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


class _Connection:
    """The current connection: its stream and what waits to be sent."""

    def __init__(self, stream: trio.abc.Stream, server: tuple[str, int], now: float,
                 decoder: MessageDecoder) -> None:
        self.stream = stream
        self.server = server
        self.decoder = decoder
        self.scope = trio.CancelScope()
        self.outcome: _Lost | _Ended | None = None
        self.queue: deque[Request] = deque()
        self.last_send = now
        self.last_receive = now
        self.wake = trio.Event()
        self.pings: dict[int, float] = {}

    def send(self, request: Request) -> None:
        self.queue.append(request)
        self.wake.set()


class _Feed:
    """A bounded buffer of items for one consumer."""

    def __init__(self, limit: int, *, drop_oldest: bool) -> None:
        self.items: deque[Any] = deque()
        self.limit = limit
        self.drop_oldest = drop_oldest
        self.overflowed = False
        self.end: BaseException | None = None  # StopAsyncIteration or an error, when done
        self._changed = trio.Event()

    def put(self, item: Any) -> None:
        if len(self.items) >= self.limit:
            if not self.drop_oldest:
                self.overflowed = True
                self._changed.set()
                return
            self.items.popleft()
        self.items.append(item)
        self._changed.set()

    def finish(self, end: BaseException) -> None:
        if self.end is None:
            self.end = end
        self._changed.set()

    async def get(self) -> Any:
        while True:
            if self.items:
                return self.items.popleft()
            if self.overflowed:
                raise QueueFull(f"more than {self.limit} events were not consumed")
            if self.end is not None:
                raise self.end
            await self._changed.wait()
            self._changed = trio.Event()


class StateChanges:
    """Every session state transition from the moment this object was created."""

    def __init__(self, client: LeaseSession) -> None:
        self._client = client
        self._feed = _Feed(MAX_STATE_EVENTS, drop_oldest=True)
        client._state_feeds.append(self._feed)

    def __aiter__(self) -> StateChanges:
        return self

    async def __anext__(self) -> SessionEvent:
        result: SessionEvent = await self._feed.get()
        return result

    async def aclose(self) -> None:
        """Stop receiving transitions."""
        self._feed.finish(StopAsyncIteration())
        if self._feed in self._client._state_feeds:
            self._client._state_feeds.remove(self._feed)


class WatchStream:
    """Online/offline events of the direct children of one prefix.

    The watch starts when iteration starts. Use ``async with`` (or call :meth:`aclose`) to
    stop it; abandoning it keeps it running until the session closes.
    """

    def __init__(self, client: LeaseSession, watch_id: int, prefix: str) -> None:
        self._client = client
        self.watch_id = watch_id
        self.prefix = prefix
        self.members: dict[str, bytes] = {}  # what this stream has reported online
        self._snapshot: dict[str, bytes] | None = None
        self._synced_once = False
        self._confirmed = False
        self._feed = _Feed(MAX_BUFFERED_EVENTS, drop_oldest=False)

    def __aiter__(self) -> WatchStream:
        return self

    async def start(self) -> None:
        """Establish the watch now (iteration does it otherwise): once this returns, every
        later change is reported."""
        if not self._confirmed:
            await self._client._start_watch(self)
            self._confirmed = True

    async def __anext__(self) -> PresenceEvent:
        await self.start()
        result: PresenceEvent = await self._feed.get()
        return result

    async def __aenter__(self) -> WatchStream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the watch."""
        self._feed.finish(StopAsyncIteration())
        self._client._stop_watch(self)

    # -- fed by the client ---------------------------------------------------------------

    def on_event(self, event: WatchEvent) -> None:
        if event.event == "synced":
            self._resync()
        elif event.initial:
            if self._snapshot is None:
                self._snapshot = {}
            self._snapshot[event.id] = event.data
        elif event.event == "online":
            self.members[event.id] = event.data
            self._feed.put(PresenceEvent("online", event.id, event.data))
        elif event.id in self.members:
            del self.members[event.id]
            self._feed.put(PresenceEvent("offline", event.id))

    def _resync(self) -> None:
        snapshot, self._snapshot = self._snapshot or {}, None
        if not self._synced_once:
            self._synced_once = True
            self.members = dict(snapshot)
            for name, data in snapshot.items():
                self._feed.put(PresenceEvent("online", name, data, initial=True))
            return
        for name in [n for n in self.members if n not in snapshot]:
            del self.members[name]
            self._feed.put(PresenceEvent("offline", name))
        for name, data in snapshot.items():
            if self.members.get(name) != data:
                if name in self.members:
                    self._feed.put(PresenceEvent("offline", name))
                self.members[name] = data
                self._feed.put(PresenceEvent("online", name, data))


class LeaseSession:
    """A session on one of ``servers``; create it with :func:`connect`."""

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        session_timeout: float = 10.0,
        *,
        reregister: bool = False,
        open_stream: StreamOpener | None = None,
        shuffle: bool = True,
        rng: random.Random | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        client_id: str | None = None,
        token: bytes | str = b"",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not servers:
            raise ValueError("need at least one server")
        if not (isinstance(session_timeout, int | float) and math.isfinite(session_timeout)
                and session_timeout > 0):
            raise ValueError(f"session timeout must be > 0 seconds, got {session_timeout!r}")
        self._rng = rng or random.Random()
        self._servers = list(servers)
        if shuffle:
            self._rng.shuffle(self._servers)
        self._server_index = 0
        self._proposed = float(session_timeout)
        self._timeout = float(session_timeout)
        self._reregister = reregister
        if client_id is not None:
            try:
                check_client_id(client_id)
            except RemoteProtocolError as exc:
                raise ValueError(str(exc)) from None
        self._client_id = client_id
        self._token = token.encode() if isinstance(token, str) else bytes(token)
        opener = open_stream or _open_tcp
        if ssl_context is not None:
            opener = _tls_opener(opener, ssl_context)
        self._open_stream = opener
        self._max_message_size = max_message_size
        self._state = SessionState.CONNECTING
        self._session_id: int | None = None
        self._password = b""
        self._superseded: tuple[int, bytes] | None = None
        self._last_seq = 0
        self._last_heard = 0.0
        self._xids = itertools.count(1)
        self._watch_ids = itertools.count(1)
        self._pending: dict[int, _Call] = {}
        self._conn: _Connection | None = None
        self._registrations: dict[str, bytes] = {}
        self._watches: dict[int, WatchStream] = {}
        self._state_feeds: list[_Feed] = []
        self._closing = False
        self._close_requested = trio.Event()
        self._run_done: trio.Event | None = None
        self._run_scope: trio.CancelScope | None = None
        self._restored_for: int | None = None
        self.last_rtt: float | None = None
        self.server: tuple[str, int] | None = None

    # -- the PresenceSession API ---------------------------------------------------------

    @property
    def session_id(self) -> int | None:
        """The server-assigned session id (None before the first connect)."""
        return self._session_id

    @property
    def state(self) -> SessionState:
        """The current state."""
        return self._state

    @property
    def session_timeout(self) -> float:
        """The negotiated session timeout (the proposal until the first connect)."""
        return self._timeout

    @property
    def timing(self) -> ClientTiming:
        """The client timing rules in force."""
        return ClientTiming(self._timeout, len(self._servers))

    async def register(self, key: str, data: bytes = b"") -> None:
        """Create the ephemeral key ``key`` with ``data`` (the owner may call it again to
        replace the data)."""
        check_key(key)
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        await self._call(Register(key, data))
        self._registrations[key] = data

    async def unregister(self, key: str) -> None:
        """Remove a key this session registered (nothing happens if it is already gone)."""
        check_key(key)
        self._registrations.pop(key, None)
        await self._call(Unregister(key))

    async def get(self, key: str) -> bytes | None:
        """The data of ``key``, or None if it does not exist."""
        check_key(key)
        result = await self._call(Get(key))
        data = result.get("data")
        if data is not None and not isinstance(data, bytes):
            raise RemoteProtocolError("get: data in the response is not bytes")
        return data

    async def list(self, prefix: str) -> dict[str, bytes]:
        """Direct children of ``prefix`` with their data."""
        check_key(prefix, "prefix")
        result = await self._call(ListChildren(prefix))
        children = result.get("children")
        if not isinstance(children, dict) or not all(
            isinstance(k, str) and isinstance(v, bytes) for k, v in children.items()
        ):
            raise RemoteProtocolError("list: children in the response are not a name→bytes map")
        return children

    def watch(self, prefix: str) -> WatchStream:
        """Current children as ``initial`` online events, then every change, once each."""
        check_key(prefix, "prefix")
        return WatchStream(self, next(self._watch_ids), prefix)

    def state_changes(self) -> StateChanges:
        """Every state transition from now on."""
        return StateChanges(self)

    async def aclose(self) -> None:
        """Close the session; its registrations vanish at once on the server.

        The connection loop sends the close request and waits (at most
        ``min(connect_timeout, 2 s)``) for the server to confirm. This also happens when the
        ``async with`` block of :func:`connect` is left by cancellation.
        """
        if self._state is SessionState.CLOSED:
            return
        self._closing = True
        self._close_requested.set()
        if self._state is SessionState.CONNECTED and self._run_done is not None:
            with trio.move_on_after(self._close_wait):
                await self._run_done.wait()
        self._set_state(SessionState.CLOSED, "closed by the application")
        self._fail_pending(ConnectionClosed("the session was closed"))
        for stream in list(self._watches.values()):
            stream._feed.finish(StopAsyncIteration())
        for feed in self._state_feeds:
            feed.finish(StopAsyncIteration())
        if self._run_scope is not None:
            self._run_scope.cancel()

    # -- requests ------------------------------------------------------------------------

    async def _call(self, body: RequestBody) -> dict[str, Any]:
        self._check_usable()
        call = _Call(next(self._xids), body)
        self._pending[call.xid] = call
        if self._conn is not None and self._state is SessionState.CONNECTED:
            self._conn.send(Request(call.xid, body, self._last_seq))
        try:
            await call.done.wait()
        finally:
            self._pending.pop(call.xid, None)
        if call.error is not None:
            raise call.error
        return call.result or {}

    def _check_usable(self) -> None:
        if self._state is SessionState.CLOSED or self._closing:
            raise ConnectionClosed("the session is closed")
        if self._state is SessionState.EXPIRED and not self._reregister:
            raise SessionExpired(f"session {self._session_id:#x} has expired"
                                 if self._session_id is not None else "the session has expired")

    def _fail_pending(self, error: BaseException) -> None:
        for call in list(self._pending.values()):
            call.finish(error=error)
        self._pending.clear()

    async def _start_watch(self, stream: WatchStream) -> None:
        # A cancelled start leaves the watch registered here: events that arrive meanwhile
        # are buffered, and the next attempt is answered "existing" by the server.
        self._watches[stream.watch_id] = stream
        try:
            await self._call(Watch(stream.prefix, stream.watch_id))
        except PulseError:
            self._watches.pop(stream.watch_id, None)
            raise

    def _stop_watch(self, stream: WatchStream) -> None:
        if self._watches.pop(stream.watch_id, None) is None:
            return
        conn = self._conn
        if conn is not None and self._state is SessionState.CONNECTED:
            conn.send(Request(next(self._xids), Unwatch(stream.watch_id), self._last_seq))

    # -- state ---------------------------------------------------------------------------

    def _set_state(self, state: SessionState, reason: str) -> None:
        if state is self._state and state is not SessionState.CONNECTED:
            return
        self._state = state
        event = SessionEvent(state, self._session_id, reason)
        log.info("session_state", state=state.value, session_id=self._session_id,
                 reason=reason)
        for feed in self._state_feeds:
            feed.put(event)

    def _expire(self, reason: str) -> None:
        self._set_state(SessionState.EXPIRED, reason)
        self._fail_pending(SessionExpired(reason))
        if self._reregister:
            if self._session_id is not None:
                self._superseded = (self._session_id, self._password)
            self._session_id = None
            self._password = b""
            self._last_seq = 0
        else:
            for stream in list(self._watches.values()):
                stream._feed.finish(SessionExpired(reason))

    # -- the connection loop -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Keep the session connected until :meth:`aclose` (run it in a nursery).

        Calls ``task_status.started()`` once first connected; before that, raises
        :class:`~pulse.errors.ConnectionClosed` if no server answers within one session
        timeout, or the error the server gave (e.g. :class:`~pulse.errors.LimitExceeded`).
        """
        self._run_done = trio.Event()
        try:
            await self._run(task_status)
        finally:
            self._run_done.set()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as self._run_scope:
            first_deadline = trio.current_time() + self._proposed
            started = False
            while not self._closing:
                if self._state is SessionState.EXPIRED and not self._reregister:
                    await self._close_requested.wait()
                    return
                if self._session_id is not None:
                    deadline = self._last_heard + self._timeout  # client-side expiry
                elif started:
                    deadline = math.inf
                    self._set_state(SessionState.CONNECTING, "starting a new session")
                else:
                    deadline = first_deadline
                conn: _Connection | None = None
                with trio.move_on_at(deadline) as scope:
                    conn = await self._reach_a_server(started)
                if scope.cancelled_caught:
                    if not started:
                        raise ConnectionClosed(
                            f"no lease server reachable at {self._describe_servers()} "
                            f"within {self._proposed:g} s")
                    self._expire("no server reached within the session timeout")
                    continue
                if conn is None:
                    continue
                if not started:
                    started = True
                    task_status.started()
                reason = await self._serve(conn)
                if self._state is SessionState.CONNECTED and not self._closing:
                    self._set_state(SessionState.DISCONNECTED, reason)

    def _describe_servers(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self._servers)

    def _next_server(self) -> tuple[str, int]:
        server = self._servers[self._server_index % len(self._servers)]
        self._server_index += 1
        return server

    async def _reach_a_server(self, started: bool) -> _Connection | None:
        """Connect to servers in turn until one accepts the session; None after an expiry
        (the caller decides what follows)."""
        attempt = 0
        while True:
            if attempt:
                await trio.sleep(self.timing.retry_pause(self._rng.random()))
            attempt += 1
            server = self._next_server()
            try:
                with trio.fail_after(self.timing.connect_timeout):
                    return await self._handshake(server)
            except _Ended as ended:
                self._expire(ended.reason)
                return None
            except LimitExceeded:
                if not started:
                    raise
                log.info("connect_refused", peer=f"{server[0]}:{server[1]}",
                         reason="server limit")
            except (OSError, trio.TooSlowError, trio.BrokenResourceError,
                    trio.ClosedResourceError, _Lost, RemoteProtocolError) as exc:
                log.debug("connect_failed", peer=f"{server[0]}:{server[1]}",
                          reason=str(exc) or type(exc).__name__)

    async def _handshake(self, server: tuple[str, int]) -> _Connection:
        stream = await self._open_stream(*server)
        try:
            body = Connect(
                timeout=self._timeout if self._session_id is not None else self._proposed,
                session_id=self._session_id,
                password=self._password,
                last_seq=self._last_seq,
                supersedes=self._superseded if self._session_id is None else None,
                max_message_size=self._max_message_size,
                client_id=self._client_id,
                token=self._token,
            )
            xid = next(self._xids)
            await stream.send_all(encode_message(request_to_wire(Request(xid, body))))
            decoder = MessageDecoder(self._max_message_size)
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    raise _Lost("server closed the connection during connect")
                messages = decoder.feed(data)
                if messages:
                    break
            reply = parse_server_message(messages[0])
            if not isinstance(reply, Response) or reply.xid != xid:
                raise RemoteProtocolError("the server's first message is not the connect answer")
            if reply.error in (ErrorCode.SESSION_EXPIRED, ErrorCode.AUTH_FAILED,
                               ErrorCode.SESSION_CLOSING):
                raise _Ended("expired", f"{reply.error.value}: {reply.message}")
            if reply.error is not None:
                raise error_for(reply.error, reply.message)
            result = reply.result
            session_id, password, timeout = (
                result.get("session_id"), result.get("password"), result.get("timeout"))
            if (not isinstance(session_id, int) or not isinstance(password, bytes)
                    or not isinstance(timeout, int | float) or not timeout > 0):
                raise RemoteProtocolError("malformed connect answer")
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            raise
        now = trio.current_time()
        conn = _Connection(stream, server, now, decoder)
        reattached = self._session_id is not None
        self._session_id, self._password = session_id, password
        self._timeout = float(timeout)
        self._superseded = None
        self._last_heard = now
        self.server = server
        try:
            for message in messages[1:]:  # what came with the answer (re-sent watch events)
                self._on_message(conn, message)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            raise
        for call in list(self._pending.values()):  # requests that waited for a connection
            conn.send(Request(call.xid, call.body, self._last_seq))
        self._conn = conn
        where = f"{server[0]}:{server[1]}"
        self._set_state(SessionState.CONNECTED,
                        f"re-attached at {where}" if reattached else f"session opened at {where}")
        return conn

    @property
    def _close_wait(self) -> float:
        return min(self.timing.connect_timeout, 2.0)

    async def _serve(self, conn: _Connection) -> str:
        """Run one connection until it is lost or the session ends; return why."""
        try:
            async with trio.open_nursery() as nursery:
                conn.scope = nursery.cancel_scope
                nursery.start_soon(self._guard, conn, self._write_loop)
                nursery.start_soon(self._guard, conn, self._ping_loop)
                nursery.start_soon(self._guard, conn, self._restore)
                nursery.start_soon(self._guard, conn, self._close_when_asked)
                await self._guard(conn, self._read_loop)
        finally:
            self._conn = None
            with trio.CancelScope(shield=True):
                if conn.outcome is None and self._state is SessionState.CONNECTED:
                    # Cancelled from outside while connected (the ``async with`` was left
                    # by cancellation): the tasks above are gone, so close directly.
                    with trio.move_on_after(self._close_wait):
                        await self._close_directly(conn)
                await trio.aclose_forcefully(conn.stream)
        outcome = conn.outcome
        if isinstance(outcome, _Ended):
            if not (outcome.state == "closed" and self._closing):
                self._expire(outcome.reason)
            return outcome.reason
        return str(outcome) if outcome is not None else "connection ended"

    async def _guard(self, conn: _Connection,
                     task: Callable[[_Connection], Awaitable[None]]) -> None:
        """Run one connection task; the first loss or end it reports stops them all."""
        try:
            await task(conn)
        except (_Lost, _Ended) as exc:
            if conn.outcome is None:
                conn.outcome = exc
            conn.scope.cancel()

    async def _close_when_asked(self, conn: _Connection) -> None:
        """On :meth:`aclose`, send the close request; the reader ends the connection when the
        server confirms."""
        await self._close_requested.wait()
        conn.send(Request(next(self._xids), CloseSession(), self._last_seq))
        await trio.sleep_forever()

    async def _close_directly(self, conn: _Connection) -> None:
        """Send close on the bare stream and read until the server confirms or hangs up."""
        xid = next(self._xids)
        try:
            wire = request_to_wire(Request(xid, CloseSession(), self._last_seq))
            await conn.stream.send_all(encode_message(wire))
            while True:
                data = await conn.stream.receive_some(65536)
                if not data:
                    return
                for obj in conn.decoder.feed(data):
                    message = parse_server_message(obj)
                    if isinstance(message, SessionNotice | ErrorNotice) or (
                        isinstance(message, Response) and message.xid == xid
                    ):
                        return
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                RemoteProtocolError):
            return

    async def _restore(self, conn: _Connection) -> None:
        """After (re)connecting: re-send watches; after a renewal also re-register."""
        renewed = self._session_id != self._restored_for
        self._restored_for = self._session_id
        for stream in list(self._watches.values()):
            conn.send(Request(next(self._xids), Watch(stream.prefix, stream.watch_id),
                              self._last_seq))
        if renewed:
            for key, data in list(self._registrations.items()):
                try:
                    await self._call(Register(key, data))
                    log.info("registration_restored", key=key, session_id=self._session_id)
                except PulseError as exc:
                    log.warning("registration_lost", key=key, reason=str(exc),
                                session_id=self._session_id)

    async def _write_loop(self, conn: _Connection) -> None:
        while True:
            await conn.wake.wait()
            conn.wake = trio.Event()
            chunks = []
            while conn.queue:
                request = conn.queue.popleft()
                wire = request_to_wire(Request(request.xid, request.body, self._last_seq))
                chunks.append(encode_message(wire))
            if chunks:
                try:
                    await conn.stream.send_all(b"".join(chunks))
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise _Lost(f"send failed: {exc}") from None
                conn.last_send = trio.current_time()

    async def _ping_loop(self, conn: _Connection) -> None:
        while True:
            due = conn.last_send + self.timing.ping_interval
            now = trio.current_time()
            if now < due:
                await trio.sleep_until(due)
                continue
            xid = next(self._xids)
            conn.pings[xid] = now
            conn.send(Request(xid, Ping(), self._last_seq))
            conn.last_send = now  # the writer confirms it; do not queue a second ping

    async def _read_loop(self, conn: _Connection) -> None:
        decoder = conn.decoder
        while True:
            read_timeout = self.timing.read_timeout
            with trio.move_on_at(conn.last_receive + read_timeout) as scope:
                try:
                    data = await conn.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise _Lost(f"connection broken: {exc}") from None
            if scope.cancelled_caught:
                raise _Lost(f"nothing from the server for {read_timeout:.3g} s (read timeout)")
            if not data:
                raise _Lost("the server closed the connection")
            now = trio.current_time()
            conn.last_receive = now
            self._last_heard = now
            try:
                messages = decoder.feed(data)
            except RemoteProtocolError as exc:
                raise _Lost(f"bad data from the server: {exc}") from None
            for message in messages:
                self._on_message(conn, message)

    def _on_message(self, conn: _Connection, obj: object) -> None:
        try:
            message = parse_server_message(obj)
        except RemoteProtocolError as exc:
            raise _Lost(f"bad message from the server: {exc}") from None
        if isinstance(message, Response):
            sent = conn.pings.pop(message.xid, None)
            if sent is not None:
                self.last_rtt = trio.current_time() - sent
                return
            call = self._pending.get(message.xid)
            if call is None:
                return
            if message.error is None:
                call.finish(result=dict(message.result))
            else:
                call.finish(error=error_for(message.error, message.message))
        elif isinstance(message, WatchEvent):
            if message.seq <= self._last_seq:
                return  # already delivered before a re-attach
            self._last_seq = message.seq
            stream = self._watches.get(message.watch_id)
            if stream is not None:
                stream.on_event(message)
        elif isinstance(message, SessionNotice):
            if message.state == "moved":
                raise _Lost(f"session moved: {message.reason}")
            raise _Ended(message.state, f"session {message.state}: {message.reason}")
        elif isinstance(message, ErrorNotice):
            if message.code in (ErrorCode.SESSION_EXPIRED, ErrorCode.AUTH_FAILED):
                raise _Ended("expired", message.message)
            raise _Lost(f"server error {message.code.value}: {message.message}")


@asynccontextmanager
async def connect(
    servers: Sequence[tuple[str, int]] | str,
    session_timeout: float = 10.0,
    **options: Any,
) -> AsyncIterator[LeaseSession]:
    """Open a lease session and keep it alive for the duration of the ``async with`` block.

    ``servers`` is a list of ``(host, port)`` pairs or a ``"host:port,host:port"`` string.
    Options: ``reregister`` (start a new session and restore registrations and watches after an
    expiry), ``open_stream`` (for tests), ``shuffle``, ``rng``, ``max_message_size``.
    Leaving the block closes the session. Errors come out as themselves, not wrapped in
    exception groups.
    """
    if isinstance(servers, str):
        servers = parse_servers(servers)
    client = LeaseSession(servers, session_timeout, **options)
    async with background_nursery() as nursery:
        await nursery.start(client.run)
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
            nursery.cancel_scope.cancel()


def parse_servers(text: str) -> list[tuple[str, int]]:
    """``"host:port,host:port"`` → ``[(host, port), …]``."""
    servers = []
    for item in text.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"expected host:port, got {item!r}")
        servers.append((host.strip("[]") or "127.0.0.1", int(port)))
    return servers


__all__ = ["LeaseSession", "StateChanges", "WatchStream", "connect", "parse_servers"]
