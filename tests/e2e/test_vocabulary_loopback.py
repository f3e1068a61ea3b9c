"""The shared vocabulary on real loopback sockets: serve_*(handler, *, host, port),
reconnecting_* clients with on_event and independent events() subscriptions, and detector=
factories (the deprecated old spellings are tested in tests/test_deprecations.py)."""

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
    reconnecting_websocket,
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
