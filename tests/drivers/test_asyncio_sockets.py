"""The asyncio byte streams (pulse._driver.sockets) keep trio's stream contract.

Under asyncio the drivers hold these instead of trio's streams, so each rule a driver relies
on is checked here on a real socket pair: ``b""`` at the end, trio's resource errors, large
writes through a full buffer, close while a task waits, TLS both ways, listeners.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import pytest
import trio
import trustme

from pulse._driver import sockets, streams


def run(body: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``body`` under asyncio.run, bounded to 10 s."""

    async def bounded() -> Any:
        async with asyncio.timeout(10):
            return await body()

    return asyncio.run(bounded())


def pair() -> tuple[sockets.SocketStream, sockets.SocketStream]:
    left, right = socket.socketpair()
    return sockets.SocketStream(left), sockets.SocketStream(right)


def test_bytes_flow_and_the_end_is_an_empty_read() -> None:
    """What one side sends the other receives; after send_eof the reader gets b""."""

    async def body() -> None:
        a, b = pair()
        await a.send_all(b"ping")
        assert await b.receive_some(100) == b"ping"
        await a.send_eof()
        assert await b.receive_some(100) == b""
        await a.aclose()
        await b.aclose()

    run(body)


def test_a_write_larger_than_the_buffer_completes_while_the_peer_reads() -> None:
    """send_all waits on a full socket buffer and delivers every byte in order."""
    payload = bytes(range(256)) * 40_000  # 10 MB, far beyond the socket buffers

    async def body() -> None:
        a, b = pair()
        got = bytearray()

        async def reader() -> None:
            while len(got) < len(payload):
                chunk = await b.receive_some(1 << 16)
                assert chunk
                got.extend(chunk)

        async with anyio.create_task_group() as group:
            group.start_soon(reader)
            await a.send_all(payload)
        assert bytes(got) == payload
        await a.aclose()
        await b.aclose()

    run(body)


def test_using_a_closed_stream_raises_trios_closed_resource_error() -> None:
    """After aclose, reads and writes raise trio.ClosedResourceError (the drivers catch it)."""

    async def body() -> None:
        a, b = pair()
        await a.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await a.send_all(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await a.receive_some(10)
        await b.aclose()

    run(body)


def test_closing_wakes_a_task_waiting_to_read() -> None:
    """A reader blocked on the socket gets ClosedResourceError when another task closes it."""

    async def body() -> None:
        a, b = pair()
        outcome: list[BaseException] = []

        async def reader() -> None:
            try:
                await a.receive_some(10)
            except trio.ClosedResourceError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(reader)
            await anyio.sleep(0.05)
            await a.aclose()
        assert len(outcome) == 1
        await b.aclose()

    run(body)


def test_a_reset_connection_is_a_broken_resource() -> None:
    """A peer that resets the connection surfaces as trio.BrokenResourceError with the OS
    error as its cause."""

    async def body() -> None:
        listener = (await streams.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        client = await streams.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
        assert isinstance(server, sockets.SocketStream)
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        await server.aclose()  # linger 0: an RST instead of a FIN
        await anyio.sleep(0.05)
        with pytest.raises(trio.BrokenResourceError) as caught:
            await client.receive_some(10)
            await client.send_all(b"x" * 100_000)
        assert isinstance(caught.value.__cause__, OSError)
        await client.aclose()
        await listener.aclose()

    run(body)


def test_connecting_to_a_closed_port_is_an_os_error() -> None:
    """A refused connection raises OSError naming the reason (as trio's open_tcp_stream)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def body() -> None:
        with pytest.raises(OSError, match="refused"):
            await streams.open_tcp_stream("127.0.0.1", port)

    run(body)


def test_tls_handshake_and_data_both_ways() -> None:
    """start_tls gives trio-shaped TLS streams on both sides; data crosses and the end reads
    as b""."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def body() -> None:
        listener = (await streams.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        accepted: list[Any] = []

        async def serve() -> None:
            raw = await listener.accept()
            accepted.append(await streams.start_tls(raw, server_ctx, server_side=True))

        async with anyio.create_task_group() as group:
            group.start_soon(serve)
            raw = await streams.open_tcp_stream("127.0.0.1", port)
            client = await streams.start_tls(raw, client_ctx, server_side=False,
                                             server_hostname="localhost")
        server = accepted[0]
        assert isinstance(client, sockets.TlsStream)
        assert streams.socket_of(client) is raw
        await client.send_all(b"over tls")
        assert await server.receive_some(100) == b"over tls"
        await server.aclose()
        assert await client.receive_some(100) == b""
        await client.aclose()
        await listener.aclose()

    run(body)


def test_a_tls_handshake_with_an_untrusted_certificate_is_a_broken_resource() -> None:
    """A client that does not trust the server's certificate fails with
    trio.BrokenResourceError caused by the ssl error (what the drivers report)."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()  # trusts the system store, not this CA

    async def body() -> None:
        listener = (await streams.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]

        async def serve() -> None:
            raw = await listener.accept()
            try:
                await streams.start_tls(raw, server_ctx, server_side=True)
            except trio.BrokenResourceError:
                pass
            await raw.aclose()

        async with anyio.create_task_group() as group:
            group.start_soon(serve)
            raw = await streams.open_tcp_stream("127.0.0.1", port)
            with pytest.raises(trio.BrokenResourceError) as caught:
                await streams.start_tls(raw, client_ctx, server_side=False,
                                        server_hostname="localhost")
            assert isinstance(caught.value.__cause__, ssl.SSLError)
            await raw.aclose()
        await listener.aclose()

    run(body)


def test_the_engine_runs_as_one_loop_task_and_leaves_with_the_loop() -> None:
    """Under asyncio the engine is one task named pulse.engine; asyncio.run ends it."""
    from pulse._driver.engine import current_engine

    async def body() -> list[str]:
        engine = current_engine()
        assert current_engine() is engine  # one per loop
        await asyncio.sleep(0)
        return [task.get_name() for task in asyncio.all_tasks()]

    names = run(body)
    assert names.count("pulse.engine") == 1
    assert streams.on_trio() is False  # outside any loop


def test_heartbeat_runs_over_anyio_streams_and_open_tcp_stream() -> None:
    """pulse.heartbeat takes an anyio byte stream (wrapped) on one side and
    pulse.open_tcp_stream's on the other: HELLO, a message each way, a clean close."""
    from pulse import HeartbeatPolicy, heartbeat, open_tcp_stream

    policy = HeartbeatPolicy(interval=0.2, timeout=0.6)

    async def body() -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        got: list[object] = []

        async def serve(stream: anyio.abc.SocketStream) -> None:
            async with heartbeat(stream, policy, peer_id="server") as conn:
                got.append(await conn.receive())
                await conn.send("pong")
                await anyio.sleep(0.5)  # past two heartbeat intervals: still alive

        async with anyio.create_task_group() as group:
            group.start_soon(listener.serve, serve)
            stream = await open_tcp_stream("127.0.0.1", port)
            async with heartbeat(stream, policy, peer_id="client") as conn:
                assert conn.remote.peer_id == "server"
                await conn.send({"n": 1})
                assert await conn.receive() == "pong"
                await anyio.sleep(0.5)
                assert not conn.closed
            group.cancel_scope.cancel()
        assert got == [{"n": 1}]

    run(body)
