"""A hand-written Dubbo 2 peer for driver tests: speaks frames directly so it can misbehave."""

from __future__ import annotations

import trio

from pulse.plugins.dubbo import codec
from pulse.plugins.dubbo.codec import Frame, FrameDecoder


class RawPeer:
    """The far end of a channel: records every frame with its arrival time.

    ``answer_heartbeats`` makes it reply to heartbeat requests as Dubbo does;
    ``answer_requests`` makes it echo ordinary two-way requests (body unchanged, status OK).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        answer_heartbeats: bool = True,
        answer_requests: bool = False,
    ) -> None:
        self.stream = stream
        self.answer_heartbeats = answer_heartbeats
        self.answer_requests = answer_requests
        self.frames: list[tuple[float, Frame]] = []
        self.eof_at: float | None = None
        self.eof = trio.Event()

    def heartbeat_requests(self) -> list[tuple[float, Frame]]:
        """Heartbeat requests received so far."""
        return [(t, f) for t, f in self.frames if f.is_heartbeat_request]

    def heartbeat_responses(self) -> list[tuple[float, Frame]]:
        """Heartbeat responses received so far."""
        return [(t, f) for t, f in self.frames if f.is_heartbeat_response]

    async def send(self, data: bytes) -> None:
        """Write raw bytes to the channel."""
        await self.stream.send_all(data)

    async def run(self) -> None:
        """Read until EOF, answering as configured."""
        decoder = FrameDecoder()
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.eof_at = trio.current_time()
                self.eof.set()
                return
            for frame in decoder.feed(data):
                self.frames.append((trio.current_time(), frame))
                if self.answer_heartbeats and frame.is_heartbeat_request and frame.two_way:
                    await self.stream.send_all(codec.reply_to_heartbeat(frame))
                elif self.answer_requests and frame.is_request and frame.two_way:
                    await self.stream.send_all(codec.response(frame.request_id, frame.body))
