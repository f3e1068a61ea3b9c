"""The member table of ``pulse watch --members``: rows, change detection, JSON and text lines."""

from __future__ import annotations

import json

from rich.console import Console

from pulse._core.swim import Member, MemberEvent, MemberEventKind
from pulse._core.swim_messages import NodeState
from pulse.cli._members import MemberTable, member_json, member_line
from pulse.plugins.gossip.codec import encode_serf_tags


def _member(name: str, state: NodeState = NodeState.ALIVE, incarnation: int = 1,
            tags: dict[str, str] | None = None) -> Member:
    return Member(name, ("127.0.0.1", 7946), encode_serf_tags(tags or {}), incarnation, state, 0.0,
                  (1, 5, 2, 2, 5, 5))


def test_apply_reports_only_changes_that_show() -> None:
    """A repeated snapshot changes nothing; a new state, incarnation or tag set does."""
    table = MemberTable()
    assert table.apply(_member("a", tags={"role": "web"}), 10.0) is not None
    assert table.apply(_member("a", tags={"role": "web"}), 11.0) is None
    suspect = table.apply(_member("a", NodeState.SUSPECT, tags={"role": "web"}), 12.0)
    assert suspect is not None and suspect.state == "suspect" and suspect.changed == 12.0
    refuted = table.apply(_member("a", NodeState.ALIVE, 2, {"role": "web"}), 13.0)
    assert refuted is not None and refuted.incarnation == 2
    updated = table.apply(_member("a", NodeState.ALIVE, 3, {"role": "db"}), 14.0)
    assert updated is not None and updated.tags == {"role": "db"}
    table.apply(_member("b", NodeState.DEAD), 15.0)
    table.apply(_member("c", NodeState.LEFT), 15.0)
    assert table.counts() == {"alive": 1, "suspect": 0, "failed": 1, "left": 1}


def test_json_and_text_lines_carry_every_column() -> None:
    """The JSON line has event, name, addr, state, incarnation, tags, time, initial and
    confirmed_by; the text line names the accusers."""
    table = MemberTable()
    member = _member("b", NodeState.DEAD, 4, {"zone": "z1"})
    row = table.apply(member, 100.5)
    assert row is not None
    event = MemberEvent(MemberEventKind.FAILED, member, 3.0, ("a", "c"))
    record = json.loads(member_json("failed", row, event, initial=False))
    assert record == {"event": "failed", "name": "b", "addr": "127.0.0.1:7946", "state": "failed",
                      "incarnation": 4, "tags": {"zone": "z1"}, "time": 100.5, "initial": False,
                      "confirmed_by": ["a", "c"]}
    line = member_line("failed", row, event, initial=False)
    assert line.split()[:4] == ["failed", "b", "127.0.0.1:7946", "failed"]
    assert "zone=z1" in line and "(by a, c)" in line


def test_render_lists_every_member_with_its_state() -> None:
    """The rich table has a row per member, marks the watcher itself and shows tags."""
    table = MemberTable()
    table.apply(_member("a", tags={"role": "web"}), 0.0)
    table.apply(_member("w"), 0.0)
    table.apply(_member("z", NodeState.SUSPECT), 0.0)
    console = Console(width=200, record=True)
    console.print(table.render("members", 5.0, "w"))
    text = console.export_text()
    assert "w *" in text and "(* this watcher)" in text
    assert "role=web" in text
    assert "suspect" in text and "5.0 s ago" in text
