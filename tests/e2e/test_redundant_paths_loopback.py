"""redundant_paths() against a real TCP server on loopback: two paths from two local addresses."""

from __future__ import annotations

import pytest
import trio

from pulse._core.backoff import Backoff, Jitter
from pulse._driver.connection import HeartbeatConnection
from pulse._driver.streams import dial
from pulse.actions import PathAction, PathDown, PathUp, PeerDead
from pulse.paths import PathState, PeerVerdict, redundant_paths
from pulse.plugins.tcp import serve_tcp

pytestmark = pytest.mark.e2e


async def test_dial_binds_the_local_address() -> None:
    """dial(local_address=...) connects from that address (the server sees it)."""
    with trio.fail_after(10):
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        async with listener:
            stream = await dial("127.0.0.1", port, local_address="127.0.0.2", timeout=5.0)
            accepted = await listener.accept()
            assert accepted.socket.getpeername()[0] == "127.0.0.2"
            await accepted.aclose()
            await stream.aclose()


async def test_two_paths_from_two_local_addresses_then_the_server_goes() -> None:
    """Paths ``tcp://127.0.0.1:P`` and ``…?bind=127.0.0.2`` both come up (the server sees
    both source addresses); when the server goes, both go down and the peer is dead once."""
    peers: list[str] = []
    stop = trio.Event()

    async def handler(conn: HeartbeatConnection) -> None:
        peers.append(conn.peer.rsplit(":", 1)[0])
        await stop.wait()        # pings are answered meanwhile; returning closes it

    events: list[PathAction] = []
    both_up = trio.Event()

    def on_event(action: PathAction) -> None:
        events.append(action)
        if sum(isinstance(e, PathUp) for e in events) == 2:
            both_up.set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server_scope = trio.CancelScope()

            async def server(task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
                with server_scope:
                    await serve_tcp(handler, port=0, host="127.0.0.1", task_status=task_status)

            listeners = await nursery.start(server)
            port = listeners[0].socket.getsockname()[1]
            plain, bound = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port}?bind=127.0.0.2"
            async with redundant_paths(
                [plain, bound], interval=0.1, timeout=0.5,
                backoff=lambda: Backoff(5.0, 5.0, jitter=Jitter.NONE), on_event=on_event,
            ) as paths:
                await both_up.wait()
                assert paths.verdict is PeerVerdict.ALIVE
                assert [v.state for v in paths.paths] == [PathState.UP, PathState.UP]
                assert sorted(peers) == ["127.0.0.1", "127.0.0.2"]
                server_scope.cancel()
                stop.set()
                dead = await paths.wait_dead()
    assert "all 2 paths are down" in dead.reason
    assert [type(e) for e in events].count(PeerDead) == 1
    assert {e.path for e in events if isinstance(e, PathUp)} == {plain, bound}
    assert {e.path for e in events if isinstance(e, PathDown)} == {plain, bound}
