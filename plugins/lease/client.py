"""The lease client: one :class:`pulse.presence.PresenceSession` on a list of lease servers.

Timing, states and transitions are the one session client machine's
(:mod:`pulse._core.session_client`, shared with the ZooKeeper client, whose module docstring
states the rules): read timeout 2/3 of the negotiated session timeout, a ping when nothing
was sent for half of that (at most every 10 s), a connect timeout of session timeout /
number of servers, servers tried in a shuffled order with a random pause, client-side
expiry. The process's engine drives the machine (:class:`pulse._driver.session.SessionDriver`):
this module has no timing loop and no deadline scope.

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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import trio

from pulse._core.bounded import BoundedDeque
from pulse._core.session_client import (
    Action,
    Disconnect,
    GaveUp,
    Phase,
    SendPing,
    SessionClient,
    StateChanged,
    hex_id,
)
from pulse._core.session_client import Connect as ConnectTo
from pulse._core.session_timing import ClientTiming
from pulse._deprecation import renamed
from pulse._driver.feed import BoundedFeed, presence_event_size
from pulse._driver.session import SessionDriver, apply_actions
from pulse._driver.streams import aclose_forcefully, open_tcp_stream, start_tls
from pulse._driver.util import background_nursery
from pulse._log import get_logger
from pulse.codec import MessageDecoder, encode_message
from pulse.errors import (
    LimitExceeded,
    LocalProtocolError,
    NoServerReachable,
    PulseError,
    QueueFull,
    RemoteProtocolError,
    SessionClosed,
    SessionExpired,
)
from pulse.presence import PresenceEvent, SessionEvent, SessionState

from .errors import WatchKeyUnsupported, error_for
from .protocol import (
    UNKNOWN_OPERATION,
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
    WatchKey,
    check_client_id,
    check_key,
    parse_server_message,
    request_to_wire,
)

log = get_logger("pulse.lease.client")

# Aliases: inside LeaseSession the name ``list`` is the presence method.
_Actions = list[Action]
_Messages = list[Any]

StreamOpener = Callable[[str, int], Awaitable[trio.abc.Stream]]

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Bytes of watch events waiting for a watch stream's reader (each counted as its id, its
#: data and 200 bytes, as :func:`pulse._driver.feed.presence_event_size` says); past it the
#: reader gets the events held, then :class:`~pulse.errors.QueueFull`, and the watch stops.
#: ``LeaseSession.watch(prefix, max_buffered_bytes=...)`` (and ``watch_key``) set it per watch.
MAX_BUFFERED_BYTES = 16 * 1024 * 1024
#: Watch events waiting for a watch stream's reader, at most (the last line behind the bytes).
MAX_BUFFERED_EVENTS = 100_000
#: State transitions kept per :meth:`LeaseSession.state_changes` iterator (oldest dropped).
MAX_STATE_EVENTS = 1_000
#: Requests of the application waiting for their answer at once; one more raises
#: :class:`~pulse.errors.QueueFull` at once instead of queueing.
MAX_PENDING_CALLS = 10_000
#: Requests waiting to be written on one connection (the pending calls plus pings, unwatches
#: and the watches re-sent after a reconnect). A server that stops reading fills it; past it
#: the connection is dropped as lost ("… the server does not read") and the session reconnects.
MAX_QUEUED_REQUESTS = 2 * MAX_PENDING_CALLS


async def _open_tcp(host: str, port: int) -> trio.abc.Stream:
    return await open_tcp_stream(host, port)


def _tls_opener(inner: StreamOpener, context: ssl.SSLContext) -> StreamOpener:
    """Open with ``inner``, then run a TLS handshake (server name = the host)."""

    async def open_tls(host: str, port: int) -> trio.abc.Stream:
        stream = await inner(host, port)
        try:
            return await start_tls(stream, context, server_side=False, server_hostname=host)
        except BaseException:
            await aclose_forcefully(stream)
            raise

    return open_tls


@dataclass(slots=True)
class _Call:
    xid: int
    body: RequestBody
    done: anyio.Event = field(default_factory=anyio.Event)
    result: dict[str, Any] | None = None
    error: BaseException | None = None

    def finish(self, result: dict[str, Any] | None = None,
               error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


class _Lost(Exception):
    """The current connection is unusable (reason in the message)."""


class _Dropped(Exception):
    """The attempt was dropped while its answer was being read (stale)."""


class _Ended(Exception):
    """The server ended the session (``state`` is expired or closed)."""

    def __init__(self, state: str, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


class _Connection:
    """The current connection: its stream and what waits to be sent."""

    def __init__(self, stream: trio.abc.Stream, server: tuple[str, int],
                 decoder: MessageDecoder) -> None:
        self.stream = stream
        self.server = server
        self.decoder = decoder
        self.scope = anyio.CancelScope()
        self.outcome: _Lost | _Ended | None = None
        self.queue: BoundedDeque[Request] = BoundedDeque(MAX_QUEUED_REQUESTS,
                                                         "the requests waiting to be sent")
        self.wake = anyio.Event()
        self.pings: dict[int, float] = {}
        #: Watches re-sent on this connection (by xid) whose answer is not in yet.
        self.restoring: dict[int, WatchStream] = {}

    def send(self, request: Request) -> None:
        try:
            self.queue.append(request)
        except QueueFull as exc:
            if self.outcome is None:
                self.outcome = _Lost(f"{exc}: the server does not read")
            self.scope.cancel()
            return
        self.wake.set()


class StateChanges:
    """Every session state transition from the moment this object was created."""

    def __init__(self, client: LeaseSession) -> None:
        self._client = client
        self._feed: BoundedFeed[SessionEvent] = BoundedFeed(
            MAX_STATE_EVENTS, drop_oldest=True, what="state changes")
        client._state_feeds.append(self._feed)

    def __aiter__(self) -> StateChanges:
        return self

    async def __anext__(self) -> SessionEvent:
        return await self._feed.get()

    async def aclose(self) -> None:
        """Stop receiving transitions."""
        self._feed.finish(StopAsyncIteration())
        if self._feed in self._client._state_feeds:
            self._client._state_feeds.remove(self._feed)


class WatchStream:
    """Online/offline events of the direct children of one prefix.

    The watch starts when iteration starts. Use ``async with`` (or call :meth:`aclose`) to
    stop it; abandoning it keeps it running until the session closes.

    Events wait for the reader in a buffer of at most ``max_buffered_bytes`` (each event
    counted as its id, its data and 200 bytes; :data:`MAX_BUFFERED_BYTES`, 16 MiB, by
    default) and :data:`MAX_BUFFERED_EVENTS` events. A reader that falls behind gets the
    events the buffer holds, then :class:`~pulse.errors.QueueFull`: the watch has stopped
    (the server is told) and a new one must be started. If a server the session moves to
    refuses the watch when it is re-sent after a reconnect (access denied, a limit, a
    server that predates ``watch_key``), the iterator raises that error after the events
    held, and the watch is gone (``watch_lost`` is logged).
    """

    def __init__(self, client: LeaseSession, watch_id: int, prefix: str,
                 max_buffered_bytes: int = MAX_BUFFERED_BYTES) -> None:
        if isinstance(max_buffered_bytes, bool) or not isinstance(max_buffered_bytes, int) \
                or max_buffered_bytes < 1:
            raise ValueError(f"max_buffered_bytes must be at least 1, got {max_buffered_bytes!r}")
        self._client = client
        self.watch_id = watch_id
        self.prefix = prefix
        self.members: dict[str, bytes] = {}  # what this stream has reported online
        self._snapshot: dict[str, bytes] | None = None
        self._synced_once = False
        self._confirmed = False
        self._feed: BoundedFeed[PresenceEvent] = BoundedFeed(
            MAX_BUFFERED_EVENTS, drop_oldest=False, max_bytes=max_buffered_bytes,
            size=presence_event_size, what="watch events")

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
        try:
            return await self._feed.get()
        except QueueFull:
            self._client._stop_watch(self)  # the reader fell behind the bound: it is over
            raise

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

    def request(self) -> RequestBody:
        """The request that establishes this watch on a server."""
        return Watch(self.prefix, self.watch_id)

    def _first_sync(self, snapshot: dict[str, bytes]) -> None:
        for name, data in snapshot.items():
            self._feed.put(PresenceEvent("online", name, data, initial=True))

    def _resync(self) -> None:
        snapshot, self._snapshot = self._snapshot or {}, None
        if not self._synced_once:
            self._synced_once = True
            self.members = dict(snapshot)
            self._first_sync(snapshot)
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


class KeyWatchStream(WatchStream):
    """Online/offline events of one key (the ``watch_key`` request): only a change of that
    key reaches this session. The first event says whether the key exists: ``online`` with
    ``initial`` set, or ``offline`` with ``initial`` set; then each change, once. ``id`` is
    the key's last segment.

    A server that predates ``watch_key`` refuses it: starting the stream then raises
    :class:`~.errors.WatchKeyUnsupported` (use :meth:`LeaseSession.watch` on the parent).
    """

    def __init__(self, client: LeaseSession, watch_id: int, key: str,
                 max_buffered_bytes: int = MAX_BUFFERED_BYTES) -> None:
        super().__init__(client, watch_id, key.rsplit("/", 1)[0] or "/", max_buffered_bytes)
        self.key = key

    def request(self) -> RequestBody:
        return WatchKey(self.key, self.watch_id)

    def _first_sync(self, snapshot: dict[str, bytes]) -> None:
        if not snapshot:
            self._feed.put(PresenceEvent("offline", self.key.rsplit("/", 1)[1], initial=True))
        super()._first_sync(snapshot)


class LeaseSession:
    """A session on one of ``servers``; create it with :func:`connect`.

    Every timing decision is the shared session client machine's
    (:class:`pulse._core.session_client.SessionClient`, also behind the ZooKeeper client),
    driven by the process's engine; this class opens connections, reads and writes them,
    and carries out the machine's actions. ``session_id`` and ``session_password`` resume
    an existing session; a server that refuses them makes the first connect raise
    :class:`~pulse.errors.SessionExpired`. ``start_timeout`` (default: the session timeout)
    bounds the wait for a first session before :class:`~pulse.errors.NoServerReachable`.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        session_timeout: float = 10.0,
        *,
        reregister: bool = False,
        open_stream: StreamOpener | None = None,
        shuffle: bool = True,
        rng: random.Random | None = None,
        max_frame_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        client_id: str | None = None,
        token: bytes | str = b"",
        ssl_context: ssl.SSLContext | None = None,
        session_id: int | None = None,
        session_password: bytes = b"",
        start_timeout: float | None = None,
        max_message_size: int | None = None,
    ) -> None:
        max_frame_size = renamed("LeaseSession", "max_message_size", "max_frame_size",
                                 max_message_size, max_frame_size)
        if not servers:
            raise ValueError("need at least one server")
        if not (isinstance(session_timeout, int | float) and math.isfinite(session_timeout)
                and session_timeout > 0):
            raise ValueError(f"session timeout must be > 0 seconds, got {session_timeout!r}")
        self._rng = rng or random.Random()
        self._machine = SessionClient(servers, float(session_timeout), self._rng,
                                      shuffle=shuffle, session_id=session_id,
                                      password=session_password)
        self._servers = self._machine.hosts
        self._proposed = float(session_timeout)
        self._start_timeout = self._proposed if start_timeout is None else float(start_timeout)
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
        self._max_message_size = max_frame_size
        self._superseded: tuple[int, bytes] | None = None
        self._last_seq = 0
        self._xids = itertools.count(1)
        self._watch_ids = itertools.count(1)
        self._pending: dict[int, _Call] = {}
        self._conn: _Connection | None = None
        self._attempt: anyio.CancelScope | None = None
        self._registrations: dict[str, bytes] = {}
        self._watches: dict[int, WatchStream] = {}
        self._state_feeds: list[BoundedFeed[SessionEvent]] = []
        self._closing = False
        self._driver: SessionDriver | None = None
        self._nursery: anyio.abc.TaskGroup | None = None
        self._close_scope: anyio.CancelScope | None = None
        self._start_error: PulseError | None = None
        self._gave_up: str | None = None
        self._restored_for: int | None = None
        self.last_rtt: float | None = None
        self.server: tuple[str, int] | None = None

    # -- the PresenceSession API ---------------------------------------------------------

    @property
    def session_id(self) -> int | None:
        """The server-assigned session id (None before the first connect)."""
        return self._machine.session_id

    @property
    def state(self) -> SessionState:
        """The current state."""
        return self._machine.state

    @property
    def session_timeout(self) -> float:
        """The negotiated session timeout (the proposal until the first connect)."""
        return self._machine.session_timeout

    @property
    def timing(self) -> ClientTiming:
        """The client timing rules in force."""
        return self._machine.timing

    async def register(self, key: str, data: bytes = b"") -> None:
        """Create the ephemeral key ``key`` with ``data`` (the owner may call it again to
        replace the data)."""
        check_key(key)
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        await self._call(Register(key, data))
        self._registrations[key] = data

    async def create_sequential(self, key: str, data: bytes = b"") -> tuple[str, int]:
        """Create the ephemeral key ``key`` + the server's next sequence number (19 digits)
        and return the created key and the number. Sequence numbers grow over the server's
        life, across restarts. The created key is not re-registered after expiry."""
        check_key(key)
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        result = await self._call(Register(key, data, sequential=True))
        return str(result["key"]), int(result["sequence"])

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

    def watch(self, prefix: str, *, max_buffered_bytes: int = MAX_BUFFERED_BYTES
              ) -> WatchStream:
        """Current children as ``initial`` online events, then every change, once each.

        Events wait for the reader in a buffer of at most ``max_buffered_bytes`` (default
        16 MiB; an event counts its id, its data and 200 bytes) and 100,000 events; a reader
        that falls behind gets what the buffer holds, then :class:`~pulse.errors.QueueFull`,
        and the watch stops (see :class:`WatchStream`)."""
        check_key(prefix, "prefix")
        return WatchStream(self, next(self._watch_ids), prefix, max_buffered_bytes)

    def watch_key(self, key: str, *, max_buffered_bytes: int = MAX_BUFFERED_BYTES
                  ) -> KeyWatchStream:
        """Whether ``key`` exists (the first event, ``initial``), then each time it comes
        online or goes offline — only this key's changes reach the session (``watch_key``).
        Its events are buffered as :meth:`watch`'s are (``max_buffered_bytes``)."""
        check_key(key)
        if key == "/":
            raise ValueError("key must not be the root '/'")
        return KeyWatchStream(self, next(self._watch_ids), key, max_buffered_bytes)

    def state_changes(self) -> StateChanges:
        """Every state transition from now on."""
        return StateChanges(self)

    async def aclose(self) -> None:
        """Close the session; its registrations vanish at once on the server.

        On a live connection the close request is sent and the session waits (at most
        ``min(connect_timeout, 2 s)``, a deadline of the machine) for the server to confirm.
        This also happens when the ``async with`` block of :func:`connect` is left by
        cancellation.
        """
        if self._machine.phase is Phase.CLOSED:
            return
        self._closing = True
        conn, driver = self._conn, self._driver
        if conn is not None and driver is not None and self._machine.phase is Phase.CONNECTED:
            now = driver.now()
            self._apply(self._machine.begin_close(now), now)
            conn.send(Request(next(self._xids), CloseSession(), self._last_seq))
        if driver is not None:
            await driver.wait_until(lambda: self._machine.phase is not Phase.CLOSING)
        now = SessionDriver.now()
        self._apply(self._machine.close(now), now)

    def _closed(self) -> None:
        """The session reached CLOSED: release everything that waits on it."""
        self._closing = True
        self._fail_pending(SessionClosed("the session was closed"))
        for stream in list(self._watches.values()):
            stream._feed.finish(StopAsyncIteration())
        for feed in self._state_feeds:
            feed.finish(StopAsyncIteration())

    # -- requests ------------------------------------------------------------------------

    async def _call(self, body: RequestBody) -> dict[str, Any]:
        self._check_usable()
        if len(self._pending) >= MAX_PENDING_CALLS:
            raise QueueFull(f"{MAX_PENDING_CALLS} requests are already waiting for an answer")
        call = _Call(next(self._xids), body)
        self._pending[call.xid] = call
        if self._conn is not None and self.state is SessionState.CONNECTED:
            self._conn.send(Request(call.xid, body, self._last_seq))
        try:
            await call.done.wait()
        finally:
            self._pending.pop(call.xid, None)
        if call.error is not None:
            raise call.error
        return call.result or {}

    def _check_usable(self) -> None:
        if self.state is SessionState.CLOSED or self._closing:
            raise SessionClosed("the session is closed")
        if self.state is SessionState.EXPIRED and not self._reregister:
            sid = self.session_id
            raise SessionExpired(f"session {sid:#x} has expired"
                                 if sid is not None else "the session has expired")

    def _fail_pending(self, error: BaseException) -> None:
        for call in list(self._pending.values()):
            call.finish(error=error)
        self._pending.clear()

    async def _start_watch(self, stream: WatchStream) -> None:
        # A cancelled start leaves the watch registered here: events that arrive meanwhile
        # are buffered, and the next attempt is answered "existing" by the server.
        self._watches[stream.watch_id] = stream
        try:
            await self._call(stream.request())
        except PulseError as exc:
            self._watches.pop(stream.watch_id, None)
            refusal = _watch_refusal(stream, exc)
            if refusal is exc:
                raise
            raise refusal from None

    def _watch_refused(self, stream: WatchStream, error: PulseError) -> None:
        """The server refused a watch re-sent after a reconnect: the watch is over, its
        iterator raises the error once the events it holds are consumed."""
        if self._watches.get(stream.watch_id) is not stream:
            return  # stopped (or refused) meanwhile
        del self._watches[stream.watch_id]
        error = _watch_refusal(stream, error)
        log.warning("watch_lost", watch_id=stream.watch_id,
                    key=stream.key if isinstance(stream, KeyWatchStream) else None,
                    prefix=stream.prefix, reason=str(error), error=type(error).__name__,
                    session_id=hex_id(self.session_id))
        stream._feed.finish(error)

    def _stop_watch(self, stream: WatchStream) -> None:
        if self._watches.pop(stream.watch_id, None) is None:
            return
        conn = self._conn
        if conn is not None and self.state is SessionState.CONNECTED:
            conn.send(Request(next(self._xids), Unwatch(stream.watch_id), self._last_seq))

    # -- the machine's actions -----------------------------------------------------------

    def _apply(self, actions: _Actions, now: float) -> None:
        """Carry out an input's actions and re-arm the engine."""
        apply_actions(self._driver, self._perform, actions, now)

    def _perform(self, action: Action, now: float) -> None:
        """Carry out one action of the machine (called by the engine too; never awaits)."""
        if isinstance(action, ConnectTo):
            self._drop("replaced by a new attempt")
            assert self._nursery is not None
            scope = anyio.CancelScope()
            self._attempt = scope
            self._nursery.start_soon(self._connect, action.host, scope)
        elif isinstance(action, Disconnect):
            self._drop(action.reason)
        elif isinstance(action, SendPing):
            conn = self._conn
            if conn is not None:
                xid = next(self._xids)
                conn.pings[xid] = now
                conn.send(Request(xid, Ping(), self._last_seq))
        elif isinstance(action, StateChanged):
            self._on_state(action.event, now)
        elif isinstance(action, GaveUp):
            self._gave_up = (f"no lease server reachable at {self._describe_servers()} "
                             f"within {self._start_timeout:g} s")
        if self._close_scope is not None and self._machine.phase is not Phase.CLOSING:
            self._close_scope.cancel()  # the close was confirmed, or its wait is over

    def _drop(self, reason: str) -> None:
        """End the current attempt and connection (their tasks see the cancellation)."""
        if self._attempt is not None:
            self._attempt.cancel()
            self._attempt = None
        conn, self._conn = self._conn, None
        if conn is not None:
            if conn.outcome is None:
                conn.outcome = _Lost(reason)
            conn.scope.cancel()

    def _on_state(self, event: SessionEvent, now: float) -> None:
        log.info("session_state", state=event.state.value, session_id=event.session_id,
                 reason=event.reason)
        for feed in self._state_feeds:
            feed.put(event)
        if event.state is SessionState.EXPIRED:
            self._fail_pending(SessionExpired(event.reason))
            if self._reregister and not self._closing:
                if event.session_id is not None:
                    self._superseded = (event.session_id, self._machine.password)
                self._last_seq = 0
                self._apply(self._machine.new_session(now), now)
            else:
                for stream in list(self._watches.values()):
                    stream._feed.finish(SessionExpired(event.reason))
        elif event.state is SessionState.CLOSED:
            self._closed()

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Keep the session connected until :meth:`aclose` (run it in a nursery).

        Calls ``task_status.started()`` once first connected; before that, raises
        :class:`~pulse.errors.NoServerReachable` if no server answers within one session
        timeout, :class:`~pulse.errors.SessionExpired` if the server refuses a resumed
        session, or the error the server gave (e.g. :class:`~pulse.errors.LimitExceeded`).
        """
        failure: BaseException | None = None
        started = False
        async with anyio.create_task_group() as nursery:
            self._nursery = nursery
            self._driver = driver = SessionDriver(self._machine, self._perform)
            now = driver.now()
            self._apply(self._machine.start(now, give_up_after=self._start_timeout), now)
            try:
                await driver.wait_until(self._start_decided)
                failure = self._start_failure()
                if failure is None:
                    task_status.started()
                    started = True
                    await driver.wait_until(lambda: self._machine.phase is Phase.CLOSED)
            finally:
                if failure is not None or (not started and self._machine.phase is not Phase.CLOSED):
                    # Could not start, or cancelled while starting (nobody will aclose it):
                    # closed, so that the engine stops driving it.
                    now = driver.now()
                    reason = "could not start" if failure is not None else "cancelled while starting"
                    self._apply(self._machine.close(now, reason), now)
                driver.watch()  # closed: the engine forgets it
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def _start_decided(self) -> bool:
        phase = self._machine.phase
        return (self.state is SessionState.CONNECTED or phase in (Phase.CLOSED, Phase.EXPIRED)
                or self._start_error is not None)

    def _start_failure(self) -> BaseException | None:
        if self._start_error is not None:
            return self._start_error
        if self._gave_up is not None:
            return NoServerReachable(self._gave_up)
        if self._machine.phase is Phase.EXPIRED:
            return SessionExpired(f"the server refused session {hex_id(self.session_id)}")
        if self._machine.phase is Phase.CLOSED:
            return SessionClosed("closed before a session was established")
        return None

    def _describe_servers(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self._servers)

    async def _connect(self, server: tuple[str, int], scope: anyio.CancelScope) -> None:
        """One connection attempt (bounded by the machine's connect timeout, which cancels
        ``scope``); on success, serve the connection until it ends."""
        conn: _Connection | None = None
        with scope:
            try:
                conn, messages, answer = await self._handshake(server)
            except _Ended as ended:
                self._attempt_ended(scope, "refused", ended.reason)
                return
            except LimitExceeded as exc:
                log.info("connect_refused", peer=f"{server[0]}:{server[1]}",
                         reason="server limit")
                if not self._machine.established:
                    self._start_error = exc
                self._attempt_ended(scope, "failed", str(exc))
                return
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, _Lost,
                    RemoteProtocolError) as exc:
                log.debug("connect_failed", peer=f"{server[0]}:{server[1]}",
                          reason=str(exc) or type(exc).__name__)
                self._attempt_ended(scope, "failed", str(exc) or type(exc).__name__)
                return
            except PulseError as exc:  # refused for good (token, access)
                if not self._machine.established:
                    self._start_error = exc
                self._attempt_ended(scope, "failed", str(exc))
                return
            try:
                if self._attempt is not scope:
                    raise _Dropped
                now = SessionDriver.now()
                for message in messages[1:]:  # what came with the answer (re-sent events)
                    self._on_message(conn, message, now)
            except BaseException as exc:  # _Dropped, _Lost, _Ended, or a real error
                with anyio.CancelScope(shield=True):
                    await aclose_forcefully(conn.stream)
                if isinstance(exc, _Ended):
                    self._attempt_ended(scope, "refused", exc.reason)
                elif isinstance(exc, _Lost):
                    self._attempt_ended(scope, "failed", str(exc))
                elif not isinstance(exc, _Dropped):
                    raise
                return
            self._attempt = None
            session_id, password, timeout = answer
            self._apply(self._machine.connected(now, session_id, password, timeout), now)
            if self._machine.phase is not Phase.CONNECTED:
                with anyio.CancelScope(shield=True):
                    await aclose_forcefully(conn.stream)
                return
            self._superseded = None
            self.server = server
            self._conn = conn
            for call in list(self._pending.values()):  # requests that waited
                conn.send(Request(call.xid, call.body, self._last_seq))
        if conn is None:
            return  # the attempt was dropped (connect timeout, expiry, close)
        await self._serve(conn)

    def _attempt_ended(self, scope: anyio.CancelScope, how: str, reason: str) -> None:
        if self._attempt is not scope:
            return  # dropped meanwhile
        self._attempt = None
        now = SessionDriver.now()
        if how == "refused":
            self._apply(self._machine.refused(now, reason), now)
        else:
            self._apply(self._machine.connection_failed(now, reason), now)
        if self._driver is not None:
            self._driver.notify()

    async def _handshake(self, server: tuple[str, int]
                         ) -> tuple[_Connection, _Messages, tuple[int, bytes, float]]:
        stream = await self._open_stream(*server)
        try:
            body = Connect(
                timeout=self.session_timeout,
                session_id=self.session_id,
                password=self._machine.password,
                last_seq=self._last_seq,
                supersedes=self._superseded if self.session_id is None else None,
                max_message_size=self._max_message_size,
                client_id=self._client_id,
                token=self._token,
            )
            xid = next(self._xids)
            await stream.send_all(encode_message(request_to_wire(Request(xid, body))))
            self._machine.sent(SessionDriver.now())
            decoder = MessageDecoder(self._max_message_size)
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    raise _Lost("server closed the connection during connect")
                self._machine.received(SessionDriver.now())
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
            with anyio.CancelScope(shield=True):
                await aclose_forcefully(stream)
            raise
        conn = _Connection(stream, server, decoder)
        return conn, messages, (session_id, password, float(timeout))

    async def _serve(self, conn: _Connection) -> None:
        """Run one connection until it is lost, dropped or the session ends."""
        try:
            if conn.outcome is None:
                async with anyio.create_task_group() as nursery:
                    conn.scope = nursery.cancel_scope
                    if self._conn is not conn:
                        nursery.cancel_scope.cancel()  # dropped before it started
                    nursery.start_soon(self._guard, conn, self._write_loop)
                    nursery.start_soon(self._guard, conn, self._restore)
                    await self._guard(conn, self._read_loop)
        finally:
            with anyio.CancelScope(shield=True):
                if conn.outcome is None and self._conn is conn and self._machine.phase in (
                        Phase.CONNECTED, Phase.CLOSING):
                    # Cancelled from outside while connected (the ``async with`` was left
                    # by cancellation): the tasks above are gone, so close directly.
                    await self._close_on_stream(conn)
                await aclose_forcefully(conn.stream)
        if self._conn is not conn:
            return  # dropped by the machine (read timeout, expiry, close): it knows already
        self._conn = None
        outcome = conn.outcome
        now = SessionDriver.now()
        if isinstance(outcome, _Ended):
            self._apply(self._machine.refused(now, outcome.reason), now)
        else:
            reason = str(outcome) if outcome is not None else "connection ended"
            self._apply(self._machine.connection_lost(now, reason), now)

    async def _close_on_stream(self, conn: _Connection) -> None:
        """Close on the bare stream, for at most the machine's close wait (the engine ends
        the wait: leaving CLOSING cancels ``_close_scope``)."""
        now = SessionDriver.now()
        if self._machine.phase is Phase.CONNECTED:
            self._apply(self._machine.begin_close(now), now)
        if self._machine.phase is not Phase.CLOSING:
            return
        self._close_scope = anyio.CancelScope()
        try:
            with self._close_scope:
                await self._close_directly(conn)
        finally:
            self._close_scope = None
        now = SessionDriver.now()
        self._apply(self._machine.close_confirmed(now), now)

    async def _guard(self, conn: _Connection,
                     task: Callable[[_Connection], Awaitable[None]]) -> None:
        """Run one connection task; the first loss or end it reports stops them all."""
        try:
            await task(conn)
        except (_Lost, _Ended) as exc:
            if conn.outcome is None:
                conn.outcome = exc
            conn.scope.cancel()

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
        renewed = self.session_id != self._restored_for
        self._restored_for = self.session_id
        for stream in list(self._watches.values()):
            xid = next(self._xids)
            conn.restoring[xid] = stream  # its answer is checked: a refusal ends the stream
            conn.send(Request(xid, stream.request(), self._last_seq))
        if renewed:
            for key, data in list(self._registrations.items()):
                try:
                    await self._call(Register(key, data))
                    log.info("registration_restored", key=key, session_id=self.session_id)
                except PulseError as exc:
                    log.warning("registration_lost", key=key, reason=str(exc),
                                session_id=self.session_id)

    async def _write_loop(self, conn: _Connection) -> None:
        while True:
            await conn.wake.wait()
            conn.wake = anyio.Event()
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
                if self._conn is conn:
                    self._machine.sent(SessionDriver.now())

    async def _read_loop(self, conn: _Connection) -> None:
        """Read until the connection breaks (the read timeout is the machine's deadline)."""
        decoder = conn.decoder
        while True:
            try:
                data = await conn.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _Lost(f"connection broken: {exc}") from None
            if not data:
                raise _Lost("the server closed the connection")
            now = SessionDriver.now()
            if self._conn is conn:
                self._machine.received(now)
            try:
                messages = decoder.feed(data)
            except RemoteProtocolError as exc:
                raise _Lost(f"bad data from the server: {exc}") from None
            for message in messages:
                self._on_message(conn, message, now)

    def _on_message(self, conn: _Connection, obj: object, now: float | None = None) -> None:
        try:
            message = parse_server_message(obj)
        except RemoteProtocolError as exc:
            raise _Lost(f"bad message from the server: {exc}") from None
        if isinstance(message, Response):
            sent = conn.pings.pop(message.xid, None)
            if sent is not None:
                self.last_rtt = (SessionDriver.now() if now is None else now) - sent
                return
            restored = conn.restoring.pop(message.xid, None)
            if restored is not None:
                if message.error is not None:
                    self._watch_refused(restored, error_for(message.error, message.message))
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


def _watch_refusal(stream: WatchStream, error: PulseError) -> PulseError:
    """What a refused watch raises: :class:`~.errors.WatchKeyUnsupported` for a key watch
    the server does not know (it predates ``watch_key``), else the server's error."""
    if (isinstance(stream, KeyWatchStream) and isinstance(error, LocalProtocolError)
            and not isinstance(error, WatchKeyUnsupported) and UNKNOWN_OPERATION in str(error)):
        return WatchKeyUnsupported(
            f"the server does not know watch_key (older than this client): {error}")
    return error


@asynccontextmanager
async def connect(
    servers: Sequence[tuple[str, int]] | str,
    session_timeout: float = 10.0,
    **options: Any,
) -> AsyncIterator[LeaseSession]:
    """Open a lease session and keep it alive for the duration of the ``async with`` block.

    ``servers`` is a list of ``(host, port)`` pairs or a ``"host:port,host:port"`` string.
    Options: ``reregister`` (start a new session and restore registrations and watches after an
    expiry), ``open_stream`` (for tests), ``shuffle``, ``rng``, ``max_frame_size``,
    ``start_timeout``, ``session_id`` and ``session_password`` (resume a session).
    Leaving the block closes the session. Errors come out as themselves, not wrapped in
    exception groups.
    """
    if isinstance(servers, str):
        servers = parse_servers(servers)
    if options.get("max_message_size") is not None:  # the old spelling, warned at the caller
        # (frames: deprecated, renamed, this generator, the context manager's __aenter__)
        options["max_frame_size"] = renamed(
            "LeaseSession", "max_message_size", "max_frame_size", options.pop("max_message_size"),
            options.get("max_frame_size", DEFAULT_MAX_MESSAGE_SIZE), stacklevel=5)
    client = LeaseSession(servers, session_timeout, **options)
    async with background_nursery() as nursery:
        await nursery.start(client.run)
        try:
            yield client
        finally:
            with anyio.CancelScope(shield=True):
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
