"""The trio driver: one ZooKeeper session as a :class:`pulse.presence.PresenceSession`.

Every timing decision is made by :class:`._machine.SessionMachine` — pulse's one session
client machine (:mod:`pulse._core.session_client`, shared with the lease client) plus
ZooKeeper's handshake and zxid. The process's engine drives it through
:class:`pulse._driver.session.SessionDriver` (no timing loop, no deadline scope here); this
module opens and reads connections and carries out the machine's actions. Per connection,
one task reads frames and one writes queued bytes (so requests go out in xid order and
pings never interleave with a half-written frame).

Requests made while the connection is down wait for a re-attach; reads are retried after
a connection loss, and writes are retried in a way that is safe to repeat (a create that
finds the node already owned by this session counts as done). After expiry, with
``reregister=True``, a new session is started and every registration re-created; a node
still held by an earlier (expired) session of this client is deleted, one held by another
client is waited for.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import trio

from pulse._driver.feed import BoundedFeed
from pulse._driver.session import SessionDriver, apply_actions
from pulse._driver.streams import aclose_forcefully, open_tcp_stream
from pulse._log import get_logger
from pulse.errors import NotOwner, QueueFull, RemoteProtocolError
from pulse.presence import PresenceEvent, SessionEvent, SessionState

from ._machine import (
    Action,
    Connect,
    Disconnect,
    GaveUp,
    Host,
    Phase,
    SendPing,
    SessionMachine,
    StateChanged,
)
from ._watches import WatchKind, WatchTable
from .jute import DEFAULT_MAX_FRAME, Stat, WatcherEvent
from .protocol import (
    AuthPacket,
    AuthResult,
    BadVersionError,
    ClientConnection,
    CloseSession,
    Connected,
    ConnectionLoss,
    Create,
    CreateMode,
    Delete,
    Exists,
    GetChildren2,
    GetData,
    Incoming,
    NodeExistsError,
    NoNodeError,
    NoServerAnswered,
    Notification,
    Ping,
    Reply,
    Request,
    SessionClosedError,
    SetData,
    WatchesRestored,
    Xid,
    ZooKeeperError,
    ZooKeeperSessionExpired,
    presence_acl,
)

log = get_logger("pulse.zookeeper")

# Aliases: inside ZooKeeperSession the name ``list`` is the presence method.
_Actions = list[Action]
_Names = list[str]

StreamOpener = Callable[[str, int], Awaitable[trio.abc.Stream]]

_RECEIVE_SIZE = 65536
#: Requests waiting for their answer at once (the application's calls, counted from the call
#: on, also while disconnected, and the data reads of a listing); one more raises
#: :class:`~pulse.errors.QueueFull` at once instead of queueing.
MAX_PENDING_CALLS = 10_000
#: Bytes waiting to be written on one connection. While it holds that much, a request waits
#: for the writer to hand it to the server (a server that stops reading makes them wait
#: until its read timeout drops the connection), so the queue holds at most this plus one
#: request. What the session writes by itself (pings, credentials, watch re-registration)
#: never waits: if it would take the queue past twice this, the connection is dropped as
#: lost ("… the server does not read") and the session reconnects.
MAX_QUEUED_BYTES = 16 * 1024 * 1024
#: Requests waiting to be written on one connection: requests wait while it holds half of
#: this; what the session writes by itself past it drops the connection, as above.
MAX_QUEUED_REQUESTS = 2 * MAX_PENDING_CALLS
#: State transitions kept per :meth:`ZooKeeperSession.state_changes` iterator (oldest dropped).
MAX_STATE_EVENTS = 1_000
#: Data reads one listing pipelines at once (each counts as a pending call).
CHILDREN_BATCH = 1_000


class NotOwnedError(ZooKeeperError, NotOwner):
    """The key exists but belongs to another session, so this one may not remove it."""


async def open_tcp(host: str, port: int) -> trio.abc.Stream:
    """The default stream opener: a plain TCP connection."""
    return await open_tcp_stream(host, port)


def _hex(session_id: int | None) -> str | None:
    return None if not session_id else f"0x{session_id & 0xFFFFFFFFFFFFFFFF:x}"


class _Waiter:
    """One pending watch: set once, when it fires or is lost."""

    __slots__ = ("done", "event", "lost")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.event: WatcherEvent | None = None
        self.lost: str | None = None

    def fire(self, event: WatcherEvent) -> None:
        if not self.done.is_set():
            self.event = event
            self.done.set()

    def lose(self, reason: str) -> None:
        if not self.done.is_set():
            self.lost = reason
            self.done.set()


@dataclass(eq=False, slots=True)
class _Call:
    """A request waiting for its reply."""

    request: Request
    watcher: _Waiter | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    result: Any = None
    error: ZooKeeperError | None = None

    def finish(self, result: Any = None, error: ZooKeeperError | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


class _Outbox:
    """The frames waiting to be written on one connection, bounded in bytes and count.

    Requests wait for room (:meth:`has_room`, :meth:`wait_room`) before they are put; a put
    that would take it past twice :data:`MAX_QUEUED_BYTES` or past
    :data:`MAX_QUEUED_REQUESTS` *overflows* it: it takes nothing more, and the writer
    reports the link lost (the server does not read what it is sent).
    """

    __slots__ = ("bytes", "chunks", "closed", "drained", "overflow", "wake")

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.bytes = 0
        self.overflow: str | None = None
        self.closed = False
        self.wake = anyio.Event()  # set when there is something for the writer
        self.drained = anyio.Event()  # set when the writer took what was queued

    def __len__(self) -> int:
        return len(self.chunks)

    def has_room(self) -> bool:
        """Whether a request may be put now (below both bounds for requests)."""
        return self.bytes < MAX_QUEUED_BYTES and len(self.chunks) < MAX_QUEUED_REQUESTS // 2

    async def wait_room(self) -> None:
        """Until the writer took what was queued, or the outbox ended."""
        if not (self.closed or self.overflow is not None):
            await self.drained.wait()

    def put(self, data: bytes) -> None:
        if self.closed or self.overflow is not None:
            return
        if len(self.chunks) >= MAX_QUEUED_REQUESTS:
            self.overflow = (f"more than {MAX_QUEUED_REQUESTS} requests wait to be sent: "
                             "the server does not read")
        elif self.chunks and self.bytes + len(data) > 2 * MAX_QUEUED_BYTES:
            self.overflow = (f"more than {2 * MAX_QUEUED_BYTES} bytes wait to be sent: "
                             "the server does not read")
        else:
            self.chunks.append(data)
            self.bytes += len(data)
        self.wake.set()
        if self.overflow is not None:
            self.drained.set()  # requests waiting for room: this link is over

    def take(self) -> bytes:
        """Everything queued, as one write."""
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.bytes = 0
        self.drained.set()
        self.drained = anyio.Event()
        return data

    def close(self) -> None:
        self.closed = True
        self.wake.set()
        self.drained.set()

    async def wait(self) -> None:
        """Until something was queued, the outbox overflowed or was closed."""
        while not self.chunks and self.overflow is None and not self.closed:
            await self.wake.wait()
            self.wake = anyio.Event()


@dataclass(eq=False, slots=True)
class _Link:
    """One connection (or connection attempt) to one server."""

    host: Host
    protocol: ClientConnection
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    pending: dict[int, _Call] = field(default_factory=dict)
    ready: bool = False
    stream: trio.abc.Stream | None = None
    closing_directly: bool = False  # aclose() owns the stream now
    outbox: _Outbox = field(default_factory=_Outbox)
    send_scope: anyio.CancelScope | None = None  # around the writer's current write

    def write(self, data: bytes) -> None:
        """Queue bytes for the writer task (never blocks; requests first wait for room, see
        :meth:`ZooKeeperSession._link_with_room`). Past the outbox's hard bounds the writer
        stops (even within a write the server does not take) and reports the link lost; a
        closed outbox (the link is being torn down) drops them: its pending calls fail with
        ConnectionLoss."""
        self.outbox.put(data)
        if self.outbox.overflow is not None and self.send_scope is not None:
            self.send_scope.cancel()

    def fail_pending(self, reason: str) -> None:
        for call in self.pending.values():
            call.finish(error=ConnectionLoss(f"connection lost: {reason}"))
        self.pending.clear()


class ZooKeeperSession:
    """A ZooKeeper session offering pulse's presence API.

    Create it through :func:`connect` (or ``pulse.registry.connect_session("zk://…")``),
    which runs it in a nursery and closes it on exit. ``chroot`` prefixes every path the
    server sees. ``reregister`` re-creates this session's registrations in a new session
    after expiry. ``open_stream`` replaces the TCP connector (tests, TLS). ``start_timeout``:
    give up (:class:`NoServerAnswered`) if no session is established that long after
    :meth:`run` starts. ``session_id`` and ``session_password`` resume an existing session
    (as ZooKeeper's own client allows); a server refusing them expires it.
    """

    def __init__(
        self,
        hosts: Sequence[Host],
        *,
        session_timeout: float = 10.0,
        chroot: str = "",
        reregister: bool = False,
        rng: random.Random | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME,
        open_stream: StreamOpener = open_tcp,
        digest: tuple[str, str] | None = None,
        start_timeout: float | None = None,
        session_id: int | None = None,
        session_password: bytes = b"",
    ) -> None:
        self._machine = SessionMachine(hosts, session_timeout, rng, session_id=session_id,
                                       password=session_password)
        self._start_timeout = start_timeout
        self._driver: SessionDriver | None = None
        self._gave_up: str | None = None
        self._close_scope: anyio.CancelScope | None = None
        if digest is not None and (len(digest) != 2 or not all(isinstance(x, str) for x in digest)
                                   or not digest[0] or ":" in digest[0]):
            raise ValueError("digest must be (user, password) with a non-empty user without ':'")
        self._digest = digest
        self._acl = presence_acl(*digest) if digest is not None else None
        self._guarded: set[str] = set()  # keys whose node a task keeps in place
        self._closed_directly = False  # closeSession went out on a bare stream
        self._chroot = _normalize_chroot(chroot)
        self._reregister = reregister
        self._max_frame = max_frame_size
        self._open_stream = open_stream
        self._link: _Link | None = None
        self._nursery: anyio.abc.TaskGroup | None = None
        self._xid = 0
        self._watches = WatchTable()
        self._registrations: dict[str, bytes] = {}
        self._old_sessions: set[int] = set()
        self._generation = 0
        self._restore_pending = False
        self._expiry: SessionEvent | None = None
        self._closing = False
        self._subscribers: list[BoundedFeed[SessionEvent]] = []
        self._waiting = 0  # requests waiting for an answer (MAX_PENDING_CALLS)
        self._changed = anyio.Event()  # set (and replaced) on every state or link change

    # ------------------------------------------------------------------ PresenceSession

    @property
    def session_id(self) -> int | None:
        """The server-assigned session id (None before the first connect)."""
        return self._machine.session_id or None

    @property
    def state(self) -> SessionState:
        """The current state."""
        return self._machine.state

    @property
    def session_timeout(self) -> float:
        """The negotiated session timeout in seconds (the requested one until connected)."""
        return self._machine.session_timeout

    @property
    def connected_host(self) -> Host | None:
        """The server this session is connected to right now, if any."""
        if self._machine.phase is Phase.CONNECTED:
            return self._machine.host
        return None

    @property
    def registrations(self) -> dict[str, bytes]:
        """Keys this session registered (and re-creates after expiry if asked to)."""
        return dict(self._registrations)

    async def register(self, key: str, data: bytes = b"") -> None:
        """Create the ephemeral node ``key`` with ``data``; persistent parents are created.

        Registering a key this session already holds replaces its data. A key held by an
        earlier, expired session of this client is taken over; one held by any other
        session raises :class:`NodeExistsError`.
        """
        path = self._server_path(key, allow_root=False)
        await self._create_ephemeral(path, bytes(data), wait_for_others=False)
        self._registrations[key] = bytes(data)
        if key not in self._guarded and self._nursery is not None:
            self._guarded.add(key)
            self._nursery.start_soon(self._keep_registered, key)

    async def unregister(self, key: str) -> None:
        """Delete ``key`` if this session holds it (no-op if it is gone already)."""
        path = self._server_path(key, allow_root=False)
        self._registrations.pop(key, None)
        while True:
            stat = await self._exists(path)
            if stat is None:
                return
            if stat.ephemeral_owner != self._machine.session_id:
                raise NotOwnedError(
                    f"{key} belongs to session {_hex(stat.ephemeral_owner) or 'none (persistent)'}",
                    path=key,
                )
            try:
                await self._call(Delete(path, stat.version))
                return
            except (ConnectionLoss, NoNodeError, BadVersionError):
                continue  # re-check: it may be gone already, or have changed

    async def get(self, key: str) -> bytes | None:
        """The data of ``key``, or None if it does not exist."""
        path = self._server_path(key)
        while True:
            try:
                data, _stat = await self._call(GetData(path))
                return bytes(data)
            except NoNodeError:
                return None
            except ConnectionLoss:
                continue

    async def exists(self, key: str) -> Stat | None:
        """The node's :class:`~.jute.Stat` (``ephemeral_owner`` is its session), or None."""
        return await self._exists(self._server_path(key))

    async def create(
        self, key: str, data: bytes = b"", *, ephemeral: bool = True, sequential: bool = False
    ) -> str:
        """Create one node (parents must exist) and return its key; with ``sequential`` the
        server appends a 10-digit counter (``/queue/item-0000000007``). Not retried after a
        connection loss (a sequential create cannot be repeated safely)."""
        mode = CreateMode(int(ephemeral) | (int(sequential) << 1))
        created: str = await self._call(
            Create(self._server_path(key, allow_root=False), bytes(data), mode)
        )
        return self._client_path(created)

    async def list(self, prefix: str) -> dict[str, bytes]:
        """Direct children of ``prefix`` with their data ({} if ``prefix`` is missing)."""
        path = self._server_path(prefix)
        while True:
            try:
                children, _stat = await self._call(GetChildren2(path))
                return await self._children_data(path, children)
            except NoNodeError:
                return {}
            except ConnectionLoss:
                continue

    def watch(self, prefix: str) -> AsyncIterator[PresenceEvent]:
        """Current children as ``initial`` online events, then each online/offline change.

        Changes are found by re-listing the children whenever ZooKeeper's one-shot child
        watch fires and comparing with the last list: each member's arrival and departure
        is reported once, departures before arrivals, names sorted within a batch. A member
        that comes and goes between two lists is not seen (as in ZooKeeper itself). While
        disconnected nothing is reported; watches are restored with setWatches on the next
        server, which reports what changed meanwhile. If the session expires the iterator
        raises :class:`ZooKeeperSessionExpired`, unless ``reregister`` is on: then it
        continues on the new session (reporting what changed in between).
        """
        return self._watch(self._server_path(prefix))

    def watch_key(self, key: str) -> AsyncIterator[PresenceEvent]:
        """Whether ``key`` exists (the first event: ``online`` or ``offline``, ``initial``
        set), then each time it is created or deleted. ``id`` is the key's last segment.

        One ZooKeeper watch on the node itself (a data watch set by getData while it exists,
        an exist watch set by exists while it does not), re-armed after each notification:
        only changes of this node reach this session (the election's "watch only your
        predecessor"). A change of the node's data is not reported (presence did not
        change). Disconnection, expiry and ``reregister`` behave as for :meth:`watch`.
        """
        return self._watch_key(self._server_path(key, allow_root=False))

    def state_changes(self) -> AsyncIterator[SessionEvent]:
        """Every state transition from now on; ends after ``closed``. A reader that falls
        behind loses the oldest: at most :data:`MAX_STATE_EVENTS` transitions wait for it."""
        feed: BoundedFeed[SessionEvent] = BoundedFeed(MAX_STATE_EVENTS, drop_oldest=True,
                                                      what="state changes")
        if self._machine.phase is Phase.CLOSED:
            feed.finish(StopAsyncIteration())
        else:
            self._subscribers.append(feed)
        return self._iterate_states(feed)

    async def aclose(self, *, direct: bool = False) -> None:
        """Close the session: closeSession is sent so its registrations vanish at once.

        ``direct``: the session's own tasks are being cancelled (the scope around it was
        cancelled), so closeSession is written on the connection's stream by this task,
        waiting at most the close wait (min(T / n, 2 s)) for the answer.
        """
        if self._closing:
            return
        self._closing = True
        link = self._link
        if (not self._closed_directly and link is not None and link.ready
                and self._machine.phase is Phase.CONNECTED and self._driver is not None):
            if direct and link.stream is not None:
                link.closing_directly = True
                self._closed_directly = True
                await self._close_on_stream(link, link.stream)
                await aclose_forcefully(link.stream)
            else:
                now = SessionDriver.now()
                self._apply(self._machine.begin_close(now), now)
                self._send(link, CloseSession())
                await self._driver.wait_until(lambda: self._machine.phase is not Phase.CLOSING)
        now = SessionDriver.now()
        self._apply(self._machine.close(now), now)
        self._watches.lose_all("session closed")
        for feed in self._subscribers:
            feed.finish(StopAsyncIteration())
        self._subscribers.clear()
        self._notify()

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the session going until it is closed; reports started at once. The engine
        drives the machine's timers; this task only waits for the end."""
        async with anyio.create_task_group() as nursery:
            self._nursery = nursery
            self._driver = driver = SessionDriver(self._machine, self._perform)
            task_status.started()
            now = driver.now()
            self._apply(self._machine.start(now, self._start_timeout), now)
            try:
                await driver.wait_until(lambda: self._machine.phase is Phase.CLOSED)
            finally:
                driver.watch()  # closed: the engine forgets it
            nursery.cancel_scope.cancel()

    async def wait_connected(self) -> None:
        """Wait until the session is connected; raise if it expires or closes, or
        :class:`NoServerAnswered` once the start timeout passed without a session."""
        while True:
            if self._machine.state is SessionState.CONNECTED:
                return
            if self._gave_up is not None:
                raise NoServerAnswered(self._gave_up)
            self._raise_if_unusable()
            await self._changed.wait()

    # ------------------------------------------------------------------ actions

    def _apply(self, actions: _Actions, now: float) -> None:
        """Carry out ``actions`` (an input's answer) and re-arm the engine."""
        apply_actions(self._driver, self._perform, actions, now)

    def _perform(self, action: Action, now: float) -> None:
        """Carry out one action of the machine (called by the engine, never awaits)."""
        if isinstance(action, Connect):
            assert self._nursery is not None
            self._drop_link("replaced by a new attempt")
            attempt = _Link(action.host, ClientConnection(self._max_frame))
            self._link = attempt
            self._nursery.start_soon(self._connection, attempt, action)
        elif isinstance(action, Disconnect):
            self._drop_link(action.reason)
        elif isinstance(action, SendPing):
            current = self._link
            if current is not None and current.ready:
                current.write(current.protocol.send(Xid.PING, Ping()))
        elif isinstance(action, StateChanged):
            self._on_state(action.event, now)
        elif isinstance(action, GaveUp):
            hosts = ", ".join(f"{h}:{p}" for h, p in self._machine.hosts)
            self._gave_up = (f"no ZooKeeper server answered within {self._start_timeout:g} s "
                             f"({hosts})")
        if self._close_scope is not None and self._machine.phase is not Phase.CLOSING:
            self._close_scope.cancel()  # the close was confirmed, or its wait is over
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _drop_link(self, reason: str) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.scope.cancel()
            link.outbox.close()
            link.fail_pending(reason)

    def _link_failed(self, link: _Link, reason: str) -> None:
        """A connection task found its connection broken."""
        if self._link is not link:
            return
        if not self._closing:
            log.info("connection_lost", peer=_peer(link.host), reason=reason,
                     session_id=_hex(self._machine.session_id))
        self._drop_link(reason)
        now = SessionDriver.now()
        self._apply(self._machine.connection_lost(now, reason), now)

    def _on_state(self, event: SessionEvent, now: float) -> None:
        log.info("session_state", state=event.state.value, session_id=_hex(event.session_id),
                 reason=event.reason, peer=_peer(self._machine.host))
        for feed in self._subscribers:
            feed.put(event)
        if event.state is SessionState.EXPIRED:
            self._expiry = event
            if event.session_id:
                self._old_sessions.add(event.session_id)
            self._generation += 1
            self._watches.lose_all(event.reason)
            if self._reregister and not self._closing:
                self._restore_pending = bool(self._registrations)
                self._apply(self._machine.new_session(now), now)
        elif event.state is SessionState.CONNECTED and self._restore_pending:
            self._restore_pending = False
            assert self._nursery is not None
            self._nursery.start_soon(self._restore_registrations, self._generation)

    # ------------------------------------------------------------------ connections

    async def _connection(self, link: _Link, action: Connect) -> None:
        host, port = action.host
        with link.scope:
            try:
                stream = await self._open_stream(host, port)
            except OSError as exc:
                self._link_failed(link, f"cannot connect: {exc}")
                return
            link.stream = stream
            try:
                await self._handshake(link, stream, action)
                if self._link is not link:
                    return
                async with anyio.create_task_group() as nursery:
                    nursery.start_soon(self._writer, link, stream)
                    await self._reader(link, stream)
            finally:
                # (when aclose() writes closeSession on this stream itself, it closes it)
                if not link.closing_directly:
                    await self._finish_stream(link, stream)

    async def _finish_stream(self, link: _Link, stream: trio.abc.Stream) -> None:
        """Close a connection's stream, first closing the session on it if the application
        cancelled the scope around the session while it was connected."""
        if (self._link is link and link.ready and not self._closing
                and not self._closed_directly and not link.scope.cancel_called
                and self._machine.phase is Phase.CONNECTED
                and anyio.current_effective_deadline() == -math.inf):
            # Cancelled from outside (the application left the scope around the session by
            # cancellation): the writer is gone, so close directly.
            self._closed_directly = True
            with anyio.CancelScope(shield=True):
                await self._close_on_stream(link, stream)
        await aclose_forcefully(stream)

    async def _close_on_stream(self, link: _Link, stream: trio.abc.Stream) -> None:
        """closeSession written by this task on the bare stream, for at most the machine's
        close wait (the engine ends the wait: the CLOSED action cancels ``_close_scope``)."""
        now = SessionDriver.now()
        self._apply(self._machine.begin_close(now), now)
        if self._machine.phase is not Phase.CLOSING:
            return
        self._close_scope = anyio.CancelScope()
        try:
            with self._close_scope:
                await self._close_directly(link, stream)
        finally:
            self._close_scope = None
        now = SessionDriver.now()
        self._apply(self._machine.close_confirmed(now), now)

    async def _close_directly(self, link: _Link, stream: trio.abc.Stream) -> None:
        """Send closeSession on the bare stream; read until its reply or the server hangs up."""
        try:
            self._xid = self._xid % 0x7FFFFFFF + 1
            xid = self._xid
            await stream.send_all(link.protocol.send(xid, CloseSession()))
            while True:
                data = await stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    return
                for event in link.protocol.receive(data):
                    if isinstance(event, Reply) and event.xid == xid:
                        log.info("session_closed_directly", session_id=_hex(self._machine.session_id))
                        return
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError):
            return

    async def _handshake(self, link: _Link, stream: trio.abc.Stream, action: Connect) -> None:
        try:
            await stream.send_all(link.protocol.connect(action.request))
            self._machine.sent(SessionDriver.now())
            events: list[Incoming] = []
            while not events:
                data = await stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    self._link_failed(link, "server closed the connection during the handshake")
                    return
                self._machine.received(SessionDriver.now())
                events = link.protocol.receive(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._link_failed(link, f"handshake failed: {exc!r}")
            return
        except RemoteProtocolError as exc:
            self._link_failed(link, f"bad handshake from server: {exc}")
            return
        first, rest = events[0], events[1:]
        assert isinstance(first, Connected)
        if self._link is not link:
            return  # dropped meanwhile (connect timeout, close)
        now = SessionDriver.now()
        self._apply(self._machine.handshake_done(now, first.response), now)
        if self._link is not link:
            return  # expired (or closed): the Disconnect action dropped this link
        if self._digest is not None:  # credentials belong to the connection: add them each time
            user, password = self._digest
            link.write(link.protocol.send(Xid.AUTH, AuthPacket("digest",
                                                                f"{user}:{password}".encode())))
        for request in self._watches.set_watches(self._machine.last_zxid):
            link.write(link.protocol.send(Xid.SET_WATCHES, request))
        link.ready = True
        self._notify()
        for event in rest:
            self._incoming(link, event, now)

    async def _reader(self, link: _Link, stream: trio.abc.Stream) -> None:
        try:
            while True:
                data = await stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    self._link_failed(link, "server closed the connection")
                    return
                now = SessionDriver.now()
                self._machine.received(now)
                for event in link.protocol.receive(data):
                    self._incoming(link, event, now)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._link_failed(link, f"receive failed: {exc!r}")
        except RemoteProtocolError as exc:
            log.warning("protocol_error", peer=_peer(link.host), reason=str(exc))
            self._link_failed(link, f"protocol error: {exc}")

    async def _writer(self, link: _Link, stream: trio.abc.Stream) -> None:
        outbox = link.outbox
        try:
            while True:
                await outbox.wait()
                if outbox.overflow is not None:
                    log.warning("connection_dropped", peer=_peer(link.host),
                                reason=outbox.overflow, session_id=_hex(self._machine.session_id))
                    self._link_failed(link, outbox.overflow)
                    return
                if outbox.closed:
                    return
                with anyio.CancelScope() as link.send_scope:
                    await stream.send_all(outbox.take())
                link.send_scope = None
                if self._link is link and outbox.overflow is None:
                    self._machine.sent(SessionDriver.now())
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._link_failed(link, f"send failed: {exc!r}")

    def _incoming(self, link: _Link, event: Incoming, now: float) -> None:
        if isinstance(event, Reply):
            self._machine.received(now, event.zxid)
            call = link.pending.pop(event.xid, None)
            if call is None:
                return
            if call.watcher is not None:
                self._arm_watch(event, call.watcher)
            call.finish(event.result, event.error)
            if isinstance(call.request, CloseSession):
                self._apply(self._machine.close_confirmed(now), now)
        elif isinstance(event, Notification):
            self._watches.fire(event.event)
        elif isinstance(event, WatchesRestored) and event.err:
            log.warning("set_watches_failed", peer=_peer(link.host), reason=f"error {event.err}")
        elif isinstance(event, AuthResult) and event.err:
            log.warning("auth_failed", peer=_peer(link.host), reason=f"error {event.err}")

    def _arm_watch(self, reply: Reply, waiter: _Waiter) -> None:
        request = reply.request
        path = getattr(request, "path", "")
        if reply.error is None:
            kind = WatchKind.CHILD if isinstance(request, GetChildren2) else WatchKind.DATA
            self._watches.add(kind, path, waiter)
        elif isinstance(request, Exists) and isinstance(reply.error, NoNodeError):
            self._watches.add(WatchKind.EXIST, path, waiter)

    # ------------------------------------------------------------------ requests

    def _raise_if_unusable(self) -> None:
        state = self._machine.state
        if self._closing or state is SessionState.CLOSED:
            raise SessionClosedError("the session is closed")
        if state is SessionState.EXPIRED:
            expiry = self._expiry
            detail = f": {expiry.reason}" if expiry is not None else ""
            raise ZooKeeperSessionExpired(
                f"session {_hex(expiry.session_id if expiry else None)} expired{detail}"
            )

    async def _usable_link(self) -> _Link:
        while True:
            self._raise_if_unusable()
            link = self._link
            if link is not None and link.ready:
                return link
            await self._changed.wait()

    async def _link_with_room(self) -> _Link:
        """The connection, once its write queue has room for a request (backpressure: a
        server that does not read holds the request here, not in memory without bound)."""
        while True:
            link = await self._usable_link()
            if link.outbox.has_room():
                return link
            await link.outbox.wait_room()

    def _reserve(self, count: int) -> None:
        """Count ``count`` more requests waiting for an answer, or raise QueueFull."""
        if self._waiting + count > MAX_PENDING_CALLS:
            if count == 1:
                raise QueueFull(f"{MAX_PENDING_CALLS} requests are already waiting for an answer")
            raise QueueFull(f"{count} more requests would pass the bound of {MAX_PENDING_CALLS} "
                            f"waiting for an answer ({self._waiting} are)")
        self._waiting += count

    def _send(self, link: _Link, request: Request, watcher: _Waiter | None = None) -> _Call:
        self._xid = self._xid % 0x7FFFFFFF + 1
        call = _Call(request, watcher)
        link.pending[self._xid] = call
        link.write(link.protocol.send(self._xid, request))
        return call

    async def _call(self, request: Request, watcher: _Waiter | None = None) -> Any:
        self._reserve(1)
        try:
            call = self._send(await self._link_with_room(), request, watcher)
            await call.done.wait()
        finally:
            self._waiting -= 1
        if call.error is not None:
            raise call.error
        return call.result

    async def _exists(self, path: str, watcher: _Waiter | None = None) -> Stat | None:
        while True:
            try:
                stat: Stat = await self._call(Exists(path, watcher is not None), watcher)
                return stat
            except NoNodeError:
                return None
            except ConnectionLoss:
                continue

    async def _children_data(self, path: str, children: _Names) -> dict[str, bytes]:
        """Data of each child, requested in pipelined batches (of at most
        :data:`CHILDREN_BATCH`, each counted as pending calls); vanished ones are skipped."""
        names = sorted(children)
        result: dict[str, bytes] = {}
        for start in range(0, len(names), CHILDREN_BATCH):
            batch = names[start:start + CHILDREN_BATCH]
            self._reserve(len(batch))
            try:
                link = await self._link_with_room()
                calls = [(name, self._send(link, GetData(_join(path, name)))) for name in batch]
                for name, call in calls:
                    await call.done.wait()
                    if isinstance(call.error, NoNodeError):
                        continue
                    if call.error is not None:
                        raise call.error
                    result[name] = bytes(call.result[0])
            finally:
                self._waiting -= len(batch)
        return result

    async def _create_parents(self, path: str) -> None:
        parts = path.strip("/").split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/" + "/".join(parts[:depth])
            while True:
                try:
                    await self._call(Create(parent, b"", CreateMode.PERSISTENT))
                except NodeExistsError:
                    pass
                except ConnectionLoss:
                    continue
                break

    async def _create_ephemeral(self, path: str, data: bytes, *, wait_for_others: bool) -> None:
        """Make ``path`` an ephemeral node of the current session holding ``data``."""
        while True:
            try:
                if self._acl is not None:
                    await self._call(Create(path, data, CreateMode.EPHEMERAL, self._acl))
                else:
                    await self._call(Create(path, data, CreateMode.EPHEMERAL))
                return
            except NoNodeError:
                await self._create_parents(path)
                continue
            except ConnectionLoss:
                continue  # unknown outcome: the retry finds the node ours if it was created
            except NodeExistsError:
                pass
            waiter = _Waiter() if wait_for_others else None
            stat = await self._exists(path, waiter)
            if stat is None:
                continue
            owner = stat.ephemeral_owner
            if owner == self._machine.session_id:
                try:
                    await self._call(SetData(path, data, stat.version))
                    return
                except (NoNodeError, BadVersionError, ConnectionLoss):
                    continue
            if owner in self._old_sessions:
                log.info("taking_over", path=path, reason=f"held by expired session {_hex(owner)}",
                         session_id=_hex(self._machine.session_id))
                try:
                    await self._call(Delete(path, stat.version))
                except (NoNodeError, BadVersionError, ConnectionLoss):
                    pass
                continue
            if waiter is None:
                raise NodeExistsError(
                    f"{self._client_path(path)} is registered by session "
                    f"{_hex(owner) or 'none (persistent node)'}",
                    path=self._client_path(path),
                )
            log.info("waiting_for_key", path=path, reason=f"held by session {_hex(owner)}",
                     session_id=_hex(self._machine.session_id))
            try:
                await waiter.done.wait()
            finally:
                self._watches.discard(waiter)
            if waiter.lost is not None:
                self._raise_if_unusable()

    async def _keep_registered(self, key: str) -> None:
        """While ``key`` is registered, watch its node; if it is deleted (by anyone) while
        this session lives, create it again at once with the registered data."""
        path = self._server_path(key, allow_root=False)
        try:
            while not self._closing and key in self._registrations:
                waiter = _Waiter()
                try:
                    stat = await self._exists(path, waiter)
                except ZooKeeperSessionExpired:
                    self._watches.discard(waiter)
                    if not self._reregister:
                        return
                    await self._changed.wait()  # the next session restores it; keep watching
                    continue
                except QueueFull as exc:  # the application keeps too many requests waiting
                    self._watches.discard(waiter)
                    log.warning("keep_registered_deferred", path=key, reason=str(exc),
                                session_id=_hex(self._machine.session_id))
                    await self._changed.wait()
                    continue
                if stat is None:
                    self._watches.discard(waiter)
                    data = self._registrations.get(key)
                    if data is None or self._closing:
                        return
                    log.warning("registration_deleted", path=key,
                                session_id=_hex(self._machine.session_id),
                                reason="node deleted while the session lives; creating it again")
                    try:
                        await self._create_ephemeral(path, data, wait_for_others=True)
                    except ZooKeeperSessionExpired:
                        continue
                    except (ZooKeeperError, QueueFull) as exc:
                        if isinstance(exc, SessionClosedError):
                            return
                        # Refused (an ACL, a quota): trying again only helps once the
                        # session or its link has changed, so wait for that, not a timer.
                        log.warning("reregister_failed", path=key, reason=str(exc),
                                    session_id=_hex(self._machine.session_id))
                        await self._changed.wait()
                    continue
                try:
                    await waiter.done.wait()
                finally:
                    self._watches.discard(waiter)
        except SessionClosedError:
            return
        finally:
            self._guarded.discard(key)

    async def _restore_registrations(self, generation: int) -> None:
        """Re-create every registration in the new session (run after expiry)."""
        async with anyio.create_task_group() as nursery:
            for key, data in list(self._registrations.items()):
                nursery.start_soon(self._restore_one, key, data, generation)

    async def _restore_one(self, key: str, data: bytes, generation: int) -> None:
        try:
            await self._create_ephemeral(self._server_path(key), data, wait_for_others=True)
        except (ZooKeeperSessionExpired, SessionClosedError):
            return  # the next session (if any) restores it
        except (ZooKeeperError, QueueFull) as exc:  # e.g. no permission any more: report
            log.warning("reregister_failed", path=key, reason=str(exc),
                        session_id=_hex(self._machine.session_id))
            return
        if generation == self._generation:
            log.info("reregistered", path=key, session_id=_hex(self._machine.session_id))

    # ------------------------------------------------------------------ watching

    async def _watch(self, path: str) -> AsyncIterator[PresenceEvent]:
        known: dict[str, bytes] = {}
        initial = True
        while True:
            waiter = _Waiter()
            try:
                try:
                    children, _stat = await self._call(GetChildren2(path, True), waiter)
                    current = await self._children_data(path, children)
                except NoNodeError:
                    current = {}
                    if await self._exists(path, waiter) is not None:
                        self._watches.discard(waiter)
                        continue  # created meanwhile: list it
            except ConnectionLoss:
                self._watches.discard(waiter)
                continue
            except SessionClosedError:
                return  # the application closed the session: the watch ends quietly
            for name in sorted(set(known) - set(current)):
                del known[name]
                yield PresenceEvent("offline", name)
            for name in sorted(set(current) - set(known)):
                known[name] = current[name]
                yield PresenceEvent("online", name, current[name], initial)
            initial = False
            if not await self._until_fired(waiter):
                return

    async def _until_fired(self, waiter: _Waiter) -> bool:
        """Wait for ``waiter``'s watch to fire. False: the session was closed, the watch ends
        quietly; a session that expired without ``reregister`` raises."""
        try:
            await waiter.done.wait()
        finally:
            self._watches.discard(waiter)
        if waiter.lost is not None:
            if self._closing or self._machine.state is SessionState.CLOSED:
                return False
            if not self._reregister:
                self._raise_if_unusable()
                raise ZooKeeperSessionExpired(waiter.lost)
        return True

    async def _watch_key(self, path: str) -> AsyncIterator[PresenceEvent]:
        name = path.rsplit("/", 1)[1]
        known: bytes | None = None  # the data reported online, None while offline
        initial = True
        while True:
            waiter = _Waiter()
            try:
                try:
                    data, _stat = await self._call(GetData(path, True), waiter)
                    current: bytes | None = bytes(data)
                except NoNodeError:
                    current = None
                    if await self._exists(path, waiter) is not None:
                        self._watches.discard(waiter)
                        continue  # created meanwhile: read it
            except ConnectionLoss:
                self._watches.discard(waiter)
                continue
            except SessionClosedError:
                return  # the application closed the session: the watch ends quietly
            if current is None and (initial or known is not None):
                known = None
                yield PresenceEvent("offline", name, initial=initial)
            elif current is not None and (initial or known is None):
                known = current
                yield PresenceEvent("online", name, current, initial)
            initial = False
            if not await self._until_fired(waiter):
                return

    async def _iterate_states(self, feed: BoundedFeed[SessionEvent]
                              ) -> AsyncIterator[SessionEvent]:
        try:
            while True:
                try:
                    event = await feed.get()
                except StopAsyncIteration:
                    return
                yield event
        finally:
            if feed in self._subscribers:  # its reader went away
                self._subscribers.remove(feed)

    # ------------------------------------------------------------------ paths

    def _server_path(self, key: str, *, allow_root: bool = True) -> str:
        _check_key(key, allow_root=allow_root)
        if key == "/":
            return self._chroot or "/"
        return self._chroot + key

    def _client_path(self, path: str) -> str:
        if self._chroot and path.startswith(self._chroot):
            return path[len(self._chroot) :] or "/"
        return path


def _peer(host: Host | None) -> str | None:
    return None if host is None else f"{host[0]}:{host[1]}"


def _join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


def _normalize_chroot(chroot: str) -> str:
    chroot = chroot.rstrip("/")
    if chroot:
        _check_key(chroot, allow_root=False)
    return chroot


def _check_key(key: str, *, allow_root: bool) -> None:
    """Keys are absolute slash-separated paths without empty, '.' or '..' parts."""
    if not isinstance(key, str) or not key.startswith("/"):
        raise ValueError(f"key must be an absolute path starting with '/': {key!r}")
    if key == "/":
        if not allow_root:
            raise ValueError("the root '/' cannot be registered")
        return
    parts = key[1:].split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"key has an empty, '.' or '..' component: {key!r}")
    if "\x00" in key:
        raise ValueError(f"key contains a NUL character: {key!r}")


__all__ = ["NotOwnedError", "ZooKeeperSession", "open_tcp"]
