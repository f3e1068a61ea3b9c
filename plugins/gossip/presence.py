"""The presence API without a server: a session is a gossip member, registrations its tags.

``connect_session("gossip://seed1:7946,seed2:7946", session_timeout=2.0)`` starts a member
(bound to a free loopback port unless ``bind=(host, port)`` is given), joins through the seeds
and offers :class:`pulse.presence.PresenceSession`:

* ``register(key, data)`` adds the Serf tag ``key = data`` to our metadata (the bytes travel
  as a raw msgpack string; all tags together must fit memberlist's 512-byte metadata limit,
  or ``LocalProtocolError`` is raised);
  ``unregister(key)`` removes it. Each change is gossiped as an ``alive`` at a higher
  incarnation.
* ``get`` / ``list`` / ``watch`` read the tags of every member that is alive or suspect:
  a key is *online* while a live member carries it, and goes *offline* when the member drops
  the tag, leaves (at once) or is declared failed (after SWIM's detection time).

``session_timeout`` sets the member's failure-detection speed: the probe interval is a fifth
of it (memberlist's LAN defaults correspond to about 5 s), so a killed member goes offline
after roughly 1–3 session timeouts depending on the probe round and on Lifeguard's
confirmations. Differences from the server backends (``pulse://``, ``zk://``), which follow
from having no server: there is no negotiation (the timeout is taken as given); ownership is
checked against the local view only, so two members registering the same key at the same
moment can both succeed (the view then shows the member whose name sorts first); a change
that is undone before a watcher looks (a flap shorter than the watcher's wake-up) is not
reported; and the view is eventually consistent — each member learns of changes by gossip.
"""

from __future__ import annotations

import builtins
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectSendStream

from pulse._core.swim import SwimConfig
from pulse._driver.util import background_nursery
from pulse.errors import KeyExists, NotOwner, SessionClosed, SessionExpired
from pulse.presence import PresenceEvent, SessionEvent, SessionState
from pulse.registry import Endpoint

from .driver import GossipMember, gossip_member, raw_tags_of

if TYPE_CHECKING:
    from pulse.election import Leadership


def _check_key(key: str) -> tuple[str, str]:
    if not key.startswith("/") or key.endswith("/") or "//" in key or len(key) < 2:
        raise ValueError(f"a presence key is an absolute slash-separated path, got {key!r}")
    parent, _, child = key.rpartition("/")
    return parent or "/", child


def _norm_prefix(prefix: str) -> str:
    if not prefix.startswith("/"):
        raise ValueError(f"a presence prefix is an absolute path, got {prefix!r}")
    return prefix.rstrip("/") or "/"


def config_for_timeout(session_timeout: float) -> SwimConfig:
    """SWIM timing for a session timeout: probe every ``timeout / 5`` (memberlist's LAN
    defaults are the 5 s case), gossip at least as often, push-pull every 6 timeouts."""
    if not session_timeout > 0:
        raise ValueError(f"session_timeout must be > 0, got {session_timeout!r}")
    probe = session_timeout / 5
    return SwimConfig(name="-", addr=("127.0.0.1", 1), probe_interval=probe, probe_timeout=probe / 2,
                      gossip_interval=min(0.2, probe), push_pull_interval=max(6 * session_timeout, 1.0),
                      gossip_to_the_dead_time=max(6 * session_timeout, 1.0))


