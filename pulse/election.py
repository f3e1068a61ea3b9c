"""Leader election with a fencing token, on ``pulse://`` and ``zk://`` sessions (and on
``gossip://``, which runs its own: :mod:`pulse.plugins.gossip.election`).

::

    async with connect_session("pulse://127.0.0.1:7070", session_timeout=3) as session:
        async with election(session, "/pulse/leader/billing", id="host-a") as leadership:
            await do_the_work(fencing_token=leadership.token)

``election`` waits until this candidate leads, then runs the body. The body is cancelled
the moment leadership is in doubt and the ``async with`` raises :class:`LeadershipLost`:
the session was reported disconnected or expired, the candidate's key vanished, or no
request on the session was answered for ``T - margin`` (``2/3 T`` by default) after it was
sent — which is before the server can expire the session, so before any other candidate can
be elected (the rules and the margin are in :mod:`pulse._core.election`). A body that ends
by itself resigns: its key is removed and the next candidate takes over.

The token (:attr:`Leadership.token`) is a decimal integer that grows with every new
leadership, to hand to the resources the leader writes to, which refuse a smaller one
(fencing against a leader that was paused and does not yet know it lost):

* ``pulse://``: the lease server's sequence number of the candidate key. It grows over the
  server's whole life and is journalled, so it never goes back across a restart from
  ``--data-dir`` (without one the server starts above the wall clock in milliseconds).
* ``zk://``: the ``czxid`` of the candidate's znode. The ZooKeeper sequence suffix orders
  the candidates but is a per-parent counter that starts again at 0 if the parent is
  deleted and recreated; the zxid is ensemble-wide and grows with every write and with every
  new ensemble epoch, and a later leader's node was always created after the earlier
  leader's (it had a higher sequence number), so its czxid is larger.

Each waiting candidate watches only the key of the candidate just below it (its
predecessor), with the session's per-key watch (``watch_key``): on ``pulse://`` the lease
server's ``watch_key`` request, on ``zk://`` a ZooKeeper getData/exists watch on the
predecessor's znode. When that key goes the candidate lists the candidates again and either
leads or watches its new predecessor. A leader's departure therefore reaches one candidate,
its successor: no other session is sent a notification (no herd effect). A session without
``watch_key`` (another backend), or a lease server older than the request (it answers
"unknown operation"), falls back to one watch of the whole prefix per candidate: the
candidate still acts only on its predecessor's offline event, but every candidate is
notified of every change.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from pulse._core.election import (
    Candidacy,
    InDoubt,
    Stage,
    leader_of,
    predecessor,
    sequence_of,
)
from pulse._driver.engine import current_engine
from pulse._log import get_logger
from pulse.errors import KeyExists, LocalProtocolError, PulseError
from pulse.presence import PresenceEvent, PresenceSession, SessionState

log = get_logger("pulse.election")


class LeadershipLost(PulseError):
    """Leadership ended in doubt; the body of :func:`election` was cancelled."""


class Leadership:
    """This candidate leads: :attr:`token` is its fencing token."""

    def __init__(self, key: str, token: int, candidacy: Candidacy) -> None:
        #: The candidate's key under the election prefix.
        self.key = key
        #: The fencing token: grows with every new leadership.
        self.token = token
        self._candidacy = candidacy
        #: Called with the new :attr:`safe_until` after every confirmation (``pulse run``
        #: feeds its watchdog from here).
        self.on_confirmed: Callable[[float], None] | None = None

    @property
    def safe_until(self) -> float | None:
        """Engine time until which leadership is certain (None once in doubt)."""
        return self._candidacy.safe_until

    @property
    def in_doubt(self) -> bool:
        """Whether leadership is in doubt (the body is being cancelled)."""
        return self._candidacy.stage is Stage.IN_DOUBT

    @property
    def reason(self) -> str:
        """Why leadership is in doubt ("" while leading)."""
        return self._candidacy.reason


class _Timer:
    """The candidacy as the engine's timer client: cancels the body when in doubt."""

    def __init__(self, candidacy: Candidacy, scope: anyio.CancelScope) -> None:
        self.candidacy = candidacy
        self.scope = scope

    def next_deadline(self) -> float | None:
        return self.candidacy.next_deadline()

    def handle_timer(self, now: float) -> None:
        self.act(self.candidacy.handle_timer(now))

    def timer_failed(self, exc: Exception) -> None:
        self.scope.cancel()

    def act(self, actions: list[InDoubt]) -> None:
        for action in actions:
            log.warning("leadership_in_doubt", reason=action.reason)
            self.scope.cancel()


