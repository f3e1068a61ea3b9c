"""Several independent registries: one session per server, registrations in each, one
merged watch (the RocketMQ NameServer pattern).

::

    urls = ["pulse://10.0.0.1:7070", "pulse://10.0.0.2:7070"]
    async with pulse.multiregistry.connect_registries(urls, session_timeout=6) as regs:
        await regs.register("/pulse/presence/device-7", b"...")
        async with regs.watch("/pulse/presence") as events:
            async for event in events:          # pulse.presence.PresenceEvent
                print(event.event, event.id)

Each URL is a registry of its own — a ``pulse://`` lease server, a ``zk://`` ensemble, any
backend :func:`pulse.registry.connect_session` knows — and gets its own session, unlike
``pulse://a,b`` (one session that fails over between the servers of *one* registry). The
registries know nothing of each other: there is no quorum, and none needs to be reachable
for the others to work.

* :meth:`Registries.register` registers the key in every registry, now and again on every
  new session (after an expiry, a restart of the server, an unreachable spell); it returns
  once at least one registry holds it.
* :meth:`Registries.watch` merges the registries' views (rules in
  :mod:`pulse._core.merged_view`): a member is online while any reachable registry holds its
  registration, offline when none does. An unreachable registry's view is *unknown*: it
  neither keeps members online nor takes them offline, and if every registry is unreachable
  the view is frozen until one comes back.
* A registry that fails is retried on its own (fully jittered backoff from
  ``retry_initial`` up to ``retry_max`` seconds); it never disturbs the others.
* Everything runs in the background of the ``async with`` block; leaving it closes every
  session (the registrations vanish at once) and stops every watch.
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from pulse._core.backoff import Backoff
from pulse._core.merged_view import MemberChange, MergedView, RegistryChange, RegistryState
from pulse._driver.engine import current_engine
from pulse._driver.feed import EVENT_OVERHEAD as _FEED_EVENT_OVERHEAD
from pulse._driver.feed import BoundedFeed, presence_event_size
from pulse._driver.util import Doorbell, background_nursery
from pulse._log import get_logger
from pulse.errors import AuthFailed, NoPlugin, PulseError, QueueFull
from pulse.presence import PresenceEvent, PresenceSession, SessionState
from pulse.registry import connect_session, get_plugin, parse_url

__all__ = [
    "MergedWatch",
    "Registries",
    "RegistryChange",
    "RegistryState",
    "RegistryStatus",
    "connect_registries",
]

log = get_logger("pulse.multiregistry")

#: Bytes of merged events waiting to be consumed (each counted as its id, its data and
#: :data:`EVENT_OVERHEAD`); past it the iterator raises QueueFull once the events before
#: are consumed. ``Registries.watch(max_buffered_bytes=...)`` sets it per watch.
MAX_BUFFERED_BYTES = 16 * 1024 * 1024
#: What one buffered event costs beside its id and data (the object, its strings' headers);
#: the same counting as the lease client's watch buffers (:func:`presence_event_size`).
EVENT_OVERHEAD = _FEED_EVENT_OVERHEAD
#: Merged events waiting to be consumed, at most (the last line behind the byte bound).
MAX_BUFFERED_EVENTS = 100_000
#: Session status reports kept per :meth:`Registries.status_changes` iterator (oldest dropped).
MAX_STATUS_EVENTS = 1_000
#: Pause between attempts to register a key that a previous session of ours still holds.
REGISTER_RETRY = 0.25


@dataclass(frozen=True, slots=True)
class RegistryStatus:
    """A registry's session changed: ``state`` is ``"up"`` (connected, every key registered),
    ``"disconnected"`` (the connection is lost, the session may still re-attach), ``"lost"``
    (the session ended or no session could be opened; retried after a pause) or
    ``"refused"`` (bad credentials or access: not retried)."""

    url: str
    state: str
    reason: str
    session_id: int | None = None
    session_timeout: float | None = None


class _Slot:
    """One registry: its URL, its current session and what it holds."""

    def __init__(self, index: int, url: str) -> None:
        self.index = index
        self.url = url
        self.session: PresenceSession | None = None
        self.state = SessionState.CLOSED
        self.held: dict[str, bytes] = {}
        self.group: anyio.abc.TaskGroup | None = None
        self.scopes: set[anyio.CancelScope] = set()  # followers' watches on this session
        self.changed = Doorbell()  # rung at every state change
        self.refused = False
        self.last_failure: str | None = None  # why the last session ended / attempt failed

    def set_state(self, state: SessionState) -> None:
        self.state = state
        self.changed.ring()

    async def wait_connected(self) -> None:
        while self.state is not SessionState.CONNECTED:
            await self.changed.wait()


@functools.cache
def _permanent_errors() -> tuple[type[BaseException], ...]:
    """Refusals a retry cannot cure (bad credentials, a key this client may not hold); the
    one list for this module and ``pulse agent``."""
    import importlib

    errors: list[type[BaseException]] = [AuthFailed]
    for module, name in (("pulse.plugins.lease.errors", "AccessDenied"),
                         ("pulse.plugins.zookeeper.protocol", "NoAuthError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # pragma: no cover - plugin not installed
            continue
    return tuple(errors)


class Registries:
    """Independent sessions on several registries; create it with :func:`connect_registries`."""

    def __init__(self, urls: Sequence[str], session_timeout: float, options: Mapping[str, Any],
                 *, settle: float, retry_initial: float, retry_max: float,
                 reset_after: float,
                 url_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._slots = [_Slot(index, url) for index, url in enumerate(urls)]
        self._session_timeout = session_timeout
        self._options = {url: {**options, **(url_options or {}).get(url, {})} for url in urls}
        self._settle = settle
        self._retry = (retry_initial, retry_max, reset_after)
        self._registrations: dict[str, bytes] = {}
        self._bad_keys: dict[str, ValueError] = {}  # keys a backend refused as malformed
        # An event, not a Doorbell: _keep_registered takes it before its work so that a
        # change during that work is not missed.
        self._registrations_changed = anyio.Event()
        self._held_changed = Doorbell()
        self._watches: list[MergedWatch] = []
        self._status_feeds: list[BoundedFeed[RegistryStatus]] = []

    # -- queries ---------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """The registries, in the order given."""
        return [slot.url for slot in self._slots]

    @property
    def session_timeout(self) -> float:
        """The session timeout proposed to every registry."""
        return self._session_timeout

    def sessions(self) -> dict[str, PresenceSession | None]:
        """URL -> its current session (None while it has none)."""
        return {slot.url: slot.session for slot in self._slots}

    def holders(self, key: str) -> list[str]:
        """The URLs of the registries whose current session holds ``key``."""
        return [slot.url for slot in self._slots if key in slot.held]

    # -- registrations ---------------------------------------------------------------------

    async def register(self, key: str, data: bytes = b"") -> None:
        """Register ``key`` in every registry (again on every new session there); returns once
        at least one registry holds it."""
        _check_key(key)
        if not isinstance(data, bytes):
            raise TypeError(f"data must be bytes, got {type(data).__name__}")
        self._bad_keys.pop(key, None)
        self._registrations[key] = data
        self._wake_registrations()
        while not any(slot.held.get(key) == data for slot in self._slots):
            if key in self._bad_keys:
                raise self._bad_keys.pop(key)
            if all(slot.refused for slot in self._slots):
                raise PulseError(f"every registry refused this client; {key} is not registered")
            await self._held_changed.wait()

    async def unregister(self, key: str) -> None:
        """Remove ``key`` from every registry that holds it (and stop re-registering it)."""
        self._registrations.pop(key, None)
        for slot in self._slots:
            session = slot.session
            if key in slot.held and session is not None:
                slot.held.pop(key, None)
                try:
                    await session.unregister(key)
                except (PulseError, OSError) as exc:
                    log.info("unregister_failed", url=slot.url, key=key, reason=str(exc))

    def _wake_registrations(self) -> None:
        self._registrations_changed.set()
        self._registrations_changed = anyio.Event()

    def _held(self) -> None:
        self._held_changed.ring()

    # -- watching --------------------------------------------------------------------------

    def watch(self, prefix: str, *,
              on_registry_change: Callable[[RegistryChange], None] | None = None,
              max_buffered_bytes: int = MAX_BUFFERED_BYTES,
              ) -> MergedWatch:
        """The merged online/offline events of ``prefix``'s children over every registry.

        ``on_registry_change`` is called (synchronously) whenever a registry's view becomes
        live or is lost, with a :class:`~pulse._core.merged_view.RegistryChange`.

        Events wait for the iterator in a buffer of at most ``max_buffered_bytes`` (16 MiB;
        each event counts its id, its data and 200 bytes) and 100,000 events. A consumer
        that falls that far behind gets every event buffered, then
        :class:`~pulse.errors.QueueFull`: the watch has stopped and a new one must be
        opened (its first events are the members online at that moment)."""
        if not prefix.startswith("/"):
            raise ValueError(f"prefix must be an absolute path, got {prefix!r}")
        if max_buffered_bytes < 1:
            raise ValueError(f"max_buffered_bytes must be at least 1, got {max_buffered_bytes!r}")
        watch = MergedWatch(self, prefix, on_registry_change, max_buffered_bytes)
        self._watches.append(watch)
        for slot in self._slots:
            if slot.group is not None and slot.session is not None:
                slot.group.start_soon(watch._follow, slot, slot.session)
            elif slot.last_failure is not None:  # known unreachable: decided for this watch
                watch._lost(slot.index, slot.last_failure)
        return watch

    def status_changes(self) -> AsyncIterator[RegistryStatus]:
        """Every registry session status change from now on."""
        feed: BoundedFeed[RegistryStatus] = BoundedFeed(MAX_STATUS_EVENTS, drop_oldest=True)
        self._status_feeds.append(feed)

        async def iterate() -> AsyncIterator[RegistryStatus]:
            try:
                while True:
                    try:
                        item = await feed.get()
                    except StopAsyncIteration:
                        return
                    yield item
            finally:
                if feed in self._status_feeds:
                    self._status_feeds.remove(feed)

        return iterate()

    def _status(self, status: RegistryStatus) -> None:
        log.info("registry_status", url=status.url, state=status.state, reason=status.reason)
        for feed in self._status_feeds:
            feed.put(status)

    def _close(self) -> None:
        for feed in self._status_feeds:
            feed.finish(StopAsyncIteration())
        for watch in list(self._watches):
            watch._end()

    # -- one registry ----------------------------------------------------------------------

    async def _run_slot(self, slot: _Slot) -> None:
        """Hold sessions on ``slot``'s registry, one after the other, until cancelled."""
        initial, maximum, reset_after = self._retry
        backoff = Backoff(initial, maximum, reset_after=reset_after)
        permanent = _permanent_errors()
        while True:
            reason = "session ended"
            try:
                async with connect_session(slot.url, session_timeout=self._session_timeout,
                                           **self._options[slot.url]) as session:
                    backoff.connected(current_engine().now())
                    reason = await self._serve(slot, session)
            except* permanent as group:
                slot.refused = True
                reason = f"refused: {group.exceptions[0]}"
            except* (PulseError, OSError) as group:
                reason = str(group.exceptions[0]) or type(group.exceptions[0]).__name__
            except* Exception as group:  # never let one registry take the others down
                reason = f"unexpected error: {group.exceptions[0]!r}"
                log.error("registry_failed", url=slot.url, error=reason)
            finally:
                slot.session = None
                slot.group = None
                slot.held = {}
                slot.set_state(SessionState.CLOSED)
            slot.last_failure = reason
            for watch in list(self._watches):
                watch._lost(slot.index, reason)
            self._held()
            if slot.refused:
                self._status(RegistryStatus(slot.url, "refused", reason))
                return
            self._status(RegistryStatus(slot.url, "lost", reason))
            backoff.disconnected(current_engine().now())
            delay = backoff.next_delay()
            await anyio.sleep(maximum if delay is None else delay)

    async def _serve(self, slot: _Slot, session: PresenceSession) -> str:
        """Keep the keys registered and the watches followed on ``session`` until it ends;
        returns why it ended."""
        changes = session.state_changes()
        slot.session = session
        slot.set_state(session.state)
        reason = "session ended"
        try:
            async with anyio.create_task_group() as group:
                slot.group = group
                for watch in list(self._watches):
                    group.start_soon(watch._follow, slot, session)
                group.start_soon(self._keep_registered, slot, session)
                async for change in changes:
                    slot.set_state(change.state)
                    reason = change.reason
                    if change.state is SessionState.CONNECTED:
                        self._status(RegistryStatus(slot.url, "up", change.reason,
                                                    session.session_id, session.session_timeout))
                    elif change.state is SessionState.DISCONNECTED:
                        self._status(RegistryStatus(slot.url, "disconnected", change.reason,
                                                    session.session_id))
                        for watch in list(self._watches):
                            watch._lost(slot.index, change.reason)
                        for scope in list(slot.scopes):
                            scope.cancel()
                    elif change.state in (SessionState.EXPIRED, SessionState.CLOSED):
                        break
                group.cancel_scope.cancel()
        finally:
            aclose = getattr(changes, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()
        return f"session {slot.state.value}: {reason}"

    async def _keep_registered(self, slot: _Slot, session: PresenceSession) -> None:
        """Register what is missing on ``session`` whenever the registrations change; reports
        the session up once every key is held."""
        started = False
        while True:
            changed = self._registrations_changed
            for key, data in list(self._registrations.items()):
                if slot.held.get(key) != data:
                    try:
                        await self._register_one(session, key, data)
                    except ValueError as exc:  # this backend's rules refuse the key itself
                        log.warning("key_refused", url=slot.url, key=key, reason=str(exc))
                        self._registrations.pop(key, None)
                        self._bad_keys[key] = exc
                        self._held()
                        continue
                    slot.held[key] = data
                    self._held()
            for key in [k for k in slot.held if k not in self._registrations]:
                slot.held.pop(key, None)
            if not started:
                started = True
                self._status(RegistryStatus(slot.url, "up", "registered", session.session_id,
                                            session.session_timeout))
            await changed.wait()

    async def _register_one(self, session: PresenceSession, key: str, data: bytes) -> None:
        """Register, retrying while an old session of ours still holds the key (it expires
        within one timeout)."""
        give_up = current_engine().now() + 2 * session.session_timeout + 1.0
        permanent = _permanent_errors()
        while True:
            try:
                await session.register(key, data)
                return
            except permanent:
                raise
            except PulseError as exc:
                if current_engine().now() >= give_up or session.state in (
                        SessionState.EXPIRED, SessionState.CLOSED):
                    raise
                log.info("register_retry", key=key, reason=str(exc))
                await anyio.sleep(REGISTER_RETRY)


class MergedWatch:
    """Merged online/offline events of one prefix over every registry (create it with
    :meth:`Registries.watch`). Iterate it for :class:`pulse.presence.PresenceEvent`; use
    ``async with`` (or :meth:`aclose`) to stop it."""

    def __init__(self, registries: Registries, prefix: str,
                 on_registry_change: Callable[[RegistryChange], None] | None,
                 max_buffered_bytes: int = MAX_BUFFERED_BYTES) -> None:
        self._registries = registries
        self.prefix = prefix
        self._view = MergedView(registries.urls, settle=registries._settle)
        self._feed: BoundedFeed[PresenceEvent] = BoundedFeed(
            MAX_BUFFERED_EVENTS, drop_oldest=False, max_bytes=max_buffered_bytes,
            size=presence_event_size, what="merged events")
        self._on_registry_change = on_registry_change
        self._scopes: set[anyio.CancelScope] = set()
        self._closed = False

    @property
    def view(self) -> MergedView:
        """The merge machine (read-only use: ``online``, ``state(i)``, ``live``)."""
        return self._view

    def __aiter__(self) -> MergedWatch:
        return self

    async def __anext__(self) -> PresenceEvent:
        try:
            result = await self._feed.get()
        except QueueFull:
            self._end()  # the consumer fell behind the bound: this watch is over
            raise
        return result

    async def __aenter__(self) -> MergedWatch:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop following every registry."""
        self._end()
        await anyio.lowlevel.checkpoint()

    def _end(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._feed.finish(StopAsyncIteration())
        current_engine().forget(self)
        if self in self._registries._watches:
            self._registries._watches.remove(self)
        for scope in list(self._scopes):
            scope.cancel()

    # -- the engine's timer client -----------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When a registry's settle period ends."""
        return None if self._closed else self._view.next_deadline()

    def handle_timer(self, now: float) -> None:
        """End the settle periods due at ``now``."""
        self._apply(self._view.handle_timer(now))

    def timer_failed(self, exc: Exception) -> None:
        """A timer error ends the watch (the iterator raises it)."""
        log.error("merged_watch_failed", error=repr(exc))
        self._end()

    # -- fed by the registries ---------------------------------------------------------------

    def _apply(self, actions: list[MemberChange | RegistryChange]) -> None:
        for action in actions:
            if isinstance(action, MemberChange):
                self._feed.put(PresenceEvent(action.event, action.id, action.data,
                                             initial=action.initial))
            else:
                log.info("registry_view", url=action.name, state=action.state.value,
                         reason=action.reason, live=action.live)
                if self._on_registry_change is not None:
                    self._on_registry_change(action)

    def _lost(self, registry: int, reason: str) -> None:
        """Registry ``registry`` can no longer be followed (see :meth:`MergedView.lost`)."""
        self._apply(self._view.lost(registry, reason))

    async def _follow(self, slot: _Slot, session: PresenceSession) -> None:
        """Follow ``prefix`` on ``session``: a fresh watch each time the session is connected
        (its snapshot rebuilds the registry's view), given up while it is disconnected."""
        if self._closed:
            return
        engine = current_engine()
        stale: list[AsyncIterator[PresenceEvent]] = []
        with anyio.CancelScope() as whole:
            self._scopes.add(whole)
            try:
                while True:
                    await slot.wait_connected()
                    for old in stale:  # closed now that the close can reach the server
                        await _close_iterator(old)
                    stale.clear()
                    events = aiter(session.watch(self.prefix))
                    stale.append(events)
                    self._apply(self._view.watch_started(slot.index, engine.now()))
                    engine.watch(self)
                    with anyio.CancelScope() as scope:
                        slot.scopes.add(scope)
                        if slot.state is not SessionState.CONNECTED:
                            scope.cancel()  # lost again before this watch could start
                        try:
                            start = getattr(events, "start", None)
                            if start is not None:
                                await start()
                            async for event in events:
                                self._apply(self._view.event(slot.index, event.event, event.id,
                                                             event.data, event.initial))
                        except (PulseError, OSError) as exc:
                            self._lost(slot.index, f"watch failed: {exc}")
                            return
                        finally:
                            slot.scopes.discard(scope)
                    if not scope.cancelled_caught:
                        return  # the watch ended by itself: the session is ending
                    # Given up (disconnected); a no-op when the slot reported the loss first.
                    self._lost(slot.index, "connection lost")
            finally:
                self._scopes.discard(whole)
                for old in stale:
                    await _close_iterator(old)


def _check_key(key: object) -> None:
    """An absolute slash-separated key (the rules every backend shares), else ValueError."""
    if not isinstance(key, str):
        raise ValueError(f"key must be a string, got {type(key).__name__}")
    if not key.startswith("/") or key == "/" or "\x00" in key:
        raise ValueError(f"key must be an absolute path below '/': {key!r}")
    if any(segment in ("", ".", "..") for segment in key[1:].split("/")):
        raise ValueError(f"key has an empty, '.' or '..' segment: {key!r}")


async def _close_iterator(events: AsyncIterator[PresenceEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is None:
        return
    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
        try:
            await aclose()
        except (PulseError, OSError):
            pass


@asynccontextmanager
async def connect_registries(
    urls: Sequence[str],
    *,
    session_timeout: float = 10.0,
    settle: float = 0.5,
    retry_initial: float = 0.5,
    retry_max: float = 10.0,
    reset_after: float = 30.0,
    url_options: Mapping[str, Mapping[str, Any]] | None = None,
    **options: Any,
) -> AsyncIterator[Registries]:
    """Hold one independent session on each of ``urls`` for the ``async with`` block.

    ``options`` go to every registry's ``connect_session`` (credentials, ``ssl_context``…);
    ``url_options`` adds or overrides options for single URLs (``{url: {...}}``), e.g. lease
    credentials for a ``pulse://`` registry and digest credentials for a ``zk://`` one.
    ``settle`` is how long a fresh watch's snapshot may take to arrive before the registry's
    view counts (a change event ends it sooner). A registry that cannot be reached or loses
    its session is retried after a fully jittered pause from ``retry_initial`` doubling up to
    ``retry_max`` seconds (reset after a session held ``reset_after`` seconds). Entering does
    not wait for any registry; :meth:`Registries.register` waits for the first one.
    """
    urls = list(urls)
    if not urls:
        raise ValueError("need at least one registry URL")
    if len(set(urls)) != len(urls):
        raise ValueError("a registry URL is given twice")
    if not (isinstance(session_timeout, int | float) and math.isfinite(session_timeout)
            and session_timeout > 0):
        raise ValueError(f"session timeout must be > 0 seconds, got {session_timeout!r}")
    unknown = set(url_options or {}) - set(urls)
    if unknown:
        raise ValueError(f"url_options names URLs that are not registries: {sorted(unknown)}")
    for url in urls:
        plugin = get_plugin(parse_url(url).scheme)
        if plugin.connect_session is None:
            raise NoPlugin(f"the {plugin.name} plugin ({url}) cannot hold sessions")
    registries = Registries(urls, float(session_timeout), options, settle=settle,
                            retry_initial=retry_initial, retry_max=retry_max,
                            reset_after=reset_after, url_options=url_options)
    async with background_nursery() as nursery:
        for slot in registries._slots:
            nursery.start_soon(registries._run_slot, slot)
        try:
            yield registries
        finally:
            registries._close()
            nursery.cancel_scope.cancel()
