"""Presence data and the live presence table shared by ``pulse agent``, ``watch`` and ``demo``.

An agent registers ``<prefix>/<id>`` with msgpack data: ``host``, ``pid``, ``started`` (wall
clock, seconds), ``rtt`` (seconds, one request round trip measured at registration),
``timeout`` (the negotiated session timeout) and ``meta`` (the user's ``k=v`` pairs). Only
the backend-neutral :class:`pulse.presence.PresenceSession` API is used, so the same data
works on ``pulse://`` and ``zk://``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from pulse.codec import unpack_body
from pulse.errors import ProtocolError
from pulse.presence import PresenceEvent

PRESENCE_PREFIX = "/pulse/presence"


def encode_presence(*, host: str, pid: int, started: float, rtt: float | None,
                    timeout: float, meta: Mapping[str, str]) -> bytes:
    """The registration data of an agent."""
    packed: bytes = msgpack.packb(
        {"host": host, "pid": pid, "started": started, "rtt": rtt, "timeout": timeout,
         "meta": dict(meta)},
        use_bin_type=True,
    )
    return packed


def decode_presence(data: bytes) -> dict[str, Any]:
    """Registration data as a dict; data that is not a msgpack map comes back as ``raw`` hex."""
    if not data:
        return {}
    try:
        value = unpack_body(data)
    except ProtocolError:
        return {"raw": data.hex()}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        return {"raw": data.hex()}
    return value


def parse_meta(pairs: Iterable[str]) -> dict[str, str]:
    """``["k=v", …]`` → ``{"k": "v"}``; raises ValueError for an item without ``=``."""
    meta: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--meta expects key=value, got {pair!r}")
        meta[key] = value
    return meta


def child_key(prefix: str, name: str) -> str:
    """The key of ``name`` under ``prefix``."""
    return f"{prefix.rstrip('/')}/{name}"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass(slots=True)
class Member:
    """One watched member as the table shows it."""

    id: str
    online: bool
    info: dict[str, Any] = field(default_factory=dict)
    changed: float = 0.0  # wall clock of the last online/offline change
    note: str = ""

    @property
    def rtt(self) -> float | None:
        """The agent's reported round-trip time in seconds."""
        return _number(self.info.get("rtt"))

    @property
    def started(self) -> float | None:
        """When the agent started its session (wall clock)."""
        return _number(self.info.get("started"))


def format_seconds(seconds: float | None) -> str:
    """A short human duration (``850 ms``, ``3.2 s``, ``4 min``)."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.0f} min"


#: Consoles at least this wide get the full presence table (host, pid, meta).
WIDE = 110


class PresenceTable:
    """Who is online under a prefix, built from presence events."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}

    def apply(self, event: PresenceEvent, now: float) -> bool:
        """Record ``event`` at wall-clock ``now``; False if it changes nothing shown (an
        online for a member already online with the same data, or an offline for one that
        is not online)."""
        member = self.members.get(event.id)
        if event.event == "online":
            info = decode_presence(event.data)
            if member is not None and member.online and member.info == info:
                return False
            self.members[event.id] = Member(event.id, True, info, now)
            return True
        if member is None or not member.online:
            return False
        member.online = False
        member.changed = now
        return True

    def online_ids(self) -> set[str]:
        """Ids currently online."""
        return {m.id for m in self.members.values() if m.online}

    def render(self, title: str, now: float, extra_columns: Mapping[str, Mapping[str, str]]
               | None = None, *, width: int | None = None) -> Any:
        """A :class:`rich.table.Table` of the members (rich is imported here, lazily).

        On a console narrower than :data:`WIDE` columns (``width``) the host, pid and meta
        columns are left out and the headers shortened, so that ids and states stay whole.
        """
        from rich.table import Table

        compact = width is not None and width < WIDE
        table = Table(title=title, title_justify="left", expand=False)
        extra_columns = extra_columns or {}
        extra_names = sorted({k for cols in extra_columns.values() for k in cols})
        table.add_column("ID", no_wrap=True, min_width=8)
        table.add_column("STATE", no_wrap=True, min_width=7)
        for name in extra_names:
            table.add_column(name.upper(), no_wrap=not compact, min_width=7, overflow="fold")
        for name in (("AGE", "SEEN", "RTT") if compact else ("SESSION AGE", "LAST SEEN", "RTT")):
            table.add_column(name, no_wrap=True)
        if not compact:
            for name in ("HOST", "PID", "META"):
                table.add_column(name, no_wrap=True, overflow="ellipsis")
        for member in sorted(self.members.values(), key=lambda m: m.id):
            info = member.info
            started = member.started
            age = format_seconds(now - started) if member.online and started else "-"
            last_seen = "now" if member.online else f"{format_seconds(now - member.changed)} ago"
            state = "[green]online[/green]" if member.online else "[red]offline[/red]"
            meta = info.get("meta")
            meta_text = (" ".join(f"{k}={v}" for k, v in meta.items())
                         if isinstance(meta, dict) else "")
            cells = [member.id, state]
            cells += [extra_columns.get(member.id, {}).get(name, "") for name in extra_names]
            cells += [age, last_seen, format_seconds(member.rtt)]
            if not compact:
                cells += [str(info.get("host", "-")), str(info.get("pid", "-")), meta_text]
            table.add_row(*cells)
        return table


def event_json(event: PresenceEvent, now: float) -> str:
    """One JSON line for ``pulse watch --json``: ``event``, ``id``, ``time``, ``initial``
    and the decoded ``data`` (online only)."""
    record: dict[str, Any] = {"event": event.event, "id": event.id, "time": round(now, 6),
                              "initial": event.initial}
    if event.event == "online":
        record["data"] = decode_presence(event.data)
    return json.dumps(record, sort_keys=True, default=str)


def wall_time() -> float:
    """Seconds since the Unix epoch (a function so tests can see where time is read)."""
    return time.time()
