"""``pulse ping URL URL…``: one peer over redundant paths.

Each URL is one path to the same peer, heartbeated on its own and reconnected on its own
(:func:`pulse.redundant_paths`). A path going silent is a warning line (``path down``); the
peer is declared dead, and the command fails, only when every path is down.
"""

from __future__ import annotations

import argparse
import json
import sys

import trio

from pulse._core.paths import PathState
from pulse._core.stats import RttStats
from pulse._driver.paths import redundant_paths
from pulse.actions import LocalPause, PathAction, PathDown, PathUp, PeerAlive, PeerDead
from pulse.cli._rtt import ms, rtt_fields, rtt_line
from pulse.cli._run import until_interrupted
from pulse.registry import PingReply


async def ping_paths(args: argparse.Namespace) -> int:
    """Ping over every path in ``args.url``; print answers, path changes and a summary."""
    urls: list[str] = list(args.url)
    stats = RttStats()
    answers: dict[str, int] = dict.fromkeys(urls, 0)
    states: dict[str, PathState] = dict.fromkeys(urls, PathState.PENDING)
    reason = ""
    finished = trio.Event()

    def up_count() -> int:
        return sum(state is PathState.UP for state in states.values())

    def emit(record: dict[str, object], line: str | None, *, error: bool = False) -> None:
        if args.json:
            print(json.dumps(record), flush=True)
        elif line is not None:
            print(line, file=sys.stderr if error else sys.stdout, flush=True)

    def on_reply(path: str, reply: PingReply) -> None:
        stats.add(reply.rtt)
        answers[path] += 1
        emit({"event": "pong", "path": path, "seq": reply.seq, "rtt_ms": ms(reply.rtt),
              "peer": reply.peer},
             f"pong from {reply.peer} via {path}: seq={reply.seq} rtt={ms(reply.rtt)} ms")
        if args.count is not None and stats.summary().count >= args.count:
            finished.set()

    def on_event(action: PathAction) -> None:
        nonlocal reason
        if isinstance(action, PathUp):
            states[action.path] = PathState.UP
            emit({"event": "path_up", "path": action.path, "first": action.first,
                  "paths_up": up_count(), "paths": len(urls)},
                 f"path up: {action.path} ({up_count()} of {len(urls)} paths up)")
        elif isinstance(action, PathDown):
            states[action.path] = PathState.DOWN
            emit({"event": "path_down", "path": action.path, "reason": action.reason,
                  "silent_for_ms": ms(action.silent_for), "paths_up": up_count(),
                  "paths": len(urls)},
                 f"path down: {action.path}: {action.reason} "
                 f"({up_count()} of {len(urls)} paths up)")
        elif isinstance(action, PeerDead):
            reason = (f"peer dead: {action.reason}; no answer on any path for "
                      f"{action.silent_for:.3f}s")
            # In text, the closing error line says it (as for one URL).
            emit({"event": "peer_dead", "reason": action.reason,
                  "silent_for_ms": ms(action.silent_for)}, None)
            finished.set()
        elif isinstance(action, PeerAlive):
            emit({"event": "peer_alive", "after_ms": ms(action.after)},
                 f"peer alive again after {action.after:.3f}s")
        elif isinstance(action, LocalPause):
            emit({"event": "local_pause", "late_by_ms": ms(action.late_by)},
                 f"local pause: this process ran {action.late_by:.3f}s late", error=True)

    async def body() -> None:
        async with redundant_paths(urls, interval=args.interval, timeout=args.timeout,
                                   profile=args.profile, on_event=on_event,
                                   on_reply=on_reply):
            await finished.wait()

    await until_interrupted(body)
    summary = stats.summary()
    received = summary.count
    label = ", ".join(urls)
    if args.json:
        print(json.dumps({
            "event": "summary", "urls": urls, "received": received,
            "answers": answers, "paths": {url: states[url].value for url in urls},
            **rtt_fields(summary), "reason": reason or None,
        }), flush=True)
    else:
        print(f"--- {label} pulse statistics ---")
        per_path = ", ".join(f"{url}: {answers[url]} ({states[url].value})" for url in urls)
        print(f"{received} heartbeats answered over {len(urls)} paths; {per_path}")
        if received:
            print(rtt_line(summary))
    if reason:
        print(f"pulse ping: {label}: {reason}", file=sys.stderr)
        return 1
    if args.count is not None:
        return 0 if received >= args.count else 1
    return 0 if received else 1
