"""The driver of :class:`pulse._core.paths.RedundantPeer`: one heartbeat per path, one verdict.

Every path is an ordinary ``ping`` of the plugin its URL names (through
:mod:`pulse.registry`, so ``tcp://``, ``tls://``, ``ws://``, ``dubbo://`` … all work), run by a
task of the ``async with`` block that reconnects it with its own backoff when it fails. What
the pings hear goes into the pure machine; its timer is the engine's; its actions go to
``events()`` subscribers and the ``on_event`` callback.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import trio

from pulse._core.backoff import Backoff
from pulse._core.paths import PathState, PathView, PeerVerdict, RedundantPeer
from pulse._core.policy import PROFILES
from pulse._core.reconnect import default_backoff
from pulse._driver.engine import current_engine
from pulse._driver.feed import EventFeed, EventHub
from pulse._driver.util import background_nursery
from pulse._log import get_logger
from pulse.actions import LocalPause, PathAction, PathDown, PathUp, PeerAlive, PeerDead
from pulse.errors import PulseError
from pulse.registry import Endpoint, PingFn, PingOptions, PingReply, ping_function

__all__ = ["RedundantPaths", "redundant_paths"]

log = get_logger("pulse.paths")

# Failures of one path's connection: the path goes down and is dialled again.
_PATH_ERRORS = (PulseError, OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.TooSlowError, TimeoutError)

ReplyHandler = Callable[[str, PingReply], None]


@dataclass(frozen=True, slots=True)
class _Route:
    name: str
    endpoint: Endpoint
    ping: PingFn


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _path_failure(error: Exception) -> BaseException | None:
    """The error to report when ``error`` is a path failure (possibly inside a group)."""
    found = [leaf for leaf in _leaves(error) if not isinstance(leaf, anyio.get_cancelled_exc_class())]
    if found and all(isinstance(leaf, _PATH_ERRORS) for leaf in found):
        return found[0]
    return None


class RedundantPaths:
    """One peer watched over several paths, for the ``async with`` block of
    :func:`redundant_paths`.

    ``verdict`` and ``alive`` say where the peer stands, ``paths`` where each path does;
    ``events()`` yields every :class:`~pulse.actions.PathUp`, :class:`~pulse.actions.PathDown`,
    :class:`~pulse.actions.PeerDead` (all paths down), :class:`~pulse.actions.PeerAlive` (a
    path back after that) and :class:`~pulse.actions.LocalPause`; ``wait_dead()`` returns the
    death when it comes.
    """

    def __init__(
        self,
        machine: RedundantPeer,
        *,
        on_event: Callable[[PathAction], None] | None,
        on_reply: ReplyHandler | None,
    ) -> None:
        self._machine = machine
        self._on_event = on_event
        self._on_reply = on_reply
        self._events: EventHub[PathAction] = EventHub()
        self._death: PeerDead | None = None
        self._engine = current_engine()

    # -- what the application reads --------------------------------------------------------

    @property
    def verdict(self) -> PeerVerdict:
        """``PENDING`` (no path heard yet), ``ALIVE`` or ``DEAD`` (every path down)."""
        return self._machine.verdict

    @property
    def alive(self) -> bool:
        """True while the peer is not declared dead."""
        return self._machine.verdict is not PeerVerdict.DEAD

    @property
    def paths(self) -> tuple[PathView, ...]:
        """Every path's state and when it was last heard, in the order given."""
        return self._machine.paths

    def state(self, path: str) -> PathState:
        """The state of one path (named by its URL)."""
        return self._machine.state(path)

    def events(self) -> EventFeed[PathAction]:
        """A new subscription to the path and peer changes (the first one also receives
        what happened before it)."""
        return self._events.subscribe()

    async def wait_dead(self) -> PeerDead:
        """Wait until every path is down and return that :class:`PeerDead` (at once when
        the peer is dead already)."""
        if self._death is not None and self.verdict is PeerVerdict.DEAD:
            return self._death
        async for action in self.events():
            if isinstance(action, PeerDead) and self.verdict is PeerVerdict.DEAD:
                return action
        raise trio.ClosedResourceError("the redundant paths were closed")

    # -- the engine's side -----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When a path still up may go silent (the machine's deadline)."""
        return self._machine.next_deadline()

    def handle_timer(self, now: float) -> None:
        """Carry out what the machine decides at ``now``."""
        self._carry_out(self._machine.handle_timer(now))

    def timer_failed(self, exc: Exception) -> None:
        """The machine raised on the timer (a bug): report it and stop publishing."""
        log.error("paths_timer_failed", error=repr(exc))
        self._events.close()

    # -- internals -------------------------------------------------------------------------

    def _carry_out(self, actions: list[PathAction]) -> None:
        for action in actions:
            if isinstance(action, PathDown):
                # Info, not warning: the application hears it through events()/on_event.
                log.info("path_down", path=action.path, reason=action.reason,
                         silent_for=round(action.silent_for, 3))
            elif isinstance(action, PathUp):
                log.info("path_up", path=action.path, first=action.first)
            elif isinstance(action, PeerDead):
                self._death = action
                log.info("peer_dead", reason=action.reason,
                         silent_for=round(action.silent_for, 3))
            elif isinstance(action, PeerAlive):
                log.info("peer_alive", after=round(action.after, 3))
            elif isinstance(action, LocalPause):
                log.warning("local_pause", late_by=round(action.late_by, 3))
            self._events.publish(action)
            if self._on_event is not None:
                self._on_event(action)
        self._engine.watch(self)

    def _heard(self, name: str) -> None:
        self._carry_out(self._machine.heard(name, self._engine.now()))

    def _lost(self, name: str, reason: str) -> None:
        self._carry_out(self._machine.lost(name, self._engine.now(), reason))

    async def _run_path(self, route: _Route, options: PingOptions, backoff: Backoff) -> None:
        """Ping ``route`` for ever: each answer is heard, each failure takes the path down
        and is followed by a new connection after the backoff's delay."""
        engine = self._engine

        def on_connected(_peer: str) -> None:
            backoff.connected(engine.now())
            self._heard(route.name)

        while True:
            attempt = PingOptions(interval=options.interval, timeout=options.timeout,
                                  count=None, profile=options.profile, on_connected=on_connected)
            try:
                async for reply in route.ping(route.endpoint, attempt):
                    self._heard(route.name)
                    if self._on_reply is not None:
                        self._on_reply(route.name, reply)
                reason = "the connection ended"
            except Exception as exc:
                failure = _path_failure(exc)
                if failure is None:
                    raise
                reason = str(failure) or type(failure).__name__
            now = engine.now()
            backoff.disconnected(now)
            self._lost(route.name, reason)
            # The path has been down since it last went down: that is the outage's age.
            down_since = next(v.since for v in self._machine.paths if v.path == route.name)
            delay = backoff.next_delay(max(0.0, now - down_since))
            if delay is None:
                log.warning("path_given_up", path=route.name, attempts=backoff.attempts)
                return
            await engine.sleep(delay)


