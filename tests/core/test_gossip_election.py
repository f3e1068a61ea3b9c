"""The gossip election's majority lease in explicit time: who leads, when leadership is in
doubt, how the fencing token grows, and a simulated group with random gossip delays, loss,
partitions, kills and restarts in which two leaderships never overlap."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field, replace

import pytest

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
    quorum,
)

LEASE = 2.0
MARGIN = LEASE / 3


# ---------------------------------------------------------------------------- ballots


def test_a_ballot_survives_its_encoding() -> None:
    """Every field of a ballot comes back from its ASCII form."""
    for ballot in (Ballot(1), Ballot(7, ("c1.ab12", 6), 1764, 1765, released=True),
                   Ballot(3, None, 0, 0, ready=True)):
        assert decode_ballot(encode_ballot(ballot)) == ballot
    assert encode_ballot(Ballot(4, ("a.1", 3), 9, 0)) == b"e=4 g=a.1:3 t=9 l=0"


@pytest.mark.parametrize("data", [b"", b"role=web", b"e=x", b"e=-1", b"e=1 g=:3", b"e=1 g=a",
                                  b"e=1 t=\xff", b"e=1 " + b"t=1 " * 100, b"e=\xd9\xa1",
                                  b"e=1 nokey"])
def test_what_is_not_a_ballot_is_ignored(data: bytes) -> None:
    """Tags that are not well-formed ballots decode to None (the tag is not a candidate)."""
    assert decode_ballot(data) is None


def test_quorum_is_a_strict_majority() -> None:
    """One voter of one, two of two or three, three of four or five."""
    assert [quorum(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]


@pytest.mark.parametrize("kwargs", [{"expect": 0}, {"expect": True}, {"lease": 0.0},
                                    {"margin": 2.0}, {"margin": 0.0}, {"renew": 1.5},
                                    {"name": "a b"}, {"name": "a:b"}, {"name": ""}])
def test_bad_parameters_are_refused(kwargs: dict[str, object]) -> None:
    """Parameters outside their ranges raise ValueError."""
    args: dict[str, object] = {"name": "a", "expect": 3, "lease": LEASE, "start": 0.0}
    args.update(kwargs)
    with pytest.raises(ValueError):
        GossipCandidacy(**args)  # type: ignore[arg-type]


def _ready(*args: object, **kwargs: object) -> Ballot:
    """A ballot of a candidate past the first half of its first lease."""
    return replace(Ballot(*args, **kwargs), ready=True)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- one candidate


def test_a_single_expected_candidate_leads_after_one_lease_with_its_floor_token() -> None:
    """expect=1: the candidate votes for itself once its first lease passed, and leads with
    the token floor (nobody's token was seen)."""
    c = GossipCandidacy("a", expect=1, lease=LEASE, start=10.0, token_floor=500)
    assert c.observe(10.0, {}) == [Publish(Ballot(1, None, 0, 0))]
    assert c.next_deadline() == pytest.approx(10.0 + LEASE / 6)
    now = 10.0
    leads: list[Lead] = []
    while now < 10.0 + LEASE - 1e-9:
        now = c.next_deadline() or now
        leads += [a for a in c.handle_timer(now) if isinstance(a, Lead)]
        assert not leads or now >= 10.0 + LEASE
    assert leads == [Lead(500)] and c.stage is Stage.LEADING
    assert c.ballot.lead == 500 and c.ballot.grant == ("a", c.ballot.epoch)
    # The lease counts from the send time of the granted epoch (at most one renewal ago).
    assert c.safe_until is not None
    assert now + LEASE - MARGIN - LEASE / 6 - 1e-9 <= c.safe_until <= now + LEASE - MARGIN


def test_a_leader_alone_keeps_leading_while_it_renews() -> None:
    """expect=1: each new epoch renews its own grant; no doubt over many leases."""
    c = GossipCandidacy("a", expect=1, lease=LEASE, start=0.0)
    now = 0.0
    for _ in range(200):
        now = c.next_deadline() or now
        assert not [a for a in c.handle_timer(now) if isinstance(a, InDoubt)]
    assert c.stage is Stage.LEADING and now > 20 * LEASE


def test_without_a_majority_the_lease_ends_in_doubt_at_its_deadline() -> None:
    """expect=3: a leader whose two voters fall silent is in doubt exactly at
    sent(e) + lease - margin, e the last epoch a majority granted."""
    a = GossipCandidacy("a", expect=3, lease=LEASE, start=0.0)
    now = LEASE
    a.handle_timer(now)
    # b grants a's current epoch: a has two of three.
    epoch = a.ballot.epoch
    sent = now
    a.observe(now, {"b": Ballot(5, ("a", epoch), 0, 0)})
    assert a.stage is Stage.ELECTED and a.token == 1
    acts = a.observe(now, {"b": Ballot(5, ("a", epoch), 1, 0)})  # b echoes the token
    assert Lead(1) in acts, acts
    assert a.safe_until == pytest.approx(sent + LEASE - MARGIN)
    # b goes silent (its ballot stays in the view, stale): doubt at the deadline.
    doubts: list[InDoubt] = []
    while not doubts:
        now = a.next_deadline() or now
        doubts = [x for x in a.handle_timer(now) if isinstance(x, InDoubt)]
    assert now == pytest.approx(sent + LEASE - MARGIN)
    assert a.stage is Stage.IN_DOUBT and "fewer than 2 of 3" in a.reason
    assert a.next_deadline() is None and a.handle_timer(now + 1) == []


def test_the_leader_waits_for_a_majority_to_echo_its_token() -> None:
    """Holding the lease, the candidate publishes its token and leads only once a majority
    of its voters carry a highest-seen token at least as large."""
    a = GossipCandidacy("a", expect=3, lease=LEASE, start=0.0, token_floor=0)
    now = LEASE
    a.observe(now, {"b": Ballot(1, None, 41, 0)})
    epoch = a.ballot.epoch
    acts = a.observe(now, {"b": Ballot(2, ("a", epoch), 41, 0)})
    assert a.stage is Stage.ELECTED and a.token == 42
    assert not [x for x in acts if isinstance(x, Lead)]
    assert Publish(a.ballot) in acts and a.ballot.lead == 42
    acts = a.observe(now + 0.1, {"b": Ballot(3, ("a", epoch), 42, 0)})
    assert Lead(42) in acts and a.stage is Stage.LEADING


def test_a_candidacy_grants_nothing_during_its_first_lease() -> None:
    """A restarted process cannot know what it promised before: no grant for one lease."""
    b = GossipCandidacy("b", expect=3, lease=LEASE, start=0.0)
    now = 0.0
    while now < LEASE - 0.01:
        b.observe(now, {"a": _ready(int(now * 10) + 1)})
        assert b.granted_to is None
        now += 0.05
    b.observe(LEASE, {"a": _ready(99)})
    assert b.granted_to == "a"


def test_a_voter_keeps_its_promise_until_it_lapses() -> None:
    """A voter that granted a lets a's epochs extend the promise; when a falls silent it
    grants b only a full lease after a's last new epoch."""
    v = GossipCandidacy("v", expect=3, lease=LEASE, start=0.0)
    now = LEASE
    v.observe(now, {"a": _ready(10, lead=5), "b": _ready(10)})
    assert v.granted_to == "a"
    last = now
    for i in range(1, 5):  # a keeps renewing, b too
        now = LEASE + i * 0.3
        v.observe(now, {"a": _ready(10 + i, lead=5), "b": _ready(10 + i)})
        last = now
        assert v.ballot.grant == ("a", 10 + i)
    # a stops; b keeps renewing: the grant moves only at last + lease.
    while now < last + LEASE + 0.5:
        now += 0.05
        v.observe(now, {"a": _ready(14, lead=5), "b": _ready(int(now * 100))})
        if now < last + LEASE - 1e-9:
            assert v.granted_to == "a", now
    assert v.granted_to == "b"


def test_a_voter_prefers_the_active_leader_to_a_lower_newcomer() -> None:
    """When a voter's promise lapses it grants an active candidate that claims leadership
    before a lower-named one that does not (no displacement by a newcomer)."""
    v = GossipCandidacy("v", expect=3, lease=LEASE, start=0.0)
    v.observe(LEASE, {"a": _ready(1), "c": _ready(1, lead=9)})
    assert v.granted_to == "c"


def test_a_voter_prefers_a_ready_candidate_to_a_lower_one_just_started() -> None:
    """A candidacy early in its first lease cannot vote, so cannot complete a majority: a
    free voter grants a ready candidate before it, whatever their names."""
    v = GossipCandidacy("v", expect=3, lease=LEASE, start=0.0)
    v.observe(LEASE, {"a": Ballot(1), "u": _ready(1)})
    assert v.granted_to == "u"


def test_a_candidacy_says_ready_half_way_through_its_first_lease() -> None:
    """Its ballot carries ready from lease / 2 on (it grants from a whole lease on)."""
    c = GossipCandidacy("c", expect=3, lease=LEASE, start=0.0)
    now = 0.0
    while now < LEASE / 2 - 1e-9:
        assert not c.ballot.ready
        now = c.next_deadline() or now
        c.handle_timer(now)
    assert c.ballot.ready and c.granted_to is None


def test_split_votes_resolve_within_a_lease() -> None:
    """A voter bound to a candidate that neither leads nor is the lowest active one stops
    renewing and, once the promise lapsed, grants the lowest."""
    v = GossipCandidacy("v", expect=3, lease=LEASE, start=0.0)
    v.observe(LEASE, {"c": _ready(1)})
    assert v.granted_to == "c"
    now = LEASE
    for i in range(60):
        now = LEASE + 0.05 * (i + 1)
        v.observe(now, {"a": _ready(i + 2), "c": _ready(i + 2)})
    assert v.granted_to == "a"


def test_a_released_leader_frees_its_voters_at_once() -> None:
    """A ballot marked released ends the promise to it without waiting for the lapse."""
    v = GossipCandidacy("v", expect=3, lease=LEASE, start=0.0)
    v.observe(LEASE, {"a": _ready(1, lead=3), "b": _ready(1)})
    assert v.granted_to == "a"
    v.observe(LEASE + 0.1, {"a": _ready(1, lead=0, released=True), "b": _ready(2)})
    assert v.granted_to == "b"
    a = GossipCandidacy("a", expect=1, lease=LEASE, start=0.0)
    assert a.release(1.0) == [Publish(Ballot(1, None, 0, 0, released=True))]
    assert a.release(1.1) == [] and a.next_deadline() is None


def test_more_active_candidates_than_expected_stall_the_vote() -> None:
    """Four active candidates for expect=3: a free voter grants nobody (majorities of an
    unknown group need not intersect)."""
    v = GossipCandidacy("v", expect=3, lease=LEASE, start=0.0)
    v.observe(LEASE, {"a": _ready(1), "b": _ready(1), "c": _ready(1)})
    assert v.granted_to is None and v.active == 4


def test_the_token_is_one_above_the_highest_seen() -> None:
    """The token is max(highest token or lead seen + 1, floor)."""
    a = GossipCandidacy("a", expect=1, lease=LEASE, start=0.0, token_floor=10)
    a.observe(0.0, {"x": Ballot(1, None, 70, 80)})
    now = 0.0
    while a.stage is not Stage.LEADING:
        now = a.next_deadline() or now
        a.handle_timer(now)
    assert a.token == 81


# ---------------------------------------------------------------------------- a simulated group


@dataclass
class _Node:
    machine: GossipCandidacy
    alive: bool = True
    leading_since: float | None = None
    safe: float | None = None


@dataclass
class _Leadership:
    name: str
    token: int
    start: float
    end: float  # the last safe_until seen while leading


@dataclass
class _Group:
    """Candidates exchanging ballots with random delay and loss; a view keeps each sender's
    newest delivered ballot (as gossip's incarnation rule does) until a kill is detected."""

    rng: random.Random
    expect: int = 3
    max_delay: float = 0.3
    loss: float = 0.1
    nodes: dict[str, _Node] = field(default_factory=dict)
    views: dict[str, dict[str, tuple[int, Ballot]]] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    in_flight: list[tuple[float, str, str, int, Ballot]] = field(default_factory=list)
    cut: set[frozenset[str]] = field(default_factory=set)
    leaderships: list[_Leadership] = field(default_factory=list)
    serial: int = 0
    #: Give every machine the (shared, simulated) wall clock in ms as its token floor.
    wall: bool = False
    #: Candidacies that ended in doubt: the process stands again with a new candidacy
    #: that remembers the highest token (as ``pulse run`` does).
    restarts: list[str] = field(default_factory=list)

    def add(self, now: float, high: int = 0) -> str:
        self.serial += 1
        name = f"n{self.serial}"
        machine = GossipCandidacy(name, expect=self.expect, lease=LEASE, start=now,
                                  token_floor=0, high=high)
        self.nodes[name] = _Node(machine)
        self.views[name] = {}
        self.versions[name] = 0
        self._act(now, name, machine.observe(now, {}))
        return name

    def kill(self, name: str, now: float) -> None:
        node = self.nodes[name]
        node.alive = False
        if node.leading_since is not None:
            self._end(name, now)

    def _end(self, name: str, now: float) -> None:
        node = self.nodes[name]
        assert node.leading_since is not None and node.safe is not None
        self.leaderships[-1 if self.leaderships[-1].name == name else
                         [x.name for x in self.leaderships].index(name)].end = node.safe
        node.leading_since = None

    def _act(self, now: float, name: str, actions: list[GossipElectionAction]) -> None:
        node = self.nodes[name]
        for action in actions:
            if isinstance(action, Publish):
                self.versions[name] += 1
                for other in self.nodes:
                    if other == name or frozenset((name, other)) in self.cut:
                        continue
                    if self.rng.random() < self.loss:
                        continue
                    at = now + self.rng.uniform(0.0, self.max_delay)
                    self.in_flight.append((at, name, other, self.versions[name], action.ballot))
            elif isinstance(action, Lead):
                node.leading_since = now
                self.leaderships.append(_Leadership(name, action.token, now, now))
            elif isinstance(action, InDoubt):
                self._end(name, now)
                self.restarts.append(name)
        if node.leading_since is not None:
            node.safe = node.machine.safe_until
            self.leaderships[-1].end = max(self.leaderships[-1].end, node.safe or now)

    def run(self, until: float, now: float, step: float = 0.01) -> float:
        while now < until:
            now += step
            due = [m for m in self.in_flight if m[0] <= now]
            self.in_flight = [m for m in self.in_flight if m[0] > now]
            touched: set[str] = set()
            for _, sender, receiver, version, ballot in sorted(due, key=lambda m: m[0]):
                view = self.views[receiver]
                if sender in view and view[sender][0] >= version:
                    continue  # an older incarnation: ignored
                view[sender] = (version, ballot)
                touched.add(receiver)
            for name, node in self.nodes.items():
                if not node.alive:
                    continue
                m = node.machine
                if self.wall:
                    m.token_floor = int(now * 1000)
                if name in touched:
                    ballots = {s: b for s, (_, b) in self.views[name].items()}
                    self._act(now, name, m.observe(now, ballots))
                deadline = m.next_deadline()
                if deadline is not None and deadline <= now:
                    self._act(now, name, m.handle_timer(now))
            for name in self.restarts:
                self.nodes[name].alive = False
                self.add(now, high=self.nodes[name].machine.high)
            self.restarts.clear()
        return now

    def check(self) -> float:
        """No two leaderships overlap, and tokens grow; the smallest gap between them."""
        runs = sorted(self.leaderships, key=lambda r: r.start)
        gaps = [b.start - a.end for a, b in itertools.pairwise(runs)]
        assert all(g >= MARGIN - 1e-9 for g in gaps), (gaps, runs)
        assert all(b.token > a.token for a, b in itertools.pairwise(runs)), runs
        return min(gaps) if gaps else float("inf")


def test_three_candidates_elect_one_leader_and_a_kill_hands_over_within_the_bound() -> None:
    """Three candidates with delays up to 0.1 s: one leads; after its kill another leads
    within lease + renew + a few gossip hops, with a larger token, after the margin."""
    group = _Group(random.Random(1), max_delay=0.1, loss=0.0)
    for _ in range(3):
        group.add(0.0)
    now = group.run(3 * LEASE, 0.0)
    assert len(group.leaderships) == 1
    first = group.leaderships[0]
    assert first.start <= LEASE + 1.0
    group.kill(first.name, now)
    killed = now
    now = group.run(killed + 3 * LEASE, now)
    assert len(group.leaderships) == 2
    second = group.leaderships[1]
    assert second.start - killed <= LEASE + LEASE / 6 + 4 * 0.1 + 0.05
    assert second.token > first.token
    group.check()


def test_a_partitioned_leader_is_in_doubt_before_the_majority_side_elects() -> None:
    """The leader is cut off from both others (one lease's worth of its grants still binds
    them): it is in doubt first, one of the others leads after the margin; after the heal
    the old leader does not take over again."""
    group = _Group(random.Random(2), max_delay=0.05, loss=0.0)
    names = [group.add(0.0) for _ in range(3)]
    now = group.run(3 * LEASE, 0.0)
    leader = group.leaderships[0].name
    for other in names:
        if other != leader:
            group.cut.add(frozenset((leader, other)))
    now = group.run(now + 4 * LEASE, now)
    assert group.nodes[leader].machine.stage is Stage.IN_DOUBT
    assert len(group.leaderships) == 2 and group.leaderships[1].name != leader
    group.cut.clear()
    now = group.run(now + 4 * LEASE, now)
    assert len(group.leaderships) == 2
    group.check()


def _random_faults(seed: int, *, kills: bool, wall: bool) -> _Group:
    rng = random.Random(seed)
    group = _Group(rng, expect=3, max_delay=0.3, loss=0.1, wall=wall)
    for _ in range(3):
        group.add(0.0)
    now = 0.0
    for _ in range(25):
        now = group.run(now + rng.uniform(0.2, 2 * LEASE), now)
        alive = [n for n, node in group.nodes.items() if node.alive]
        roll = rng.random()
        if roll < 0.3 and alive and kills:
            group.kill(rng.choice(alive), now)
            group.add(now)  # a replacement starts after the old process died
        elif roll < 0.6 and len(alive) >= 2:
            a, b = rng.sample(alive, 2)
            group.cut.add(frozenset((a, b)))
        elif roll < 0.8:
            group.cut.clear()
    group.cut.clear()
    group.run(now + 4 * LEASE, now)
    return group


@pytest.mark.parametrize("seed", range(10))
def test_random_faults_never_give_two_leaders_at_once(seed: int) -> None:
    """Random delays (up to 0.3 s), 10 % loss, partitions that come and go, kills and
    restarts of any candidate, wall-clock floors: every pair of leaderships is separated by
    at least the margin, every token is larger than the one before, and after the last
    heal somebody leads."""
    group = _random_faults(seed, kills=True, wall=True)
    group.check()
    assert any(n.leading_since is not None for n in group.nodes.values() if n.alive)


@pytest.mark.parametrize("seed", range(10))
def test_tokens_grow_through_the_voters_without_any_clock(seed: int) -> None:
    """Without kills and with no token floor, partitions, delays and loss still give every
    new leadership a larger token: it travels in the voters' ballots alone."""
    group = _random_faults(seed, kills=False, wall=False)
    group.check()
    assert group.leaderships


def test_tokens_can_repeat_when_every_process_that_knew_them_restarted() -> None:
    """The stated limit: if all candidates restart (no floor), the new leader's token can be
    no larger than the last one (here the same), since nobody left knows it."""
    group = _Group(random.Random(5), max_delay=0.05, loss=0.0)
    names = [group.add(0.0) for _ in range(3)]
    now = group.run(3 * LEASE, 0.0)
    first = group.leaderships[0].token
    for name in names:
        group.kill(name, now)
    for _ in range(3):
        group.add(now)
    group.run(now + 4 * LEASE, now)
    assert group.leaderships[-1].token <= first
