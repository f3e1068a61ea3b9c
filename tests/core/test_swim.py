"""The pure SWIM machine in explicit virtual time: probing, suspicion, Lifeguard, gossip."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from pulse._core.lifeguard import (
    Awareness,
    Suspicion,
    push_pull_interval,
    remaining_suspicion_time,
    retransmit_limit,
    suspicion_min_timeout,
)
from pulse._core.swim import (
    DEFAULT_VSN,
    MemberEvent,
    MemberEventKind,
    OpenPushPull,
    SendPacket,
    StreamReply,
    Swim,
    SwimAction,
    SwimConfig,
    TcpPing,
    UserMessage,
)
from pulse._core.swim_messages import (
    Ack,
    Addr,
    Alive,
    Dead,
    IndirectPing,
    Nack,
    NodeState,
    PacketMessage,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    UserMsg,
)
from pulse.errors import LocalProtocolError


def addr(i: int) -> Addr:
    return (f"10.0.0.{i}", 7946)


def make(i: int = 0, now: float = 0.0, seed: int = 0, **kw: object) -> Swim:
    cfg = SwimConfig(name=f"n{i}", addr=addr(i), **kw)  # type: ignore[arg-type]
    return Swim(cfg, random.Random(seed), now)


def alive(i: int, inc: int = 1, meta: bytes = b"", vsn: tuple[int, ...] = DEFAULT_VSN) -> Alive:
    return Alive(inc, f"n{i}", addr(i), meta, vsn)


def with_peers(m: Swim, count: int, now: float = 0.0) -> list[SwimAction]:
    """Teach ``m`` about ``count`` peers n1..n<count> (alive, incarnation 1)."""
    out: list[SwimAction] = []
    for i in range(1, count + 1):
        out += m.packet_received(now, addr(i), alive(i))
    return out


def events(actions: Iterable[SwimAction], kind: MemberEventKind | None = None) -> list[MemberEvent]:
    return [a for a in actions if isinstance(a, MemberEvent) and (kind is None or a.kind == kind)]


def sent(actions: Iterable[SwimAction]) -> list[SendPacket]:
    return [a for a in actions if isinstance(a, SendPacket)]


def messages(actions: Iterable[SwimAction], cls: type) -> list[tuple[Addr, PacketMessage]]:
    return [(p.addr, m) for p in sent(actions) for m in p.messages if isinstance(m, cls)]


def step(m: Swim) -> tuple[float, list[SwimAction]]:
    """Advance ``m`` to its next deadline and run its timer."""
    t = m.next_deadline()
    assert t is not None
    return t, m.handle_timer(t)


def run_until(m: Swim, end: float, on_actions: Callable[[float, list[SwimAction]], None] | None = None
              ) -> list[SwimAction]:
    out: list[SwimAction] = []
    while True:
        t = m.next_deadline()
        assert t is not None
        if t > end:
            return out
        acts = m.handle_timer(t)
        out += acts
        if on_actions is not None:
            on_actions(t, acts)


def run_answering(m: Swim, end: float, silent: Iterable[str] = ()) -> list[SwimAction]:
    """Run timers to ``end`` while every probed member except ``silent`` ones acks at once."""
    mute = set(silent)
    out: list[SwimAction] = []

    def answer(t: float, acts: list[SwimAction]) -> None:
        for _, msg in messages(acts, Ping):
            assert isinstance(msg, Ping)
            if msg.node not in mute:
                out.extend(m.packet_received(t, addr(int(msg.node[1:])), Ack(msg.seq_no)))

    out += run_until(m, end, answer)
    return out


def next_probe(m: Swim, limit: float = 1000.0) -> tuple[float, Ping, list[SwimAction]]:
    """Run timers until ``m`` sends a ping to a member (not an indirect relay)."""
    while True:
        t, acts = step(m)
        assert t < limit
        pings = [msg for _, msg in messages(acts, Ping) if isinstance(msg, Ping)]
        if pings:
            return t, pings[0], acts


# ---------------------------------------------------------------------------- formulas


def test_defaults_are_memberlist_lan_config() -> None:
    """SwimConfig defaults equal memberlist's DefaultLANConfig."""
    c = SwimConfig(name="a", addr=addr(1))
    assert (c.probe_interval, c.probe_timeout, c.indirect_checks) == (1.0, 0.5, 3)
    assert (c.retransmit_mult, c.suspicion_mult, c.suspicion_max_timeout_mult) == (4, 4, 6)
    assert (c.push_pull_interval, c.gossip_interval, c.gossip_nodes) == (30.0, 0.2, 3)
    assert (c.gossip_to_the_dead_time, c.awareness_max_multiplier, c.udp_buffer_size) == (30.0, 8, 1400)
    assert c.tcp_pings and c.lifeguard


