"""``pulse member``: be a member of a gossip (memberlist/Serf) group and print its changes."""

from __future__ import annotations

import argparse
import errno
import json
import signal
import sys

import trio

from pulse._core.swim import Member, MemberEvent
from pulse.cli._errors import reportable
from pulse.cli._run import cancel_on_signal
from pulse.registry import parse_url

# Errors binding the listening sockets, which name no address by themselves.
_BIND_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})

HELP = "join a gossip group (memberlist/Serf compatible) and print membership changes"


def _addr(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return (host.strip("[]") or "127.0.0.1", int(port))


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``pulse member``."""
    parser.add_argument("--listen", required=True, metavar="URL",
                        help="gossip://HOST:PORT to bind (UDP and TCP; port 7946 by default)")
    parser.add_argument("--name", required=True, help="this member's name (unique in the group)")
    parser.add_argument("--join", type=_addr, action="append", default=[], metavar="HOST:PORT",
                        help="a member to join through (repeatable)")
    parser.add_argument("--tag", type=_tag, action="append", default=[], metavar="KEY=VALUE",
                        help="a Serf tag announced in our metadata (repeatable)")
    parser.add_argument("--advertise", type=_addr, default=None, metavar="HOST:PORT",
                        help="address announced to others (default: the bound one)")
    parser.add_argument("--probe-interval", type=float, default=1.0, metavar="S",
                        help="SWIM protocol period (default 1, memberlist's LAN setting; the probe "
                             "timeout is half of it, and failures are detected in about 5 periods)")
    parser.add_argument("--join-timeout", type=float, default=0.0, metavar="S",
                        help="keep retrying the join (every 0.2 s) for this long when no seed "
                             "answers (default 0: one attempt, then exit with an error)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line (with the wall-clock `time` of the change)")


def _line(event: MemberEvent, as_json: bool) -> str:
    from pulse.cli._presence import wall_time
    from pulse.plugins.gossip.driver import tags_of

    m: Member = event.member
    tags = tags_of(m)
    addr = f"{m.addr[0]}:{m.addr[1]}"
    if as_json:
        return json.dumps({"event": event.kind.value, "name": m.name, "addr": addr, "tags": tags,
                           "incarnation": m.incarnation,
                           "confirmed_by": list(event.confirmed_by),
                           "time": round(wall_time(), 6)})
    text = f"{event.kind.value:<8} {m.name} {addr}"
    if tags:
        text += " " + ",".join(f"{k}={v}" for k, v in sorted(tags.items()))
    if event.confirmed_by:
        text += " (by " + ", ".join(event.confirmed_by) + ")"
    return text


async def member(args: argparse.Namespace) -> int:
    """Join, print every change until SIGINT/SIGTERM, then leave gracefully."""
    from pulse._core.swim import SwimConfig
    from pulse.plugins.gossip.driver import gossip_member

    endpoint = parse_url(args.listen, default_port=7946)
    if not args.join_timeout >= 0:
        raise ValueError(f"--join-timeout must be >= 0, got {args.join_timeout}")
    if not args.probe_interval > 0:
        raise ValueError(f"--probe-interval must be > 0, got {args.probe_interval}")
    config = SwimConfig(name=args.name, addr=("127.0.0.1", 1), probe_interval=args.probe_interval,
                        probe_timeout=args.probe_interval / 2,
                        gossip_interval=min(0.2, args.probe_interval))
    if endpoint.scheme != "gossip":
        raise ValueError(f"pulse member listens on gossip://HOST:PORT, not {endpoint.scheme}://")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with (
            gossip_member((endpoint.host, endpoint.port), args.name, tags=dict(args.tag),
                          join=args.join, advertise=args.advertise, config=config,
                          join_timeout=args.join_timeout) as gm,
            trio.open_nursery() as nursery,
        ):

            nursery.start_soon(cancel_on_signal, signals, nursery.cancel_scope)
            async for event in gm.events():
                print(_line(event, args.json), flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """Entry point of ``pulse member``."""
    try:
        return trio.run(member, args)
    except BrokenPipeError:  # pragma: no cover - the reader went away
        sys.stderr.close()
        return 0
    except BaseException as error:
        lone = reportable(error)
        if isinstance(lone, OSError) and lone.errno in _BIND_ERRORS and not lone.filename:
            # The socket layer says "Address already in use" without saying which address.
            raise OSError(lone.errno, f"cannot listen on {args.listen}: {lone.strerror}") from error
        raise
