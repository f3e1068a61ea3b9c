"""The counting WebSocket server of bench_reconnect_storm: raw asyncio, no WebSocket library.

Run: ``python benchmarks/storm_server.py --port PORT``

Accepts every upgrade (no extensions), answers client pings with pongs and close frames
with a close, and otherwise holds the connection. Every 100 ms it prints one JSON line on
stdout: ``{"t": wall clock, "attempts": upgrade requests in these 100 ms, "accepts": TCP
connections accepted in these 100 ms, "open": connections open now}``. The first line is
``{"listening": PORT, "t": ...}``. Meant to be killed with SIGKILL and started again.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Counters:
    attempts = 0
    accepts = 0
    open = 0


class Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        Counters.accepts += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upgraded:
            Counters.open -= 1

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > 16384:
                    self.transport.abort()
                return
            Counters.attempts += 1
            key = b""
            for line in bytes(buffer[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            del buffer[: end + 4]
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept
                                 + b"\r\n\r\n")
            self.upgraded = True
            Counters.open += 1
        while len(buffer) >= 2:
            b0, b1 = buffer[0], buffer[1]
            length, head = b1 & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, head = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, head = int.from_bytes(buffer[2:10], "big"), 10
            masked = b1 & 0x80
            start = head + (4 if masked else 0)
            if len(buffer) < start + length:
                return
            payload = bytes(buffer[start : start + length])
            if masked:
                mask = buffer[head : head + 4]
                payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
            del buffer[: start + length]
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self.transport.write(bytes((0x8A, len(payload))) + payload)
            elif opcode == 0x8:
                self.transport.write(bytes((0x88, len(payload[:2])) ) + payload[:2])
                self.transport.close()
                return


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Conn, "127.0.0.1", port, backlog=4096, reuse_address=True)
    print(json.dumps({"listening": port, "t": time.time()}), flush=True)
    async with server:
        while True:
            await asyncio.sleep(0.1)
            sys.stdout.write(json.dumps({"t": time.time(), "attempts": Counters.attempts,
                                         "accepts": Counters.accepts, "open": Counters.open})
                             + "\n")
            sys.stdout.flush()
            Counters.attempts = Counters.accepts = 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parser.parse_args().port))