def test_config_rejects_bad_values() -> None:
    """Invalid tunables raise ValueError with the field name."""
    with pytest.raises(ValueError, match="probe_timeout"):
        SwimConfig(name="a", addr=addr(1), probe_timeout=2.0)
    with pytest.raises(ValueError, match="meta"):
        SwimConfig(name="a", addr=addr(1), meta=b"x" * 513)
    with pytest.raises(ValueError, match="name"):
        SwimConfig(name="", addr=addr(1))


def test_scaling_formulas_match_memberlist() -> None:
    """Suspicion minimum, retransmit limit and push-pull scaling follow memberlist's util.go."""
    assert suspicion_min_timeout(4, 100, 1.0) == pytest.approx(8.0)
    assert suspicion_min_timeout(4, 5, 1.0) == pytest.approx(4.0)  # log10(5) < 1 is raised to 1
    assert suspicion_min_timeout(4, 1000, 0.5) == pytest.approx(6.0)
    assert [retransmit_limit(4, n) for n in (1, 9, 10, 99, 100)] == [4, 4, 8, 8, 12]
    assert push_pull_interval(30.0, 32) == 30.0
    assert push_pull_interval(30.0, 33) == 60.0
    assert push_pull_interval(30.0, 64) == 60.0
    assert push_pull_interval(30.0, 65) == 90.0


@pytest.mark.parametrize(("n", "k", "elapsed", "expected"), [
    (0, 3, 0.0, 30.0), (1, 3, 2.0, 14.0), (2, 3, 3.0, 4.81), (3, 3, 4.0, -2.0), (4, 3, 5.0, -3.0),
])
def test_remaining_suspicion_time_table(n: int, k: int, elapsed: float, expected: float) -> None:
    """The remaining suspicion time falls logarithmically (memberlist's suspicion_test.go table)."""
    assert remaining_suspicion_time(n, k, elapsed, 2.0, 30.0) == pytest.approx(expected)


def test_awareness_is_clamped_and_scales() -> None:
    """The health score stays in [0, max-1] and multiplies timeouts by score+1."""
    a = Awareness(8)
    assert a.apply_delta(-1) == 0
    assert a.apply_delta(3) == 3
    assert a.scale(1.0) == 4.0
    assert a.apply_delta(100) == 7
    assert a.scale(0.5) == 4.0
    with pytest.raises(ValueError):
        Awareness(0)


def test_suspicion_counts_each_confirmer_once() -> None:
    """Only new, independent confirmers (not the accuser, not twice, at most k) shorten the timer."""
    s = Suspicion("a", 2, 4.0, 24.0, start=100.0)
    assert s.deadline() == 124.0
    assert not s.confirm("a")
    assert s.confirm("b")
    assert not s.confirm("b")
    assert s.deadline() == pytest.approx(100 + 24 - math.log(2) / math.log(3) * 20, abs=1e-3)
    assert s.confirm("c")
    assert s.deadline() == 104.0
    assert not s.confirm("d")  # k reached
    assert s.confirmed_by == ("a", "b", "c")


# ---------------------------------------------------------------------------- probing


def test_probe_order_covers_every_member_once_per_pass() -> None:
    """Randomised round robin: each pass probes every other member exactly once."""
    m = make(0, seed=3)
    with_peers(m, 9)
    probed: list[str] = []
    while len(probed) < 27:
        t, ping, _ = next_probe(m)
        probed.append(ping.node)
        m.packet_received(t + 0.01, addr(1), Ack(ping.seq_no))
    names = {f"n{i}" for i in range(1, 10)}
    assert set(probed[0:9]) == names
    assert set(probed[9:18]) == names
    assert set(probed[18:27]) == names
    assert probed[0:9] != probed[9:18] or probed[9:18] != probed[18:27]  # reshuffled


def test_probe_happens_once_per_protocol_period() -> None:
    """Answered probes go out one probe interval apart."""
    m = make(0)
    with_peers(m, 4)
    times = []
    for _ in range(6):
        t, ping, _ = next_probe(m)
        times.append(t)
        m.packet_received(t + 0.05, addr(1), Ack(ping.seq_no))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([1.0] * 5)


def test_answered_ping_needs_no_indirect_probe() -> None:
    """An ack within the probe timeout ends the probe: no indirect pings, no suspicion."""
    m = make(0)
    with_peers(m, 5)
    t, ping, _ = next_probe(m)
    assert ping.source_addr == addr(0) and ping.source_node == "n0"
    m.packet_received(t + 0.1, addr(1), Ack(ping.seq_no))
    later = run_until(m, t + 0.99)
    assert not messages(later, IndirectPing)
    assert not events(later, MemberEventKind.SUSPECT)


