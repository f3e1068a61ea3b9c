"""pulse against third-party Dubbo 2 implementations, as separate processes on loopback.

Peers (test-only; installed outside the repository, see docs/dubbo.md):

* Apache's Python Dubbo client, PyPI ``python-dubbo-support-python3`` 0.0.2 (the Python 3
  port of apache/dubbo-python2): writes ``da bb e2 00 | id | 00 00 00 01 | 4e`` heartbeats
  after an idle period and reconnects after three unanswered ones.
* ``dubbo-py`` 0.2.2 (feiyuw/dubbo-py): a Python Dubbo provider that answers heartbeats.

Install both with::

    pip install --no-deps --target ~/.cache/pulse-dubbo-peers/apache python-dubbo-support-python3==0.0.2
    pip install --no-deps --target ~/.cache/pulse-dubbo-peers/feiyuw dubbo-py==0.2.2

(both are a top-level package named ``dubbo``, hence one directory each; set
``PULSE_DUBBO_PEERS`` to use another parent directory). Missing peers skip these tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from typing import Any

import pytest
import trio

from pulse._core.channel_heartbeat import ChannelState, ChannelTiming
from pulse.plugins.dubbo.consumer import open_consumer
from pulse.plugins.dubbo.provider import DubboProvider
from pulse.rpc import open_heartbeat_timer
from tests.ci import IN_CI

from .dubbo_procs import PEER_SCRIPTS, peer_env, peer_installed

pytestmark = pytest.mark.e2e

# In CI a missing peer is a failure, not a skip: scripts/test.sh installs both.
needs_apache = pytest.mark.skipif(
    not IN_CI and not peer_installed("apache", "dubbo/connection/connections.py"),
    reason="python-dubbo-support-python3 not installed (see this module's docstring)",
)
needs_feiyuw = pytest.mark.skipif(
    not IN_CI and not peer_installed("feiyuw", "dubbo/server.py"),
    reason="dubbo-py not installed (see this module's docstring)",
)


async def run_apache_client(port: int, idle: float, seconds: float) -> list[dict[str, Any]]:
    """Run the third-party client against ``port``; return its JSON lines."""
    command = [sys.executable, str(PEER_SCRIPTS / "apache_client.py"), str(port), str(idle), str(seconds)]
    with trio.fail_after(seconds + 15):
        result = await trio.run_process(
            command, env=peer_env("apache"), capture_stdout=True, stderr=subprocess.DEVNULL,
            check=False,
        )
    assert result.returncode == 0, result.stdout
    return [json.loads(line) for line in result.stdout.decode().splitlines() if line.startswith("{")]


@needs_apache
async def test_pulse_provider_answers_the_apache_clients_heartbeats() -> None:
    """pulse answers every heartbeat of Apache's client, which never reconnects and decodes errors."""
    async with open_heartbeat_timer(tick=0.05) as timer, trio.open_nursery() as nursery:
        provider = DubboProvider(timer, timing=ChannelTiming(30.0))  # pulse itself stays quiet
        _, port = await nursery.start(provider.serve, "127.0.0.1", 0)
        lines = await run_apache_client(port, idle=0.2, seconds=2.0)
        nursery.cancel_scope.cancel()
    call, done = lines
    message = "this pulse provider answers heartbeats only; it exports no services"
    assert call == {"call": "error", "error": message}
    assert all(count <= 1 for count in done["unanswered"].values())
    assert provider.accepted == 1  # the client never gave up on the connection
    (closed,) = provider.closed
    assert closed.heartbeats_received >= 5 and not closed.timed_out


@needs_apache
async def test_apache_client_answers_pulse_heartbeats() -> None:
    """Apache's client answers pulse's heartbeats (da bb 22 14 ... 4e) and pulse measures RTTs."""
    async with open_heartbeat_timer(tick=0.03) as timer, trio.open_nursery() as nursery:
        provider = DubboProvider(timer, timing=ChannelTiming(0.3))
        _, port = await nursery.start(provider.serve, "127.0.0.1", 0)
        await run_apache_client(port, idle=100.0, seconds=2.0)
        nursery.cancel_scope.cancel()
    (closed,) = provider.closed
    assert closed.heartbeats_sent >= 4
    assert closed.heartbeats_answered >= closed.heartbeats_sent - 1
    assert not closed.timed_out


@needs_apache
async def test_apache_client_reconnects_when_nobody_answers() -> None:
    """Control: with nobody answering, the same client reconnects (so the checks above can fail)."""
    accepted: list[float] = []

    async def mute(stream: trio.SocketStream) -> None:
        accepted.append(trio.current_time())
        async with stream:
            while await stream.receive_some(4096):
                pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, mute, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        await run_apache_client(port, idle=0.2, seconds=1.0)
        nursery.cancel_scope.cancel()
    assert len(accepted) >= 2


@needs_feiyuw
async def test_pulse_consumer_keeps_a_dubbo_py_provider_connection_alive() -> None:
    """dubbo-py's provider answers every heartbeat of a pulse consumer, which never reconnects."""
    command = [sys.executable, str(PEER_SCRIPTS / "feiyuw_provider.py"), "20"]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process, command, env=peer_env("feiyuw"), stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, check=False,
            )
        )
        assert process.stdout is not None
        line = b""
        with trio.fail_after(10):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive_some(64)
        port = int(line)
        async with open_consumer("127.0.0.1", port, timing=ChannelTiming(0.2)) as consumer:
            with trio.fail_after(5):
                channel = await consumer.wait_connected()
            await trio.sleep(2.0)
            stats = channel.rpc.stats()
            assert consumer.connects == 1 and consumer.disconnects == []
            assert stats.state is ChannelState.ALIVE
            assert stats.heartbeats_sent >= 8
            assert stats.heartbeats_answered >= stats.heartbeats_sent - 1
            assert stats.rtt.count == stats.heartbeats_answered
        process.kill()
        nursery.cancel_scope.cancel()
