"""`pulse ping URL URL`: one peer over redundant paths, as real processes on loopback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import trio

from pulse.cli.main import main
from tests.e2e.test_cli_tcp import PULSE, start_serve

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_one_dead_path_is_a_warning_and_the_count_still_ends_it(tmp_path: Path) -> None:
    """A refused second path prints one path-down line; answers on the live path reach
    -c 4 and the command exits 0 with per-path statistics."""
    refused = f"tcp://127.0.0.1:{free_port()}"
    async with trio.open_nursery() as nursery:
        proc, port = await start_serve(nursery, tmp_path)
        live = f"tcp://127.0.0.1:{port}"
        with trio.fail_after(20):
            result = await trio.run_process(
                [*PULSE, "ping", "-c", "4", "--interval", "0.1", "--timeout", "1", live, refused],
                capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path)
        proc.terminate()
        nursery.cancel_scope.cancel()
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert out.count(f"via {live}: seq=") == 4
    down = [line for line in out.splitlines() if line.startswith("path down:")]
    assert len(down) == 1 and refused in down[0]
    assert f"4 heartbeats answered over 2 paths; {live}: 4 (up), {refused}: 0 (down)" in out
    assert "peer dead" not in result.stderr.decode()


async def test_json_lines_name_the_path(tmp_path: Path) -> None:
    """--json: path_up and pong records carry the path; the summary lists each path's state."""
    async with trio.open_nursery() as nursery:
        proc, port = await start_serve(nursery, tmp_path)
        first, second = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port}?bind=127.0.0.2"
        with trio.fail_after(20):
            result = await trio.run_process(
                [*PULSE, "ping", "--json", "-c", "6", "--interval", "0.1", first, second],
                capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path)
        proc.terminate()
        nursery.cancel_scope.cancel()
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert {r["path"] for r in records if r["event"] == "path_up"} == {first, second}
    assert {r["path"] for r in records if r["event"] == "pong"} == {first, second}
    summary = records[-1]
    assert summary["event"] == "summary" and summary["received"] >= 6
    assert summary["paths"] == {first: "up", second: "up"}


def test_every_path_refused_is_a_dead_peer(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listens on either path: one line per path down, the death on stderr, exit 1."""
    first, second = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    status = main(["ping", "--interval", "0.2", "--timeout", "1", first, second])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.out.count("path down:") == 2
    assert "peer dead: all 2 paths are down" in captured.err
    assert "Connection refused" in captured.out or "failed" in captured.out


def test_timeout_must_exceed_interval_with_several_paths(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Several paths with --timeout not above --interval: a usage error, status 2."""
    status = main(["ping", "--interval", "2", "--timeout", "1", "tcp://127.0.0.1:1",
                   "tcp://127.0.0.1:2"])
    assert status == 2
    assert "must exceed interval" in capsys.readouterr().err