def test_indirect_probe_path() -> None:
    """No ack by the probe timeout: 3 distinct helpers get indirect pings (with nack) and a TCP ping
    is requested; an ack relayed before the period ends avoids suspicion."""
    m = make(0)
    with_peers(m, 6)
    t, ping, _ = next_probe(m)
    target = ping.node
    assert not messages(run_until(m, t + 0.499), IndirectPing)
    acts = run_until(m, t + 0.5)
    ind = messages(acts, IndirectPing)
    assert len(ind) == 3
    helpers = {a for a, _ in ind}
    assert len(helpers) == 3
    assert all(isinstance(msg, IndirectPing) and msg.node == target and msg.seq_no == ping.seq_no
               and msg.nack and msg.source_node == "n0" for _, msg in ind)
    assert addr(int(target[1:])) not in helpers and addr(0) not in helpers
    tcp = [a for a in acts if isinstance(a, TcpPing)]
    assert len(tcp) == 1 and tcp[0].ping.seq_no == ping.seq_no and tcp[0].deadline == pytest.approx(t + 1.0)
    m.packet_received(t + 0.8, next(iter(helpers)), Ack(ping.seq_no))
    assert not events(run_answering(m, t + 3.0), MemberEventKind.SUSPECT)
    assert m.member(target).state == NodeState.ALIVE  # type: ignore[union-attr]


def test_unanswered_probe_suspects_the_target() -> None:
    """No direct, indirect or TCP ack within the period: the target becomes suspect, accused by us."""
    m = make(0)
    with_peers(m, 6)
    t, ping, _ = next_probe(m)
    acts = run_until(m, t + 1.0)
    sus = events(acts, MemberEventKind.SUSPECT)
    assert [e.member.name for e in sus] == [ping.node]
    assert sus[0].at == pytest.approx(t + 1.0)
    assert sus[0].confirmed_by == ("n0",)
    assert m.member(ping.node).state == NodeState.SUSPECT  # type: ignore[union-attr]


def test_tcp_fallback_ack_counts_as_success() -> None:
    """A TCP ping answered in time saves the target from suspicion when UDP failed."""
    m = make(0)
    with_peers(m, 6)
    t, ping, _ = next_probe(m)
    run_until(m, t + 0.5)  # indirect phase
    m.stream_reply_received(t + 0.7, addr(1), Ack(ping.seq_no))
    assert not events(run_until(m, t + 1.5), MemberEventKind.SUSPECT)


def test_relay_forwards_ack_for_indirect_ping() -> None:
    """An indirect ping makes us ping the target with our own sequence number and relay its ack."""
    m = make(0)
    with_peers(m, 3)
    acts = m.packet_received(5.0, addr(1), IndirectPing(77, addr(2), "n2", True, addr(1), "n1"))
    (to, ping), = messages(acts, Ping)
    assert to == addr(2) and isinstance(ping, Ping) and ping.node == "n2" and ping.source_node == "n0"
    reply = m.packet_received(5.1, addr(2), Ack(ping.seq_no))
    assert [(a, msg) for a, msg in messages(reply, Ack)] == [(addr(1), Ack(77))]
    assert not messages(run_until(m, 6.0), Nack)  # acked: no nack


def test_relay_sends_nack_only_when_asked() -> None:
    """A relay that hears nothing within the probe timeout sends a nack if (and only if) asked."""
    m = make(0)
    with_peers(m, 3)
    m.packet_received(5.0, addr(1), IndirectPing(77, addr(2), "n2", True, addr(1), "n1"))
    m.packet_received(5.0, addr(3), IndirectPing(78, addr(2), "n2", False, addr(3), "n3"))
    acts = run_until(m, 5.6)
    assert [(a, msg) for a, msg in messages(acts, Nack)] == [(addr(1), Nack(77))]


def test_ping_is_answered_to_its_source_address_with_piggyback() -> None:
    """A ping for us is acked to SourceAddr, carrying pending gossip; a ping for another name is not."""
    m = make(0)
    with_peers(m, 2)
    acts = m.packet_received(1.0, ("192.0.2.1", 9), Ping(5, "n0", addr(2), "n2"))
    (pkt,) = sent(acts)
    assert pkt.addr == addr(2)
    assert pkt.messages[0] == Ack(5)
    assert any(isinstance(x, Alive) for x in pkt.messages[1:])  # piggybacked gossip
    assert m.packet_received(1.0, addr(2), Ping(6, "nX", addr(2), "n2")) == []


def test_stream_ping_and_push_pull_get_replies() -> None:
    """A TCP ping is answered with an ack; a push-pull with our state, then merged."""
    m = make(0)
    (reply,) = m.stream_received(1.0, addr(1), Ping(9, "n0"))
    assert reply == StreamReply(Ack(9))
    remote = PushPull(True, (PushNodeState("n1", addr(1), b"m", 3, NodeState.ALIVE, DEFAULT_VSN),))
    acts = m.stream_received(1.0, addr(1), remote)
    assert isinstance(acts[0], StreamReply) and isinstance(acts[0].message, PushPull)
    assert [s.name for s in acts[0].message.states] == ["n0"]
    assert [e.member.name for e in events(acts, MemberEventKind.JOINED)] == ["n1"]
    assert m.member("n1").incarnation == 3  # type: ignore[union-attr]


def test_user_messages_are_passed_up() -> None:
    """User payloads in packets come out as UserMessage actions."""
    m = make(0)
    assert m.packet_received(1.0, addr(3), UserMsg(b"hi")) == [UserMessage(b"hi", addr(3))]


