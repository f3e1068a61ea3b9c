"""``pulse keepalive``: the OS's TCP keepalive defaults, what tuning a real socket gets, and
how long each takes to notice a dead peer, side by side.

Four columns: a plain socket (``SO_KEEPALIVE`` off, as every socket starts), the OS defaults
once ``SO_KEEPALIVE`` is on, the requested tuning, and what the kernel holds after applying it
(read back with ``getsockopt``).  With ``HOST:PORT`` the tuning is applied to a connection to
that address; otherwise to an unconnected local TCP socket (the kernel accepts the options
either way).

The keepalive code lives in the TCP plugin; it is loaded by name (``importlib``) because the
core never imports a plugin statically.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import socket
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from pulse.cli._errors import describe

HELP = "show TCP keepalive defaults, tune a real socket, and compare worst-case detection times"

_KEEPALIVE_MODULE = "pulse.plugins.tcp.keepalive"

_COLUMNS = (
    ("plain", "plain socket"),
    ("os_keepalive", "OS defaults + SO_KEEPALIVE"),
    ("requested", "requested"),
    ("applied", "applied (kernel)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``pulse keepalive``."""
    parser.add_argument(
        "target", nargs="?", metavar="HOST:PORT",
        help="connect here and tune that socket (default: an unconnected local TCP socket)",
    )
    parser.add_argument("--idle", type=float, metavar="S",
                        help="seconds of silence before the first probe (preset: 1)")
    parser.add_argument("--interval", type=float, metavar="S",
                        help="seconds between probes (preset: 1)")
    parser.add_argument("--count", type=int, metavar="N",
                        help="unanswered probes before giving up (preset: 2)")
    parser.add_argument("--user-timeout", type=float, metavar="S",
                        help="TCP_USER_TIMEOUT in seconds, 0 to leave it unset (preset: 2)")
    parser.add_argument("--for-timeout", type=float, metavar="S",
                        help="start from the tuning recommended for a heartbeat timeout of S "
                             "seconds instead of the fast preset")
    parser.add_argument("--connect-timeout", type=float, default=5.0, metavar="S",
                        help="seconds to wait for HOST:PORT to accept (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _requested(ka: Any, args: argparse.Namespace) -> Any:
    """The :class:`TcpKeepalive` the flags describe (raises ``ValueError`` on bad values)."""
    base = ka.TcpKeepalive.fast() if args.for_timeout is None else ka.recommended_for(
        args.for_timeout)
    changes: dict[str, Any] = {}
    for name in ("idle", "interval", "count"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    if args.user_timeout is not None:
        changes["user_timeout"] = args.user_timeout or None
    return dataclasses.replace(base, **changes) if changes else base


def _split_target(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); ``ValueError`` says what is wrong."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = target.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {target!r}")
    return host, int(port_text)


def _duration(seconds: float | None) -> str:
    if seconds is None or math.isinf(seconds):
        return "never"
    text = f"{seconds:g} s"
    if seconds < 60:
        return text
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{int(hours)} h"] if hours else []
    if minutes:
        parts.append(f"{int(minutes)} min")
    if secs:
        parts.append(f"{round(secs, 3):g} s")
    return f"{text} ({' '.join(parts)})"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def _column(ka: Any, setting: Any, defaults: Any) -> dict[str, Any]:
    idle = ka.worst_case_detection(setting, idle_socket=True, defaults=defaults)
    busy = ka.worst_case_detection(setting, idle_socket=False, defaults=defaults)
    column: dict[str, Any] = {
        "keepalive": bool(setting.enabled),
        "idle": setting.idle,
        "interval": setting.interval,
        "count": setting.count,
        "user_timeout": setting.user_timeout,
        "detect_idle": None if math.isinf(idle) else idle,
        "detect_in_flight": None if math.isinf(busy) else busy,
    }
    for extra in ("unsupported", "unverified"):
        if hasattr(setting, extra):
            column[extra] = list(getattr(setting, extra))
    return column


def _rows(columns: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    order = [key for key, _ in _COLUMNS]

    def row(label: str, render: Any, field: str) -> tuple[str, list[str]]:
        return label, [render(columns[key][field]) for key in order]

    return [
        row("SO_KEEPALIVE", lambda v: "on" if v else "off", "keepalive"),
        row("idle before first probe", _seconds, "idle"),
        row("probe interval", _seconds, "interval"),
        row("probes", lambda v: "-" if v is None else str(v), "count"),
        row("TCP_USER_TIMEOUT", lambda v: "unset" if v is None else f"{v:g} s", "user_timeout"),
        row("dead peer noticed: idle socket", _duration, "detect_idle"),
        row("dead peer noticed: data in flight", _duration, "detect_in_flight"),
    ]


def _print_plain(rows: Sequence[tuple[str, list[str]]]) -> None:
    headers = ["", *[title for _, title in _COLUMNS]]
    table = [headers, *[[label, *cells] for label, cells in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())


def _print_rich(rows: Sequence[tuple[str, list[str]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="TCP keepalive")
    table.add_column("")
    for _, title in _COLUMNS:
        table.add_column(title)
    for label, cells in rows:
        table.add_row(label, *cells)
    Console().print(table)


def run(args: argparse.Namespace) -> int:
    """Build the four columns, print them (table or JSON); 0 on success, 1/2 on failure."""
    ka = importlib.import_module(_KEEPALIVE_MODULE)
    try:
        requested = _requested(ka, args)
        address = None if args.target is None else _split_target(args.target)
    except ValueError as exc:
        print(f"pulse keepalive: {exc}", file=sys.stderr)
        return 2
    defaults = ka.os_defaults()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as fresh:
        plain = ka.read_keepalive(fresh)
    try:
        if address is None:
            tuned = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            where = "an unconnected local TCP socket"
        else:
            tuned = socket.create_connection(address, timeout=args.connect_timeout)
            where = f"a connection to {args.target}"
    except OSError as exc:
        print(f"pulse keepalive: cannot connect to {args.target}: {describe(exc)}", file=sys.stderr)
        return 1
    with tuned, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ka.KeepaliveWarning)
        applied = requested.apply(tuned)
    notes = [str(w.message) for w in caught if issubclass(w.category, ka.KeepaliveWarning)]
    columns = {
        "plain": _column(ka, plain, defaults),
        "os_keepalive": _column(ka, defaults, defaults),
        "requested": _column(ka, requested, defaults),
        "applied": _column(ka, applied, defaults),
    }
    if args.json:
        print(json.dumps({
            "platform": sys.platform,
            "socket": where,
            "os_defaults": {
                "idle": defaults.idle, "interval": defaults.interval, "count": defaults.count,
                "tcp_retries2": defaults.tcp_retries2, "source": defaults.source,
            },
            "columns": columns,
            "warnings": notes,
        }))
        return 0
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    print(f"OS defaults: {defaults.source} (tcp_retries2={defaults.tcp_retries2})")
    print(f"tuned socket: {where}")
    rows = _rows(columns)
    if sys.stdout.isatty():
        _print_rich(rows)
    else:
        print()
        _print_plain(rows)
    print("\nIdle: counted from the peer's last sign of life. Data in flight: from the first "
          "retransmission\n(Linux; about 0.4 s after the send on a LAN).")
    return 0
