"""False deaths on a lossy link, and detection of a cut, with and without the lossy profile.

The scenario of the hardening issue: 30 % random loss both ways for 3 x 60 s (a few seconds
of clean link between the periods), heartbeat interval 1 s, timeout 5 s, on ``tcp://`` and
``ws://``, each with the default policy and with ``HeartbeatPolicy(lossy=LossyLink())``, all
at the same time over the same cable (so the noise hits every variant alike). Then, with the
loss still on, the cable is cut and each side's verdict is timed.

Needs root, ``ip netns`` and iptables (the loss is the iptables ``statistic`` match: this
kernel has no netem). Run from the repository root::

    sudo .venv/bin/python benchmarks/lossy_link.py              # the full scenario (~4 min)
    sudo .venv/bin/python benchmarks/lossy_link.py --periods 20  # a quick look

Prints one Markdown table: per variant, the false deaths (sides that declared a live peer
dead during the loss), how many verdicts the profile withheld, the longest silence it kept a
peer through, the longest gap between the peer's segments it saw while withholding, and the
detection time of the cut (mean / worst over every side open at the cut, and how many sides
noticed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e._lossy import INTERVAL, TIMEOUT, Variant, run_scenario
from tests.netns import NetnsPair, netns_unavailable_reason


def _table(outcome_rows: list[list[str]]) -> str:
    header = ["variant", "false deaths", "withheld", "longest silence survived (s)",
              "worst ACK gap (s)",
              "cut: detected", "cut: mean (s)", "cut: worst (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in outcome_rows]
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    periods = [args.periods] * args.rounds
    variants = [Variant(transport, lossy, args.connections)
                for transport in ("tcp", "ws") for lossy in (False, True)]
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    with NetnsPair() as net:
        outcome = await run_scenario(net, variants, loss=args.loss, periods=periods,
                                     pause=args.pause, cut_window=args.cut_window, progress=say)
    rows = []
    for variant in variants:
        name = variant.name
        times = outcome.detection[name]
        seen = [t for t in times if t is not None]
        rows.append([
            name, str(outcome.false_deaths[name]),
            str(outcome.withheld[name]) if variant.lossy else "-",
            f"{outcome.longest_silence[name]:.2f}" if variant.lossy else "-",
            f"{outcome.worst_ack_gap[name]:.2f}" if variant.lossy else "-",
            f"{len(seen)}/{len(times)}",
            f"{statistics.fmean(seen):.2f}" if seen else "-",
            f"{max(seen):.2f}" if seen else "-",
        ])
    print(f"{args.loss:.0%} loss both ways, {args.rounds} x {args.periods:g} s, interval "
          f"{INTERVAL:g} s, timeout {TIMEOUT:g} s, {args.connections} connections per variant "
          f"(both sides judge); then a cut with the loss still on")
    print(_table(rows))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", type=float, default=0.3, help="loss rate each way (0.3)")
    parser.add_argument("--periods", type=float, default=60.0, metavar="S",
                        help="length of each loss period (60)")
    parser.add_argument("--rounds", type=int, default=3, help="loss periods (3)")
    parser.add_argument("--pause", type=float, default=5.0, metavar="S",
                        help="clean link between periods (5)")
    parser.add_argument("--connections", type=int, default=4,
                        help="connections per variant (4)")
    parser.add_argument("--cut-window", type=float, default=20.0, metavar="S",
                        help="how long to wait for the verdicts after the cut (20)")
    arguments = parser.parse_args()
    reason = netns_unavailable_reason()
    if reason is not None:
        sys.exit(f"lossy_link: {reason}")
    sys.exit(trio.run(main, arguments))