class GossipSession:
    """A :class:`pulse.presence.PresenceSession` backed by one gossip member."""

    def __init__(self, member: GossipMember, session_id: int, session_timeout: float) -> None:
        self._member = member
        self._session_id = session_id
        self._timeout = session_timeout
        self._state = SessionState.CONNECTED
        self._tags: dict[str, bytes] = {}
        self._changed = anyio.Event()
        self._state_waiters: list[MemoryObjectSendStream[SessionEvent]] = []
        self._leave_propagate = min(1.0, session_timeout)

    # ------------------------------------------------------------------ PresenceSession

    @property
    def session_id(self) -> int | None:
        """A random id chosen at start (the member is named after it)."""
        return self._session_id

    @property
    def state(self) -> SessionState:
        """CONNECTED while a member, CLOSED after :meth:`aclose`."""
        return self._state

    @property
    def session_timeout(self) -> float:
        """The timeout the member's SWIM timing was derived from."""
        return self._timeout

    @property
    def member(self) -> GossipMember:
        """The underlying gossip member."""
        return self._member

    async def register(self, key: str, data: bytes = b"") -> None:
        """Carry ``key`` (with ``data``) in our tags; KeyExists if another live member carries
        it in our view."""
        self._check_open()
        _check_key(key)
        owner = self._owner(key)
        if owner is not None and owner != self._member.name:
            raise KeyExists(f"{key} is registered by member {owner}")
        tags = dict(self._tags)
        tags[key] = bytes(data)
        await self._member.update_tags(tags)
        self._tags = tags

    async def unregister(self, key: str) -> None:
        """Drop ``key`` from our tags; NotOwner if another member carries it."""
        self._check_open()
        _check_key(key)
        if key not in self._tags:
            owner = self._owner(key)
            if owner is not None:
                raise NotOwner(f"{key} is registered by member {owner}")
            return
        tags = dict(self._tags)
        del tags[key]
        await self._member.update_tags(tags)
        self._tags = tags

    async def get(self, key: str) -> bytes | None:
        """The data of ``key`` as the group's view has it, or None."""
        self._check_open()
        parent, child = _check_key(key)
        return self._view(parent).get(child)

    async def list(self, prefix: str) -> dict[str, bytes]:
        """Direct children of ``prefix`` carried by live members."""
        self._check_open()
        await anyio.lowlevel.checkpoint()
        return self._view(_norm_prefix(prefix))

    async def watch(self, prefix: str) -> AsyncIterator[PresenceEvent]:
        """The current children (initial), then online/offline as the view changes."""
        self._check_open()
        prefix = _norm_prefix(prefix)
        current = self._view(prefix)
        for child, data in sorted(current.items()):
            yield PresenceEvent("online", child, data, initial=True)
        while self._state is SessionState.CONNECTED:
            changed = self._changed
            await changed.wait()
            new = self._view(prefix)
            for child in sorted(current.keys() - new.keys()):
                yield PresenceEvent("offline", child)
            for child, data in sorted(new.items()):
                if current.get(child) != data:
                    if child in current:  # data changed: offline then online, as a re-registration
                        yield PresenceEvent("offline", child)
                    yield PresenceEvent("online", child, data)
            current = new

    async def state_changes(self) -> AsyncIterator[SessionEvent]:
        """State transitions from now on (CLOSED at the end)."""
        send, receive = anyio.create_memory_object_stream[SessionEvent](16)
        self._state_waiters.append(send)
        async with receive:
            async for event in receive:
                yield event

    async def aclose(self) -> None:
        """Leave the group (our registrations go offline at once for the others)."""
        if self._state is SessionState.CLOSED:
            await anyio.lowlevel.checkpoint()
            return
        self._set_state(SessionState.CLOSED, "closed by the application")
        with anyio.CancelScope(shield=True):
            await self._member.leave(self._leave_propagate)

    def open_election(self, path: str, *, id: str, data: bytes = b"",
                      margin: float | None = None, expect: int | None = None,
                      ) -> AbstractAsyncContextManager[Leadership]:
        """The election at ``path`` run on gossip (:func:`pulse.election.election` calls this;
        see :mod:`pulse.plugins.gossip.election`)."""
        from .election import gossip_election

        return gossip_election(self, path, id=id, data=data, margin=margin, expect=expect)

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._state is not SessionState.CONNECTED:
            raise SessionClosed(f"the gossip session is {self._state.value}")

    def _entries(self) -> builtins.list[tuple[str, str, bytes]]:
        """(member name, key, data) for every presence tag of every live member."""
        out: builtins.list[tuple[str, str, bytes]] = []
        for m in self._member.members():
            tags = self._tags if m.name == self._member.name else raw_tags_of(m)
            out.extend((m.name, k, v) for k, v in tags.items() if k.startswith("/"))
        return out

    def _owner(self, key: str) -> str | None:
        owners = sorted(name for name, k, _ in self._entries() if k == key)
        return owners[0] if owners else None

    def _view(self, prefix: str) -> dict[str, bytes]:
        view: dict[str, tuple[str, bytes]] = {}
        for name, key, data in self._entries():
            parent, _, child = key.rpartition("/")
            if (parent or "/") != prefix or not child:
                continue
            held = view.get(child)
            if held is None or name < held[0]:
                view[child] = (name, data)
        return {child: data for child, (_, data) in view.items()}

    async def _follow(self) -> None:
        async for _ in self._member.events():
            self._changed.set()
            self._changed = anyio.Event()

    def _set_state(self, state: SessionState, reason: str) -> None:
        self._state = state
        self._changed.set()
        for send in self._state_waiters:
            try:
                send.send_nowait(SessionEvent(state, self._session_id, reason))
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            send.close()
        self._state_waiters.clear()


@asynccontextmanager
async def connect_gossip_session(endpoint: Endpoint, *, session_timeout: float = 10.0,
                                 **options: Any) -> AsyncIterator[GossipSession]:
    """A presence session as a member of the group reached through ``endpoint``'s hosts.

    Options: ``bind`` (``(host, port)``, default a free loopback port), ``name`` (default
    ``pulse-<session id>``), ``advertise``, ``config`` (a full :class:`SwimConfig`, overriding
    the timing derived from ``session_timeout``), ``start_timeout`` (how long to keep trying
    the seeds before :class:`~pulse.errors.NoServerReachable`; default ``session_timeout``),
    ``stream_timeout`` (the bound on one TCP exchange, a join's push-pull included: a seed
    that accepts but never answers, e.g. a stopped process, holds the join that long;
    default 10 s, memberlist's).
    A gossip session cannot be resumed (no server keeps it): passing ``session_id`` raises
    :class:`~pulse.errors.SessionExpired`, as resuming an unknown session does elsewhere.
    """
    if options.get("session_id") is not None:
        raise SessionExpired("a gossip session cannot be resumed: no server keeps it")
    session_id = random.getrandbits(63)
    name = str(options.get("name") or f"pulse-{session_id:016x}")
    bind = options.get("bind") or ("127.0.0.1", 0)
    config = options.get("config") or config_for_timeout(session_timeout)
    config = replace(config, name=name)
    async with gossip_member(tuple(bind), name, join=list(endpoint.hosts), config=config,
                             advertise=options.get("advertise"),
                             leave_propagate=min(1.0, session_timeout),
                             join_timeout=float(options.get("start_timeout") or session_timeout),
                             stream_timeout=float(options.get("stream_timeout") or 10.0)) as member, \
            background_nursery() as nursery:
        session = GossipSession(member, session_id, session_timeout)
        nursery.start_soon(session._follow)
        try:
            yield session
            await session.aclose()
        finally:
            if session.state is not SessionState.CLOSED:
                session._set_state(SessionState.CLOSED, "closed")
            nursery.cancel_scope.cancel()
