"""Dubbo-style heartbeats for any request/response RPC framework, on one timing wheel.

The framework keeps its own sockets, codec and request table; pulse keeps the clock.

What the framework does (all calls are synchronous and cheap)::

    timer = HeartbeatTimer()                       # one per process; run() is ONE trio task
    channel = timer.open_channel(Role.CONSUMER, hooks, messages, timing=ChannelTiming(60))
    channel.read()                                 # any frame arrived
    channel.wrote()                                # a write completed
    reply = channel.heartbeat_request(rid)         # the peer pinged: send ``reply``
    channel.heartbeat_response(rid)                # the peer answered a ping
    rid = channel.next_request_id()                # ids for the framework's own requests
    channel.close("eof")                           # the connection ended

What pulse does, through the framework's ``hooks`` (they must not block)::

    hooks.send_heartbeat(message)                  # built by messages.request(id)
    hooks.close(reason)                            # the peer is dead: close the connection

and a consumer runs its connection inside :func:`reconnect_loop`, which reconnects with
backoff after every lost connection (the one reconnect supervisor of
:mod:`pulse._core.reconnect`). ``channel.state``, ``channel.rtt`` and
``channel.stats()`` expose liveness and round-trip times.

Request ids: heartbeats need ids in the framework's id space (their responses come back
through the framework's own decoder). Give every channel the *same* allocator the framework
uses for its requests (:class:`RequestIds`, or any ``() -> int`` the framework already has)
and the two can never collide: an id is handed out once, to either a call or a heartbeat.

Timing rules (heartbeat after ``heartbeat`` idle in either direction, dead after
``heartbeat_timeout`` without a read, local-pause guard) live in
:mod:`pulse._core.channel_heartbeat`; the wheel in :mod:`pulse._core.wheel`. All channels of
a :class:`HeartbeatTimer` share one wheel and one sleeping task, however many there are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Generic, NoReturn, Protocol, TypeVar

import anyio
import anyio.abc
import trio

from pulse._core.backoff import Backoff
from pulse._core.channel_heartbeat import (
    ChannelHeartbeat,
    ChannelState,
    ChannelStats,
    ChannelTiming,
    Role,
)
from pulse._core.reconnect import ReconnectMachine, default_backoff
from pulse._core.stats import RttSummary
from pulse._core.wheel import DEFAULT_SLOTS, DEFAULT_TICK, HashedWheel, Timer
from pulse._driver.engine import current_engine
from pulse._driver.reconnect import AttemptHandle, ReconnectDriver
from pulse._driver.util import background_nursery
from pulse._log import get_logger
from pulse.actions import (
    Action,
    Close,
    LocalPause,
    PeerAlive,
    PeerDead,
    PeerSuspect,
    Reconnect,
    SendPing,
)
from pulse.errors import PulseError, ReconnectGaveUp

__all__ = [
    "ChannelHooks",
    "ChannelState",
    "ChannelStats",
    "ChannelTiming",
    "HeartbeatMessages",
    "HeartbeatTimer",
    "RequestIds",
    "Role",
    "RpcChannel",
    "open_heartbeat_timer",
    "reconnect_loop",
    "tick_for",
]

log = get_logger("pulse.rpc")

M = TypeVar("M")
M_co = TypeVar("M_co", covariant=True)
M_contra = TypeVar("M_contra", contravariant=True)
S = TypeVar("S")


class RequestIds:
    """A request-id counter shared by the framework's calls and pulse's heartbeats.

    Ids run from ``start`` to ``limit - 1`` and then wrap to ``start``. The default range
    suits Dubbo (a positive Java long); msgpack-RPC's 32-bit msgid needs ``limit=2**32``.
    An id comes back only after ``limit - start`` others, far beyond any pending request.
    """

    __slots__ = ("_next", "limit", "start")

    def __init__(self, start: int = 1, *, limit: int = 2**63) -> None:
        if not 0 <= start < limit:
            raise ValueError(f"need 0 <= start < limit, got start={start} limit={limit}")
        self.start = start
        self.limit = limit
        self._next = start

    def __call__(self) -> int:
        """The next id."""
        rid = self._next
        self._next = rid + 1 if rid + 1 < self.limit else self.start
        return rid


class HeartbeatMessages(Protocol[M_co]):
    """How heartbeats look in the framework's protocol (bytes or message objects)."""

    def request(self, request_id: int) -> M_co:
        """A heartbeat request carrying ``request_id`` (two-way: the peer must answer)."""

    def response(self, request_id: int) -> M_co:
        """The answer to the peer's heartbeat request ``request_id``."""