async def _create_candidate(session: PresenceSession, prefix: str, data: bytes
                            ) -> tuple[str, int]:
    """Create an ephemeral sequential key under ``prefix``; return its key and token."""
    create_sequential = getattr(session, "create_sequential", None)
    if create_sequential is not None:  # the lease client
        key, sequence = await create_sequential(prefix, data)
        return str(key), int(sequence)
    create = getattr(session, "create", None)
    exists = getattr(session, "exists", None)
    if create is None or exists is None:
        raise PulseError(f"{type(session).__name__} offers no sequential keys for an election")
    parts = prefix.strip("/").split("/")[:-1]
    for depth in range(1, len(parts) + 1):  # ZooKeeper: persistent parents first
        try:
            await create("/" + "/".join(parts[:depth]), b"", ephemeral=False)
        except KeyExists:
            pass
    key = str(await create(prefix, data, ephemeral=True, sequential=True))
    stat = await exists(key)
    if stat is None:
        raise LeadershipLost(f"{key} vanished right after it was created")
    return key, int(stat.czxid)


async def _close_iterator(iterator: Any) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        with anyio.CancelScope(shield=True):
            await aclose()


@asynccontextmanager
async def election(session: PresenceSession, path: str, *, id: str, data: bytes = b"",
                   margin: float | None = None, expect: int | None = None
                   ) -> AsyncIterator[Leadership]:
    """Wait to lead the election at ``path``, then run the body as its leader.

    ``id`` names this candidate (one key segment, shown in the candidate key's name);
    ``data`` is stored in the candidate key; ``margin`` (default a third of the session
    timeout) is how long before the earliest possible server-side expiry leadership is given
    up. Raises :class:`LeadershipLost` when the body was cancelled because leadership came
    into doubt.

    A session that runs elections itself (``gossip://``, which has no server: see
    :mod:`pulse.plugins.gossip.election`) gets the election through its
    ``open_election`` method; ``expect``, the number of candidates, is required there and
    refused elsewhere (a server is the single authority).
    """
    open_election = getattr(session, "open_election", None)
    if open_election is not None:
        async with open_election(path, id=id, data=data, margin=margin,
                                 expect=expect) as delegated:
            yield delegated
        return
    if expect is not None:
        raise ValueError(f"expect applies to gossip elections only, not to "
                         f"{type(session).__name__}")
    if not id or "/" in id or "-" in id:
        raise ValueError(f"id must be a non-empty key segment without '-', got {id!r}")
    engine = current_engine()
    prefix = path.rstrip("/")
    nonce = secrets.token_hex(4)
    key, token = await _create_candidate(session, f"{prefix}/{id}.{nonce}-", data)
    name = key.rsplit("/", 1)[-1]
    log.info("candidate", key=key, token=token)
    candidacy = Candidacy(session.session_timeout, margin)
    body_scope = anyio.CancelScope()
    timer = _Timer(candidacy, body_scope)
    leadership: Leadership | None = None
    failure: BaseException | None = None
    try:
        async with anyio.create_task_group() as nursery:

            async def follow_changes(changes: _Changes) -> None:
                events = session.watch(prefix)
                try:
                    async for event in events:
                        changes.note(event)
                except PulseError as exc:  # the session ended: the next request says so
                    log.info("election_watch_ended", key=key, reason=str(exc))
                    timer.act(candidacy.session_not_connected(engine.now(), "ended"))
                    changes.end()
                finally:
                    await _close_iterator(events)

            def watch_prefix() -> _Changes:
                changes = _Changes()
                nursery.start_soon(follow_changes, changes)
                return changes

            async def follow_states() -> None:
                changes = session.state_changes()
                try:
                    async for change in changes:
                        if change.state is not SessionState.CONNECTED:
                            timer.act(candidacy.session_not_connected(
                                engine.now(), change.state.value))
                except PulseError:
                    timer.act(candidacy.session_not_connected(engine.now(), "ended"))
                finally:
                    await _close_iterator(changes)

            follow = _Follow(session, prefix, key, watch_prefix)
            try:
                sent = await _wait_to_lead(session, prefix, name, f"{id}.", follow)
            except PulseError as exc:
                failure = exc
                nursery.cancel_scope.cancel()
                return_early = True
            else:
                return_early = candidacy.stage is not Stage.WAITING
                if return_early:
                    failure = LeadershipLost(candidacy.reason or "in doubt before leading")
                    nursery.cancel_scope.cancel()
            if not return_early:
                nursery.start_soon(follow_states)
                leadership = Leadership(key, token, candidacy)
                timer.act(candidacy.elected(engine.now(), token, sent))
                if session.state is not SessionState.CONNECTED:
                    timer.act(candidacy.session_not_connected(engine.now(),
                                                              session.state.value))
                engine.watch(timer)
                log.info("leading", key=key, token=token)
                nursery.start_soon(_confirm, session, key, candidacy, timer, leadership)
                with body_scope:
                    try:
                        yield leadership
                    except anyio.get_cancelled_exc_class():
                        raise
                    except BaseException as exc:  # re-raised below, outside the nursery
                        failure = exc
                if candidacy.stage is Stage.IN_DOUBT and failure is None:
                    failure = LeadershipLost(candidacy.reason)
                nursery.cancel_scope.cancel()
    finally:
        engine.forget(timer)
        # Resign (or withdraw the candidacy). While disconnected the request waits for the
        # session to re-attach, for at most one session timeout: by then the session either
        # came back (and the key goes now) or expired (and the key went with it).
        with engine.move_on_after(session.session_timeout + 1.0) as cleanup:
            cleanup.shield = True
            try:
                if session.state not in (SessionState.EXPIRED, SessionState.CLOSED):
                    await session.unregister(key)
            except PulseError as exc:
                log.info("resign_failed", key=key, reason=str(exc))
    if failure is not None:
        raise failure
    log.info("resigned", key=key, token=token)


