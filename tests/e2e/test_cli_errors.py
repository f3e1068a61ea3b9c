"""Each way a `pulse` command can fail ends in one line on stderr and a non-zero status."""

from __future__ import annotations

import select
import signal
import socket
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

from pulse.cli.cmd_serve import DEFAULT_TICK
from pulse.cli.main import build_parser, main
from pulse.codec import MessageDecoder
from pulse.errors import FrameTooLarge
from pulse.plugins.websocket.errors import HandshakeRejected
from tests.e2e.test_cli_tcp import PULSE, read_until, start_serve

pytestmark = pytest.mark.e2e

HTML = b"<!DOCTYPE html>\n<html>\n<head><title>Hello</title></head>\n<body>\n<p>hi</p>\n</body>\n</html>\n"


def one_line(err: str) -> str:
    """The single line of ``err``, failing the test if there are more or a traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


async def run_pulse(*argv: str, limit: float = 20.0) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(limit):
        return await trio.run_process([*PULSE, *argv], capture_stdout=True, capture_stderr=True,
                                      check=False)


async def start_tls_serve(nursery: trio.Nursery, tmp_path: Path, scheme: str
                          ) -> tuple[trio.Process, int]:
    """``pulse serve`` on a ``scheme`` (tls or wss) loopback listener with a certificate from
    a fresh CA no client trusts; returns the process and its port."""
    pem = tmp_path / "server.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    command = [*PULSE, "serve", "--listen", f"{scheme}://127.0.0.1:0", "--certfile", str(pem)]
    proc: trio.Process = await nursery.start(partial(
        trio.run_process, command, stdout=subprocess.PIPE, check=False, cwd=tmp_path))
    assert proc.stdout is not None
    return proc, int((await read_until(proc.stdout, b"\n")).decode().strip().rsplit(":", 1)[1])


async def serve_http(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A plain HTTP server that answers every request with 200 and a page of HTML."""
    async def answer(stream: trio.SocketStream) -> None:
        try:
            await stream.receive_some(4096)
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: "
                                  + str(len(HTML)).encode() + b"\r\n\r\n" + HTML)
            await stream.aclose()
        except trio.BrokenResourceError:
            pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def blackholed_port() -> Iterator[int]:
    """A port whose SYNs are dropped: a listener with a full accept queue (backlog 0)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(server.getsockname())
        except BlockingIOError:
            pass
        fillers.append(filler)
    # The accept queue is full once a filler's handshake has completed (its socket turns
    # writable); the others stay in SYN-SENT. Bounded: at most 2 s.
    _, writable, _ = select.select([], fillers, [], 2.0)
    assert writable, "no connection reached the accept queue within 2 s"
    yield server.getsockname()[1]
    for filler in fillers:
        filler.close()
    server.close()


def test_log_options_accepted_after_the_subcommand() -> None:
    """--log-format/--log-level work after the sub-command and do not reset earlier ones."""
    parser = build_parser()
    after = parser.parse_args(["ping", "tcp://h:1", "--log-level", "info", "--log-format", "json"])
    assert (after.log_level, after.log_format) == ("info", "json")
    before = parser.parse_args(["--log-level", "debug", "ping", "tcp://h:1"])
    assert (before.log_level, before.log_format) == ("debug", "console")
    default = parser.parse_args(["serve"])
    assert (default.log_level, default.log_format) == ("warning", "console")


async def test_cli_still_logs_at_info(tmp_path: Path) -> None:
    """`pulse ping … --log-level info` prints the library's events (the CLI configures structlog)."""
    async with trio.open_nursery() as nursery:
        proc, port = await start_serve(nursery, tmp_path)
        result = await run_pulse("ping", f"tcp://127.0.0.1:{port}", "-c", "1",
                                 "--log-level", "info", "--log-format", "json")
        proc.terminate()
        nursery.cancel_scope.cancel()
    assert result.returncode == 0, result.stderr.decode()
    assert b'"event": "connection_open"' in result.stderr
    assert b"connection_open" not in result.stdout


def test_serve_help_states_the_tick_the_server_uses(capsys: pytest.CaptureFixture[str]) -> None:
    """`pulse serve --help` shows the --tick default the command passes to the lease server."""
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default {DEFAULT_TICK:g})" in help_text
    assert build_parser().parse_args(["serve"]).tick == DEFAULT_TICK