class ChannelHooks(Protocol[M_contra]):
    """What pulse asks the framework to do for one channel. Both calls run inside the timer
    task and must return at once (queue the message, cancel a scope)."""

    def send_heartbeat(self, message: M_contra) -> None:
        """Queue ``message`` (a heartbeat request) for sending on this channel."""

    def close(self, reason: str) -> None:
        """Close the connection: the peer was declared dead for ``reason``."""


class RpcChannel(Generic[M]):
    """One framework connection under pulse's heartbeat rules (see the module docstring).

    Create it with :meth:`HeartbeatTimer.open_channel`.
    """

    def __init__(
        self,
        timer: HeartbeatTimer,
        core: ChannelHeartbeat,
        hooks: ChannelHooks[M],
        messages: HeartbeatMessages[M],
        ids: Callable[[], int],
        peer: str,
    ) -> None:
        self._timer = timer
        self.core = core
        self._hooks = hooks
        self._messages = messages
        self._ids = ids
        self.peer = peer
        self.closed_reason: str | None = None
        self.timed_out = False
        self._entry: Timer[RpcChannel[Any]] | None = None
        self._log = log.bind(peer=peer, role=core.role.value)

    # -- the framework reports ---------------------------------------------------------------

    def next_request_id(self) -> int:
        """An id for one of the framework's own requests (never reused by a heartbeat)."""
        return self._ids()

    def read(self) -> None:
        """A frame (any frame) was read from the peer."""
        self._apply(self.core.read(self._timer.now()))

    def wrote(self) -> None:
        """A write to the peer completed."""
        self.core.write(self._timer.now())

    def heartbeat_request(self, request_id: int) -> M:
        """The peer sent heartbeat ``request_id``; returns the response to send back."""
        self._apply(self.core.heartbeat_request(self._timer.now()))
        return self._messages.response(request_id)

    def heartbeat_response(self, request_id: int) -> bool:
        """A heartbeat response arrived; True if it answered one of this channel's heartbeats
        (its round trip is then recorded). Counts as a read either way."""
        ours = self.core.is_heartbeat_id(request_id)
        self._apply(self.core.heartbeat_response(self._timer.now(), request_id))
        return ours

    def is_heartbeat(self, request_id: int) -> bool:
        """True if ``request_id`` belongs to an unanswered heartbeat of this channel."""
        return self.core.is_heartbeat_id(request_id)

    def close(self, reason: str = "closed") -> None:
        """The connection ended (EOF, error, local close); stop its timers. Idempotent."""
        if self.closed_reason is None:
            self.closed_reason = reason
        self.core.close()
        self._timer._remove(self)

    # -- queries ----------------------------------------------------------------------------

    @property
    def state(self) -> ChannelState:
        """Alive, suspect, dead (timed out) or closed."""
        return self.core.state

    @property
    def rtt(self) -> RttSummary:
        """Round-trip times of answered heartbeats."""
        return self.core.rtt.summary()

    def stats(self) -> ChannelStats:
        """A snapshot of this channel's heartbeat statistics now."""
        return self.core.stats(self._timer.now())

    # -- the timer drives ----------------------------------------------------------------------

    def _fire(self, now: float) -> None:
        self._entry = None
        self._apply(self.core.handle_timer(now))
        if self.core.open:
            self._timer._arm(self)

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendPing):
                self._log.debug("heartbeat_sent", request_id=action.seq)
                self._hooks.send_heartbeat(self._messages.request(action.seq))
            elif isinstance(action, PeerSuspect):
                self._log.info(
                    "peer_suspect", missed=action.missed, silent_for=round(action.silent_for, 3)
                )
            elif isinstance(action, PeerAlive):
                self._log.info("peer_alive", after=round(action.after, 3))
            elif isinstance(action, LocalPause):
                pass  # the engine logs one event per stall, not one per channel
            elif isinstance(action, PeerDead):
                self._log.warning("peer_dead", reason=action.reason, missed=action.missed)
            elif isinstance(action, Close):
                self.timed_out = True
                self.close(action.reason)
                self._hooks.close(action.reason)


