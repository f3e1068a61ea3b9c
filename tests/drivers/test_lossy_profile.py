"""The lossy-link profile in the tcp and ws drivers, in virtual time, with a scripted kernel.

The streams are in-memory, so the kernel's TCP_INFO is replaced by a script: the peer's
segments arrive until ``cut_at`` (virtual seconds after the start), and every sample shows
one more retransmission. The peer itself never answers, so only the profile keeps it alive.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

import pytest
import trio
import trio.testing

from pulse._core.lossy import LossyLink, TcpProgress
from pulse._core.policy import HeartbeatPolicy
from pulse._driver import connection as tcp_driver
from pulse._driver.connection import heartbeat
from pulse.errors import PeerTimeout
from pulse.plugins.websocket import session as ws_driver
from pulse.plugins.websocket.connection import CloseReceived
from pulse.plugins.websocket.server import ServerConnection, ServerSettings, serve_stream
from pulse.registry import ServeOptions, parse_url

from .test_heartbeat_connection import RawPeer
from .ws_fakes import open_raw_client

PROFILE = LossyLink(ack_window=3.0, max_silence=20.0)
POLICY = HeartbeatPolicy(interval=1.0, timeout=3.0, lossy=PROFILE)


class ScriptedKernel:
    """Stands in for TCP_INFO: segments from the peer until ``cut_at``, losses throughout."""

    def __init__(self, start: float, cut_at: float) -> None:
        self.start = start
        self.cut_at = cut_at
        self.samples = 0

    def read(self, sock: object) -> TcpProgress:
        assert sock == "tcp-socket"
        self.samples += 1
        now = trio.current_time() - self.start
        last_segment = min(now, self.cut_at)
        return TcpProgress(last_ack_recv=now - last_segment, last_data_recv=now,
                           total_retrans=self.samples)


def script(monkeypatch: pytest.MonkeyPatch, module: Any, cut_at: float) -> ScriptedKernel:
    """Replace ``module``'s kernel sampling by a script starting now."""
    kernel = ScriptedKernel(trio.current_time(), cut_at)
    monkeypatch.setattr(module, "tcp_socket", lambda _stream: "tcp-socket")
    monkeypatch.setattr(module, "read_tcp_progress", kernel.read)
    return kernel


@pytest.mark.parametrize(("cut_at", "dead_after"), [(8.0, 11.0), (100.0, 20.0)])
async def test_tcp_connection_waits_while_segments_arrive_and_dies_after_a_cut(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
    cut_at: float, dead_after: float,
) -> None:
    """A silent peer whose kernel still sends segments is kept past the 3 s timeout; it dies
    3 s after its last segment (cut at 8 -> dead at 11) or at the 20 s ceiling."""
    kernel = script(monkeypatch, tcp_driver, cut_at)
    left, right = trio.testing.memory_stream_pair()
    raw = RawPeer(right)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw.hello, 1.0, 3.0)
        async with heartbeat(left, POLICY) as conn:
            nursery.start_soon(raw.collect)
            opened = trio.current_time()
            with pytest.raises(PeerTimeout):
                await conn.receive()
            elapsed = trio.current_time() - opened
        nursery.cancel_scope.cancel()
    assert dead_after <= elapsed <= dead_after + 0.05
    assert kernel.samples >= 8  # one sample per timer wake-up, about one per second


async def test_tcp_connection_without_the_profile_never_asks_the_kernel(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default policy declares the silent peer dead at 3 s and samples nothing."""
    kernel = script(monkeypatch, tcp_driver, 100.0)
    left, right = trio.testing.memory_stream_pair()
    raw = RawPeer(right)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(raw.hello, 1.0, 3.0)
        async with heartbeat(left, HeartbeatPolicy(1.0, 3.0)) as conn:
            nursery.start_soon(raw.collect)
            opened = trio.current_time()
            with pytest.raises(PeerTimeout):
                await conn.receive()
            elapsed = trio.current_time() - opened
        nursery.cancel_scope.cancel()
    assert 3.0 <= elapsed <= 3.05 and kernel.samples == 0


async def test_ws_server_waits_while_segments_arrive_and_closes_after_a_cut(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ws session under the profile keeps a silent client until 3 s after its last
    segment (cut at 8), then closes it with 1011 as a dead peer."""
    kernel = script(monkeypatch, ws_driver, 8.0)

    async def handler(conn: ServerConnection) -> None:
        async for _ in conn:
            pass

    client_end, server_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_stream, server_end, handler, ServerSettings(policy=POLICY))
        client = await open_raw_client(client_end)
        opened = trio.current_time()
        while not isinstance(event := await client.receive_event(), CloseReceived):
            pass  # pings are read and never answered
        elapsed = trio.current_time() - opened
        nursery.cancel_scope.cancel()
    assert event.code == 1011
    assert 11.0 <= elapsed <= 11.05
    assert kernel.samples >= 8


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
async def test_serve_options_profile_reaches_the_servers_policy(
    monkeypatch: pytest.MonkeyPatch, scheme: str,
) -> None:
    """pulse serve --profile lossy: the tcp and ws plugins serve with HeartbeatPolicy(lossy=…);
    the default profile leaves it off."""
    seen: list[HeartbeatPolicy] = []

    async def capture(*args: Any, policy: HeartbeatPolicy,
                      task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
                      **kwargs: Any) -> None:
        seen.append(policy)
        task_status.started(types.SimpleNamespace(listeners=[]))

    module: Any = importlib.import_module(
        "pulse.plugins.tcp.plugin" if scheme == "tcp" else "pulse.plugins.websocket.plugin")
    monkeypatch.setattr(module, "serve_tcp" if scheme == "tcp" else "serve_websocket", capture)
    endpoint = parse_url(f"{scheme}://127.0.0.1:1")
    for profile in ("lossy", "default"):
        options = ServeOptions(interval=1.0, timeout=5.0, profile=profile)
        with trio.move_on_after(1):
            await module._serve(endpoint, options)
    assert [p.lossy for p in seen] == [LossyLink(), None]
    assert all((p.interval, p.timeout) == (1.0, 5.0) for p in seen)
