"""Errors that can be caught: every public context manager of pulse and its plugins lets the
one documented exception out alone, never an ExceptionGroup, when that error is raised while
the application cancels the scope around it; and a plain cancellation completes cleanly.

Each case opens the context manager against in-memory (or loopback) peers in virtual time;
the block cancels its surrounding scope and, as it unwinds, raises the error the
documentation promises (the peer died: ``PeerTimeout``, the session expired, the client gave
up). ``except ThatError`` must catch what comes out.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.testing

import pulse.plugins.tcp.client as tcp_client
from pulse._core.backoff import Backoff, Jitter
from pulse._core.channel_heartbeat import ChannelTiming
from pulse._core.policy import HeartbeatPolicy
from pulse._driver.connection import heartbeat
from pulse.errors import (
    ConnectionClosed,
    PeerTimeout,
    PulseError,
    ReconnectGaveUp,
    SessionExpired,
)
from pulse.registry import connect_session
from pulse.rpc import open_heartbeat_timer
from pulse.testing import heartbeat_pair

from ._lease_harness import Network
from .test_dubbo_consumer import FakeProviders
from .test_zookeeper_driver import FakeZooKeeper
from .ws_fakes import FakeServer

POLICY = HeartbeatPolicy(1.0, 3.0)
Case = Callable[[trio.Nursery, pytest.MonkeyPatch],
                Awaitable[tuple[AbstractAsyncContextManager[Any], PulseError]]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    """Register a set-up: it starts the peers in ``peers`` and returns the context manager
    (not yet entered) and the error its documentation promises."""
    def register(setup: Case) -> Case:
        CASES[name] = setup
        return setup
    return register


async def echo_peer(stream: trio.abc.Stream) -> None:
    """A pulse peer that echoes until the stream ends."""
    async with heartbeat(stream, POLICY, peer_id="server") as conn:
        async for message in conn:
            await conn.send(message)


@case("pulse.heartbeat")
async def _heartbeat(peers: trio.Nursery, _: pytest.MonkeyPatch) -> Any:
    ours, theirs = trio.testing.memory_stream_pair()
    peers.start_soon(echo_peer, theirs)
    return heartbeat(ours, POLICY), PeerTimeout("the peer died")


@case("pulse.testing.heartbeat_pair")
async def _pair(peers: trio.Nursery, _: pytest.MonkeyPatch) -> Any:
    return heartbeat_pair(POLICY, POLICY), PeerTimeout("the peer died")


@case("pulse.rpc.open_heartbeat_timer")
async def _timer(peers: trio.Nursery, _: pytest.MonkeyPatch) -> Any:
    return open_heartbeat_timer(tick=1.0), PeerTimeout("a channel's peer died")


def _patch_tcp(peers: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    async def open_stream(host: str, port: int, **_: Any) -> tuple[trio.abc.Stream, str]:
        ours, theirs = trio.testing.memory_stream_pair()
        peers.start_soon(echo_peer, theirs)
        return ours, f"{host}:{port}"
    monkeypatch.setattr(tcp_client, "open_stream", open_stream)


@case("tcp.connect_tcp")
async def _connect_tcp(peers: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> Any:
    _patch_tcp(peers, monkeypatch)
    return tcp_client.connect_tcp("server", 1, POLICY), PeerTimeout("the server died")


@case("tcp.reconnecting_tcp")
async def _reconnecting_tcp(peers: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> Any:
    _patch_tcp(peers, monkeypatch)
    return (tcp_client.reconnecting_tcp("server", 1, POLICY),
            ReconnectGaveUp("the server said not to come back"))


@case("websocket.reconnecting_websocket")
async def _ws_connect(peers: trio.Nursery, _: pytest.MonkeyPatch) -> Any:
    from pulse.plugins.websocket import reconnecting_websocket
    server = FakeServer(peers)
    return (reconnecting_websocket("ws://server/", policy=POLICY, opener=server.opener),
            ReconnectGaveUp("the server said not to come back"))


@case("dubbo.open_consumer")
async def _dubbo_consumer(peers: trio.Nursery, _: pytest.MonkeyPatch) -> Any:
    from pulse.plugins.dubbo.consumer import open_consumer
    providers = FakeProviders(peers)
    return (open_consumer("fake", 20880, timing=ChannelTiming(10.0),
                          backoff=Backoff(0.5, 4.0, jitter=Jitter.NONE),
                          connect=providers.connect),
            PeerTimeout("the provider died"))


@case("zookeeper via pulse.registry.connect_session")
async def _zk_session(peers: trio.Nursery, _: pytest.MonkeyPatch) -> Any:
    fake = FakeZooKeeper()
    fake.nursery = peers
    url = "zk://" + ",".join(f"{h}:{p}" for h, p in fake.hosts)
    return (connect_session(url, session_timeout=2.0, open_stream=fake.open_stream),
            SessionExpired("the session expired"))


@case("lease via pulse.registry.connect_session")
async def _lease_session(peers: trio.Nursery, _: pytest.MonkeyPatch) -> Any:
    net = Network(peers)
    await net.start(("s1", 1), tick=1.0)
    return (connect_session("pulse://s1:1", session_timeout=6.0, open_stream=net.open_stream),
            SessionExpired("the session expired"))


@case("gossip.gossip_member")
async def _gossip_member(peers: trio.Nursery, _: pytest.MonkeyPatch) -> Any:
    from pulse.plugins.gossip.driver import gossip_member
    return (gossip_member(("127.0.0.1", 0), "a", rng=random.Random(1)),
            ConnectionClosed("the group went away"))


@case("gossip via pulse.registry.connect_session")
async def _gossip_session(peers: trio.Nursery, _: pytest.MonkeyPatch) -> Any:
    from pulse.plugins.gossip.driver import gossip_member
    seed: list[tuple[str, int]] = []
    ready = trio.Event()

    async def run_seed() -> None:
        async with gossip_member(("127.0.0.1", 0), "seed", rng=random.Random(2)) as member:
            seed.append(member.addr)
            ready.set()
            await trio.sleep_forever()

    peers.start_soon(run_seed)
    await ready.wait()
    host, port = seed[0]
    return (connect_session(f"gossip://{host}:{port}", session_timeout=5.0),
            SessionExpired("the session expired"))


@pytest.mark.parametrize("name", sorted(CASES))
async def test_the_documented_error_comes_out_alone_while_the_scope_is_cancelled(
    name: str, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error raised as the cancelled block unwinds is caught by ``except ThatError``."""
    async with trio.open_nursery() as peers:
        manager, error = await CASES[name](peers, monkeypatch)
        with trio.fail_after(60):
            with trio.CancelScope() as scope, pytest.raises(type(error)) as caught:
                async with manager:
                    scope.cancel()
                    try:
                        await trio.sleep_forever()
                    finally:
                        raise error
        assert caught.value is error
        peers.cancel_scope.cancel()