class _Changes:
    """What the watch on the election prefix reported: the initial listings, the names that
    went offline, and whether it ended."""

    def __init__(self) -> None:
        self.initial = 0  # initial events seen (a watch (re)started)
        self.gone: set[str] = set()
        self.ended = False
        self._event = anyio.Event()

    def note(self, event: PresenceEvent) -> None:
        if event.initial:
            self.initial += 1
        elif event.event == "offline":
            self.gone.add(event.id)
        else:
            return  # a new candidate above us changes nothing for us
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait_for(self, predecessor: str | None, initial_before: int) -> None:
        """Until ``predecessor`` went offline, a watch (re)started, or the watch ended."""
        while not (self.ended or self.initial > initial_before
                   or (predecessor is not None and predecessor in self.gone)):
            await self._event.wait()


class _Follow:
    """How a waiting candidate learns that its predecessor went.

    With a session that offers ``watch_key`` (the lease client, the ZooKeeper client) each
    wait watches the predecessor's key alone, so a departure wakes the one candidate that
    follows it and no other. Otherwise (another backend, or a lease server older than
    ``watch_key``) one watch of the whole prefix runs for the rest of the candidacy and the
    candidate acts only on its predecessor's offline event (every candidate is notified)."""

    def __init__(self, session: PresenceSession, prefix: str, key: str,
                 watch_prefix: Callable[[], _Changes]) -> None:
        self._watch_key: Callable[[str], AsyncIterator[PresenceEvent]] | None = getattr(
            session, "watch_key", None)
        self._prefix = prefix
        self._key = key
        self._watch_prefix = watch_prefix
        self._changes: _Changes | None = None
        if self._watch_key is None:
            self._changes = watch_prefix()

    def mark(self) -> int:
        """Taken before a listing: how many times the prefix watch (re)started."""
        return 0 if self._changes is None else self._changes.initial

    async def wait(self, predecessor: str | None, mark: int) -> None:
        """Until ``predecessor`` may have gone: the caller lists the candidates again."""
        if self._changes is not None:
            await self._changes.wait_for(predecessor, mark)
            return
        assert self._watch_key is not None
        if predecessor is None:  # our name carries no sequence number: not a candidate
            raise LeadershipLost(f"{self._key} is not a sequential candidate key")
        watched = f"{self._prefix}/{predecessor}"
        try:
            gone = await _until_offline(self._watch_key(watched))
        except LocalProtocolError as exc:  # the server predates per-key watches
            log.info("key_watch_unsupported", key=self._key, reason=str(exc))
            self._changes = self._watch_prefix()
            return
        if gone:
            log.info("predecessor_gone", key=self._key, predecessor=watched)


