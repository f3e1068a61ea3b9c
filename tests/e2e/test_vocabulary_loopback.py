"""The shared vocabulary on real loopback sockets: serve_*(handler, *, host, port),
reconnecting_* clients with on_event and independent events() subscriptions, detector=
factories, and the deprecated old spellings still serving and connecting."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import trio

from pulse import FailureDetector, FixedTimeout, HeartbeatPolicy
from pulse.plugins.tcp import ClientState, StateChange, echo, reconnecting_tcp, serve_tcp
from pulse.plugins.websocket import (
    ResilientWebSocket,
    WebSocketServer,
    connect,
    reconnecting_websocket,
    serve,
    serve_websocket,
)
from pulse.plugins.websocket import echo as ws_echo

pytestmark = pytest.mark.e2e

POLICY = HeartbeatPolicy(1.0, 3.0)


def bound_port(listeners: list[trio.SocketListener]) -> int:
    """The port the first listener is bound to."""
    return int(listeners[0].socket.getsockname()[1])


async def test_serve_tcp_takes_host_and_port_as_keywords() -> None:
    """serve_tcp(echo, host=, port=0) serves; a reconnecting client's on_event gets the
    StateChanges and two events() subscriptions both see the ones after they subscribed."""
    changes: list[StateChange] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(serve_tcp, echo, host="127.0.0.1", port=0,
                                                    policy=POLICY))
            async with reconnecting_tcp("127.0.0.1", bound_port(listeners), POLICY,
                                        on_event=changes.append) as client:
                await client.send("hi")
                assert await client.receive() == "hi"
                first, second = client.events(), client.events()
            nursery.cancel_scope.cancel()
    states = [change.state for change in changes]
    assert states[:2] == [ClientState.CONNECTING, ClientState.OPEN]
    assert states[-1] is ClientState.CLOSED
    assert [change.state async for change in first] == states  # with the backlog
    assert [change.state async for change in second] == [ClientState.CLOSED]


async def test_serve_tcp_with_a_positional_port_still_serves_with_a_warning() -> None:
    """The old serve_tcp(handler, port) warns (DeprecationWarning) and still binds the port."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.warns(DeprecationWarning, match=r"serve_tcp\(handler, port=port\)"):
                listeners = await nursery.start(partial(serve_tcp, echo, 0, host="127.0.0.1"))
            async with reconnecting_tcp("127.0.0.1", bound_port(listeners), POLICY) as client:
                await client.send(1)
                assert await client.receive() == 1
            nursery.cancel_scope.cancel()


async def echo_once(ws: ResilientWebSocket, message: str) -> None:
    """Send ``message`` and require it back."""
    await ws.send(message)
    assert await ws.receive() == message


async def test_websocket_new_names_and_detector_factories() -> None:
    """serve_websocket(handler, host=, port=) and reconnecting_websocket(detector=) work; the
    factory is called with the negotiated policy for each connection on both sides."""
    built: list[tuple[str, HeartbeatPolicy]] = []

    def factory(side: str) -> Any:
        def build(policy: HeartbeatPolicy) -> FailureDetector:
            built.append((side, policy))
            return FixedTimeout(policy.dead_after)
        return build

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server: WebSocketServer = await nursery.start(partial(
                serve_websocket, ws_echo, host="127.0.0.1", port=0, policy=POLICY,
                detector=factory("server")))
            async with reconnecting_websocket(f"ws://127.0.0.1:{server.port}/", policy=POLICY,
                                              detector=factory("client")) as ws:
                await echo_once(ws, "new")
            nursery.cancel_scope.cancel()
    assert sorted(side for side, _ in built) == ["client", "server"]
    assert all(policy.interval == 1.0 for _, policy in built)


async def test_websocket_old_names_still_work_with_warnings() -> None:
    """serve(handler, host, port, detector_factory=) and connect(url, detector_factory=)
    warn and behave as the new names do."""
    built: list[str] = []

    def build(side: str) -> Any:
        def detector(policy: HeartbeatPolicy) -> FailureDetector:
            built.append(side)
            return FixedTimeout(policy.dead_after)
        return detector

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.warns(DeprecationWarning) as caught:
                server: WebSocketServer = await nursery.start(partial(
                    serve, ws_echo, "127.0.0.1", 0, policy=POLICY,
                    detector_factory=build("server")))
            assert any("serve_websocket" in str(w.message) for w in caught)
            assert any("detector=" in str(w.message) for w in caught)
            with pytest.warns(DeprecationWarning) as caught:
                async with connect(f"ws://127.0.0.1:{server.port}/", policy=POLICY,
                                   detector_factory=build("client")) as ws:
                    await echo_once(ws, "old")
            assert any("reconnecting_websocket" in str(w.message) for w in caught)
            nursery.cancel_scope.cancel()
    assert sorted(built) == ["client", "server"]
