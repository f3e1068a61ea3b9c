"""Lease client regressions: every stream of a failed handshake is closed (virtual time)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pulse.codec import MessageDecoder, encode_message
from pulse.errors import ConnectionClosed
from pulse.plugins.lease.client import LeaseSession


async def test_stream_is_closed_when_a_message_after_the_connect_answer_is_bad(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A connect answer followed in the same read by a malformed message: that stream is
    closed before the client tries again."""
    closed: list[bool] = []

    async def fake_server(stream: trio.abc.Stream) -> None:
        decoder = MessageDecoder(1 << 20)
        request: list[object] = []
        while not request:
            request = decoder.feed(await stream.receive_some(65536))
        xid = request[0][1]  # type: ignore[index]
        answer = [1, xid, "ok", {"session_id": 5, "password": b"p" * 16, "timeout": 3.0}]
        bogus = [2, 0, "no-such-notice", {}]
        await stream.send_all(encode_message(answer) + encode_message(bogus))
        with trio.move_on_after(1.0):
            while await stream.receive_some(65536):
                pass
            closed.append(True)
            return
        closed.append(False)

    async with trio.open_nursery() as nursery:
        attempts = 0

        async def open_stream(host: str, port: int) -> trio.abc.Stream:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                raise OSError("refused")
            client_side, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(fake_server, server_side)
            return client_side

        client = LeaseSession([("s", 1)], 3.0, open_stream=open_stream, shuffle=False)
        with pytest.raises(ConnectionClosed):
            await client.run()
    assert closed == [True]
