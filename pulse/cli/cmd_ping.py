"""``pulse ping``: like ping(8), over pulse heartbeats."""

from __future__ import annotations

import argparse
import json
import math
import sys

import trio

from pulse._core.policy import PROFILES
from pulse._core.stats import RttStats
from pulse.cli._errors import REPORTABLE, describe
from pulse.cli._paths import ping_paths
from pulse.cli._rtt import ms, rtt_fields, rtt_line
from pulse.cli._run import until_interrupted
from pulse.registry import PingOptions, ping_function

HELP = "measure round trips to a pulse peer (tcp://, tls://, ws://, wss://, dubbo://)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``pulse ping``."""
    parser.add_argument("url", nargs="+", metavar="URL",
                        help="peer URL, e.g. tcp://127.0.0.1:7070; several URLs of the same "
                             "peer are redundant paths (the peer is dead only when every "
                             "path is silent; ?bind=ADDR on tcp:// picks the local address)")
    parser.add_argument("-c", "--count", type=int, default=None,
                        help="stop after N answers (default: until Ctrl-C)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="S",
                        help="seconds between heartbeats (default 1)")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S",
                        help="declare the peer dead after S seconds without an answer (default 5)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default",
                        help="heartbeat profile for tcp://, tls://, ws://, wss:// (default: "
                             "default); 'lossy' keeps waiting past --timeout while the kernel "
                             "still hears the peer over a retransmitting path")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


async def ping(args: argparse.Namespace) -> int:
    """Run the pings; print one line per answer and a summary; return the exit status."""
    if isinstance(args.url, list):
        if len(args.url) > 1:
            return await ping_paths(args)
        args.url = args.url[0]
    endpoint, ping_fn = ping_function(args.url)
    connected = False

    def on_connected(peer: str) -> None:
        nonlocal connected
        connected = True

    options = PingOptions(interval=args.interval, timeout=args.timeout, count=args.count,
                          on_connected=on_connected, profile=args.profile)
    stats = RttStats()
    sent = 0
    reason = ""

    async def pings() -> None:
        nonlocal sent, reason, connected
        try:
            async for reply in ping_fn(endpoint, options):
                connected = True
                sent = reply.seq
                stats.add(reply.rtt)
                if args.json:
                    print(json.dumps({"event": "pong", "seq": reply.seq,
                                      "rtt_ms": ms(reply.rtt), "peer": reply.peer}), flush=True)
                else:
                    print(f"pong from {reply.peer}: seq={reply.seq} rtt={ms(reply.rtt)} ms",
                          flush=True)
        except REPORTABLE as exc:
            if connected:
                sent += 1   # the heartbeat that went unanswered
            reason = describe(exc, timeout=args.timeout, scheme=endpoint.scheme)

    # Ctrl-C ends the run; the summary still prints, as ping(8) does.
    await until_interrupted(pings)
    summary = stats.summary()
    received = summary.count
    loss = 0.0 if sent == 0 else 100.0 * (sent - received) / sent
    if args.json:
        print(json.dumps({
            "event": "summary", "url": args.url, "sent": sent, "received": received,
            "loss_percent": round(loss, 1), **rtt_fields(summary),
            "reason": reason or None,
        }), flush=True)
    elif connected or received:
        print(f"--- {args.url} pulse statistics ---")
        print(f"{sent} heartbeats sent, {received} answered, {loss:.1f}% lost")
        if received:
            print(rtt_line(summary))
    if reason:
        print(f"pulse ping: {args.url}: {reason}", file=sys.stderr)
        return 1 if received == 0 or args.count is None or received < args.count else 0
    return 0 if received else 1


def run(args: argparse.Namespace) -> int:
    """Ping until the count is reached, the peer is dead, or Ctrl-C."""
    if args.count is not None and args.count < 1:
        print("pulse ping: --count must be at least 1", file=sys.stderr)
        return 2
    if not (args.interval > 0 and args.timeout > 0 and math.isfinite(args.timeout)):
        print("pulse ping: --interval and --timeout must be positive", file=sys.stderr)
        return 2
    try:
        return trio.run(ping, args)
    except ValueError as exc:
        print(f"pulse ping: {exc}", file=sys.stderr)
        return 2