# ---------------------------------------------------------------------------- suspicion


def suspect_target(m: Swim, now: float, node: str = "n1", inc: int = 1, by: str = "n2") -> list[SwimAction]:
    return m.packet_received(now, addr(2), Suspect(inc, node, by))


def test_suspicion_turns_into_failure_at_max_timeout_without_confirmations() -> None:
    """With Lifeguard and no confirmations the suspicion lasts max = 6 x min (N=10: 24 s)."""
    m = make(0)
    with_peers(m, 9)
    run_answering(m, 10.0)
    assert events(suspect_target(m, 10.0), MemberEventKind.SUSPECT)
    # n1 keeps answering our pings (an ack does not refute a suspicion, but our own probe
    # then adds no confirmation of ours).
    before = run_answering(m, 33.9)
    assert not events(before, MemberEventKind.FAILED)
    after = run_answering(m, 34.01)
    (failed,) = events(after, MemberEventKind.FAILED)
    assert failed.member.name == "n1" and failed.at == pytest.approx(34.0)
    assert failed.confirmed_by == ("n2",)
    # The failure is gossiped as a dead message from us.
    assert Dead(1, "n1", "n0") in m.pending_gossip()


def test_suspicion_timeout_shrinks_with_independent_confirmations() -> None:
    """Each independent confirmation cuts the timeout logarithmically; k=2 of them reach min (4 s)."""
    m = make(0)
    with_peers(m, 9)
    suspect_target(m, 10.0)
    m.packet_received(11.0, addr(3), Suspect(1, "n1", "n3"))
    assert m.next_deadline() is not None
    susp = m.suspicion("n1")
    assert susp is not None and susp.deadline() == pytest.approx(10.0 + 11.381, abs=1e-3)
    m.packet_received(11.5, addr(3), Suspect(1, "n1", "n3"))  # same confirmer again: ignored
    assert susp.deadline() == pytest.approx(21.381, abs=1e-3)
    m.packet_received(12.0, addr(4), Suspect(1, "n1", "n4"))
    assert susp.deadline() == pytest.approx(14.0)
    (failed,) = events(run_until(m, 14.01), MemberEventKind.FAILED)
    assert failed.at == pytest.approx(14.0)
    assert failed.confirmed_by == ("n2", "n3", "n4")


def test_small_cluster_expects_no_confirmations() -> None:
    """With fewer than k+2 members, k is 0 and the timeout is the minimum from the start."""
    m = make(0)
    with_peers(m, 2)  # N = 3 < k + 2 = 4
    suspect_target(m, 0.0)
    (failed,) = events(run_until(m, 4.01), MemberEventKind.FAILED)
    assert failed.at == pytest.approx(4.0)  # 4 * max(1, log10 3) * 1 s


def test_plain_swim_uses_a_fixed_suspicion_timeout() -> None:
    """Without Lifeguard the suspicion timeout is min regardless of confirmations."""
    m = make(0, lifeguard=False)
    with_peers(m, 9)
    run_answering(m, 10.0)
    suspect_target(m, 10.0)
    (failed,) = events(run_answering(m, 14.01, silent=["n1"]), MemberEventKind.FAILED)
    assert failed.at == pytest.approx(14.0)


def test_refutation_of_a_suspicion_about_us() -> None:
    """Hearing ourselves suspected bumps our incarnation above the accusation and gossips alive."""
    m = make(0)
    with_peers(m, 3)
    assert m.incarnation == 1
    assert m.packet_received(1.0, addr(2), Suspect(1, "n0", "n2")) == []
    assert m.incarnation == 2
    assert Alive(2, "n0", addr(0), b"", DEFAULT_VSN) in m.pending_gossip()
    assert m.health_score == 1  # Lifeguard: having to refute hurts our health
    m.packet_received(2.0, addr(2), Suspect(9, "n0", "n2"))
    assert m.incarnation == 10
    m.packet_received(3.0, addr(2), Dead(10, "n0", "n2"))
    assert m.incarnation == 11
    assert m.member("n0").state == NodeState.ALIVE  # type: ignore[union-attr]


def test_refuted_suspect_becomes_alive_again() -> None:
    """An alive at a higher incarnation clears the suspicion (ALIVE event, no failure later)."""
    m = make(0)
    with_peers(m, 9)
    suspect_target(m, 10.0)
    (ev,) = events(m.packet_received(12.0, addr(1), alive(1, inc=2)), MemberEventKind.ALIVE)
    assert ev.member.incarnation == 2
    assert m.suspicion("n1") is None
    assert not events(run_answering(m, 60.0), MemberEventKind.FAILED)


# ---------------------------------------------------------------------------- incarnation rules


