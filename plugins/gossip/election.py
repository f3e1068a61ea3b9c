"""Leader election on a ``gossip://`` session: a majority lease carried in member metadata.

:func:`pulse.election.election` calls :func:`gossip_election` for a gossip session (through
:meth:`GossipSession.open_election <pulse.plugins.gossip.presence.GossipSession.open_election>`);
``expect`` — how many candidates the election has — is required::

    async with connect_session("gossip://10.0.0.1:7946,10.0.0.2:7946", session_timeout=2) as s:
        async with election(s, "/pulse/leader/billing", id="host-a", expect=3) as leadership:
            await do_the_work(fencing_token=leadership.token)

Each candidate carries the tag ``/pulse/leader/billing/<id>.<nonce>`` whose value is its
*ballot* (request epoch, grant, highest token seen, the token it leads with); the rules are
in :mod:`pulse._core.gossip_election`. The lease is ``T`` (the session timeout): a new epoch
every ``T / 6``, leadership in doubt at ``sent(e) + T - margin`` (default margin ``T / 3``)
unless a majority granted a newer epoch, and no voter grants anybody else before ``sent(e) +
T``. A body that ends by itself releases the candidacy (its voters are free at once) and
removes the tag; a body cancelled in doubt raises :class:`~pulse.election.LeadershipLost`.

The glue is one task per candidacy that reads the view when the membership changes or the
machine's timer fires (the machine is the engine's timer client) and publishes the ballot.
The token floor is the wall clock in milliseconds, read at every step (the only clock read
here: it is a value, not a deadline).
"""

from __future__ import annotations

import secrets
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from pulse._core.election import InDoubt
from pulse._core.gossip_election import (
    Ballot,
    GossipCandidacy,
    GossipElectionAction,
    Lead,
    Publish,
    Stage,
    decode_ballot,
    encode_ballot,
)
from pulse._driver.engine import current_engine
from pulse._log import get_logger
from pulse.election import Leadership, LeadershipLost
from pulse.errors import PulseError
from pulse.presence import SessionState

from .driver import raw_tags_of

if TYPE_CHECKING:
    from .presence import GossipSession

log = get_logger("pulse.election")

#: The highest token each session's earlier candidacies saw, per election path: a new
#: candidacy of the same process starts from it.
_HIGH: weakref.WeakKeyDictionary[object, dict[str, int]] = weakref.WeakKeyDictionary()


def _wall_ms() -> int:
    return int(time.time() * 1000)


class GossipLeadership(Leadership):
    """This candidate leads a gossip election: :attr:`token` is its fencing token."""

    def __init__(self, key: str, machine: GossipCandidacy) -> None:
        # Not Leadership.__init__: the state is the gossip machine's, not a server candidacy.
        self.key = key
        self.token = machine.token or 0
        self.on_confirmed = None
        self._machine = machine

    @property
    def safe_until(self) -> float | None:
        """Engine time until which the majority's grants cover us (None once in doubt)."""
        return self._machine.safe_until

    @property
    def in_doubt(self) -> bool:
        """Whether leadership is in doubt (the body is being cancelled)."""
        return self._machine.stage is Stage.IN_DOUBT

    @property
    def reason(self) -> str:
        """Why leadership is in doubt ("" while leading)."""
        return self._machine.reason


class _Wakeup:
    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
        self._event = anyio.Event()


