"""Test helpers for the lease server and client: an in-memory network of lease servers whose
links can be cut like a pulled cable, and a raw protocol client."""

from __future__ import annotations

import errno
from collections import deque
from typing import Any

import trio
import trio.testing

from pulse.codec import MessageDecoder, encode_message
from pulse.plugins.lease.protocol import (
    Response,
    ServerMessage,
    WatchEvent,
    parse_server_message,
)
from pulse.plugins.lease.server import LeaseServer, ServerConfig


class Link(trio.abc.Stream):
    """A client's end of an in-memory connection; :meth:`cut` turns it into a black hole
    (nothing is delivered either way, no error, no EOF), like a pulled cable."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.is_cut = False

    def cut(self) -> None:
        self.is_cut = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.is_cut:
            await trio.lowlevel.checkpoint()
            return
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            if self.is_cut:
                await trio.sleep_forever()
            data = await self.inner.receive_some(max_bytes)
            if not self.is_cut:
                return bytes(data)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _Slot:
    def __init__(self, server: LeaseServer, scope: trio.CancelScope, nursery: trio.Nursery) -> None:
        self.server = server
        self.scope = scope
        self.nursery = nursery


class Network:
    """Lease servers reachable by ``(host, port)`` over memory streams."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self.slots: dict[tuple[str, int], _Slot] = {}
        self.links: list[Link] = []
        self.client_address = "10.0.0.1"
        self.unreachable: set[tuple[str, int]] = set()  # refuse connections (cable out)
        self.black_holes: set[tuple[str, int]] = set()  # accept, then never answer

    async def start(self, address: tuple[str, int] = ("s1", 1),
                    config: ServerConfig | None = None, **kwargs: Any) -> LeaseServer:
        server = LeaseServer(config or ServerConfig(**kwargs))
        slot: _Slot = await self.nursery.start(self._host, server)
        self.slots[address] = slot
        return server

    async def _host(self, server: LeaseServer, *, task_status: trio.TaskStatus[_Slot]) -> None:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                task_status.started(_Slot(server, scope, nursery))

    def stop(self, address: tuple[str, int] = ("s1", 1)) -> None:
        """Crash the server: every connection drops, its memory is gone."""
        slot = self.slots.pop(address)
        slot.scope.cancel()

    def server(self, address: tuple[str, int] = ("s1", 1)) -> LeaseServer:
        return self.slots[address].server

    async def open_stream(self, host: str, port: int) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        if (host, port) in self.black_holes:
            client_side, _ = trio.testing.memory_stream_pair()
            link = Link(client_side)
            link.cut()
            return link
        slot = self.slots.get((host, port))
        if slot is None or (host, port) in self.unreachable:
            raise OSError(errno.ECONNREFUSED, f"connection refused by {host}:{port}")
        client_side, server_side = trio.testing.memory_stream_pair()
        slot.nursery.start_soon(slot.server.handle_stream, server_side, self.client_address)
        link = Link(client_side)
        self.links.append(link)
        return link


class Raw:
    """A hand-driven protocol client for server tests."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = MessageDecoder(16 * 1024 * 1024)
        self.inbox: deque[ServerMessage] = deque()
        self.events: list[WatchEvent] = []
        self.notices: list[ServerMessage] = []
        self.xid = 0
        self.eof = False

    async def send_bytes(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(self, op: str, args: dict[str, Any] | None = None, ack: int = 0) -> int:
        self.xid += 1
        await self.stream.send_all(encode_message([0, self.xid, ack, op, args or {}]))
        return self.xid

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            self.eof = True
            return False
        for obj in self.decoder.feed(data):
            self.inbox.append(parse_server_message(obj))
        return True

    async def next(self) -> ServerMessage | None:
        """The next message (None at EOF)."""
        while not self.inbox:
            if self.eof or not await self._fill():
                return None
        return self.inbox.popleft()

    async def response(self, xid: int) -> Response:
        """Read until the response to ``xid``; keep watch events and notices aside."""
        while True:
            message = await self.next()
            if message is None:
                raise EOFError("connection closed before the response")
            if isinstance(message, Response) and message.xid == xid:
                return message
            if isinstance(message, WatchEvent):
                self.events.append(message)
            elif not isinstance(message, Response):
                self.notices.append(message)

    async def call(self, op: str, args: dict[str, Any] | None = None, ack: int = 0) -> Response:
        return await self.response(await self.request(op, args, ack))

    async def drain(self) -> None:
        """Read everything until EOF, sorting it into events and notices."""
        while True:
            message = await self.next()
            if message is None:
                return
            if isinstance(message, WatchEvent):
                self.events.append(message)
            elif not isinstance(message, Response):
                self.notices.append(message)

    async def events_until(self, count: int) -> list[WatchEvent]:
        """Read until at least ``count`` watch events arrived."""
        while len(self.events) < count:
            message = await self.next()
            if message is None:
                break
            if isinstance(message, WatchEvent):
                self.events.append(message)
            elif not isinstance(message, Response):
                self.notices.append(message)
        return self.events