def test_alive_rules_follow_memberlist() -> None:
    """Alive about others needs a strictly higher incarnation; meta changes are UPDATED events."""
    m = make(0)
    (joined,) = events(m.packet_received(0.0, addr(1), alive(1, inc=5)), MemberEventKind.JOINED)
    assert joined.member.incarnation == 5
    assert m.packet_received(1.0, addr(1), alive(1, inc=5, meta=b"new")) == []
    assert m.packet_received(1.0, addr(1), alive(1, inc=4, meta=b"new")) == []
    assert m.member("n1").meta == b""  # type: ignore[union-attr]
    (upd,) = events(m.packet_received(2.0, addr(1), alive(1, inc=6, meta=b"new")))
    assert upd.kind == MemberEventKind.UPDATED and upd.member.meta == b"new"
    # A conflicting address for a live member is refused.
    assert m.packet_received(3.0, addr(9), Alive(7, "n1", addr(9), b"", DEFAULT_VSN)) == []
    assert m.member("n1").addr == addr(1)  # type: ignore[union-attr]
    # Bad protocol versions are refused.
    assert m.packet_received(3.0, addr(4), alive(4, vsn=(3, 2, 2, 0, 0, 0))) == []
    assert m.member("n4") is None


def test_suspect_and_dead_rules_follow_memberlist() -> None:
    """Suspect/dead need an equal or higher incarnation; dead is final until a higher alive."""
    m = make(0)
    with_peers(m, 9)
    m.packet_received(0.0, addr(1), alive(1, inc=3))
    assert m.packet_received(1.0, addr(2), Suspect(2, "n1", "n2")) == []  # stale
    assert events(m.packet_received(1.0, addr(2), Suspect(3, "n1", "n2")), MemberEventKind.SUSPECT)
    assert m.packet_received(1.5, addr(1), alive(1, inc=3)) == []  # equal incarnation: still suspect
    assert m.member("n1").state == NodeState.SUSPECT  # type: ignore[union-attr]
    assert m.packet_received(2.0, addr(2), Dead(2, "n1", "n2")) == []  # stale
    (failed,) = events(m.packet_received(2.0, addr(2), Dead(3, "n1", "n2")))
    assert failed.kind == MemberEventKind.FAILED and failed.confirmed_by == ("n2",)
    assert m.packet_received(3.0, addr(2), Suspect(3, "n1", "n3")) == []  # dead stays dead
    assert m.packet_received(3.0, addr(1), alive(1, inc=3)) == []
    (back,) = events(m.packet_received(4.0, addr(1), alive(1, inc=4)))
    assert back.kind == MemberEventKind.JOINED
    # Unknown members are ignored by suspect and dead.
    assert m.packet_received(5.0, addr(2), Suspect(1, "ghost", "n2")) == []
    assert m.packet_received(5.0, addr(2), Dead(1, "ghost", "n2")) == []


def test_dead_from_the_member_itself_is_a_leave() -> None:
    """A dead message whose sender is the member itself marks it left, not failed."""
    m = make(0)
    with_peers(m, 3)
    (ev,) = events(m.packet_received(1.0, addr(2), Dead(1, "n2", "n2")))
    assert ev.kind == MemberEventKind.LEFT and ev.member.state == NodeState.LEFT


def test_push_pull_merge_only_suspects_members_reported_dead() -> None:
    """A peer's DEAD entry makes a member suspect here; a LEFT entry makes it left."""
    m = make(0)
    with_peers(m, 9)
    remote = PushPull(False, (PushNodeState("n1", addr(1), b"", 1, NodeState.DEAD, DEFAULT_VSN),
                              PushNodeState("n2", addr(2), b"", 1, NodeState.LEFT, DEFAULT_VSN)))
    acts = m.stream_reply_received(1.0, addr(3), remote)
    kinds = {e.member.name: e.kind for e in events(acts)}
    assert kinds == {"n1": MemberEventKind.SUSPECT, "n2": MemberEventKind.LEFT}


# ---------------------------------------------------------------------------- gossip


def test_gossip_retransmit_limit() -> None:
    """A state change is gossiped exactly retransmit_mult * ceil(log10(N+1)) times, then dropped."""
    m2 = make(0)
    with_peers(m2, 9)  # N = 10 -> limit 8
    assert m2.retransmit_limit() == 8
    count = 0
    change = Suspect(1, "n5", "n7")

    def count_change(_t: float, acts: list[SwimAction]) -> None:
        nonlocal count
        count += sum(1 for _, msg in messages(acts, Suspect) if msg == change)

    m2.packet_received(0.0, addr(7), change)
    run_until(m2, 10.0, count_change)
    assert count == 8
    assert change not in m2.pending_gossip()


def test_gossip_goes_to_gossip_nodes_members_per_interval() -> None:
    """Each gossip round sends to at most gossip_nodes distinct members, every gossip interval."""
    m = make(0, probe_interval=100.0, probe_timeout=50.0, push_pull_interval=1000.0)
    with_peers(m, 9)
    rounds: list[tuple[float, list[Addr]]] = []

    def record(t: float, acts: list[SwimAction]) -> None:
        dests = [p.addr for p in sent(acts)]
        if dests:
            rounds.append((t, dests))

    run_until(m, 2.0, record)
    assert rounds
    for _, dests in rounds:
        assert len(dests) <= 3 and len(set(dests)) == len(dests)
    times = [t for t, _ in rounds]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g == pytest.approx(0.2) for g in gaps)