@asynccontextmanager
async def redundant_paths(
    paths: Sequence[str],
    *,
    interval: float = 1.0,
    timeout: float = 5.0,
    profile: str = "default",
    backoff: Callable[[], Backoff] | None = None,
    on_event: Callable[[PathAction], None] | None = None,
    on_reply: ReplyHandler | None = None,
) -> AsyncIterator[RedundantPaths]:
    """Watch one peer over several paths for the ``async with`` block.

    ``paths`` are URLs of the same peer, one per path (``tcp://10.0.1.2:7000``,
    ``tcp://10.0.2.2:7000``; the same URL from another local address with ``?bind=ADDR`` on
    ``tcp://``/``tls://``). Each path heartbeats every ``interval`` seconds through its
    plugin's ``ping`` and reconnects on its own after a failure, with a fresh backoff from
    ``backoff`` (a factory, called once per path; default :func:`pulse.default_backoff`).
    A path silent for ``timeout`` seconds, or whose connection fails, is down
    (:class:`~pulse.actions.PathDown`, a warning); the peer is dead
    (:class:`~pulse.actions.PeerDead`) only when every path is down — at the latest
    ``timeout`` seconds after the last answer heard on any path. ``on_event`` receives the
    same actions as ``events()``; ``on_reply(path, reply)`` every answered heartbeat.
    Under ``profile="lossy"`` a path is down when its ping gives up on a late answer (the
    lossy-link judge, at most the profile's ceiling), not after ``timeout`` of silence.

    A bad URL or a scheme with no ``ping`` raises before anything starts (``ValueError``,
    :class:`~pulse.errors.NoPlugin`).
    """
    routes = _resolve(paths)
    async with _watch(routes, interval=interval, timeout=timeout, profile=profile,
                      backoff=backoff, on_event=on_event, on_reply=on_reply) as watched:
        yield watched


def _resolve(paths: Sequence[str]) -> list[_Route]:
    if isinstance(paths, str):
        raise ValueError("paths must be a sequence of URLs, not one string")
    routes = []
    for url in paths:
        endpoint, ping = ping_function(url)
        routes.append(_Route(url, endpoint, ping))
    return routes


@asynccontextmanager
async def _watch(
    routes: Sequence[_Route],
    *,
    interval: float,
    timeout: float,
    profile: str,
    backoff: Callable[[], Backoff] | None,
    on_event: Callable[[PathAction], None] | None,
    on_reply: ReplyHandler | None,
) -> AsyncIterator[RedundantPaths]:
    if not (0 < interval < math.inf and 0 < timeout < math.inf):
        raise ValueError(f"interval and timeout must be positive and finite, got "
                         f"{interval!r} and {timeout!r}")
    if timeout <= interval:
        raise ValueError(f"timeout ({timeout!r}) must exceed interval ({interval!r}): a path "
                         "is heard once per interval")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    make_backoff = backoff or default_backoff
    engine = current_engine()
    # A wake-up later than a whole timeout is this process stopping, not the paths.
    silence = timeout
    lossy = PROFILES[profile]
    if lossy is not None:
        # Under the lossy-link profile each path's ping decides when a late answer is lost
        # (up to the profile's ceiling, counted from a probe sent up to an interval after the
        # last answer); the machine's silence limit must not cut that judgement short.
        silence = lossy.resolved(timeout)[1] + interval
    machine = RedundantPeer([r.name for r in routes], silence, engine.now(),
                            pause_after=silence)
    watched = RedundantPaths(machine, on_event=on_event, on_reply=on_reply)
    options = PingOptions(interval=interval, timeout=timeout, profile=profile)
    engine.watch(watched)
    try:
        async with background_nursery() as nursery:
            for route in routes:
                nursery.start_soon(watched._run_path, route, options, make_backoff(),
                                   name=f"pulse.path {route.name}")
            try:
                yield watched
            finally:
                nursery.cancel_scope.cancel()
    finally:
        engine.forget(watched)
        watched._events.close()
