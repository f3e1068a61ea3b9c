"""SWIM vs SWIM+Lifeguard with slow members: the Lifeguard paper's experiment, simulated.

Run:  python benchmarks/swim_simulator.py [--n 100] [--duration 300] [--delays 0,2,5,10,20]
      python benchmarks/swim_simulator.py --n 1000 --duration 120 --delays 10 --slow 5
      python benchmarks/swim_simulator.py --load 100,1000 --duration 60

N pure SWIM machines (pulse._core.swim, memberlist LAN defaults) run in one process in
virtual time over a simulated network (1 ms + up to 1 ms latency, 1 % packet loss). 5 % of
the members are *slow*: every message they receive is processed ``delay`` seconds late (a
CPU-starved process), while their own timers fire on time. Ten healthy members are killed at
staggered times. Each row runs the same seed with plain SWIM (no awareness, fixed suspicion
timeout, no buddy, no nacks) and with Lifeguard; a third row shows Lifeguard with a lower
suspicion multiplier (3), the paper's point that fewer false positives buy a faster setting.

Columns: false positives (failed events, at any member, about a live member: healthy targets
and slow targets separately), median time from a kill to the first failed event anywhere and
to the last live member marking it failed, kills never detected, and UDP packets sent per
member per second.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--duration", type=float, default=300.0)
    parser.add_argument("--delays", default="0,2,5,10,20")
    parser.add_argument("--seed", type=int, default=7)
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
    variants: list[tuple[str, bool, tuple[tuple[str, object], ...]]] = [
        ("SWIM", False, ()),
        ("Lifeguard", True, ()),
        ("Lifeguard, mult 3", True, (("suspicion_mult", 3),)),
    ]
    slow = max(1, args.n // 20) if args.slow is None else args.slow
    print(f"N={args.n}, {args.duration:.0f} s simulated, loss 1 %, slow members {slow} "
          f"(when delay > 0), 10 kills, seed {args.seed}")
    header = (f"{'delay':>6} {'protocol':<18} {'FP healthy':>10} {'FP slow':>8} {'detect 1st':>10} "
              f"{'detect all':>10} {'missed':>6} {'pkts/member/s':>13} {'wall':>6}")
    print(header)
    print("-" * len(header))
    for delay in delays:
        results: dict[str, SimResult] = {}
        for label, lifeguard, swim in variants:
            started = time.perf_counter()
            r = run(scenario(args.n, args.duration, delay, lifeguard, args.seed, swim, args.slow))
            wall = time.perf_counter() - started
            results[label] = r
            print(f"{delay:6.1f} {label:<18} {r.false_positives_healthy:>10} {r.false_positives_slow:>8} "
                  f"{_fmt(r.median_first_detection):>10} {_fmt(r.median_full_detection):>10} "
                  f"{r.undetected:>6} {r.msgs_per_member_per_second:>13.2f} {wall:5.0f}s", flush=True)
        swim_fp = results["SWIM"].false_positives_healthy
        lg_fp = results["Lifeguard"].false_positives_healthy
        if swim_fp:
            ratio = f"{swim_fp / lg_fp:.0f}x" if lg_fp else f">{swim_fp}x (Lifeguard: 0)"
            print(f"{'':6} healthy-member false positives, SWIM / Lifeguard: {ratio}")


if __name__ == "__main__":
    main()