class _Driver:
    """The machine as the engine's timer client; carries out its actions."""

    def __init__(self, machine: GossipCandidacy, scope: anyio.CancelScope) -> None:
        self.machine = machine
        self.scope = scope
        self.wake = _Wakeup()
        self.led = anyio.Event()
        self.pending: Ballot | None = None
        self.leadership: GossipLeadership | None = None
        self.failed = ""
        self._fed: float | None = None

    def next_deadline(self) -> float | None:
        return self.machine.next_deadline()

    def raise_floor(self) -> None:
        """Read the wall clock into the token floor (before every step of the machine)."""
        self.machine.token_floor = max(self.machine.token_floor, _wall_ms())

    def handle_timer(self, now: float) -> None:
        self.raise_floor()
        self.act(self.machine.handle_timer(now))

    def timer_failed(self, exc: Exception) -> None:
        self.fail(f"election timer failed: {exc!r}")

    def fail(self, reason: str) -> None:
        self.failed = self.failed or reason
        self.scope.cancel()
        self.led.set()

    def act(self, actions: list[GossipElectionAction]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self.pending = action.ballot
                self.wake.set()
            elif isinstance(action, Lead):
                self.led.set()
            elif isinstance(action, InDoubt):
                log.warning("leadership_in_doubt", reason=action.reason)
                self.scope.cancel()
        safe = self.machine.safe_until
        leadership = self.leadership
        if safe is not None and leadership is not None and leadership.on_confirmed is not None \
                and (self._fed is None or safe > self._fed):
            self._fed = safe
            leadership.on_confirmed(safe)


def _ballots(session: GossipSession, prefix: str) -> dict[str, Ballot]:
    """The ballots under ``prefix`` of every other alive or suspect member, by name."""
    own = session.member.name
    out: dict[str, Ballot] = {}
    for member in session.member.members():
        if member.name == own:
            continue
        for key, value in raw_tags_of(member).items():
            parent, _, child = key.rpartition("/")
            if parent == prefix and child:
                ballot = decode_ballot(value)
                if ballot is not None:
                    out[child] = ballot
    return out


async def _publish(session: GossipSession, key: str, driver: _Driver) -> None:
    ballot = driver.pending
    if ballot is not None:
        driver.pending = None
        await session.register(key, encode_ballot(ballot))


async def _follow_members(session: GossipSession, driver: _Driver) -> None:
    async for _ in session.member.events():
        driver.wake.set()


async def _step_forever(session: GossipSession, prefix: str, key: str, driver: _Driver) -> None:
    """Observe the view whenever something changed; publish our ballot when it changed."""
    engine = current_engine()
    machine = driver.machine
    try:
        while True:
            driver.raise_floor()
            driver.act(machine.observe(engine.now(), _ballots(session, prefix)))
            await _publish(session, key, driver)
            engine.watch(driver)
            await driver.wake.wait()
    except PulseError as exc:
        log.info("election_session_ended", key=key, reason=str(exc))
        driver.fail(f"session ended ({exc})")


@asynccontextmanager
async def gossip_election(session: GossipSession, path: str, *, id: str, data: bytes = b"",
                          margin: float | None = None, expect: int | None = None
                          ) -> AsyncIterator[Leadership]:
    """Wait to lead the election at ``path`` among ``expect`` candidates, then run the body.

    ``id`` names this candidate (one key segment without ``-``, ``:`` or spaces);
    ``margin`` (default ``T / 3``) is how long before the voters' promises can lapse
    leadership is given up. ``data`` is not supported (the tag carries the ballot).
    """
    if expect is None:
        raise ValueError("a gossip election needs expect=N, the number of candidates")
    if data:
        raise ValueError("a gossip election carries no data (the tag holds the ballot)")
    if not id or any(c in id for c in "/-: "):
        raise ValueError(f"id must be a non-empty key segment without '/', '-', ':' or ' ', "
                         f"got {id!r}")
    engine = current_engine()
    prefix = path.rstrip("/")
    name = f"{id}.{secrets.token_hex(4)}"
    key = f"{prefix}/{name}"
    memory = _HIGH.setdefault(session, {})
    machine = GossipCandidacy(name, expect=expect, lease=session.session_timeout, margin=margin,
                              start=engine.now(), token_floor=_wall_ms(),
                              high=memory.get(prefix, 0))
    body_scope = anyio.CancelScope()
    driver = _Driver(machine, body_scope)
    failure: BaseException | None = None
    log.info("candidate", key=key, expect=expect)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_follow_members, session, driver)
            tasks.start_soon(_step_forever, session, prefix, key, driver)
            await driver.led.wait()
            if driver.failed or machine.stage is not Stage.LEADING:
                failure = LeadershipLost(driver.failed or machine.reason or "not elected")
            else:
                leadership = GossipLeadership(key, machine)
                driver.leadership = leadership
                log.info("leading", key=key, token=leadership.token)
                with body_scope:
                    try:
                        yield leadership
                    except anyio.get_cancelled_exc_class():
                        raise
                    except BaseException as exc:  # re-raised below, outside the task group
                        failure = exc
                if failure is None and (leadership.in_doubt or driver.failed):
                    failure = LeadershipLost(machine.reason or driver.failed)
            tasks.cancel_scope.cancel()
    finally:
        engine.forget(driver)
        memory[prefix] = max(memory.get(prefix, 0), machine.high)
        await _resign(session, prefix, key, machine)
    if failure is not None:
        raise failure
    log.info("resigned", key=key, token=machine.token)


async def _resign(session: GossipSession, prefix: str, key: str,
                  machine: GossipCandidacy) -> None:
    """Publish the release (our voters are free at once), give it a moment to reach them,
    then drop the tag. Bounded: at most half a lease."""
    engine = current_engine()
    with engine.move_on_after(max(0.05, session.session_timeout / 2)) as scope:
        scope.shield = True
        if session.state is not SessionState.CONNECTED:
            return
        try:
            for action in machine.release(engine.now()):
                if isinstance(action, Publish):
                    await session.register(key, encode_ballot(action.ballot))
            events = session.member.events()
            try:
                with engine.move_on_after(min(1.0, session.session_timeout / 4)):
                    while any(b.grant is not None and b.grant[0] == machine.name
                              for b in _ballots(session, prefix).values()):
                        await events.__anext__()
            finally:
                await events.aclose()  # type: ignore[attr-defined]
            await session.unregister(key)
        except PulseError as exc:
            log.info("resign_failed", key=key, reason=str(exc))


__all__ = ["GossipLeadership", "gossip_election"]
