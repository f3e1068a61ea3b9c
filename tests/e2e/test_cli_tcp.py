"""`pulse serve` and `pulse ping` as real processes on loopback (bounded real time)."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from pulse.cli.main import main

pytestmark = pytest.mark.e2e
PULSE = [sys.executable, "-m", "pulse.cli.main"]


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes, limit: float = 10.0) -> bytes:
    """Read a process's output until ``marker`` shows up (bounded in time)."""
    seen = b""
    with trio.fail_after(limit):
        while marker not in seen:
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise AssertionError(f"process ended before printing {marker!r}: {seen!r}")
            seen += chunk
    return seen


async def start_serve(nursery: trio.Nursery, tmp_path: Path, *extra: str) -> tuple[trio.Process, int]:
    command = [*PULSE, "serve", "--listen", "tcp://127.0.0.1:0", "--interval", "0.2", *extra]
    proc: trio.Process = await nursery.start(partial(
        trio.run_process, command, stdout=subprocess.PIPE, check=False, cwd=tmp_path))
    assert proc.stdout is not None
    banner = await read_until(proc.stdout, b"\n")
    port = int(banner.decode().strip().rsplit(":", 1)[1])
    return proc, port


async def test_ping_a_live_server_prints_rtts_and_exits_zero(tmp_path: Path) -> None:
    """pulse ping -c 3 prints three pongs and a summary, and exits 0."""
    async with trio.open_nursery() as nursery:
        proc, port = await start_serve(nursery, tmp_path)
        with trio.fail_after(20):
            result = await trio.run_process(
                [*PULSE, "ping", f"tcp://127.0.0.1:{port}", "-c", "3", "--interval", "0.1"],
                capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path)
        proc.terminate()
        nursery.cancel_scope.cancel()
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert out.count("pong from 127.0.0.1") == 3
    assert "3 heartbeats sent, 3 answered, 0.0% lost" in out
    assert "rtt min/avg/max/mdev" in out


async def test_ping_json_output(tmp_path: Path) -> None:
    """--json prints one object per pong and a summary object."""
    async with trio.open_nursery() as nursery:
        proc, port = await start_serve(nursery, tmp_path)
        with trio.fail_after(20):
            result = await trio.run_process(
                [*PULSE, "ping", f"tcp://127.0.0.1:{port}", "-c", "2", "--interval", "0.05",
                 "--json"], capture_stdout=True, check=False, cwd=tmp_path)
        proc.terminate()
        nursery.cancel_scope.cancel()
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [line["event"] for line in lines] == ["pong", "pong", "summary"]
    assert lines[-1]["received"] == 2 and lines[-1]["loss_percent"] == 0.0
    assert all(line["rtt_ms"] >= 0 for line in lines[:2])


def test_ping_unreachable_exits_nonzero_with_reason(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listening: exit status 1, the OS reason in one line, no heartbeat counted."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status = main(["ping", f"tcp://127.0.0.1:{port}", "-c", "1", "--timeout", "1"])
    captured = capsys.readouterr()
    assert status == 1
    assert f"tcp://127.0.0.1:{port}" in captured.err
    assert "Connection refused" in captured.err       # the OS reason is kept
    assert len(captured.err.strip().splitlines()) == 1
    assert "heartbeats sent" not in captured.out       # no connection, so no statistics


async def test_ping_a_stopped_server_reports_it_dead(tmp_path: Path) -> None:
    """A server that stops answering (SIGSTOP) makes ping exit 1 after its timeout."""
    import signal

    async with trio.open_nursery() as nursery:
        proc, port = await start_serve(nursery, tmp_path)
        proc.send_signal(signal.SIGSTOP)
        try:
            with trio.fail_after(20):
                result = await trio.run_process(
                    [*PULSE, "ping", f"tcp://127.0.0.1:{port}", "-c", "3", "--timeout", "0.5"],
                    capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path)
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        nursery.cancel_scope.cancel()
    assert result.returncode == 1
    assert result.stderr.decode().strip() != ""


def test_help_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    """Every sub-command answers --help."""
    from pulse.cli.main import COMMANDS

    for name in COMMANDS:
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0
        assert "usage: pulse" in capsys.readouterr().out


async def test_ctrl_c_ends_serve_and_ping_cleanly(tmp_path: Path) -> None:
    """SIGINT stops `pulse serve` with status 0 and makes `pulse ping` print its summary."""
    import signal

    async with trio.open_nursery() as nursery:
        serve, port = await start_serve(nursery, tmp_path)
        ping: trio.Process = await nursery.start(partial(
            trio.run_process, [*PULSE, "ping", f"tcp://127.0.0.1:{port}", "--interval", "0.05"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, cwd=tmp_path))
        assert ping.stdout is not None and ping.stderr is not None
        seen = await read_until(ping.stdout, b"seq=3")
        ping.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            async for chunk in ping.stdout:
                seen += chunk
            errors = b"".join([chunk async for chunk in ping.stderr])
            assert await ping.wait() == 0
        serve.send_signal(signal.SIGINT)
        with trio.fail_after(10):
            assert await serve.wait() == 0
        nursery.cancel_scope.cancel()
    assert b"pulse statistics" in seen and b"0.0% lost" in seen
    assert b"Traceback" not in errors


@pytest.mark.parametrize(("argv", "message"), [
    (["ping", "foo"], "not a URL with a scheme"),
    (["ping", "gopher://127.0.0.1:1"], "no plugin for scheme 'gopher'"),
    (["serve", "--listen", "gopher://127.0.0.1:1"], "no plugin for scheme 'gopher'"),
    (["ping", "zk://127.0.0.1:2181"], "cannot ping"),
])
def test_bad_urls_get_one_line_and_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """A bad URL, unknown scheme or missing capability: one line on stderr, exit status 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


async def test_profile_lossy_is_accepted_by_serve_and_ping(tmp_path: Path) -> None:
    """pulse serve --profile lossy heartbeats tcp:// and ws:// clients; pulse ping --profile
    lossy gets its answers from both; an unknown profile is a usage error (status 2)."""
    command = [*PULSE, "serve", "--listen", "tcp://127.0.0.1:0", "--listen", "ws://127.0.0.1:0",
               "--interval", "0.2", "--profile", "lossy"]
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(partial(
            trio.run_process, command, stdout=subprocess.PIPE, check=False, cwd=tmp_path))
        assert proc.stdout is not None
        banners = (await read_until(proc.stdout, b"\n")).decode()
        if banners.count("\n") < 2:
            banners += (await read_until(proc.stdout, b"\n")).decode()
        urls = [line.split()[-1] for line in banners.splitlines() if "listening on" in line]
        assert len(urls) == 2, banners
        results = []
        for url in urls:
            with trio.fail_after(20):
                results.append(await trio.run_process(
                    [*PULSE, "ping", url, "-c", "2", "--interval", "0.1", "--profile", "lossy"],
                    capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path))
        proc.terminate()
        nursery.cancel_scope.cancel()
    for url, result in zip(urls, results, strict=True):
        assert result.returncode == 0, (url, result.stderr.decode())
        assert "2 heartbeats sent, 2 answered" in result.stdout.decode(), url
    with trio.fail_after(20):
        refused = await trio.run_process(
            [*PULSE, "ping", "tcp://127.0.0.1:9", "--profile", "flaky"],
            capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path)
    assert refused.returncode == 2 and b"invalid choice: 'flaky'" in refused.stderr
