"""SWIM vs SWIM+Lifeguard with slow members: the Lifeguard paper's experiment, simulated.

Run:  python benchmarks/swim_simulator.py [--n 100] [--duration 300] [--delays 0,2,5,10,20]
      python benchmarks/swim_simulator.py --delays 2 --seeds 7,8,9 --variants SWIM,Lifeguard
      python benchmarks/swim_simulator.py --n 1000 --duration 120 --delays 10 --slow 5
      python benchmarks/swim_simulator.py --load 100,1000 --duration 60

N pure SWIM machines (pulse._core.swim, memberlist LAN defaults) run in one process in
virtual time over a simulated network (1 ms + up to 1 ms latency, 1 % packet loss). 5 % of
the members are *slow*: every message they receive is processed ``delay`` seconds late (a
CPU-starved process), while their own timers fire on time. Ten healthy members are killed at
staggered times. Each row runs the same seeds with:

* ``SWIM``: plain SWIM (no awareness, fixed suspicion timeout, no buddy, no nacks);
* ``Lifeguard``: pulse's Lifeguard, as the paper describes it: local health stretches the
  probe interval *and* the probe timeout, so a slow member waits long enough for the acks it
  processes late instead of accusing healthy members;
* ``Lifeguard, memberlist LHM``: memberlist's variant, where local health stretches only the
  probe interval;
* ``Lifeguard, mult 3``: Lifeguard with suspicion multiplier 3, the paper's point that fewer
  false positives buy a faster setting.

With ``--seeds`` every variant runs once per seed; false positives are summed and the
detection medians are taken over all kills of all seeds.

Columns: false positives (failed events, at any member, about a live member: healthy targets
and slow targets separately), median time from a kill to the first failed event anywhere and
to the last live member marking it failed, kills never detected, and UDP packets sent per
member per second.
"""

from __future__ import annotations

import argparse
import statistics
import time

from pulse._core.swim_sim import SimConfig, SimResult, run


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:5.2f}"


def scenario(n: int, duration: float, delay: float, lifeguard: bool, seed: int,
             swim: tuple[tuple[str, object], ...] = (), slow: int | None = None) -> SimConfig:
    """The slow-member scenario for one protocol variant (``slow`` defaults to 5 % of n)."""
    kills = tuple((i, 20.0 + i * (duration - 60.0) / 10) for i in range(10))
    count = max(1, n // 20) if slow is None else slow
    return SimConfig(n=n, duration=duration, lifeguard=lifeguard, loss=0.01, latency=0.001, jitter=0.001,
                     slow=count if delay > 0 else 0, slow_delay=delay, kills=kills, seed=seed, swim=swim)


#: (label, Lifeguard on, SwimConfig overrides). Lifeguard's local health stretches the probe
#: timeout as well as the probe interval (the paper's local-health-aware probe, pulse's
#: default); "memberlist LHM" stretches only the interval, as memberlist does.
VARIANTS: list[tuple[str, bool, tuple[tuple[str, object], ...]]] = [
    ("SWIM", False, ()),
    ("Lifeguard", True, ()),
    ("Lifeguard, memberlist LHM", True, (("awareness_scales_probe_timeout", False),)),
    ("Lifeguard, mult 3", True, (("suspicion_mult", 3),)),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--delays", default="0,2,5,10,20")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--seeds", default="",
                        help="comma-separated seeds: false positives summed, detection times pooled")
    parser.add_argument("--variants", default="",
                        help="comma-separated protocol labels to run (default: all): "
                             + ", ".join(v[0] for v in VARIANTS))
    parser.add_argument("--slow", type=int, default=None, help="number of slow members (default: 5 %% of n)")
    parser.add_argument("--load", default="",
                        help="comma-separated sizes: only measure the message load of a quiet group "
                             "(1 %% loss, no slow or killed members) at each size")
    args = parser.parse_args()
    if args.load:
        print(f"message load, quiet group, {args.duration:.0f} s simulated, loss 1 %")
        for n in (int(x) for x in args.load.split(",")):
            for label, lifeguard in (("SWIM", False), ("Lifeguard", True)):
                r = run(SimConfig(n=n, duration=args.duration, lifeguard=lifeguard, loss=0.01,
                                  seed=args.seed))
                print(f"N={n:<6} {label:<10} packets sent/member/s {r.msgs_per_member_per_second:5.2f}  "
                      f"received {r.packets_received / (n * args.duration):5.2f}  "
                      f"false positives {r.false_positives}", flush=True)
        return
    delays = [float(d) for d in args.delays.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    variants = [v for v in VARIANTS if not args.variants or v[0] in args.variants.split(",")]
    slow = max(1, args.n // 20) if args.slow is None else args.slow
    print(f"N={args.n}, {args.duration:.0f} s simulated per seed, loss 1 %, slow members {slow} "
          f"(when delay > 0), 10 kills per seed, seeds {','.join(map(str, seeds))}")
    header = (f"{'delay':>6} {'protocol':<26} {'FP healthy':>10} {'FP slow':>8} {'detect 1st':>10} "
              f"{'detect all':>10} {'missed':>6} {'pkts/member/s':>13} {'wall':>6}")
    print(header)
    print("-" * len(header))
    for delay in delays:
        results: dict[str, Pooled] = {}
        for label, lifeguard, swim in variants:
            started = time.perf_counter()
            pooled = Pooled()
            for seed in seeds:
                pooled.add(run(scenario(args.n, args.duration, delay, lifeguard, seed, swim, args.slow)))
            wall = time.perf_counter() - started
            results[label] = pooled
            print(f"{delay:6.1f} {label:<26} {pooled.fp_healthy:>10} {pooled.fp_slow:>8} "
                  f"{_fmt(pooled.median(pooled.first)):>10} {_fmt(pooled.median(pooled.full)):>10} "
                  f"{pooled.undetected:>6} {pooled.load:>13.2f} {wall:5.0f}s", flush=True)
        if "SWIM" not in results:
            continue
        swim_fp = results["SWIM"].fp_healthy
        for label, pooled in results.items():
            if label == "SWIM" or not swim_fp:
                continue
            ratio = f"{swim_fp / pooled.fp_healthy:.0f}x" if pooled.fp_healthy else f">{swim_fp}x (0)"
            print(f"{'':6} healthy-member false positives, SWIM / {label}: {ratio}")


class Pooled:
    """Results of one variant over several seeds: counts summed, detection times pooled."""

    def __init__(self) -> None:
        self.fp_healthy = 0
        self.fp_slow = 0
        self.undetected = 0
        self.first: list[float] = []
        self.full: list[float] = []
        self._loads: list[float] = []

    def add(self, r: SimResult) -> None:
        self.fp_healthy += r.false_positives_healthy
        self.fp_slow += r.false_positives_slow
        self.undetected += r.undetected
        self.first += r.first_detection
        self.full += r.full_detection
        self._loads.append(r.msgs_per_member_per_second)

    @property
    def load(self) -> float:
        return sum(self._loads) / len(self._loads)

    @staticmethod
    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

if __name__ == "__main__":
    main()