def test_packets_respect_the_udp_buffer_size() -> None:
    """Piggybacked gossip never makes a packet's estimated size exceed the UDP buffer."""
    from pulse._core.swim_messages import wire_size

    m = make(0, udp_buffer_size=300)
    for i in range(1, 40):
        m.packet_received(0.0, addr(i), Alive(1, f"n{i}", addr(i), b"x" * 60, DEFAULT_VSN))
    acts = m.packet_received(1.0, addr(1), Ping(1, "n0", addr(1), "n1"))
    (pkt,) = sent(acts)
    assert len(pkt.messages) > 1
    assert sum(wire_size(x) + 2 for x in pkt.messages) + 2 <= 300 + 2


def test_buddy_system_piggybacks_the_suspicion_on_the_probe() -> None:
    """Probing a suspect member sends the ping and the suspect message in one packet."""
    m = make(0)
    with_peers(m, 2)
    m.packet_received(0.0, addr(2), Suspect(1, "n1", "n2"))
    while True:
        t, ping, acts = next_probe(m)
        if ping.node == "n1":
            break
        m.packet_received(t, addr(2), Ack(ping.seq_no))
    (pkt,) = [p for p in sent(acts) if any(isinstance(x, Ping) for x in p.messages)]
    assert pkt.addr == addr(1)
    assert pkt.messages == (ping, Suspect(1, "n1", "n0"))


def test_plain_swim_has_no_buddy_and_no_nacks() -> None:
    """With lifeguard=False, probes of suspects carry no suspect message and indirect pings no nack."""
    m = make(0, lifeguard=False)
    with_peers(m, 4)
    m.packet_received(0.0, addr(2), Suspect(1, "n1", "n2"))
    while True:
        t, ping, acts = next_probe(m)
        if ping.node == "n1":
            break
        m.packet_received(t, addr(2), Ack(ping.seq_no))
    assert not messages([p for p in sent(acts) if p.addr == addr(1)], Suspect)
    acts = run_until(m, t + 0.5)
    assert all(isinstance(x, IndirectPing) and not x.nack for _, x in messages(acts, IndirectPing))


# ---------------------------------------------------------------------------- lifeguard awareness


def test_missed_nacks_raise_health_score_and_stretch_the_probe_period() -> None:
    """A probe that gets neither ack nor the expected nacks raises the score by the missing nacks,
    and the next probe period is (score + 1) x probe_interval long."""
    m = make(0)
    with_peers(m, 9)
    t0, _p0, _ = next_probe(m)
    t1, _p1, _ = next_probe(m)  # first probe failed with 0 of 3 nacks
    assert t1 == pytest.approx(t0 + 1.0)
    assert m.health_score == 3
    t2, _p2, _acts = next_probe(m)
    assert t2 == pytest.approx(t1 + 4.0)  # the second probe ran with score 3: 4 periods long
    assert m.health_score == 6
    t3, _, _ = next_probe(m)
    assert t3 == pytest.approx(t2 + 7.0)
    assert m.health_score == 7  # capped at awareness_max_multiplier - 1
    t4, _, _ = next_probe(m)
    assert t4 == pytest.approx(t3 + 8.0)


def test_received_nacks_spare_the_health_score() -> None:
    """When every helper nacks, a failed probe blames the target, not us (score unchanged)."""
    m = make(0)
    with_peers(m, 9)
    t, ping, _ = next_probe(m)
    acts = run_until(m, t + 0.5)
    helpers = [a for a, _ in messages(acts, IndirectPing)]
    assert len(helpers) == 3
    for h in helpers:
        m.packet_received(t + 0.9, h, Nack(ping.seq_no))
    run_until(m, t + 1.0)
    assert m.health_score == 0
    assert m.member(ping.node).state == NodeState.SUSPECT  # type: ignore[union-attr]


def test_successful_probes_lower_the_health_score() -> None:
    """Each answered probe lowers the score by one."""
    m = make(0)
    with_peers(m, 9)
    m.packet_received(0.0, addr(1), Suspect(1, "n0", "n1"))  # refute: score 1
    m.packet_received(0.0, addr(1), Suspect(2, "n0", "n1"))  # refute: score 2
    assert m.health_score == 2
    t, ping, _ = next_probe(m)
    m.packet_received(t + 0.01, addr(1), Ack(ping.seq_no))
    assert m.health_score == 1


def test_awareness_stretches_the_probe_timeout_too() -> None:
    """By default (the paper's rule) the indirect phase starts (score+1) x timeout late."""
    m = make(0)
    with_peers(m, 9)
    m.packet_received(0.0, addr(1), Suspect(1, "n0", "n1"))
    assert m.health_score == 1
    t, _, _ = next_probe(m)
    assert not messages(run_until(m, t + 0.999), IndirectPing)
    assert messages(run_until(m, t + 1.0), IndirectPing)


