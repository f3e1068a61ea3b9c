"""`pulse demo`'s live and final tables stay readable on an 80-column console."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from pulse.cli._presence import encode_presence
from pulse.cli.cmd_demo import Demo
from pulse.presence import PresenceEvent

NOW = 1_700_000_000.0


def make_demo(tmp_path: Path) -> Demo:
    args = argparse.Namespace(agents=6, session_timeout=3.0, tick=None, duration=15.0)
    demo = Demo(args, tmp_path)
    for i, agent in enumerate(demo.agents):
        data = encode_presence(host="a-rather-long-hostname.example.org", pid=40000 + i,
                               started=NOW - 12.5, rtt=0.0004, timeout=3.0, meta={"site": "building-2"})
        demo.table.apply(PresenceEvent("online", agent.name, data), NOW - 12.5)
    return demo


def check_readable(text: str, width: int) -> list[str]:
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    assert "…" not in text, text
    return lines


def test_live_table_at_80_columns_keeps_ids_and_states(tmp_path: Path) -> None:
    """At 80 columns every id and state is printed whole (no 'R…' collapse)."""
    demo = make_demo(tmp_path)
    demo.agents[0].fault = "SIGKILL"
    demo.agents[2].fault = "SIGSTOP 0.75 s"
    demo.table.apply(PresenceEvent("offline", "agent-1"), NOW - 1)
    console = Console(width=80, record=True, color_system=None)
    console.print(demo.table.render("pulse demo — 5/6 online, session timeout 3 s, tick 0.5 s",
                                    NOW, {a.name: {"fault": a.fault or "-"} for a in demo.agents},
                                    width=80))
    text = console.export_text()
    check_readable(text, 80)
    for agent in demo.agents:
        assert agent.name in text
    assert text.count("online") >= 5 and "offline" in text
    assert "SIGKILL" in text and "0.75" in text


def test_live_table_wide_console_shows_every_column(tmp_path: Path) -> None:
    """A wide console still gets host, pid and meta."""
    demo = make_demo(tmp_path)
    console = Console(width=160, record=True, color_system=None)
    console.print(demo.table.render("t", NOW, width=160))
    text = console.export_text()
    assert "HOST" in text and "40003" in text and "site=building-2" in text


def test_final_table_at_80_columns_is_not_cut_off(tmp_path: Path) -> None:
    """The verdict table at 80 columns keeps every agent, verdict and the result line."""
    demo = make_demo(tmp_path)
    demo.start = 0.0
    demo.scenario_over = 100.0
    for agent, fault, at in zip(demo.agents, ("SIGKILL", "SIGSTOP 4.5 s", "SIGSTOP 0.75 s", "SIGKILL"),
                                (5.0, 6.0, 7.0, 8.5), strict=False):
        agent.fault, agent.fault_at = fault, at
    demo.agents[0].offline_at.append(5.0 + 3.123)
    demo.agents[1].offline_at.append(6.0 + 3.301)
    demo.agents[1].resumed_at = 11.0
    demo.agents[1].online_at += [1.0, 11.2]
    demo.agents[3].offline_at.append(8.5 + 2.9)
    demo.completed = True
    console = Console(width=80, record=True, color_system=None)
    assert demo.summary(console=console)
    text = console.export_text()
    lines = check_readable(text, 80)
    for agent in demo.agents:
        assert any(agent.name in line for line in lines)
    flat = " ".join(text.split())
    assert "3.123" in flat and "3.301" in flat and "back" in flat
    # a latency and its unit stay on one line
    assert "offline after 3.123 s" in text and "offline after 3.301 s" in text
    assert text.count("yes") == len(demo.agents)
    assert "result: PASS" in text