async def test_serve_default_tick_keeps_a_one_second_session(tmp_path: Path) -> None:
    """A 1 s session on `pulse serve`'s defaults stays 1 s (2 × tick), not raised to 4 s."""
    from pulse.registry import connect_session

    async with trio.open_nursery() as nursery:
        command = [*PULSE, "serve", "--listen", "pulse://127.0.0.1:0"]
        proc: trio.Process = await nursery.start(partial(
            trio.run_process, command, stdout=subprocess.PIPE, check=False, cwd=tmp_path))
        assert proc.stdout is not None
        banner = await read_until(proc.stdout, b"\n")
        url = banner.decode().split()[-1]
        with trio.fail_after(10):
            async with connect_session(url, session_timeout=1.0) as session:
                assert session.session_timeout == pytest.approx(1.0)
        proc.terminate()
        nursery.cancel_scope.cancel()


async def test_ping_reports_the_negotiated_timeout(tmp_path: Path) -> None:
    """--timeout 10 against a server that negotiated 1 s: the message says 1 s, not 10 s."""
    async with trio.open_nursery() as nursery:
        proc, port = await start_serve(nursery, tmp_path, "--timeout", "1")
        ping: trio.Process = await nursery.start(partial(trio.run_process, [
            *PULSE, "ping", f"tcp://127.0.0.1:{port}", "--timeout", "10", "--interval", "0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False, cwd=tmp_path))
        assert ping.stdout is not None and ping.stderr is not None
        await read_until(ping.stdout, b"seq=2")
        started = trio.current_time()
        proc.send_signal(signal.SIGSTOP)
        try:
            with trio.fail_after(9):
                errors = b"".join([chunk async for chunk in ping.stderr])
                status = await ping.wait()
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        nursery.cancel_scope.cancel()
    assert status == 1
    assert trio.current_time() - started < 9
    text = errors.decode()
    assert "within 1s" in text and "negotiated" in text
    assert "within 10s" not in text


async def test_wss_to_a_self_signed_server(tmp_path: Path) -> None:
    """wss:// to a server whose CA the client does not trust: one line about the certificate."""
    async with trio.open_nursery() as nursery:
        proc, port = await start_tls_serve(nursery, tmp_path, "wss")
        result = await run_pulse("ping", f"wss://127.0.0.1:{port}/", "-c", "1")
        proc.terminate()
        nursery.cancel_scope.cancel()
    assert result.returncode == 1
    line = one_line(result.stderr.decode())
    assert "TLS certificate verification failed" in line and "cafile" in line


async def test_tls_to_a_plain_port(tmp_path: Path) -> None:
    """tls:// to a plain pulse port: one line saying the TLS handshake failed."""
    async with trio.open_nursery() as nursery:
        proc, port = await start_serve(nursery, tmp_path)
        result = await run_pulse("ping", f"tls://127.0.0.1:{port}", "-c", "1", "--timeout", "3")
        proc.terminate()
        nursery.cancel_scope.cancel()
    assert result.returncode == 1
    assert "TLS handshake failed" in one_line(result.stderr.decode())
    assert b"heartbeats sent" not in result.stdout


async def test_tcp_to_a_tls_port_suggests_tls(tmp_path: Path) -> None:
    """tcp:// at a TLS pulse port: one line that points at tls://."""
    async with trio.open_nursery() as nursery:
        proc, port = await start_tls_serve(nursery, tmp_path, "tls")
        result = await run_pulse("ping", f"tcp://127.0.0.1:{port}", "-c", "1", "--timeout", "3")
        proc.terminate()
        nursery.cancel_scope.cancel()
    assert result.returncode == 1
    line = one_line(result.stderr.decode())
    assert "HELLO" in line and "tls://" in line


async def test_ws_to_a_pulse_tcp_port_suggests_tcp(tmp_path: Path) -> None:
    """ws:// at a pulse tcp:// port: one line saying it is not a WebSocket server."""
    async with trio.open_nursery() as nursery:
        proc, port = await start_serve(nursery, tmp_path)
        result = await run_pulse("ping", f"ws://127.0.0.1:{port}/", "-c", "1", "--timeout", "3")
        proc.terminate()
        nursery.cancel_scope.cancel()
    assert result.returncode == 1
    line = one_line(result.stderr.decode())
    assert "not a WebSocket server" in line and "tcp://" in line


def test_watch_with_a_relative_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    """`pulse watch --prefix nope`: one line saying the prefix must start with '/', status 2."""
    assert main(["watch", "--server", "pulse://127.0.0.1:1", "--prefix", "nope"]) == 2
    assert "--prefix must be an absolute path" in one_line(capsys.readouterr().err)


def test_ping_a_blackholed_host(blackholed_port: int, capsys: pytest.CaptureFixture[str]) -> None:
    """Connect attempts that get no answer: a sentence, not "TooSlowError"."""
    assert main(["ping", f"tcp://127.0.0.1:{blackholed_port}", "-c", "1", "--timeout", "0.5"]) == 1
    captured = capsys.readouterr()
    line = one_line(captured.err)
    assert "no answer from 127.0.0.1" in line and "within 0.5s while connecting" in line
    assert "firewall" in line
    assert "TooSlowError" not in line and "PhaseTimeout" not in line
    assert "heartbeats sent" not in captured.out


async def test_tcp_at_an_http_server_says_http() -> None:
    """tcp:// at an HTTP (or WebSocket) server names HTTP instead of an absurd body length."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http)
        result = await run_pulse("ping", f"tcp://127.0.0.1:{port}", "-c", "1", "--timeout", "3")
        nursery.cancel_scope.cancel()
    assert result.returncode == 1
    line = one_line(result.stderr.decode())
    assert "speaks HTTP" in line and "1213486160-byte body" not in line


async def test_ws_at_an_http_server_gives_the_status_only() -> None:
    """ws:// at a plain HTTP server: the status in one line, never the HTML page."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http)
        result = await run_pulse("ping", f"ws://127.0.0.1:{port}/", "-c", "1", "--timeout", "3")
        nursery.cancel_scope.cancel()
    assert result.returncode == 1
    line = one_line(result.stderr.decode())
    assert "HTTP 200" in line and "html" not in line.lower()
    assert b"heartbeats sent" not in result.stdout


def test_address_in_use_names_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    """`pulse serve` on a busy port says which address is in use."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--listen", f"tcp://127.0.0.1:{port}"]) == 1
    line = one_line(capsys.readouterr().err)
    assert f"tcp://127.0.0.1:{port}" in line and "Address already in use" in line
    assert "[Errno" not in line


def test_member_address_in_use_names_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    """`pulse member` on a busy port says which address is in use, in one line."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["member", "--listen", f"gossip://127.0.0.1:{port}", "--name", "m1"]) == 1
    line = one_line(capsys.readouterr().err)
    assert f"gossip://127.0.0.1:{port}" in line and "Address already in use" in line


def test_missing_certfile_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pulse serve --certfile` naming a missing file says which file."""
    missing = tmp_path / "missing.pem"
    assert main(["serve", "--listen", "tls://127.0.0.1:0", "--certfile", str(missing)]) == 1
    line = one_line(capsys.readouterr().err)
    assert str(missing) in line and "not found" in line


def test_tls_without_certfile_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    """`pulse serve --listen tls://…` without --certfile names the command-line option, status 2."""
    assert main(["serve", "--listen", "wss://127.0.0.1:0/"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "wss://127.0.0.1:0/ needs a certificate" in line and "--certfile" in line


def test_unresolvable_host_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """A host name that does not resolve: one line saying so, without "[Errno -2]"."""
    assert main(["ping", "tcp://no-such-host.invalid:7070", "-c", "1", "--timeout", "2"]) == 1
    line = one_line(capsys.readouterr().err)
    assert "cannot resolve the host name" in line and "[Errno" not in line


def test_decoder_names_http_instead_of_a_body_length() -> None:
    """The frame decoder fed an HTTP response raises FrameTooLarge naming HTTP."""
    decoder = MessageDecoder()
    with pytest.raises(FrameTooLarge, match="speaks HTTP"):
        decoder.feed(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def test_handshake_rejected_keeps_the_page_out_of_the_message() -> None:
    """HandshakeRejected's message is one line with the status; the body stays in .body."""
    error = HandshakeRejected(404, [], HTML)
    assert "\n" not in str(error) and "404" in str(error) and "html" not in str(error).lower()
    assert error.body == HTML