async def _until_offline(events: AsyncIterator[PresenceEvent]) -> bool:
    """Follow one key's watch until it reports the key offline (True) or ends (False: the
    session ended or was closed, which the next request reports)."""
    try:
        async for event in events:
            if event.event == "offline":
                return True
    except LocalProtocolError:
        raise
    except PulseError as exc:
        log.info("election_watch_ended", reason=str(exc))
    finally:
        await _close_iterator(events)
    return False


async def _wait_to_lead(session: PresenceSession, prefix: str, name: str, mine_prefix: str,
                        follow: _Follow) -> float:
    """List the candidates until ``name`` is the lowest; return the send time of the
    listing that showed it (a proof that the session was alive then)."""
    engine = current_engine()
    while True:
        mark = follow.mark()
        sent = engine.now()
        children = await session.list(prefix)
        if name not in children:
            raise LeadershipLost(f"{prefix}/{name} is gone (session ended) before it led")
        removed: set[str] = set()
        for other in children:  # a retried create of ours, or a resignation that failed
            if other != name and other.startswith(mine_prefix):
                try:
                    await session.unregister(f"{prefix}/{other}")
                except PulseError:
                    continue  # held by another session of this id: it still counts
                removed.add(other)
        remaining = [n for n in children if n not in removed]
        if leader_of(remaining) == name:
            return sent
        # Act only when the candidate just below goes: one candidate re-lists per change.
        await follow.wait(predecessor(remaining, name), mark)


async def _confirm(session: PresenceSession, key: str, candidacy: Candidacy, timer: _Timer,
                   leadership: Leadership) -> None:
    """Every ``T / 6``: read our own key; an answer sent at ``s`` proves the session alive
    until ``s + T`` on the server; a missing key is doubt at once."""
    engine = current_engine()
    while candidacy.stage is Stage.LEADING:
        await engine.sleep(candidacy.confirm_interval)
        sent_at = engine.now()
        try:
            found = await session.get(key)
        except PulseError as exc:
            timer.act(candidacy.session_not_connected(engine.now(), f"failing ({exc})"))
            return
        if found is None:
            timer.act(candidacy.key_gone(engine.now()))
            return
        if session.state is SessionState.CONNECTED:
            candidacy.confirmed(sent_at)
            safe = candidacy.safe_until
            if safe is not None and leadership.on_confirmed is not None:
                leadership.on_confirmed(safe)


__all__ = ["Leadership", "LeadershipLost", "election", "sequence_of"]
