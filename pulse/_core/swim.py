"""SWIM group membership with Lifeguard, as a pure state machine for one member.

The machine follows HashiCorp memberlist's rules (``state.go``) so that its decisions, and
with the gossip codec its packets, interoperate with memberlist and Serf. Rules it keeps:

* **Probing.** Once per protocol period the next member of a shuffled list is probed
  (randomised round robin: every member is probed once per pass; the list is reshuffled and
  dead members past ``gossip_to_the_dead_time`` are reaped at the wrap-around; new members are
  inserted at a random position). A ping goes out; if no ack arrives within
  ``probe_timeout``, ``indirect_checks`` random alive members are asked to probe the target
  (and to nack when they fail), and a TCP ping is requested from the driver. When the period
  (stretched by local health) ends without an ack, the target becomes *suspect*.
* **Suspicion, refutation, death.** ``suspect``/``alive``/``dead`` carry incarnation numbers.
  A member that hears itself accused refutes with an ``alive`` at a higher incarnation. A
  suspicion that nobody refutes turns into a failure when its timer runs out. A ``dead``
  message whose sender is the member itself is a graceful leave.
* **Incarnation rules** (memberlist's ``aliveNode``/``suspectNode``/``deadNode``): an alive
  about someone else is taken only with a strictly higher incarnation (an address change is
  taken for a member that left); suspect and dead are taken at an equal or higher
  incarnation; only an alive member can become suspect; dead/left members stay so until an
  alive with a higher incarnation.
* **Dissemination.** Every state change is queued for gossip and piggybacked on every
  packet we send (pings, acks, indirect pings, nacks) and sent to ``gossip_nodes`` random
  members every ``gossip_interval``; each message goes out
  ``retransmit_mult * ceil(log10(N + 1))`` times. A periodic push-pull (full state exchange
  over TCP) with one random member repairs whatever gossip missed; joining is a push-pull
  with the seeds.
* **Lifeguard** (on unless ``lifeguard=False``, which gives plain SWIM for comparison):
  local health awareness stretches our probe period and probe timeout (the paper's rule;
  memberlist stretches only the period, ``awareness_scales_probe_timeout=False``);
  the suspicion timeout starts at ``suspicion_max_timeout_mult`` times the minimum and falls
  logarithmically with independent confirmations; a ping to a suspect member carries the
  suspicion (buddy system) so it can refute at once; indirect probes ask for nacks.

Time is the ``now`` argument; randomness comes from the ``random.Random`` passed in. Every
input returns a list of actions (:class:`SendPacket`, :class:`OpenPushPull`,
:class:`TcpPing`, :class:`StreamReply`, :class:`UserMessage`, :class:`MemberEvent`).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from pulse._core._checks import check_count, check_positive
from pulse._core.lifeguard import (
    Awareness,
    Suspicion,
    push_pull_interval,
    retransmit_limit,
    suspicion_min_timeout,
)
from pulse._core.swim_broadcast import BroadcastQueue, Gossip
from pulse._core.swim_messages import (
    META_MAX_SIZE,
    Ack,
    Addr,
    Alive,
    Dead,
    ErrResp,
    IndirectPing,
    Message,
    Nack,
    NodeState,
    PacketMessage,
    Ping,
    PushNodeState,
    PushPull,
    Suspect,
    UserMsg,
    wire_size,
)
from pulse.errors import LocalProtocolError

__all__ = [
    "Member",
    "MemberEvent",
    "MemberEventKind",
    "OpenPushPull",
    "SendPacket",
    "StreamReply",
    "Swim",
    "SwimAction",
    "SwimConfig",
    "TcpPing",
    "UserMessage",
]

#: memberlist's assumed per-packet and per-message overhead of a compound message.
COMPOUND_HEADER_OVERHEAD = 2
COMPOUND_OVERHEAD = 2
#: Version vector we announce: memberlist protocol 1..5 speaking 2, and delegate (Serf)
#: protocol 2..5 speaking 5, which is what a Serf 0.8 agent announces.
DEFAULT_VSN = (1, 5, 2, 2, 5, 5)


@dataclass(frozen=True, slots=True)
class SwimConfig:
    """Tunables; the defaults are memberlist's ``DefaultLANConfig``, except that local health
    stretches the probe timeout too (``awareness_scales_probe_timeout``, the paper's rule)."""

    name: str
    addr: Addr
    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    retransmit_mult: int = 4
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    push_pull_interval: float = 30.0
    gossip_interval: float = 0.2
    gossip_nodes: int = 3
    gossip_to_the_dead_time: float = 30.0
    awareness_max_multiplier: int = 8
    tcp_pings: bool = True
    udp_buffer_size: int = 1400
    meta: bytes = b""
    vsn: tuple[int, ...] = DEFAULT_VSN
    #: False turns off every Lifeguard extension (plain SWIM, for comparisons).
    lifeguard: bool = True
    #: Local health stretches the probe timeout as well as the interval, as the Lifeguard
    #: paper's local-health-aware probe does (memberlist stretches only the interval: False).
    #: A member that processes messages late then waits long enough for the acks it reads
    #: late instead of accusing healthy members; with a score of 0 nothing changes.
    awareness_scales_probe_timeout: bool = True

    def __post_init__(self) -> None:
        for name in ("probe_interval", "probe_timeout", "push_pull_interval", "gossip_interval",
                     "gossip_to_the_dead_time"):
            check_positive(name, getattr(self, name))
        if self.probe_timeout > self.probe_interval:
            raise ValueError("probe_timeout must not exceed probe_interval")
        check_count("indirect_checks", self.indirect_checks, 0)
        check_count("retransmit_mult", self.retransmit_mult, 1)
        check_count("suspicion_mult", self.suspicion_mult, 1)
        check_count("suspicion_max_timeout_mult", self.suspicion_max_timeout_mult, 1)
        check_count("gossip_nodes", self.gossip_nodes, 0)
        check_count("awareness_max_multiplier", self.awareness_max_multiplier, 1)
        check_count("udp_buffer_size", self.udp_buffer_size, 64)
        if not self.name:
            raise ValueError("a member needs a non-empty name")
        if len(self.meta) > META_MAX_SIZE:
            raise ValueError(f"node meta is {len(self.meta)} bytes, the limit is {META_MAX_SIZE}")
        if len(self.vsn) != 6:
            raise ValueError("vsn must be (pmin, pmax, pcur, dmin, dmax, dcur)")


# ---------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Member:
    """A snapshot of one member as this machine sees it."""

    name: str
    addr: Addr
    meta: bytes
    incarnation: int
    state: NodeState
    state_change: float
    vsn: tuple[int, ...]


class MemberEventKind(enum.Enum):
    """What happened to a member."""

    JOINED = "join"
    ALIVE = "alive"  # a suspect member refuted and is alive again
    UPDATED = "update"  # its metadata changed
    SUSPECT = "suspect"
    FAILED = "failed"
    LEFT = "left"


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """A membership change at ``at``; ``confirmed_by`` names the accusers of a suspicion or
    failure (the first accuser included)."""

    kind: MemberEventKind
    member: Member
    at: float
    confirmed_by: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SendPacket:
    """Send ``messages`` in one UDP packet to ``addr`` (a compound packet when several);
    ``crc`` asks for memberlist's CRC header (the receiver speaks protocol 5)."""

    addr: Addr
    messages: tuple[PacketMessage, ...]
    crc: bool = False


@dataclass(frozen=True, slots=True)
class OpenPushPull:
    """Open a TCP stream to ``addr``, send ``state`` and feed the answer back through
    :meth:`Swim.stream_reply_received`."""

    addr: Addr
    state: PushPull


@dataclass(frozen=True, slots=True)
class TcpPing:
    """The fallback probe: open a TCP stream to ``addr``, send ``ping``, and feed an ack
    received before ``deadline`` back through :meth:`Swim.stream_reply_received`."""

    addr: Addr
    ping: Ping
    deadline: float


@dataclass(frozen=True, slots=True)
class StreamReply:
    """Write ``message`` back on the stream the peer opened."""

    message: PushPull | Ack


@dataclass(frozen=True, slots=True)
class UserMessage:
    """An application payload gossiped by ``from_addr``."""

    payload: bytes
    from_addr: Addr


SwimAction = SendPacket | OpenPushPull | TcpPing | StreamReply | UserMessage | MemberEvent


# ---------------------------------------------------------------------------- internals


class _Node:
    __slots__ = ("addr", "incarnation", "meta", "name", "state", "state_change", "vsn")

    def __init__(self, name: str, addr: Addr, meta: bytes, vsn: tuple[int, ...], now: float) -> None:
        self.name = name
        self.addr = addr
        self.meta = meta
        self.vsn = vsn
        self.incarnation = 0
        self.state = NodeState.DEAD
        self.state_change = now

    @property
    def pmax(self) -> int:
        return self.vsn[1] if len(self.vsn) > 1 else 0

    def snapshot(self) -> Member:
        return Member(self.name, self.addr, self.meta, self.incarnation, self.state,
                      self.state_change, self.vsn)


@dataclass(slots=True)
class _Probe:
    seq: int
    target: str
    addr: Addr
    incarnation: int
    timeout_at: float
    end_at: float
    indirect: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    tcp_ok: bool = False


@dataclass(slots=True)
class _Relay:
    orig_seq: int
    reply_to: Addr
    nack: bool
    deadline: float


@dataclass(slots=True)
class _Counters:
    probes: int = 0
    probes_failed: int = 0
    indirect_probes: int = 0
    refutations: int = 0
    packets_sent: int = 0
    messages_sent: int = field(default=0)


class Swim:
    """One member's view of the group and the timers that keep it current."""

    def __init__(self, config: SwimConfig, rng: random.Random, now: float) -> None:
        self.config = config
        self._rng = rng
        self._nodes: dict[str, _Node] = {}
        self._order: list[str] = []
        self._by_addr: dict[Addr, str] = {}
        self._probe_index = 0
        self._incarnation = 0
        self._seq = 0
        self._awareness = Awareness(config.awareness_max_multiplier)
        self._suspicions: dict[str, Suspicion] = {}
        self._queue = BroadcastQueue()
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._left = False
        self.counters = _Counters()
        # memberlist staggers each ticker by a random fraction of its period.
        self._next_probe = now + rng.random() * config.probe_interval
        self._next_gossip = now + rng.random() * config.gossip_interval
        self._next_push_pull = now + rng.random() * config.push_pull_interval
        self._incarnation += 1
        self._boot_events = self._alive(
            now, Alive(self._incarnation, config.name, config.addr, config.meta, config.vsn), bootstrap=True
        )

    # ------------------------------------------------------------------ queries

    @property
    def name(self) -> str:
        """This member's name."""
        return self.config.name

    @property
    def incarnation(self) -> int:
        """Our own current incarnation number."""
        return self._nodes[self.name].incarnation

    @property
    def health_score(self) -> int:
        """Lifeguard's local health score (0 is healthy)."""
        return self._awareness.score

    @property
    def has_left(self) -> bool:
        """True after :meth:`leave`."""
        return self._left

    def member(self, name: str) -> Member | None:
        """The member called ``name``, or None when unknown (or reaped)."""
        node = self._nodes.get(name)
        return None if node is None else node.snapshot()

    def members(self) -> list[Member]:
        """Every known member (ourselves included), in name order."""
        return [self._nodes[n].snapshot() for n in sorted(self._nodes)]

    def alive_members(self) -> list[Member]:
        """Members alive or suspect (the ones a user would call "in the group")."""
        return [m for m in self.members() if m.state in (NodeState.ALIVE, NodeState.SUSPECT)]

    def suspicion(self, name: str) -> Suspicion | None:
        """The running suspicion timer about ``name``, if any (for inspection)."""
        return self._suspicions.get(name)

    def pending_gossip(self) -> list[Gossip]:
        """Queued broadcasts in sending order."""
        return self._queue.pending()

    def gossip_transmits(self, node: str) -> int | None:
        """How many times the pending gossip about ``node`` has been sent."""
        return self._queue.transmits(node)

    def clear_gossip(self) -> None:
        """Forget every pending broadcast (a simulation starting from a converged group uses it,
        so the bootstrap does not flood the network with news everyone already has)."""
        self._queue = BroadcastQueue()

    def retransmit_limit(self) -> int:
        """How many times each gossip message is sent at the current cluster size."""
        return retransmit_limit(self.config.retransmit_mult, len(self._nodes))

    def local_state(self, join: bool = False) -> PushPull:
        """Our full state, as a push-pull carries it."""
        states = tuple(
            PushNodeState(n.name, n.addr, n.meta, n.incarnation, n.state, n.vsn)
            for n in (self._nodes[name] for name in self._order)
        )
        return PushPull(join=join, states=states)

    # ------------------------------------------------------------------ timer contract

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`handle_timer` has work to do."""
        deadlines = [self._next_gossip]
        if not self._left:
            deadlines.append(self._next_push_pull)
            probe = self._probe
            if probe is None:
                deadlines.append(self._next_probe)
            else:
                deadlines.append(probe.end_at if probe.indirect else probe.timeout_at)
        deadlines.extend(r.deadline for r in self._relays.values())
        deadlines.extend(s.deadline() for s in self._suspicions.values())
        return min(deadlines)

    def handle_timer(self, now: float) -> list[SwimAction]:
        """Do everything due at ``now``: relays' nacks, suspicion timeouts, probing,
        gossip and push-pull."""
        out: list[SwimAction] = []
        if self._boot_events:
            out.extend(self._boot_events)
            self._boot_events = []
        if self._relays:
            for seq, relay in list(self._relays.items()):
                if relay.deadline <= now:
                    del self._relays[seq]
                    if relay.nack:
                        out.extend(self._send_msg(relay.reply_to, Nack(relay.orig_seq)))
        if self._suspicions:
            for name, susp in list(self._suspicions.items()):
                if susp.deadline() <= now and self._suspicions.get(name) is susp:
                    del self._suspicions[name]
                    node = self._nodes.get(name)
                    if node is not None and node.state == NodeState.SUSPECT:
                        out.extend(self._dead(now, Dead(node.incarnation, name, self.name), susp))
        if not self._left:
            probe = self._probe
            if probe is not None and not probe.indirect and now >= probe.timeout_at:
                out.extend(self._start_indirect(now, probe))
            if probe is not None and now >= probe.end_at:
                out.extend(self._finish_probe(now, probe))
            if self._probe is None and now >= self._next_probe:
                out.extend(self._start_probe(now))
            if now >= self._next_push_pull:
                out.extend(self._push_pull(now))
                self._next_push_pull = now + push_pull_interval(self.config.push_pull_interval,
                                                                len(self._nodes))
        if now >= self._next_gossip:
            out.extend(self._gossip(now))
            self._next_gossip = _next_tick(self._next_gossip, self.config.gossip_interval, now)
        return out

    # ------------------------------------------------------------------ inputs

    def packet_received(self, now: float, from_addr: Addr, message: PacketMessage) -> list[SwimAction]:
        """One decoded message from a UDP packet sent by ``from_addr``."""
        match message:
            case Ping():
                return self._on_ping(from_addr, message)
            case IndirectPing():
                return self._on_indirect_ping(now, from_addr, message)
            case Ack():
                return self._on_ack(now, message)
            case Nack():
                probe = self._probe
                if probe is not None and probe.seq == message.seq_no:
                    probe.nacks += 1
                return []
            case Alive():
                return self._alive(now, message)
            case Suspect():
                return self._suspect(now, message)
            case Dead():
                return self._dead(now, message)
            case UserMsg():
                return [UserMessage(message.payload, from_addr)]
        raise TypeError(f"not a packet message: {message!r}")

    def stream_received(self, now: float, from_addr: Addr, message: Message) -> list[SwimAction]:
        """A message on a TCP stream the peer opened; the first action is the reply, if any."""
        match message:
            case PushPull():
                reply: list[SwimAction] = [StreamReply(self.local_state(join=message.join))]
                return reply + self._merge(now, message.states)
            case Ping():
                if message.node and message.node != self.name:
                    return []
                return [StreamReply(Ack(message.seq_no))]
            case UserMsg():
                return [UserMessage(message.payload, from_addr)]
        return []

    def stream_reply_received(self, now: float, from_addr: Addr, message: Message) -> list[SwimAction]:
        """The answer on a stream we opened (push-pull state, or the ack of a TCP ping)."""
        match message:
            case PushPull():
                return self._merge(now, message.states)
            case Ack():
                probe = self._probe
                if probe is not None and probe.seq == message.seq_no:
                    probe.tcp_ok = True
                return []
            case ErrResp():
                return []
        return []

    def join(self, now: float, seeds: Iterable[Addr]) -> list[SwimAction]:
        """Push-pull (join flavour) with every seed address."""
        state = self.local_state(join=True)
        return [OpenPushPull(addr, state) for addr in seeds]

    def leave(self, now: float) -> list[SwimAction]:
        """Leave gracefully: announce our own death (``Dead`` from ourselves) and stop probing.

        The announcement goes out at once to ``gossip_nodes`` members and keeps being gossiped;
        the driver should keep the machine running for a few gossip intervals, then stop.
        """
        if self._left:
            return []
        self._left = True
        self._probe = None
        me = self._nodes[self.name]
        out = self._dead(now, Dead(me.incarnation, self.name, self.name))
        out.extend(self._gossip(now))
        return out

    def update_meta(self, now: float, meta: bytes) -> list[SwimAction]:
        """Change our metadata: an alive at a higher incarnation, gossiped to everyone."""
        if len(meta) > META_MAX_SIZE:
            raise LocalProtocolError(f"node meta is {len(meta)} bytes, the limit is {META_MAX_SIZE}")
        if self._left:
            raise LocalProtocolError("cannot update metadata after leaving")
        me = self._nodes[self.name]
        self._incarnation = max(self._incarnation, me.incarnation) + 1
        return self._alive(now, Alive(self._incarnation, self.name, me.addr, bytes(meta), self.config.vsn),
                           bootstrap=True)

    # ------------------------------------------------------------------ probing

    def _start_probe(self, now: float) -> list[SwimAction]:
        cfg = self.config
        self._next_probe = _next_tick(self._next_probe, cfg.probe_interval, now)
        checked = 0
        while True:
            if checked >= len(self._order):
                return []
            if self._probe_index >= len(self._order):
                self._reset_nodes(now)
                self._probe_index = 0
                checked += 1
                continue
            node = self._nodes[self._order[self._probe_index]]
            self._probe_index += 1
            if node.name == self.name or node.state in (NodeState.DEAD, NodeState.LEFT):
                checked += 1
                continue
            break
        interval = self._scale(cfg.probe_interval)
        timeout = self._scale(cfg.probe_timeout) if cfg.awareness_scales_probe_timeout else cfg.probe_timeout
        self._seq += 1
        probe = _Probe(self._seq, node.name, node.addr, node.incarnation, now + timeout, now + interval)
        self._probe = probe
        self.counters.probes += 1
        ping = Ping(probe.seq, node.name, cfg.addr, self.name)
        if node.state == NodeState.ALIVE or not cfg.lifeguard:
            return self._send_msg(node.addr, ping)
        # Buddy system: a suspect member hears of its suspicion with the probe itself.
        return [self._packet(node.addr, (ping, Suspect(node.incarnation, node.name, self.name)))]

    def _start_indirect(self, now: float, probe: _Probe) -> list[SwimAction]:
        cfg = self.config
        probe.indirect = True
        self.counters.indirect_probes += 1
        peers = self._k_random(cfg.indirect_checks, lambda n: n.name not in (self.name, probe.target)
                               and n.state == NodeState.ALIVE)
        out: list[SwimAction] = []
        for peer in peers:
            nack = cfg.lifeguard and peer.pmax >= 4
            if nack:
                probe.expected_nacks += 1
            out.extend(self._send_msg(peer.addr, IndirectPing(
                probe.seq, probe.addr, probe.target, nack, cfg.addr, self.name)))
        target = self._nodes.get(probe.target)
        if cfg.tcp_pings and target is not None and target.pmax >= 3:
            out.append(TcpPing(probe.addr, Ping(probe.seq, probe.target, cfg.addr, self.name), probe.end_at))
        return out

    def _finish_probe(self, now: float, probe: _Probe) -> list[SwimAction]:
        self._probe = None
        self._next_probe = max(self._next_probe, probe.end_at)
        if probe.tcp_ok:
            self._health(-1)
            return []
        self.counters.probes_failed += 1
        if probe.expected_nacks > 0:
            self._health(max(0, probe.expected_nacks - probe.nacks))
        else:
            self._health(1)
        return self._suspect(now, Suspect(probe.incarnation, probe.target, self.name))

    def _on_ack(self, now: float, ack: Ack) -> list[SwimAction]:
        probe = self._probe
        if probe is not None and probe.seq == ack.seq_no:
            self._probe = None
            self._health(-1)
            return []
        relay = self._relays.pop(ack.seq_no, None)
        if relay is not None:
            return self._send_msg(relay.reply_to, Ack(relay.orig_seq))
        return []

    def _on_ping(self, from_addr: Addr, ping: Ping) -> list[SwimAction]:
        if ping.node and ping.node != self.name:
            return []
        to = ping.source_addr if ping.source_addr is not None and ping.source_addr[1] > 0 else from_addr
        return self._send_msg(to, Ack(ping.seq_no))

    def _on_indirect_ping(self, now: float, from_addr: Addr, req: IndirectPing) -> list[SwimAction]:
        self._seq += 1
        reply_to = req.source_addr if req.source_addr is not None and req.source_addr[1] > 0 else from_addr
        self._relays[self._seq] = _Relay(req.seq_no, reply_to, req.nack, now + self.config.probe_timeout)
        return self._send_msg(req.target, Ping(self._seq, req.node, self.config.addr, self.name))

    # ------------------------------------------------------------------ state changes

    def _alive(self, now: float, a: Alive, bootstrap: bool = False) -> list[SwimAction]:
        if self._left and a.node == self.name:
            return []
        if len(a.vsn) >= 3 and (a.vsn[0] == 0 or a.vsn[1] == 0 or a.vsn[0] > a.vsn[1]):
            return []
        node = self._nodes.get(a.node)
        updates_node = False
        if node is None:
            node = _Node(a.node, a.addr, a.meta, a.vsn, now)
            self._nodes[a.node] = node
            self._by_addr[a.addr] = a.node
            # Insert at a random position so a new member is probed soon on average.
            offset = self._rng.randrange(len(self._order)) if self._order else 0
            self._order.append(a.node)
            self._order[offset], self._order[-1] = self._order[-1], self._order[offset]
            updates_node = True
        elif node.addr != a.addr:
            if node.state != NodeState.LEFT:
                return []  # a conflicting address for a live (or recently dead) member
            updates_node = True
        is_local = a.node == self.name
        if a.incarnation <= node.incarnation and not is_local and not updates_node:
            return []
        if a.incarnation < node.incarnation and is_local:
            return []
        self._suspicions.pop(a.node, None)
        old_state, old_meta = node.state, node.meta
        if not bootstrap and is_local:
            if a.incarnation == node.incarnation and a.meta == node.meta and a.vsn == self.config.vsn:
                return []
            self._refute(node, a.incarnation)
            return []
        self._queue.push(a)
        if a.vsn:
            node.vsn = a.vsn
        node.incarnation = a.incarnation
        node.meta = a.meta
        if node.addr != a.addr:
            if self._by_addr.get(node.addr) == node.name:
                del self._by_addr[node.addr]
            node.addr = a.addr
        self._by_addr[a.addr] = node.name
        if node.state != NodeState.ALIVE:
            node.state = NodeState.ALIVE
            node.state_change = now
        if is_local:
            self._incarnation = max(self._incarnation, a.incarnation)
        out: list[SwimAction] = []
        if old_state in (NodeState.DEAD, NodeState.LEFT):
            out.append(MemberEvent(MemberEventKind.JOINED, node.snapshot(), now))
        else:
            if old_state == NodeState.SUSPECT:
                out.append(MemberEvent(MemberEventKind.ALIVE, node.snapshot(), now))
            if old_meta != node.meta:
                out.append(MemberEvent(MemberEventKind.UPDATED, node.snapshot(), now))
        return out

    def _refute(self, me: _Node, accused: int) -> None:
        inc = self._incarnation + 1
        if accused >= inc:
            inc = accused + 1
        self._incarnation = inc
        me.incarnation = inc
        self.counters.refutations += 1
        self._health(1)
        self._queue.push(Alive(inc, me.name, me.addr, me.meta, self.config.vsn))

    def _suspect(self, now: float, s: Suspect) -> list[SwimAction]:
        node = self._nodes.get(s.node)
        if node is None or s.incarnation < node.incarnation:
            return []
        susp = self._suspicions.get(s.node)
        if susp is not None:
            if susp.confirm(s.from_node):
                self._queue.push(s)
            return []
        if node.state != NodeState.ALIVE:
            return []
        if s.node == self.name:
            self._refute(node, s.incarnation)
            return []
        self._queue.push(s)
        node.incarnation = s.incarnation
        node.state = NodeState.SUSPECT
        node.state_change = now
        cfg = self.config
        n = len(self._nodes)
        lo = suspicion_min_timeout(cfg.suspicion_mult, n, cfg.probe_interval)
        if cfg.lifeguard:
            # Aim at the nominal timeout two probe periods early (memberlist's choice of k);
            # with too few members to confirm, expect no confirmations at all.
            k = cfg.suspicion_mult - 2
            if n - 2 < k:
                k = 0
            hi = cfg.suspicion_max_timeout_mult * lo
        else:
            k, hi = 0, lo
        susp = Suspicion(s.from_node, k, lo, hi, now)
        self._suspicions[s.node] = susp
        return [MemberEvent(MemberEventKind.SUSPECT, node.snapshot(), now, (s.from_node,))]

    def _dead(self, now: float, d: Dead, susp: Suspicion | None = None) -> list[SwimAction]:
        node = self._nodes.get(d.node)
        if node is None or d.incarnation < node.incarnation:
            return []
        running = self._suspicions.pop(d.node, None)
        susp = susp or running
        if node.state in (NodeState.DEAD, NodeState.LEFT):
            return []
        if d.node == self.name and not self._left:
            self._refute(node, d.incarnation)
            return []
        self._queue.push(d)
        node.incarnation = d.incarnation
        left = d.node == d.from_node
        node.state = NodeState.LEFT if left else NodeState.DEAD
        node.state_change = now
        if left:
            return [MemberEvent(MemberEventKind.LEFT, node.snapshot(), now, (d.from_node,))]
        accusers = susp.confirmed_by if susp is not None else (d.from_node,)
        return [MemberEvent(MemberEventKind.FAILED, node.snapshot(), now, accusers)]

    def _merge(self, now: float, states: Sequence[PushNodeState]) -> list[SwimAction]:
        out: list[SwimAction] = []
        for r in states:
            if r.state == NodeState.ALIVE:
                out.extend(self._alive(now, Alive(r.incarnation, r.name, r.addr, r.meta, r.vsn)))
            elif r.state == NodeState.LEFT:
                out.extend(self._dead(now, Dead(r.incarnation, r.name, r.name)))
            else:
                # A member the peer believes dead is only suspected here.
                out.extend(self._suspect(now, Suspect(r.incarnation, r.name, self.name)))
        return out

    # ------------------------------------------------------------------ dissemination

    def _gossip(self, now: float) -> list[SwimAction]:
        cfg = self.config

        def eligible(n: _Node) -> bool:
            if n.name == self.name:
                return False
            if n.state in (NodeState.ALIVE, NodeState.SUSPECT):
                return True
            return n.state == NodeState.DEAD and now - n.state_change <= cfg.gossip_to_the_dead_time

        if not self._queue:
            return []
        out: list[SwimAction] = []
        budget = cfg.udp_buffer_size - COMPOUND_HEADER_OVERHEAD
        for node in self._k_random(cfg.gossip_nodes, eligible):
            msgs = self._queue.take(COMPOUND_OVERHEAD, budget, self.retransmit_limit())
            if not msgs:
                break
            out.append(self._packet(node.addr, tuple(msgs)))
        return out

    def _push_pull(self, now: float) -> list[SwimAction]:
        peers = self._k_random(1, lambda n: n.name != self.name and n.state == NodeState.ALIVE)
        if not peers:
            return []
        return [OpenPushPull(peers[0].addr, self.local_state(join=False))]

    def _send_msg(self, addr: Addr, msg: PacketMessage) -> list[SwimAction]:
        budget = self.config.udp_buffer_size - wire_size(msg) - COMPOUND_HEADER_OVERHEAD
        extra = self._queue.take(COMPOUND_OVERHEAD, budget, self.retransmit_limit()) if self._queue else []
        return [self._packet(addr, (msg, *extra))]

    def _packet(self, addr: Addr, msgs: tuple[PacketMessage, ...]) -> SendPacket:
        self.counters.packets_sent += 1
        self.counters.messages_sent += len(msgs)
        return SendPacket(addr, msgs, self._crc_for(addr))

    def _crc_for(self, addr: Addr) -> bool:
        name = self._by_addr.get(addr)
        node = None if name is None else self._nodes.get(name)
        return node is not None and node.pmax >= 5

    # ------------------------------------------------------------------ helpers

    def _health(self, delta: int) -> None:
        if self.config.lifeguard:
            self._awareness.apply_delta(delta)

    def _scale(self, timeout: float) -> float:
        return self._awareness.scale(timeout) if self.config.lifeguard else timeout

    def _k_random(self, k: int, keep: Callable[[_Node], bool]) -> list[_Node]:
        order = self._order
        n = len(order)
        picked: list[_Node] = []
        seen: set[str] = set()
        for _ in range(3 * n):
            if len(picked) >= k:
                break
            node = self._nodes[order[self._rng.randrange(n)]]
            if node.name in seen or not keep(node):
                continue
            seen.add(node.name)
            picked.append(node)
        return picked

    def _reset_nodes(self, now: float) -> None:
        keep: list[str] = []
        for name in self._order:
            node = self._nodes[name]
            if (node.state in (NodeState.DEAD, NodeState.LEFT)
                    and now - node.state_change > self.config.gossip_to_the_dead_time):
                del self._nodes[name]
                if self._by_addr.get(node.addr) == name:
                    del self._by_addr[node.addr]
                continue
            keep.append(name)
        self._rng.shuffle(keep)
        self._order = keep


def _next_tick(previous: float, interval: float, now: float) -> float:
    """The first tick of a ticker with this ``interval`` strictly after ``now`` (ticks that
    fell due while we were busy are dropped, as Go's ticker does)."""
    tick = previous + interval
    if tick <= now:
        tick += ((now - tick) // interval + 1) * interval
    return tick
