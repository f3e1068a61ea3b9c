"""The library prints nothing unless the application configured structlog."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from functools import partial

import pytest
import structlog
import trio

from pulse import HeartbeatPolicy
from pulse._log import get_logger
from pulse.plugins.tcp import connect_tcp, serve_tcp

pytestmark = pytest.mark.e2e

# A TCP echo exchange (server, client, a ping, an orderly close) in a fresh interpreter that
# never touches structlog's configuration.
_ECHO_PROGRAM = textwrap.dedent("""
    from functools import partial

    import trio
    from pulse import HeartbeatPolicy
    from pulse.plugins.tcp import connect_tcp, reconnecting_tcp, serve_tcp

    policy = HeartbeatPolicy(interval=0.05, timeout=0.5)

    async def handle(conn):
        async for message in conn:
            await conn.send({"echo": message})

    async def main():
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(serve_tcp, handle, port=0, policy=policy))
            port = listeners[0].socket.getsockname()[1]
            async with connect_tcp("127.0.0.1", port, policy) as conn:
                for i in range(3):
                    await conn.send(i)
                    assert await conn.receive() == {"echo": i}
                await conn.ping()
                await trio.sleep(0.2)   # a few heartbeats
            async with reconnecting_tcp("127.0.0.1", port, policy) as client:
                await client.send("hello")
                assert await client.receive() == {"echo": "hello"}
            nursery.cancel_scope.cancel()

    trio.run(main)
""")


def test_tcp_echo_with_unconfigured_structlog_prints_nothing() -> None:
    """A TCP echo exchange, heartbeats and close leave stdout and stderr empty."""
    result = subprocess.run([sys.executable, "-c", _ECHO_PROGRAM], capture_output=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""
    assert result.stderr == b""


def test_configured_structlog_sees_library_events() -> None:
    """Once the application configures structlog, the same exchange logs its events."""
    program = "import structlog, sys\n" \
        "structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))\n" \
        + _ECHO_PROGRAM
    result = subprocess.run([sys.executable, "-c", program], capture_output=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""
    assert b"connection_closed" in result.stderr
    assert b"client_state" in result.stderr


async def test_capture_logs_sees_library_events() -> None:
    """structlog.testing.capture_logs() receives the events of a TCP exchange."""
    policy = HeartbeatPolicy(interval=0.05, timeout=0.5)

    async def handle(conn: object) -> None:
        await trio.sleep_forever()

    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(serve_tcp, handle, port=0))
            port = listeners[0].socket.getsockname()[1]
            async with connect_tcp("127.0.0.1", port, policy):
                pass
            nursery.cancel_scope.cancel()
    assert "connection_closed" in [entry["event"] for entry in logs]


def test_silent_logger_prints_nothing_until_configured(capsys: pytest.CaptureFixture[str]) -> None:
    """Unconfigured: a bound library logger prints nothing; once configured, events flow."""
    structlog.reset_defaults()
    assert not structlog.is_configured()
    log = get_logger("pulse.test").bind(peer="x")
    log.info("should_not_appear", n=1)
    log.warning("should_not_appear_either")
    assert capsys.readouterr() == ("", "")
    with structlog.testing.capture_logs() as logs:
        log.info("now_visible", n=2)
    assert logs == [{"event": "now_visible", "n": 2, "peer": "x", "log_level": "info"}]
