"""`pulse agent`, `pulse watch --json` and `pulse demo` as real processes (bounded time)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from pulse.cli import cmd_agent, cmd_demo, cmd_watch
from pulse.cli._standalone import standalone

from ._lease_procs import Agent, agent, lease_server

pytestmark = pytest.mark.e2e


def module(name: str) -> list[str]:
    return [sys.executable, "-m", f"pulse.cli.cmd_{name}"]


def agent_pids(lines: list[str]) -> list[int]:
    """Pids the demo reported for its agents ("started agent-1 (pid 123, kill)")."""
    return [int(line.split("(pid ")[1].split(",")[0]) for line in lines
            if "] started agent-" in line]


def alive(pid: int) -> bool:
    """True if ``pid`` runs (zombies count as dead: they only wait to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_demo_runs_end_to_end_and_passes(tmp_path: Path) -> None:
    """`pulse demo` with small values: agents start, failures are injected and detected
    within timeout + tick, the summary says PASS, exit 0, and no agent is left behind."""
    with trio.fail_after(90):
        result = await trio.run_process(
            [*module("demo"), "--agents", "4", "--session-timeout", "2"],
            capture_stdout=True, stderr=subprocess.STDOUT, check=False, cwd=tmp_path,
        )
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output
    assert "result: PASS" in output
    assert "detection latency: min" in output
    for name in ("agent-1", "agent-2", "agent-4"):
        assert f"{name} offline" in output
    assert "agent-3 offline —" not in output  # the short pause is no failure
    pids = agent_pids(output.splitlines())
    assert len(pids) == 4
    assert not [pid for pid in pids if alive(pid)]


async def test_demo_kills_its_agents_when_interrupted(tmp_path: Path) -> None:
    """SIGINT in the middle of the demo: every agent is stopped and no verdict is printed."""
    process = await trio.lowlevel.open_process(
        [*module("demo"), "--agents", "2", "--session-timeout", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    handle = Agent(process)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle.pump)
        try:
            await handle.wait_line("all 2 agents online", timeout=30)
            pids = agent_pids(handle.lines)
            assert len(pids) == 2 and all(alive(pid) for pid in pids)
            handle.signal(signal.SIGINT)
            with trio.fail_after(15):
                assert await process.wait() == 130
        finally:
            handle.signal(signal.SIGKILL)
        nursery.cancel_scope.cancel()
    assert not [pid for pid in pids if alive(pid)]
    output = "\n".join(handle.lines)
    assert "interrupted" in output
    assert "result:" not in output and "PASS" not in output   # no verdict on a cut-short run


async def test_watch_json_reports_online_and_offline(tmp_path: Path) -> None:
    """`pulse watch --json` prints one object per change with event and id; a SIGTERMed agent
    closes its session, so it is offline at once (not a timeout later)."""
    timeout = 3.0
    async with lease_server(tick=0.25) as server, trio.open_nursery() as nursery:
        watch_process = await trio.lowlevel.open_process(
            [*module("watch"), "--server", server.url, "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=tmp_path,
        )
        watch = Agent(watch_process)
        nursery.start_soon(watch.pump)
        try:
            async with agent(server.url, "json-1", timeout, tmp_path,
                             "--meta", "room=lab") as member:
                await member.wait_line("registered")
                online = json.loads(await watch.wait_line('"event": "online"'))
                assert online["id"] == "json-1"
                assert online["data"]["meta"] == {"room": "lab"}
                assert online["data"]["timeout"] == timeout
                stopped_at = trio.current_time()
                member.signal(signal.SIGTERM)
                offline = json.loads(await watch.wait_line('"event": "offline"'))
                assert offline["id"] == "json-1"
                assert trio.current_time() - stopped_at < timeout / 2
                with trio.fail_after(5):
                    assert await member.process.wait() == 0
        finally:
            watch.signal(signal.SIGTERM)
            with trio.move_on_after(5):
                await watch_process.wait()
            watch.signal(signal.SIGKILL)
        assert watch_process.returncode == 0
        nursery.cancel_scope.cancel()


def test_commands_refuse_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    """Bad URLs, schemes and meta pairs exit 2 with a message, before any network use."""
    assert standalone(cmd_agent, "agent", ["--server", "nope", "--id", "x"]) == 2
    assert standalone(cmd_agent, "agent", ["--server", "pulse://127.0.0.1:1", "--id", "x",
                                           "--meta", "novalue"]) == 2
    assert standalone(cmd_watch, "watch", ["--server", "gopher://127.0.0.1:1"]) == 2
    assert standalone(cmd_demo, "demo", ["--agents", "0"]) == 2
    err = capsys.readouterr().err
    assert "key=value" in err and "gopher" in err
