"""A deterministic simulator of many pure SWIM machines over a simulated network.

Everything runs in one process in virtual time: each member is a :class:`~pulse._core.swim.Swim`
machine; packets are delayed (``latency`` plus uniform ``jitter``) and dropped with probability
``loss``; push-pull and TCP pings are modelled as delayed request/reply pairs that are never
lost. Three kinds of member:

* **healthy** members process every packet and timer on time;
* **slow** members (the Lifeguard paper's CPU-starved members) process every *incoming*
  message ``slow_delay`` seconds late, while their own timers still fire on time, so they
  miss acks and refutations that did arrive;
* **killed** members stop at ``kill_at``: they neither answer nor send.

The run starts from a converged group: every member knows every other (incarnation 1) and
has no pending gossip.

A false positive is a ``failed`` event, at any member, about a member that was not killed
(or before it was killed). Detection time is from the kill to the first ``failed`` event about
the killed member anywhere (``first``) and to the moment every live member has it as failed
(``all``).
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pulse._core.swim import (
    MemberEvent,
    MemberEventKind,
    OpenPushPull,
    SendPacket,
    Swim,
    SwimAction,
    SwimConfig,
    TcpPing,
)
from pulse._core.swim_messages import Ack, Addr, NodeState, PushNodeState, PushPull

__all__ = ["SimConfig", "SimResult", "run"]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """One simulation run."""

    n: int = 100
    duration: float = 300.0
    lifeguard: bool = True
    loss: float = 0.0
    latency: float = 0.001
    jitter: float = 0.001
    slow: int = 0
    slow_delay: float = 0.0
    #: ``(member index, time)`` pairs: who is killed when.
    kills: tuple[tuple[int, float], ...] = ()
    seed: int = 1
    #: Overrides applied to every member's SwimConfig (e.g. ``{"probe_interval": 1.0}``).
    swim: tuple[tuple[str, Any], ...] = ()


@dataclass(slots=True)
class SimResult:
    """What a run measured."""

    config: SimConfig
    false_positives_healthy: int = 0
    false_positives_slow: int = 0
    first_detection: list[float] = field(default_factory=list)
    full_detection: list[float] = field(default_factory=list)
    undetected: int = 0
    packets_sent: int = 0
    packets_received: int = 0
    bytes_estimate: int = 0
    suspicions: int = 0

    @property
    def false_positives(self) -> int:
        """Failed events about members that were alive (healthy or slow)."""
        return self.false_positives_healthy + self.false_positives_slow

    @property
    def median_first_detection(self) -> float | None:
        """Median time from a kill to the first failed event about it."""
        return statistics.median(self.first_detection) if self.first_detection else None

    @property
    def median_full_detection(self) -> float | None:
        """Median time from a kill until every live member marked it failed."""
        return statistics.median(self.full_detection) if self.full_detection else None

    @property
    def msgs_per_member_per_second(self) -> float:
        """UDP packets sent per member per simulated second."""
        return self.packets_sent / (self.config.n * self.config.duration)


def _addr(i: int) -> Addr:
    return (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 7946)


class _Sim:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.now = 0.0
        self.heap: list[tuple[float, int, int, int, Any]] = []
        self.counter = 0
        self.by_addr = {_addr(i): i for i in range(cfg.n)}
        overrides = dict(cfg.swim)
        indices = list(range(cfg.n))
        killed = {i for i, _ in cfg.kills}
        candidates = [i for i in indices if i not in killed]
        self.slow = set(self.rng.sample(candidates, min(cfg.slow, len(candidates))))
        self.kill_at = dict(cfg.kills)
        self.dead: set[int] = set()
        self.machines = [
            Swim(replace(SwimConfig(name=f"m{i}", addr=_addr(i), lifeguard=cfg.lifeguard), **overrides),
                 random.Random(self.rng.getrandbits(64)), 0.0)
            for i in indices
        ]
        self.armed: list[float | None] = [None] * cfg.n
        self.result = SimResult(cfg)
        self.failed_at: dict[int, dict[int, float]] = {i: {} for i in killed}
        # Everyone starts knowing everyone (as after a completed join).
        full = PushPull(False, tuple(PushNodeState(f"m{i}", _addr(i), b"", 1, NodeState.ALIVE,
                                                   self.machines[i].config.vsn) for i in indices))
        for i, m in enumerate(self.machines):
            m.stream_reply_received(0.0, _addr((i + 1) % cfg.n), full)
            m.clear_gossip()  # a converged group: nobody has news to spread
            self._arm(i)
        for i, t in cfg.kills:
            self._push(t, 3, i, None)

    # -- scheduling
    def _push(self, t: float, kind: int, target: int, payload: Any) -> None:
        self.counter += 1
        heapq.heappush(self.heap, (t, self.counter, kind, target, payload))

    def _arm(self, i: int) -> None:
        if i in self.dead:
            return
        d = self.machines[i].next_deadline()
        if d is not None and d != self.armed[i]:
            self.armed[i] = d
            self._push(max(d, self.now), 0, i, d)

    def _delay(self, to: int) -> float:
        d = self.cfg.latency + self.rng.random() * self.cfg.jitter
        if to in self.slow:
            d += self.cfg.slow_delay
        return d

    # -- actions
    def _dispatch(self, i: int, actions: Sequence[SwimAction]) -> None:
        src = _addr(i)
        for a in actions:
            if isinstance(a, SendPacket):
                self.result.packets_sent += 1
                to = self.by_addr.get(a.addr)
                if to is None or (self.cfg.loss and self.rng.random() < self.cfg.loss):
                    continue
                self._push(self.now + self._delay(to), 1, to, (src, a.messages))
            elif isinstance(a, OpenPushPull):
                to = self.by_addr.get(a.addr)
                if to is not None:
                    self._push(self.now + self._delay(to), 2, to, (i, a.state))
            elif isinstance(a, TcpPing):
                to = self.by_addr.get(a.addr)
                if to is None or to in self.dead:
                    continue
                back = self.now + self._delay(to) + self._delay(i)
                if back <= a.deadline:
                    self._push(back, 4, i, (a.addr, Ack(a.ping.seq_no)))
            elif isinstance(a, MemberEvent):
                self._record(i, a)

    def _record(self, observer: int, ev: MemberEvent) -> None:
        if ev.kind == MemberEventKind.SUSPECT:
            self.result.suspicions += 1
            return
        if ev.kind != MemberEventKind.FAILED:
            return
        target = int(ev.member.name[1:])
        kill = self.kill_at.get(target)
        if kill is None or ev.at < kill:
            if target in self.slow:
                self.result.false_positives_slow += 1
            else:
                self.result.false_positives_healthy += 1
            return
        self.failed_at[target].setdefault(observer, ev.at)

    # -- main loop
    def run(self) -> SimResult:
        end = self.cfg.duration
        while self.heap and self.heap[0][0] <= end:
            t, _, kind, i, payload = heapq.heappop(self.heap)
            self.now = t
            if i in self.dead:
                continue
            m = self.machines[i]
            if kind == 0:
                if payload != self.armed[i]:
                    continue
                self.armed[i] = None
                self._dispatch(i, m.handle_timer(t))
            elif kind == 1:
                src, messages = payload
                self.result.packets_received += 1
                for msg in messages:
                    self._dispatch(i, m.packet_received(t, src, msg))
            elif kind == 2:
                origin, state = payload
                out = m.stream_received(t, _addr(origin), state)
                reply = out[0]
                self._dispatch(i, out[1:])
                if origin not in self.dead:
                    self._push(t + self._delay(origin), 4, origin, (_addr(i), reply.message))  # type: ignore[union-attr]
            elif kind == 3:
                self.dead.add(i)
                continue
            elif kind == 4:
                src, msg = payload
                self._dispatch(i, m.stream_reply_received(t, src, msg))
            self._arm(i)
        self._summarise()
        return self.result

    def _summarise(self) -> None:
        for target, seen in self.failed_at.items():
            kill = self.kill_at[target]
            if not seen:
                self.result.undetected += 1
                continue
            self.result.first_detection.append(min(seen.values()) - kill)
            live = [j for j in range(self.cfg.n) if j not in self.dead]
            if all(j in seen for j in live):
                self.result.full_detection.append(max(seen[j] for j in live) - kill)


def run(cfg: SimConfig) -> SimResult:
    """Run one simulation to ``cfg.duration`` and return its measurements."""
    return _Sim(cfg).run()
