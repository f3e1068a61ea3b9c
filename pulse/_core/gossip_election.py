"""Leader election on gossip membership (no server): leases granted by a majority, as pure rules.

Pure: no I/O, no clock. The glue (:mod:`pulse.plugins.gossip.election`) feeds it the ballots
it reads from the other members' metadata and publishes the ballot it returns.

Gossip gives every member an eventually consistent *view* of the group, but no sequencer and
no quorum: two members may disagree about who is alive for as long as a suspicion takes, and
the two sides of a partition each see the other fail. "The lowest alive candidate in my view
leads" is therefore not safe by itself, and "lead while my view holds a majority" is safe only
if the old leader's view is guaranteed to lose its majority before the other side's view
elects someone — which SWIM does not bound (Lifeguard stretches an isolated member's probe
period up to 8 times, and its suspicions get no confirmations, so they run longest).

So the election does not trust views for safety; it builds a **majority lease** on top of
gossip, the rule of Paxos/Raft leader leases, carried in each candidate's metadata:

* Every candidate publishes a **ballot** (:class:`Ballot`): a request counter ``epoch`` that
  it advances every ``renew`` seconds (and the local time it did so, which it keeps), and a
  **grant** ``(candidate, epoch)`` — its vote.
* **Voter rule.** A voter grants one candidate at a time. A grant of epoch ``e`` published at
  local time ``g`` is a promise not to grant anybody else before ``g + lease``; the promise is
  extended only when the voter sees a *new* epoch of the same candidate (so a dead candidate's
  promise lapses ``lease`` after its last epoch arrived, whatever the failure detector says).
  When the promise lapses, the voter grants an *active* candidate (one whose epoch advanced
  within ``lease / 2``): one that claims leadership if any (a working leader is not displaced
  by a newcomer), else a *ready* one (half of its first lease over: a candidacy that cannot
  vote yet, so cannot complete a majority, should not capture the promise), else the
  lowest-named. It keeps renewing the same candidate while that candidate is active and leads
  or is still the one it would choose; otherwise it lets the promise lapse (so split votes
  resolve within one lease). A candidacy grants nothing during its first ``lease`` (a
  restarted process cannot remember what it promised before).
* **Leader rule.** A candidate holds the lease while ``q = expect // 2 + 1`` distinct voters
  (itself included) grant it an epoch ``>= e``, until ``sent(e) + lease - margin`` on its own
  clock, ``e`` being the largest epoch that a majority granted. Every such voter granted after
  seeing ``e``, so after ``sent(e)``; so its promise lasts until after ``sent(e) + lease``.
* **No two leases at once**: two majorities of the ``expect`` voters share a voter, which
  grants the second candidate only after its promise to the first lapsed, after the first's
  lease ended (by ``margin`` at least). Needs: at most ``expect`` candidate processes at once
  (a replacement started after the old process died counts as the same one, thanks to the
  first-``lease`` rule), and clocks whose *rates* agree within ``margin / lease`` (no
  synchronised clocks). It does not depend on the failure detector, on partitions being
  symmetric, or on gossip being timely — slow gossip costs availability, never safety.
* **Fencing token.** On winning the lease a candidate picks ``token = max(highest token seen +
  1, token_floor)`` (the glue passes the wall clock in milliseconds at candidacy start as the
  floor), publishes it, and starts leading only once a majority of its granting voters echo a
  ``high`` (highest token seen) ``>= token``. The next leader's majority shares a voter with
  that echoing majority; the shared voter granted the next leader *after* its echo (its grant
  to the new leader came after its promise to the old one lapsed), and ``high`` never goes
  down within a process, so the next leader sees ``high >= token`` in the very ballot that
  grants it, and picks a larger token. It may fail to grow only if that shared voter restarted
  in between and neither its new process nor the new leader heard the old token from anybody
  else (say, a majority of the candidates restarted at once); then the token falls back to the
  floor: the wall clock of the new
  leader's host, which is larger unless that clock is behind the old leader's by more than the
  time between the two leaderships (at least ``lease``).

The machine keeps the timer contract: :meth:`GossipCandidacy.next_deadline` and
:meth:`GossipCandidacy.handle_timer`; :meth:`GossipCandidacy.observe` takes the ballots seen.
Outputs: :class:`Publish` (put this ballot in our metadata), :class:`Lead` (leadership begins)
and :class:`~pulse._core.election.InDoubt` (stop now).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from pulse._core.election import InDoubt

#: Default margin before the voters' promises can lapse, as a fraction of the lease.
MARGIN_FRACTION = 1.0 / 3.0
#: A new epoch every ``lease * RENEW_FRACTION``.
RENEW_FRACTION = 1.0 / 6.0
#: A candidate is active while its epoch advanced within ``lease * ACTIVE_FRACTION``.
ACTIVE_FRACTION = 0.5
#: A candidacy says it is ready (voters prefer it) once ``lease * READY_FRACTION`` passed; it
#: votes once the whole first lease passed.
READY_FRACTION = 0.5
#: Largest ballot accepted from the wire (memberlist metadata is 512 bytes in all).
MAX_BALLOT = 256


@dataclass(frozen=True, slots=True)
class Ballot:
    """What one candidate's metadata says.

    ``epoch`` its request counter; ``grant`` the ``(candidate, epoch)`` it votes for (None:
    no vote); ``high`` the highest fencing token it has seen; ``lead`` the token it leads (or
    is about to lead) with, 0 when it does not; ``released`` that it stopped on purpose (its
    voters need not wait for their promises to lapse); ``ready`` that its first lease is half
    over (it votes at the end of it: voters prefer ready candidates).
    """

    epoch: int
    grant: tuple[str, int] | None = None
    high: int = 0
    lead: int = 0
    released: bool = False
    ready: bool = False


def encode_ballot(ballot: Ballot) -> bytes:
    """A ballot as short ASCII (``e=12 g=c1.ab12:40 t=1764 l=0 r=1``, ``x=1`` when released)."""
    parts = [f"e={ballot.epoch}"]
    if ballot.grant is not None:
        parts.append(f"g={ballot.grant[0]}:{ballot.grant[1]}")
    parts.append(f"t={ballot.high}")
    parts.append(f"l={ballot.lead}")
    if ballot.ready:
        parts.append("r=1")
    if ballot.released:
        parts.append("x=1")
    return " ".join(parts).encode("ascii")


def decode_ballot(data: bytes) -> Ballot | None:
    """The ballot in ``data``, or None when it is not one (then the tag is not a candidate)."""
    if len(data) > MAX_BALLOT:
        return None
    try:
        fields = dict(part.split("=", 1) for part in data.decode("ascii").split())
        epoch = _natural(fields["e"])
        high = _natural(fields.get("t", "0"))
        lead = _natural(fields.get("l", "0"))
        grant: tuple[str, int] | None = None
        if "g" in fields:
            name, sep, granted = fields["g"].rpartition(":")
            if not sep or not name:
                return None
            grant = (name, _natural(granted))
    except (ValueError, KeyError, UnicodeDecodeError):
        return None
    return Ballot(epoch, grant, high, lead, fields.get("x") == "1", fields.get("r") == "1")


def _natural(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 20:
        raise ValueError(text)
    return int(text)


def quorum(expect: int) -> int:
    """A strict majority of ``expect`` voters."""
    return expect // 2 + 1


@dataclass(frozen=True, slots=True)
class Publish:
    """Put ``ballot`` in our metadata (it changed)."""

    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Lead:
    """Leadership begins with fencing token ``token``."""

    token: int


GossipElectionAction = Publish | Lead | InDoubt


class Stage(enum.Enum):
    """Where one gossip candidacy stands."""

    WAITING = "waiting"  # no lease (or lost it before leading)
    ELECTED = "elected"  # holds the lease; waiting for a majority to echo its token
    LEADING = "leading"
    IN_DOUBT = "in_doubt"  # final: the lease lapsed while leading
    RELEASED = "released"  # final: the candidacy ended on purpose


class GossipCandidacy:
    """One candidate's side of the gossip election: voter and candidate at once.

    ``name`` is this candidacy's unique name (also what the others' grants name);
    ``expect`` the number of candidates the election is configured for; ``lease`` how long a
    grant binds a voter; ``margin`` (default ``lease / 3``) how long before the earliest lapse
    of a promise leadership is given up; ``start`` the local time the candidacy began;
    ``token_floor`` the smallest token it may lead with (the glue may raise it before each
    step); ``high`` the highest token an earlier candidacy of this process saw.
    """

    def __init__(self, name: str, *, expect: int, lease: float, start: float,
                 margin: float | None = None, token_floor: int = 0, high: int = 0,
                 renew: float | None = None) -> None:
        if not name or " " in name or ":" in name:
            raise ValueError(f"a candidate name is non-empty without ' ' or ':', got {name!r}")
        if isinstance(expect, bool) or not isinstance(expect, int) or expect < 1:
            raise ValueError(f"expect must be a positive integer, got {expect!r}")
        if not lease > 0:
            raise ValueError(f"lease must be > 0, got {lease!r}")
        margin = lease * MARGIN_FRACTION if margin is None else float(margin)
        if not 0 < margin < lease:
            raise ValueError(f"margin must be in (0, {lease:g}), got {margin!r}")
        renew = lease * RENEW_FRACTION if renew is None else float(renew)
        if not 0 < renew < lease - margin:
            raise ValueError(f"renew must be in (0, {lease - margin:g}), got {renew!r}")
        self.name = name
        self.expect = expect
        self.quorum = quorum(expect)
        self.lease = float(lease)
        self.margin = margin
        self.renew = renew
        self.start = start
        self.token_floor = max(0, int(token_floor))
        self.stage = Stage.WAITING
        self.token: int | None = None
        self.reason = ""
        #: Highest fencing token seen (ours included); ``high`` carries it over from an
        #: earlier candidacy of the same process.
        self.high = max(0, int(high))
        #: How many candidates were active in the last step (``> expect``: no new grants).
        self.active = 1
        self._epoch = 1
        self._sent: dict[int, float] = {1: start}  # our epochs still within one lease
        self._next_epoch = start + renew
        self._promise: str | None = None  # whom we granted
        self._promise_epoch = 0
        self._promise_until = start  # bound not to grant anybody else before this
        self._ballots: dict[str, Ballot] = {}
        self._changed: dict[str, tuple[int, float]] = {}  # name -> (epoch, when it advanced)
        self._lease_until: float | None = None
        self._published: Ballot | None = None
        self._last_step = start

    # ------------------------------------------------------------------ queries

    @property
    def ballot(self) -> Ballot:
        """The ballot we publish now."""
        grant = None
        if self._promise is not None:
            grant = (self._promise, self._promise_epoch)
        lead = self.token if self.stage in (Stage.ELECTED, Stage.LEADING) and self.token else 0
        return Ballot(self._epoch, grant, self.high, lead, self.stage is Stage.RELEASED,
                      self._last_step >= self.start + self.lease * READY_FRACTION)

    @property
    def lease_until(self) -> float | None:
        """Until when a majority's grants cover us (None: they do not)."""
        return self._lease_until

    @property
    def safe_until(self) -> float | None:
        """Until when this candidate may act as leader (None unless leading)."""
        return self._lease_until if self.stage is Stage.LEADING else None

    @property
    def granted_to(self) -> str | None:
        """Whom our own vote goes to."""
        return self._promise

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must run next."""
        if self.stage in (Stage.IN_DOUBT, Stage.RELEASED):
            return None
        deadline = self._next_epoch
        vote_at = max(self._promise_until, self.start + self.lease)
        if vote_at > self._last_step:  # a promise lapses, or voting begins
            deadline = min(deadline, vote_at)
        if self._lease_until is not None:
            deadline = min(deadline, self._lease_until)
        return deadline

    # ------------------------------------------------------------------ inputs

    def observe(self, now: float, ballots: Mapping[str, Ballot]) -> list[GossipElectionAction]:
        """The other candidates' ballots as our view has them now (by candidate name)."""
        if self.stage in (Stage.IN_DOUBT, Stage.RELEASED):
            return []
        self._ballots = {name: b for name, b in ballots.items() if name != self.name}
        for name, ballot in self._ballots.items():
            seen = self._changed.get(name)
            if seen is None or ballot.epoch != seen[0]:
                self._changed[name] = (ballot.epoch, now)
            self.high = max(self.high, ballot.high, ballot.lead)
        for name in list(self._changed):
            if name not in self._ballots:
                del self._changed[name]
        return self._step(now)

    def handle_timer(self, now: float) -> list[GossipElectionAction]:
        """Advance the epoch, let lapsed promises go, end a lapsed lease."""
        if self.stage in (Stage.IN_DOUBT, Stage.RELEASED):
            return []
        return self._step(now)

    def release(self, now: float) -> list[GossipElectionAction]:
        """The candidacy ends on purpose (after the leader's work stopped): publish that our
        voters are free at once."""
        if self.stage is Stage.RELEASED:
            return []
        self.stage = Stage.RELEASED
        self._lease_until = None
        return self._publish()

    # ------------------------------------------------------------------ the rules

    def _active(self, now: float) -> list[str]:
        window = self.lease * ACTIVE_FRACTION
        names = [name for name, (_, at) in self._changed.items()
                 if now - at < window and not self._ballots[name].released]
        return sorted([self.name, *names])

    def _latest_epoch(self, name: str) -> int:
        return self._epoch if name == self.name else self._ballots[name].epoch

    def _claims_lead(self, name: str) -> bool:
        if name == self.name:
            return self.stage in (Stage.ELECTED, Stage.LEADING)
        return self._ballots[name].lead > 0

    def _step(self, now: float) -> list[GossipElectionAction]:
        actions: list[GossipElectionAction] = []
        self._last_step = now
        if now >= self._next_epoch:
            self._epoch += 1
            self._sent[self._epoch] = now
            self._next_epoch = max(self._next_epoch + self.renew, now + self.renew / 2)
            for epoch in [e for e, at in self._sent.items() if at <= now - self.lease]:
                del self._sent[epoch]
        self._vote(now)
        self._count(now)
        if self.stage is Stage.WAITING and self._lease_until is not None:
            self.token = max(self.high + 1, self.token_floor)
            self.high = self.token
            self.stage = Stage.ELECTED
        if self.stage is Stage.ELECTED:
            if self._lease_until is None:
                self.stage = Stage.WAITING  # lost the lease before leading: try again later
                self.token = None
            elif self._echoed():
                self.stage = Stage.LEADING
                assert self.token is not None
                actions.append(Lead(self.token))
        if self.stage is Stage.LEADING and self._lease_until is None:
            self.stage = Stage.IN_DOUBT
            self.reason = (f"fewer than {self.quorum} of {self.expect} candidates renewed their "
                           f"grants within {self.lease - self.margin:.3f} s")
            actions.append(InDoubt(self.reason))
        actions.extend(self._publish())
        return actions

    def _vote(self, now: float) -> None:
        if now < self.start + self.lease:
            return  # we may have promised something before a restart: wait one lease
        active = self._active(now)
        self.active = len(active)
        target = self._promise
        if target is not None and target != self.name and target in self._ballots \
                and self._ballots[target].released:
            self._promise_until = now  # released on purpose: free at once
        if target is not None and now < self._promise_until:
            present = target == self.name or target in self._ballots
            if present and target in active and (self._claims_lead(target)
                                                 or target == self._preferred(active)):
                epoch = self._latest_epoch(target)
                if epoch > self._promise_epoch:  # a new epoch extends the promise
                    self._promise_epoch = epoch
                    self._promise_until = now + self.lease
            return
        # Free to vote. With more active candidates than expected, majorities may not
        # intersect: grant nobody (the election stalls rather than risk two leaders).
        if len(active) > self.expect:
            self._promise = None
            self._promise_epoch = 0
            return
        choice = self._preferred(active)
        self._promise = choice
        self._promise_epoch = self._latest_epoch(choice)
        self._promise_until = now + self.lease

    def _preferred(self, active: list[str]) -> str:
        """Whom a free voter grants: an active candidate that claims leadership, else a ready
        one (a candidacy early in its first lease does not vote yet, so could not make a
        majority), else the lowest-named active one."""
        for wanted in (self._claims_lead, self._ready, None):
            for name in active:
                if wanted is None or wanted(name):
                    return name
        return self.name  # not reached: we are active ourselves

    def _ready(self, name: str) -> bool:
        if name == self.name:
            return True  # called only once our first lease is over
        return self._ballots[name].ready

    def _grants(self) -> list[tuple[str, int]]:
        """(voter, epoch) of every grant to us of an epoch we still remember."""
        out: list[tuple[str, int]] = []
        if self._promise == self.name and self._promise_epoch in self._sent:
            out.append((self.name, self._promise_epoch))
        for voter, ballot in self._ballots.items():
            if ballot.grant is not None and ballot.grant[0] == self.name \
                    and ballot.grant[1] in self._sent:
                out.append((voter, ballot.grant[1]))
        return out

    def _count(self, now: float) -> None:
        epochs = sorted((epoch for _, epoch in self._grants()), reverse=True)
        if len(epochs) < self.quorum:
            self._lease_until = None
            return
        until = self._sent[epochs[self.quorum - 1]] + self.lease - self.margin
        self._lease_until = until if now < until else None

    def _echoed(self) -> bool:
        token = self.token or 0
        voters = {voter for voter, _ in self._grants()}
        echoes = sum(1 for voter in voters
                     if voter == self.name or self._ballots[voter].high >= token)
        return echoes >= self.quorum

    def _publish(self) -> list[GossipElectionAction]:
        ballot = self.ballot
        if ballot == self._published:
            return []
        self._published = ballot
        return [Publish(ballot)]


__all__ = [
    "ACTIVE_FRACTION",
    "MARGIN_FRACTION",
    "READY_FRACTION",
    "RENEW_FRACTION",
    "Ballot",
    "GossipCandidacy",
    "GossipElectionAction",
    "Lead",
    "Publish",
    "Stage",
    "decode_ballot",
    "encode_ballot",
    "quorum",
]
