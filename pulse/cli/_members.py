"""The live member table of ``pulse watch --server gossip://… --members``.

The watcher joins the group as a member of its own (memberlist's LAN timing), so it hears
every change by gossip the moment the group does: joins, suspicions, refutations, failures,
leaves and tag updates. The table starts from the watcher's view right after the join (rows
marked ``initial``) and then follows its member events. Rows of failed and left members stay
(with their state) until the watcher stops.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pulse._core.swim import Member as SwimMember
from pulse._core.swim import MemberEvent

#: The order of the states in the table title.
STATES = ("alive", "suspect", "failed", "left")


@dataclass(slots=True)
class MemberRow:
    """One member as the table shows it."""

    name: str
    addr: str
    state: str
    incarnation: int
    tags: dict[str, str] = field(default_factory=dict)
    changed: float = 0.0  # wall clock of the last change shown

    def shown(self) -> tuple[str, str, int, tuple[tuple[str, str], ...]]:
        """What a change must differ in to be worth showing."""
        return (self.addr, self.state, self.incarnation, tuple(sorted(self.tags.items())))


def row_of(member: SwimMember, now: float) -> MemberRow:
    """A table row for a machine's member snapshot."""
    from pulse.plugins.gossip.driver import member_state_name, tags_of

    return MemberRow(member.name, f"{member.addr[0]}:{member.addr[1]}", member_state_name(member),
                     member.incarnation, tags_of(member), now)


class MemberTable:
    """The group's members keyed by name, built from snapshots and member events."""

    def __init__(self) -> None:
        self.rows: dict[str, MemberRow] = {}

    def apply(self, member: SwimMember, now: float) -> MemberRow | None:
        """Record ``member``'s current snapshot; the new row, or None when nothing shown
        changed."""
        row = row_of(member, now)
        old = self.rows.get(row.name)
        if old is not None and old.shown() == row.shown():
            return None
        self.rows[row.name] = row
        return row

    def counts(self) -> dict[str, int]:
        """How many rows are in each state."""
        counts = dict.fromkeys(STATES, 0)
        for row in self.rows.values():
            counts[row.state] = counts.get(row.state, 0) + 1
        return counts

    def render(self, title: str, now: float, me: str) -> Any:
        """A :class:`rich.table.Table` of the members (rich is imported here, lazily)."""
        from rich.table import Table

        from pulse.cli._presence import format_seconds

        colours = {"alive": "green", "suspect": "yellow", "failed": "red", "left": "dim"}
        table = Table(title=f"{title} (* this watcher)", title_justify="left", expand=False)
        table.add_column("NAME", no_wrap=True, overflow="fold")
        table.add_column("ADDRESS", no_wrap=True, min_width=9)
        table.add_column("STATE", no_wrap=True, min_width=7)
        table.add_column("INC", no_wrap=True, justify="right")
        table.add_column("SINCE", no_wrap=True, min_width=8)
        table.add_column("TAGS", overflow="fold")
        for row in sorted(self.rows.values(), key=lambda r: r.name):
            colour = colours.get(row.state, "white")
            name = f"{row.name} *" if row.name == me else row.name
            tags = ",".join(f"{k}={v}" for k, v in sorted(row.tags.items()))
            table.add_row(name, row.addr, f"[{colour}]{row.state}[/{colour}]", str(row.incarnation),
                          f"{format_seconds(now - row.changed)} ago", tags)
        return table


def member_json(kind: str, row: MemberRow, event: MemberEvent | None, *, initial: bool) -> str:
    """One JSON line for ``pulse watch --members --json``: ``event`` (``join``, ``alive``,
    ``update``, ``suspect``, ``failed``, ``left``), ``name``, ``addr``, ``state``,
    ``incarnation``, ``tags``, ``time`` (wall clock), ``initial`` and ``confirmed_by``."""
    record: dict[str, Any] = {
        "event": kind, "name": row.name, "addr": row.addr, "state": row.state,
        "incarnation": row.incarnation, "tags": row.tags, "time": round(row.changed, 6),
        "initial": initial,
        "confirmed_by": list(event.confirmed_by) if event is not None else [],
    }
    return json.dumps(record, sort_keys=True)


def member_line(kind: str, row: MemberRow, event: MemberEvent | None, *, initial: bool) -> str:
    """One plain line per change (not a terminal, no ``--json``)."""
    text = f"{kind:<8} {row.name} {row.addr} {row.state} inc={row.incarnation}"
    if row.tags:
        text += " " + ",".join(f"{k}={v}" for k, v in sorted(row.tags.items()))
    if event is not None and event.confirmed_by:
        text += " (by " + ", ".join(event.confirmed_by) + ")"
    if initial:
        text += " (initial)"
    return text