def test_memberlist_awareness_keeps_the_probe_timeout() -> None:
    """With awareness_scales_probe_timeout=False (memberlist's rule) only the period stretches:
    the indirect phase starts one plain timeout after the ping."""
    m = make(0, awareness_scales_probe_timeout=False)
    with_peers(m, 9)
    m.packet_received(0.0, addr(1), Suspect(1, "n0", "n1"))
    assert m.health_score == 1
    t, _, _ = next_probe(m)
    assert not messages(run_until(m, t + 0.499), IndirectPing)
    assert messages(run_until(m, t + 0.5), IndirectPing)


# ---------------------------------------------------------------------------- join, leave, meta


def test_join_and_bootstrap() -> None:
    """A new machine knows only itself; join() push-pulls with every seed; replies are merged."""
    m = make(0)
    assert [x.name for x in m.members()] == ["n0"]
    (boot,) = events(m.handle_timer(0.0), MemberEventKind.JOINED)
    assert boot.member.name == "n0"
    acts = m.join(0.0, [addr(1), addr(2)])
    assert [a.addr for a in acts if isinstance(a, OpenPushPull)] == [addr(1), addr(2)]
    assert all(isinstance(a, OpenPushPull) and a.state.join and a.state.states[0].name == "n0" for a in acts)
    seed = make(1)
    reply = seed.stream_received(0.1, addr(0), acts[0].state)  # type: ignore[union-attr]
    assert [e.member.name for e in events(reply, MemberEventKind.JOINED)] == ["n0"]
    assert isinstance(reply[0], StreamReply) and isinstance(reply[0].message, PushPull)
    merged = m.stream_reply_received(0.2, addr(1), reply[0].message)
    assert [e.member.name for e in events(merged, MemberEventKind.JOINED)] == ["n1"]


def test_graceful_leave() -> None:
    """leave() marks us left, sends the dead-from-self message at once and stops probing."""
    m = make(0)
    with_peers(m, 5)
    acts = m.leave(3.0)
    (ev,) = events(acts, MemberEventKind.LEFT)
    assert ev.member.name == "n0"
    dead_sent = messages(acts, Dead)
    assert dead_sent and all(msg == Dead(1, "n0", "n0") for _, msg in dead_sent)
    assert 1 <= len(dead_sent) <= 3
    later = run_until(m, 20.0)
    assert not messages(later, Ping)
    # Receivers record a leave, not a failure.
    other = make(1)
    with_peers(other, 0)
    other.packet_received(0.0, addr(0), alive(0))
    (left,) = events(other.packet_received(3.1, addr(0), Dead(1, "n0", "n0")))
    assert left.kind == MemberEventKind.LEFT
    # A late alive about ourselves does not bring us back.
    assert m.packet_received(4.0, addr(1), alive(0, inc=1)) == []
    assert m.has_left and m.member("n0").state == NodeState.LEFT  # type: ignore[union-attr]
    assert m.leave(5.0) == []


def test_metadata_update() -> None:
    """update_meta() raises our incarnation and gossips alive with the new meta; peers see UPDATED."""
    m = make(0)
    with_peers(m, 3)
    m.update_meta(1.0, b"role=db")
    assert m.incarnation == 2
    news = [g for g in m.pending_gossip() if isinstance(g, Alive) and g.node == "n0"]
    assert news == [Alive(2, "n0", addr(0), b"role=db", DEFAULT_VSN)]
    peer = make(1)
    peer.packet_received(0.0, addr(0), alive(0))
    (ev,) = events(peer.packet_received(1.1, addr(0), news[0]))
    assert ev.kind == MemberEventKind.UPDATED and ev.member.meta == b"role=db"
    with pytest.raises(LocalProtocolError):
        m.update_meta(2.0, b"x" * 513)


def test_an_alive_about_us_with_other_meta_is_refuted() -> None:
    """Someone gossiping our name with different metadata at our incarnation makes us refute."""
    m = make(0, meta=b"mine")
    assert m.packet_received(1.0, addr(5), Alive(1, "n0", addr(0), b"theirs", DEFAULT_VSN)) == []
    assert m.incarnation == 2
    assert Alive(2, "n0", addr(0), b"mine", DEFAULT_VSN) in m.pending_gossip()


def test_dead_members_are_reaped_after_gossip_to_the_dead_time() -> None:
    """A dead member is forgotten at the first probe wrap-around after gossip_to_the_dead_time."""
    m = make(0)
    with_peers(m, 3)
    m.packet_received(1.0, addr(2), Dead(1, "n3", "n2"))
    assert m.member("n3") is not None

    def answer(t: float, acts: list[SwimAction]) -> None:
        for a, msg in messages(acts, Ping):
            assert isinstance(msg, Ping)
            m.packet_received(t, a, Ack(msg.seq_no))

    run_until(m, 40.0, answer)
    assert m.member("n3") is None
    assert {x.name for x in m.members()} == {"n0", "n1", "n2"}


