"""``pulse member`` processes on loopback: joins, failures and leaves printed as JSON lines."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from ._serf import free_port

pytestmark = pytest.mark.e2e


class MemberProc:
    """A ``pulse member --json`` process whose output goes to a file."""

    def __init__(self, tmp: Path, name: str, port: int, join: int | None = None,
                 tags: tuple[str, ...] = ()) -> None:
        self.name = name
        self.port = port
        self.out = tmp / f"{name}.jsonl"
        args = [sys.executable, "-m", "pulse.cli.main", "member", "--listen",
                f"gossip://127.0.0.1:{port}", "--name", name, "--json"]
        if join is not None:
            args += ["--join", f"127.0.0.1:{join}"]
        for tag in tags:
            args += ["--tag", tag]
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.DEVNULL)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    async def wait_for(self, event: str, name: str) -> dict[str, Any]:
        while True:
            for item in self.events():
                if item["event"] == event and item["name"] == name:
                    return item
            await trio.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)


async def test_two_member_processes_see_each_other_and_a_killed_one_fails(tmp_path: Path) -> None:
    """Both processes print the other's join (with tags); SIGKILL of one makes the other print
    suspect, then failed."""
    a = MemberProc(tmp_path, "alpha", free_port(), tags=("role=web",))
    b: MemberProc | None = None
    try:
        with trio.fail_after(10):
            await a.wait_for("join", "alpha")
        b = MemberProc(tmp_path, "beta", free_port(), join=a.port, tags=("role=db", "zone=z1"))
        with trio.fail_after(10):
            seen_by_a = await a.wait_for("join", "beta")
            seen_by_b = await b.wait_for("join", "alpha")
        assert seen_by_a["addr"] == f"127.0.0.1:{b.port}"
        assert seen_by_a["tags"] == {"role": "db", "zone": "z1"}
        assert seen_by_b["tags"] == {"role": "web"}
        b.proc.send_signal(signal.SIGKILL)
        b.proc.wait(timeout=5)
        with trio.fail_after(20):
            await a.wait_for("suspect", "beta")
            failed = await a.wait_for("failed", "beta")
        assert failed["confirmed_by"] == ["alpha"]
    finally:
        a.stop()
        if b is not None:
            b.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signalled_member_leaves_gracefully(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM or SIGINT makes a member leave: the other prints left (never failed); exit 0."""
    a = MemberProc(tmp_path, "alpha", free_port())
    b: MemberProc | None = None
    try:
        with trio.fail_after(10):
            await a.wait_for("join", "alpha")  # listening: a seed must be up before a join
        b = MemberProc(tmp_path, "beta", free_port(), join=a.port)
        with trio.fail_after(10):
            await a.wait_for("join", "beta")
        b.proc.send_signal(sig)
        with trio.fail_after(10):
            await a.wait_for("left", "beta")
        assert b.proc.wait(timeout=5) == 0
        assert not [e for e in a.events() if e["event"] == "failed"]
    finally:
        a.stop()
        if b is not None:
            b.stop()


def test_bad_listen_url_is_a_one_line_error() -> None:
    """A scheme other than gossip:// is refused with exit status 2 and one line on stderr."""
    result = subprocess.run([sys.executable, "-m", "pulse.cli.main", "member", "--listen",
                             "tcp://127.0.0.1:1", "--name", "x"], capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("pulse member:")
    assert "gossip://" in result.stderr


class WatchProc:
    """``pulse watch --server gossip://… --json`` (the member table is the default on
    gossip://) with its output in a file."""

    def __init__(self, tmp: Path, seed: int) -> None:
        self.out = tmp / "watch.jsonl"
        args = [sys.executable, "-m", "pulse.cli.main", "watch", "--server",
                f"gossip://127.0.0.1:{seed}", "--json", "--name", "watcher"]
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.PIPE)

    def rows(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    async def wait_for(self, event: str, name: str) -> dict[str, Any]:
        while True:
            for item in self.rows():
                if item["event"] == event and item["name"] == name:
                    return item
            await trio.sleep(0.05)


async def test_watch_members_shows_the_live_member_table(tmp_path: Path) -> None:
    """`pulse watch --members --json` prints the initial rows, then a join, a tag-carrying row,
    suspect and failed for a killed member and left for one that leaves; SIGINT exits 0."""
    a = MemberProc(tmp_path, "alpha", free_port(), tags=("role=web",))
    procs = [a]
    watch: WatchProc | None = None
    try:
        with trio.fail_after(10):
            await a.wait_for("join", "alpha")
        watch = WatchProc(tmp_path, a.port)
        with trio.fail_after(10):
            first = await watch.wait_for("join", "alpha")
        assert first["initial"] is True
        assert first["state"] == "alive"
        assert first["tags"] == {"role": "web"}
        assert first["addr"] == f"127.0.0.1:{a.port}"
        assert first["incarnation"] >= 1
        b = MemberProc(tmp_path, "beta", free_port(), join=a.port, tags=("zone=z1",))
        c = MemberProc(tmp_path, "gamma", free_port(), join=a.port)
        procs += [b, c]
        with trio.fail_after(10):
            joined = await watch.wait_for("join", "beta")
            await watch.wait_for("join", "gamma")
        assert joined["initial"] is False
        assert joined["tags"] == {"zone": "z1"}
        b.proc.send_signal(signal.SIGKILL)
        c.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            left = await watch.wait_for("left", "gamma")
        assert left["state"] == "left"
        with trio.fail_after(20):
            suspect = await watch.wait_for("suspect", "beta")
            failed = await watch.wait_for("failed", "beta")
        assert suspect["state"] == "suspect"
        assert failed["state"] == "failed"
        assert failed["time"] >= suspect["time"]
        watch.proc.send_signal(signal.SIGINT)
        assert watch.proc.wait(timeout=10) == 0
        # The watcher was a member: alpha saw it join and leave gracefully.
        with trio.fail_after(5):
            await a.wait_for("left", "watcher")
    finally:
        for p in procs:
            p.stop()
        if watch is not None and watch.proc.poll() is None:
            watch.proc.kill()
            watch.proc.wait()


def test_watch_members_needs_a_gossip_server() -> None:
    """--members with a pulse:// server is refused with exit status 2 and one line on stderr."""
    result = subprocess.run([sys.executable, "-m", "pulse.cli.main", "watch", "--server",
                             "pulse://127.0.0.1:1", "--members"], capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("pulse watch:")
    assert "gossip://" in result.stderr