class HeartbeatTimer:
    """The one timer of many channels: a hashed wheel on the process's engine while
    :meth:`run` runs (no task or cancel scope of its own per channel, nor for the wheel).

    ``tick`` bounds the precision (timers fire at most one tick late) and should be well
    below the shortest heartbeat in use; Dubbo uses 1 s ticks and 128 slots. Must be created
    inside ``trio.run`` (the wheel starts at the current trio time).
    """

    def __init__(self, *, tick: float = DEFAULT_TICK, slots: int = DEFAULT_SLOTS) -> None:
        self._wheel: HashedWheel[RpcChannel[Any]] = HashedWheel(
            current_engine().now(), tick=tick, slots=slots
        )
        self._channels: set[RpcChannel[Any]] = set()
        self._engine = current_engine()
        self._running = False
        self.wakeups = 0
        self.fired = 0

    @property
    def tick(self) -> float:
        """Seconds per wheel tick."""
        return self._wheel.tick

    def now(self) -> float:
        """The engine's clock, which the channels' timestamps are taken from."""
        return self._engine.now()

    def __len__(self) -> int:
        """Open channels."""
        return len(self._channels)

    def open_channel(
        self,
        role: Role,
        hooks: ChannelHooks[M],
        messages: HeartbeatMessages[M],
        *,
        timing: ChannelTiming | None = None,
        ids: Callable[[], int] | None = None,
        peer: str = "",
    ) -> RpcChannel[M]:
        """Start heartbeat supervision of one connection, opened now.

        Raises ``ValueError`` if the wheel's tick is not shorter than the channel's
        ``max_local_pause`` (pick the tick with :func:`tick_for`).

        ``ids`` is the framework's request-id allocator (a fresh :class:`RequestIds` if
        omitted, fine when the framework takes its ids from ``channel.next_request_id()``).
        """
        timing = timing or ChannelTiming()
        if timing.enabled and self.tick >= timing.pause_limit:
            raise ValueError(
                f"the wheel tick ({self.tick:g} s) must be shorter than max_local_pause "
                f"({timing.pause_limit:g} s, by default the heartbeat): timers fire up to a tick "
                "late, which would look like a local pause; see tick_for()"
            )
        allocate = ids if ids is not None else RequestIds()
        core = ChannelHeartbeat(role, timing, self._engine.now(), next_request_id=allocate)
        channel = RpcChannel(self, core, hooks, messages, allocate, peer)
        self._channels.add(channel)
        self._arm(channel)
        return channel

    def _arm(self, channel: RpcChannel[M]) -> None:
        deadline = channel.core.next_deadline()
        if deadline is None:
            return
        channel._entry = self._wheel.schedule(deadline, channel)
        if self._running:
            self._engine.watch(self)  # the wheel's next tick may have moved earlier

    def _remove(self, channel: RpcChannel[M]) -> None:
        self._channels.discard(channel)
        if channel._entry is not None:
            self._wheel.cancel(channel._entry)
            channel._entry = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> NoReturn:
        """Drive the wheel from the process's engine until cancelled: due channels fire at
        the wheel's deadlines."""
        self._running = True
        self._engine.watch(self)
        task_status.started()
        try:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")
        finally:
            self._running = False
            self._engine.forget(self)

    def next_deadline(self) -> float | None:
        """The wheel's next tick with a timer in it (the engine's timer contract)."""
        return self._wheel.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Fire every channel due at ``now``; a failing framework hook costs its channel."""
        self.wakeups += 1
        for channel in self._wheel.handle_timer(now):
            self.fired += 1
            try:
                channel._fire(now)
            except Exception as exc:  # a framework hook failed: only its channel pays
                reason = f"heartbeat hook failed: {exc!r}"
                log.error("hook_failed", peer=channel.peer, reason=reason)
                channel.close(reason)


def tick_for(timing: ChannelTiming) -> float:
    """A wheel tick suited to ``timing``: Dubbo's 1 s, or a tenth of a shorter heartbeat
    (timers fire at most one tick late, so this keeps verdicts within 10 % of a heartbeat)."""
    return min(DEFAULT_TICK, timing.heartbeat / 10) if timing.enabled else DEFAULT_TICK


@asynccontextmanager
async def open_heartbeat_timer(
    *, tick: float = DEFAULT_TICK, slots: int = DEFAULT_SLOTS
) -> AsyncIterator[HeartbeatTimer]:
    """A :class:`HeartbeatTimer` whose task runs for the duration of the ``async with``."""
    timer = HeartbeatTimer(tick=tick, slots=slots)
    async with background_nursery() as nursery:
        await nursery.start(timer.run)
        try:
            yield timer
        finally:
            nursery.cancel_scope.cancel()


#: What ends a connection without ending the reconnect loop.
CONNECTION_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, PulseError)


async def reconnect_loop(
    connect: Callable[[], Awaitable[S]],
    session: Callable[[S], Awaitable[None]],
    *,
    backoff: Backoff | None = None,
    peer: str = "",
    on_reconnect: Callable[[Reconnect], None] | None = None,
    shared_probe: bool = True,
) -> NoReturn:
    """Keep a consumer connected: ``connect()``, run ``session(connection)`` until the
    connection ends, wait the backoff's next delay, connect again.

    The rules are the one reconnect supervisor's (:mod:`pulse._core.reconnect`): one attempt
    at a time, full jitter on every delay including the first after a lost connection, the
    backoff reset only after a connection stayed up ``reset_after``; the waits are deadlines
    on the engine. A failed ``connect`` (``OSError``) or a session ending for any reason,
    including one raising ``OSError``, a trio stream error or a
    :class:`~pulse.errors.PulseError`, counts as a lost connection. ``on_reconnect`` hears of
    every :class:`~pulse.actions.Reconnect` before its delay. Raises
    :class:`~pulse.errors.ReconnectGaveUp` once the backoff has no attempts left (default
    backoff: :func:`~pulse._core.reconnect.default_backoff`, unlimited).

    With ``shared_probe`` (the default) and a ``peer``, the loops of this process that name
    the same ``peer`` wait behind one probe while ``connect()`` fails with ``OSError``
    (refused, unreachable, timed out) instead of each retrying (``docs/reconnect.md``).
    """
    bound = log.bind(peer=peer)
    machine = ReconnectMachine(backoff if backoff is not None else default_backoff())

    async def attempt(handle: AttemptHandle) -> str:
        try:
            connection = await connect()
        except OSError as exc:
            return handle.unreachable(f"connect failed: {exc}")
        handle.connected()
        bound.info("connected", connects=machine.connects)
        try:
            await session(connection)
        except CONNECTION_ERRORS as exc:
            return f"connection lost: {exc!r}"
        return "connection ended"

    def waiting(action: Reconnect, reason: str) -> None:
        bound.info("reconnect", reason=reason, delay=round(action.delay, 3),
                   attempt=action.attempt)
        if on_reconnect is not None:
            on_reconnect(action)

    driver = ReconnectDriver(machine, attempt, retry_on=(), on_wait=waiting,
                             destination=("rpc", peer) if shared_probe and peer else None)
    await driver.run()
    raise ReconnectGaveUp(
        f"gave up reconnecting to {peer or 'the peer'}: {machine.last_reason}"
    ) from driver.error