@pytest.mark.parametrize("name", sorted(CASES))
async def test_a_plain_cancellation_completes_cleanly(
    name: str, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cancelling the scope around the block ends it without any exception."""
    async with trio.open_nursery() as peers:
        manager, _ = await CASES[name](peers, monkeypatch)
        with trio.fail_after(60):
            with trio.CancelScope() as scope:
                async with manager:
                    scope.cancel()
                    await trio.sleep_forever()
        assert scope.cancelled_caught
        peers.cancel_scope.cancel()


@pytest.mark.parametrize("name", sorted(CASES))
async def test_an_error_from_the_block_comes_out_as_itself(
    name: str, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An application error raised in the block (no cancellation) is not wrapped either."""
    async with trio.open_nursery() as peers:
        manager, _ = await CASES[name](peers, monkeypatch)
        with trio.fail_after(60), pytest.raises(KeyError, match="application"):
            async with manager:
                raise KeyError("application")
        peers.cancel_scope.cancel()


# -- servers: per-client errors stay with the client; cancelling the server is clean -----------


async def test_cancelling_a_websocket_server_while_a_handler_fails_is_clean(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handler that raises the documented error (its client died) as the server's scope is
    cancelled: serve_stream keeps it to that client and the cancel completes cleanly."""
    from pulse.plugins.websocket.server import ServerConnection, ServerSettings, serve_stream

    from .ws_fakes import open_raw_client

    entered = trio.Event()

    async def handler(conn: ServerConnection) -> None:
        entered.set()
        try:
            await trio.sleep_forever()
        finally:
            raise PeerTimeout("the client died")

    client_end, server_end = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(open_raw_client, client_end)
                async with trio.open_nursery() as server:
                    server.start_soon(serve_stream, server_end, handler,
                                      ServerSettings(policy=POLICY))
                    await entered.wait()
                    scope.cancel()
            assert scope.cancelled_caught
            nursery.cancel_scope.cancel()