def test_handle_timer_before_the_deadline_does_nothing() -> None:
    """Calling the timer early has no effect beyond the one-off bootstrap event."""
    m = make(0)
    with_peers(m, 3)
    m.handle_timer(0.0)
    d = m.next_deadline()
    assert d is not None
    assert d > 0
    assert m.handle_timer(d - 1e-6) == []


# ---------------------------------------------------------------------------- a small cluster


class Net:
    """Zero-loss in-memory network of machines with a fixed latency (virtual time)."""

    def __init__(self, n: int, latency: float = 0.002, seed: int = 1, **kw: Any) -> None:
        self.machines = {addr(i): make(i, seed=seed + i, **kw) for i in range(n)}
        self.latency = latency
        self.dead: set[Addr] = set()
        self.queue: list[tuple[float, int, Addr, Addr, PacketMessage]] = []
        self.counter = 0
        self.events: list[tuple[str, MemberEvent]] = []
        state = PushPull(False, tuple(PushNodeState(f"n{i}", addr(i), b"", 1, NodeState.ALIVE, DEFAULT_VSN)
                                      for i in range(n)))
        for a, m in self.machines.items():
            self.dispatch(a, 0.0, m.stream_reply_received(0.0, a, state))

    def dispatch(self, src: Addr, now: float, acts: list[SwimAction]) -> None:
        for act in acts:
            if isinstance(act, SendPacket):
                for msg in act.messages:
                    self.counter += 1
                    self.queue.append((now + self.latency, self.counter, src, act.addr, msg))
            elif isinstance(act, MemberEvent):
                self.events.append((self.machines[src].name, act))

    def run(self, end: float) -> None:
        now = 0.0
        while now <= end:
            candidates = [(m.next_deadline() or math.inf, a) for a, m in self.machines.items()
                          if a not in self.dead]
            t_timer, a_timer = min(candidates)
            t_msg = min(self.queue)[0] if self.queue else math.inf
            now = min(t_timer, t_msg)
            if now > end:
                break
            if t_msg <= t_timer:
                self.queue.sort()
                _, _, src, dst, msg = self.queue.pop(0)
                if dst in self.machines and dst not in self.dead:
                    self.dispatch(dst, now, self.machines[dst].packet_received(now, src, msg))
            else:
                self.dispatch(a_timer, now, self.machines[a_timer].handle_timer(now))


def test_cluster_detects_a_killed_member_and_nobody_else() -> None:
    """Five members: a killed one is marked failed by all others within the LAN bound; no false positive."""
    net = Net(5)
    net.run(10.0)
    net.dead.add(addr(4))
    net.run(40.0)
    failed = [(who, e) for who, e in net.events if e.kind == MemberEventKind.FAILED]
    assert {e.member.name for _, e in failed} == {"n4"}
    assert {who for who, _ in failed} == {"n0", "n1", "n2", "n3"}
    first = min(e.at for _, e in failed)
    # probe wait (up to N-1 periods in the worst case) + suspicion min (4 s at N=5) + 1 period.
    assert 10.0 + 4.0 < first < 10.0 + 4 + 1 + 5.0


def test_cluster_member_refutes_a_false_suspicion() -> None:
    """A member wrongly suspected by one peer refutes through gossip; nobody marks it failed."""
    net = Net(5)
    net.run(2.0)
    m1 = net.machines[addr(1)]
    net.dispatch(addr(1), 2.0, m1.packet_received(2.0, addr(1), Suspect(1, "n2", "n1")))
    net.run(60.0)
    assert not [e for _, e in net.events if e.kind == MemberEventKind.FAILED]
    assert net.machines[addr(2)].incarnation == 2
    assert all(m.member("n2").incarnation == 2 for m in net.machines.values())  # type: ignore[union-attr]


def test_crc_is_requested_only_for_protocol_5_peers() -> None:
    """Packets to members announcing protocol 5 ask for the CRC header; older or unknown ones not."""
    m = make(0)
    m.packet_received(0.0, addr(1), alive(1))  # vsn pmax 5
    m.packet_received(0.0, addr(2), alive(2, vsn=(1, 4, 2, 2, 5, 5)))
    (to_new,) = sent(m.packet_received(1.0, addr(1), Ping(1, "n0", addr(1), "n1")))
    (to_old,) = sent(m.packet_received(1.0, addr(2), Ping(2, "n0", addr(2), "n2")))
    (to_unknown,) = sent(m.packet_received(1.0, addr(7), Ping(3, "n0", addr(7), "n7")))
    assert (to_new.crc, to_old.crc, to_unknown.crc) == (True, False, False)


def test_clear_gossip_forgets_pending_broadcasts() -> None:
    """clear_gossip() empties the broadcast queue (used to start simulations converged)."""
    m = make(0)
    with_peers(m, 3)
    assert m.pending_gossip()
    m.clear_gossip()
    assert m.pending_gossip() == []
