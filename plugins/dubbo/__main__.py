"""Run a pulse Dubbo provider or consumer from the shell, reporting events as JSON lines.

    python -m pulse.plugins.dubbo provider --port 20880 --heartbeat 60
    python -m pulse.plugins.dubbo consumer --port 20880 --heartbeat 60

Each line on stdout is one JSON object with an ``event`` key (``listening``,
``channel_opened``, ``channel_closed``, ``connected``, ``disconnected``) and a ``t``
(monotonic seconds); the end-to-end tests read them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio
import trio

from pulse._core.backoff import Backoff
from pulse._core.channel_heartbeat import ChannelTiming
from pulse.cli.logs import configure_logging
from pulse.rpc import open_heartbeat_timer, tick_for

from .consumer import open_consumer
from .provider import DubboProvider


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


async def _provider(args: argparse.Namespace, timing: ChannelTiming) -> None:
    async with open_heartbeat_timer(tick=tick_for(timing)) as timer:
        provider = DubboProvider(timer, timing=timing)
        async with anyio.create_task_group() as nursery:
            host, port = await nursery.start(provider.serve, args.host, args.port)
            _emit("listening", host=host, port=port)
            seen_accepted = seen_closed = 0
            while True:
                changed = provider.changed
                while seen_accepted < provider.accepted:
                    seen_accepted += 1
                    _emit("channel_opened", accepted=seen_accepted)
                fresh = min(provider.closed_total - seen_closed, len(provider.closed))
                for entry in list(provider.closed)[len(provider.closed) - fresh :]:
                    _emit(
                        "channel_closed", peer=entry.peer, reason=entry.reason,
                        timed_out=entry.timed_out, heartbeats_received=entry.heartbeats_received,
                        heartbeats_answered=entry.heartbeats_answered,
                    )
                seen_closed = provider.closed_total
                await changed.wait()


async def _consumer(args: argparse.Namespace, timing: ChannelTiming) -> None:
    backoff = Backoff(initial=args.backoff, maximum=max(args.backoff, 2.0))
    async with open_consumer(args.host, args.port, timing=timing, backoff=backoff) as consumer:
        seen_connects = seen_disconnects = 0
        while True:
            changed = consumer.changed
            fresh = min(consumer.disconnect_total - seen_disconnects, len(consumer.disconnects))
            for reason in consumer.disconnects[len(consumer.disconnects) - fresh :]:
                _emit("disconnected", reason=reason)
            seen_disconnects = consumer.disconnect_total
            while seen_connects < consumer.connects:
                seen_connects += 1
                _emit("connected", connects=seen_connects)
            await changed.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m pulse.plugins.dubbo", description=__doc__)
    parser.add_argument("role", choices=("provider", "consumer"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=20880)
    parser.add_argument("--heartbeat", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--timeout", type=float, default=None, help="default 3 x heartbeat")
    parser.add_argument("--backoff", type=float, default=0.1, help="first reconnect delay")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    args = parser.parse_args(argv)
    configure_logging("console", args.log_level)  # on stderr; stdout carries the JSON events
    timing = ChannelTiming(args.heartbeat, args.timeout)
    run = _provider if args.role == "provider" else _consumer
    try:
        trio.run(run, args, timing)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
