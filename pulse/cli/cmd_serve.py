"""``pulse serve``: listen on one or more URLs and heartbeat every client."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

import trio

from pulse._core.policy import PROFILES
from pulse.cli._run import until_interrupted
from pulse.registry import ServeOptions, serve_function

# The command's lease servers use a finer tick than the library's ZooKeeper-like 2 s, so
# sessions of 1 s (2 × tick) are accepted as asked instead of being raised to 4 s.
DEFAULT_TICK = 0.5

HELP = "run a heartbeat server (tcp://, tls://, ws://, dubbo://) or a lease server (pulse://)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``pulse serve``."""
    parser.add_argument("--listen", action="append", metavar="URL",
                        help="where to listen, e.g. tcp://127.0.0.1:7070 (repeatable; "
                             "default pulse://127.0.0.1:7070)")
    parser.add_argument("--interval", type=float, default=10.0, metavar="S",
                        help="heartbeat interval proposed to clients (default 10)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="silence after which a client is dropped (default 3 × interval)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="default",
                        help="heartbeat profile for tcp://, tls://, ws://, wss:// (default: "
                             "default); 'lossy' waits out TCP retransmission on lossy links "
                             "while the kernel still hears the peer (see docs/heartbeat.md)")
    tls = parser.add_argument_group("TLS (tls://, wss://)")
    tls.add_argument("--certfile", help="server certificate chain (PEM)")
    tls.add_argument("--keyfile", help="server private key (PEM)")
    lease = parser.add_argument_group("lease server (pulse://)")
    lease.add_argument("--data-dir", help="journal sessions here so a restart loses nothing")
    lease.add_argument("--tick", type=float, default=DEFAULT_TICK, metavar="S",
                       help=f"expiry bucket width; session timeouts are clamped into "
                            f"[2 × tick, 20 × tick] (default {DEFAULT_TICK:g})")
    lease.add_argument("--max-sessions", type=int, default=None)
    lease.add_argument("--max-sessions-per-address", type=int, default=None)
    lease.add_argument("--max-keys-per-session", type=int, default=None)
    lease.add_argument("--max-data-size", type=int, default=None, metavar="BYTES")
    lease.add_argument("--max-request-rate", type=float, default=None, metavar="PER_S")


# Schemes whose servers cannot start without --certfile.
_NEEDS_CERTIFICATE = frozenset({"tls", "wss"})

_EXTRA = ("certfile", "keyfile", "data_dir", "tick", "max_sessions", "max_sessions_per_address",
          "max_keys_per_session", "max_data_size", "max_request_rate")


async def serve_all(urls: list[str], options: ServeOptions) -> None:
    """Start every listener, print where each listens, then serve until cancelled."""
    targets = [serve_function(url) for url in urls]
    async with trio.open_nursery() as nursery:
        for url, (endpoint, serve) in zip(urls, targets, strict=True):
            try:
                bound = await nursery.start(serve, endpoint, options)
            except OSError as exc:
                if exc.errno is None or exc.filename:
                    raise
                # trio says "Address already in use" without saying which address.
                raise OSError(exc.errno, f"cannot listen on {url}: {exc.strerror}") from exc
            print(f"pulse: listening on {_describe(url, bound)}", flush=True)


def _describe(url: str, bound: Any) -> str:
    try:
        sockname = bound[0].socket.getsockname()
        scheme = url.split("://", 1)[0]
        return f"{scheme}://{sockname[0]}:{sockname[1]}"
    except (TypeError, IndexError, AttributeError, KeyError):
        return str(bound) if isinstance(bound, str) else url


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (Ctrl-C is the normal way to stop: status 0)."""
    extra = {key: getattr(args, key) for key in _EXTRA if getattr(args, key) is not None}
    options = ServeOptions(interval=args.interval, timeout=args.timeout, extra=extra,
                           profile=args.profile)
    urls = args.listen or ["pulse://127.0.0.1:7070"]
    for url in urls:
        if url.split("://", 1)[0] in _NEEDS_CERTIFICATE and not args.certfile:
            raise ValueError(f"{url} needs a certificate: pass --certfile (and --keyfile)")
    trio.run(until_interrupted, partial(serve_all, urls, options))
    return 0
