"""A tiny msgpack-RPC framework with pulse's heartbeats plugged in (used by rpc_server.py and
rpc_client.py).

Messages are msgpack arrays on one TCP stream, as the msgpack-RPC specification has them:
``[0, msgid, method, params]`` requests and ``[1, msgid, error, result]`` responses. Pulse's
heartbeats are ordinary requests of the method ``pulse.heartbeat``; their msgids come from the
same 32-bit counter as the application's calls, so the two never collide.

Everything pulse needs from a framework is in :class:`RpcConnection`: it reports reads and
writes to its :class:`pulse.rpc.RpcChannel`, answers heartbeat requests with the message the
channel gives back, and implements the two hooks (``send_heartbeat``, ``close``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import trio

from pulse.errors import ConnectionClosed, PeerTimeout
from pulse.rpc import ChannelTiming, HeartbeatTimer, Role

REQUEST, RESPONSE = 0, 1
HEARTBEAT_METHOD = "pulse.heartbeat"
MAX_MESSAGE = 1 << 20  # bytes buffered for one message, at most

Method = Callable[..., Awaitable[Any]]


class RemoteError(Exception):
    """The server answered a call with an error."""


class MsgpackHeartbeats:
    """What a heartbeat looks like in msgpack-RPC (pulse.rpc.HeartbeatMessages)."""

    def request(self, request_id: int) -> list[Any]:
        return [REQUEST, request_id, HEARTBEAT_METHOD, []]

    def response(self, request_id: int) -> list[Any]:
        return [RESPONSE, request_id, None, None]


class _Call:
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class RpcConnection:
    """One msgpack-RPC connection: calls out, calls in, heartbeats in between."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        timer: HeartbeatTimer,
        role: Role,
        *,
        timing: ChannelTiming,
        ids: Callable[[], int],
        methods: dict[str, Method] | None = None,
        peer: str = "",
    ) -> None:
        self.stream = stream
        self.methods = methods or {}
        self.peer = peer
        self.closed_reason: str | None = None
        self._outbox, self._to_send = trio.open_memory_channel[bytes](256)
        self._calls: dict[int, _Call] = {}
        self._scope = trio.CancelScope()
        # The whole pulse integration: one channel, fed by this class, calling back its hooks.
        self.channel = timer.open_channel(
            role, self, MsgpackHeartbeats(), timing=timing, ids=ids, peer=peer
        )

    # -- pulse's hooks (called from the timer task: no blocking) -------------------------------

    def send_heartbeat(self, message: list[Any]) -> None:
        try:
            self._outbox.send_nowait(msgpack.packb(message))
        except trio.WouldBlock:
            pass  # a backlog is being written: the link is busy, not idle

    def close(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        self._scope.cancel()

    # -- application API ----------------------------------------------------------------------

    def error(self) -> ConnectionClosed:
        """What calls on this dead connection fail with."""
        reason = self.closed_reason or "closed"
        return PeerTimeout(reason) if self.channel.timed_out else ConnectionClosed(reason)

    async def call(self, method: str, *params: Any) -> Any:
        """Call ``method`` on the peer and wait for its result."""
        if self.closed_reason is not None:
            raise self.error()
        msgid = self.channel.next_request_id()
        call = self._calls[msgid] = _Call()
        try:
            await self._outbox.send(msgpack.packb([REQUEST, msgid, method, list(params)]))
            await call.done.wait()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self.error() from None
        finally:
            self._calls.pop(msgid, None)
        if call.error is not None:
            raise call.error
        return call.result

    async def serve(self) -> str:
        """Run the connection until it closes; returns why. Pending calls fail at once."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    await self._reader(nursery)
                    nursery.cancel_scope.cancel()
        finally:
            reason = self.closed_reason = self.closed_reason or "closed"
            self.channel.close(reason)
            self._outbox.close()
            error = self.error()
            for call in self._calls.values():
                call.error = error
                call.done.set()
            await trio.aclose_forcefully(self.stream)
        return reason

    # -- I/O -------------------------------------------------------------------------------

    async def _writer(self) -> None:
        async for data in self._to_send:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.close(f"write failed: {exc!r}")
                return
            self.channel.wrote()

    async def _reader(self, nursery: trio.Nursery) -> None:
        unpacker = msgpack.Unpacker(max_buffer_size=MAX_MESSAGE)
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self.close(f"read failed: {exc!r}")
                return
            if not data:
                self.close("peer closed the connection")
                return
            try:
                unpacker.feed(data)
                for message in unpacker:
                    self._dispatch(message, nursery)
            except (ValueError, msgpack.UnpackException) as exc:
                self.close(f"protocol error: {exc!r}")
                return

    def _dispatch(self, message: Any, nursery: trio.Nursery) -> None:
        if not isinstance(message, list) or len(message) != 4 or message[0] not in (0, 1):
            raise ValueError(f"not a msgpack-RPC request or response: {message!r}")
        kind, msgid = message[0], message[1]
        if kind == REQUEST and message[2] == HEARTBEAT_METHOD:
            reply = self.channel.heartbeat_request(msgid)  # counts as a read
            self.send_heartbeat(reply)
        elif kind == RESPONSE and self.channel.is_heartbeat(msgid):
            self.channel.heartbeat_response(msgid)  # counts as a read, records the RTT
        elif kind == REQUEST:
            self.channel.read()
            nursery.start_soon(self._answer, msgid, message[2], message[3])
        else:
            self.channel.read()
            call = self._calls.get(msgid)
            if call is not None:
                if message[2] is not None:
                    call.error = RemoteError(message[2])
                call.result = message[3]
                call.done.set()

    async def _answer(self, msgid: int, method: str, params: list[Any]) -> None:
        function = self.methods.get(method)
        try:
            if function is None:
                raise LookupError(f"no method {method!r}")
            result, error = await function(*params), None
        except Exception as exc:
            result, error = None, f"{type(exc).__name__}: {exc}"
        try:
            await self._outbox.send(msgpack.packb([RESPONSE, msgid, error, result]))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the connection died while the method ran
