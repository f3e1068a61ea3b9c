"""Cheap raw-protocol load generator: one process holding many heartbeat connections or sessions.

Run by the benchmarks as a child process, one per slice of the connections::

    python benchmarks/loadgen.py --proto tcp|ws|lease|zk --port PORT --count N [options]

Protocols (raw sockets on asyncio ``Protocol`` objects; no WebSocket library, no extensions):

* ``tcp``: pulse's frame protocol. Sends a client HELLO proposing interval 0 and timeout 0
  (the server's timing applies), waits for the server's HELLO, answers every server PING
  with the PONG echoing it (a pulse PONG is the PING's bytes with the type code changed).
* ``ws``: RFC 6455 upgrade with no ``Sec-WebSocket-Extensions`` header; every server ping
  is answered with a masked pong carrying the same payload.
* ``lease``: pulse's lease protocol (``pulse://``): a ``connect`` request proposing the
  session timeout, then ``ping`` requests on the Java ZooKeeper client's schedule.
* ``zk``: ZooKeeper's jute protocol: a ConnectRequest, then pings (xid -2, op 11) on the
  Java client's schedule.

The session schedule (``lease`` and ``zk``) is the Java client's: read timeout = 2/3 of the
negotiated session timeout, a ping after half the read timeout with nothing sent.

Talking to the parent: one JSON object per line on stdout. After the connect phase it prints
``{"event": "connected", ...}``; then every line ``stats`` on stdin is answered with
``{"event": "stats", ...}`` (cumulative counters and this process's CPU seconds); ``quit``
or the end of stdin closes every connection, prints a last ``stats`` line and exits.

Counters: ``connected`` (open now), ``established`` (handshakes completed), ``failed``
(attempts that never completed the handshake), ``lost`` (established connections the server
closed or reset), ``answered`` (server pings answered, tcp/ws), ``renewals`` (session pings
acknowledged by the server, lease/zk), ``expired`` (sessions the server declared expired,
lease/zk), ``late`` (a session heard nothing from the server for a whole read timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import resource
import socket
import struct
import sys
import time
from typing import Any

import msgpack

from pulse.codec import encode_message
from pulse.frames import PROTOCOL_VERSION, Hello, encode_frame
from pulse.plugins.zookeeper.jute import ConnectRequest, ConnectResponse, frame
from pulse.plugins.zookeeper.protocol import Ping as ZkPing
from pulse.plugins.zookeeper.protocol import Xid, encode_request

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_LEN = struct.Struct(">I")
_ZK_REPLY = struct.Struct(">iqi")


class Stats:
    """Counters reported to the parent."""

    def __init__(self) -> None:
        self.connected = 0
        self.established = 0
        self.failed = 0
        self.lost = 0
        self.answered = 0
        self.renewals = 0
        self.expired = 0
        self.late = 0
        self.errors: collections.Counter[str] = collections.Counter()

    def as_dict(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "connected": self.connected, "established": self.established, "failed": self.failed,
            "lost": self.lost, "answered": self.answered, "renewals": self.renewals,
            "expired": self.expired, "late": self.late,
            "cpu": usage.ru_utime + usage.ru_stime, "errors": dict(self.errors.most_common(5)),
        }


STATS = Stats()


class Base(asyncio.Protocol):
    """Shared bookkeeping: handshake completion, loss counting."""

    def __init__(self, ready: asyncio.Future[None]) -> None:
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.up = False
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.start()

    def start(self) -> None:
        raise NotImplementedError

    def established(self) -> None:
        self.up = True
        STATS.connected += 1
        STATS.established += 1
        if not self.ready.done():
            self.ready.set_result(None)

    def fail(self, reason: str) -> None:
        STATS.errors[reason] += 1
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up:
            STATS.connected -= 1
            if not self.closing:
                STATS.lost += 1
                STATS.errors["lost: " + (type(exc).__name__ if exc else "closed by server")] += 1
        elif not self.ready.done():
            if self.closing:  # we gave up on it (timeout, shutdown): nobody waits any more
                self.ready.cancel()
            else:
                self.ready.set_exception(ConnectionError(f"closed during the handshake: {exc!r}"))

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


# -- pulse frames over TCP -------------------------------------------------------------------

_HELLO = encode_frame(Hello(PROTOCOL_VERSION, 0.0, 0.0, "loadgen", None))
_PING, _PONG, _HELLO_CODE, _CLOSE = 2, 3, 1, 5


class PulseTcp(Base):
    def start(self) -> None:
        assert self.transport is not None
        self.transport.write(_HELLO)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        size = len(buffer)
        while size - pos >= 4:
            (length,) = _LEN.unpack_from(buffer, pos)
            end = pos + 4 + length
            if end > size:
                break
            code = buffer[pos + 5] if length >= 2 else -1
            if code == _PING:
                pong = bytearray(buffer[pos:end])
                pong[5] = _PONG
                assert self.transport is not None
                self.transport.write(bytes(pong))
                STATS.answered += 1
            elif code == _HELLO_CODE and not self.up:
                self.established()
            elif code == _CLOSE:
                STATS.errors["close frame"] += 1
            pos = end
        if pos:
            del buffer[:pos]


# -- WebSocket -------------------------------------------------------------------------------


class WebSocket(Base):
    path = "/"

    def start(self) -> None:
        assert self.transport is not None
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.mask = os.urandom(4)
        host, port = self.transport.get_extra_info("peername")[:2]
        request = (
            f"GET {self.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        self.transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.up:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > 16384:
                    self.fail("oversized handshake response")
                return
            head = bytes(buffer[:end])
            del buffer[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.fail("upgrade refused: " + head.split(b"\r\n", 1)[0].decode("latin-1"))
                return
            if b"sec-websocket-extensions" in head.lower():
                self.fail("server negotiated an extension")
                return
            self.established()
        pos = 0
        size = len(buffer)
        while size - pos >= 2:
            b0, b1 = buffer[pos], buffer[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > size:
                break
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping: answer with a masked pong, same payload
                payload = bytes(buffer[pos + head : end])
                self.send_control(0xA, payload)
                STATS.answered += 1
            elif opcode == 0x8:
                STATS.errors["close frame"] += 1
                self.send_control(0x8, bytes(buffer[pos + head : pos + head + 2]))
            pos = end
        if pos:
            del buffer[:pos]

    def send_control(self, opcode: int, payload: bytes) -> None:
        mask = self.mask
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        assert self.transport is not None
        self.transport.write(bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked)


# -- sessions (lease and ZooKeeper) ----------------------------------------------------------


class SessionProto(Base):
    """A session renewed on the Java client's schedule by the process-wide ticker."""

    timeout = 10.0

    def __init__(self, ready: asyncio.Future[None], schedule: collections.deque[Any]) -> None:
        super().__init__(ready)
        self.schedule = schedule
        self.last_send = 0.0
        self.last_recv = 0.0
        self.read_timeout = 0.0
        self.ping_after = 0.0
        self.outstanding = 0

    def session_up(self, negotiated: float) -> None:
        now = time.monotonic()
        self.read_timeout = negotiated * 2 / 3
        self.ping_after = self.read_timeout / 2
        self.last_recv = now
        self.last_send = now
        self.established()
        self.schedule.append(self)

    def ping(self, now: float) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up and not self.closing:
            STATS.expired += 1
        super().connection_lost(exc)


class Lease(SessionProto):
    def start(self) -> None:
        assert self.transport is not None
        self.xid = 1
        self.transport.write(encode_message([0, 1, 0, "connect", {"timeout": self.timeout}]))

    def ping(self, now: float) -> None:
        self.xid += 1
        assert self.transport is not None
        self.transport.write(encode_message([0, self.xid, 0, "ping", {}]))
        self.last_send = now
        self.outstanding += 1

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        size = len(buffer)
        while size - pos >= 4:
            (length,) = _LEN.unpack_from(buffer, pos)
            end = pos + 4 + length
            if end > size:
                break
            message = msgpack.unpackb(bytes(buffer[pos + 4 : end]), raw=False)
            pos = end
            self.last_recv = time.monotonic()
            kind = message[0]
            if kind == 1:
                if message[2] != "ok":
                    STATS.errors[f"lease error {message[2]}"] += 1
                    if message[2] == "session_expired":
                        STATS.expired += 1
                    continue
                if not self.up:
                    self.session_up(float(message[3].get("timeout", self.timeout)))
                else:
                    self.outstanding -= 1
                    STATS.renewals += 1
            elif kind == 2 and message[2] == "session":
                state = message[3].get("state")
                STATS.errors[f"session notice {state}"] += 1
                if state == "expired":
                    STATS.expired += 1
                    self.closing = True  # counted here, not again as a lost connection
                    if self.up:
                        STATS.lost += 1
        if pos:
            del buffer[:pos]


_ZK_PING = encode_request(Xid.PING, ZkPing())


class ZooKeeper(SessionProto):
    def start(self) -> None:
        assert self.transport is not None
        self.transport.write(frame(ConnectRequest(int(self.timeout * 1000)).encode()))

    def ping(self, now: float) -> None:
        assert self.transport is not None
        self.transport.write(_ZK_PING)
        self.last_send = now
        self.outstanding += 1

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        size = len(buffer)
        while size - pos >= 4:
            (length,) = _LEN.unpack_from(buffer, pos)
            end = pos + 4 + length
            if end > size:
                break
            body = bytes(buffer[pos + 4 : end])
            pos = end
            self.last_recv = time.monotonic()
            if not self.up:
                response = ConnectResponse.decode(body)
                if response.expired:
                    STATS.expired += 1
                    self.fail("zk connect refused")
                    return
                self.session_up(response.timeout_ms / 1000)
                continue
            xid, _zxid, err = _ZK_REPLY.unpack_from(body, 0)
            if xid == Xid.PING and err == 0:
                self.outstanding -= 1
                STATS.renewals += 1
            elif err != 0:
                STATS.errors[f"zk err {err}"] += 1
        if pos:
            del buffer[:pos]


async def ticker(schedule: collections.deque[SessionProto]) -> None:
    """Send each session's ping when nothing was sent for half the read timeout.

    Every session has the same period and is re-queued at the back after each ping, so the
    queue stays ordered by due time and only its head is ever looked at.
    """
    while True:
        await asyncio.sleep(0.02)
        now = time.monotonic()
        while schedule:
            conn = schedule[0]
            if conn.transport is None or conn.transport.is_closing():
                schedule.popleft()
                continue
            if conn.last_send + conn.ping_after > now:
                break
            schedule.popleft()
            if now - conn.last_recv > conn.read_timeout:
                STATS.late += 1
            conn.ping(now)
            schedule.append(conn)


# -- driver ----------------------------------------------------------------------------------


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def open_one(args: argparse.Namespace, index: int, conns: list[Base],
                   schedule: collections.deque[Any], gate: asyncio.Semaphore) -> None:
    loop = asyncio.get_running_loop()
    source = args.sources[index % len(args.sources)]
    async with gate:
        ready: asyncio.Future[None] = loop.create_future()
        proto: Base
        if args.proto == "tcp":
            proto = PulseTcp(ready)
        elif args.proto == "ws":
            proto = WebSocket(ready)
        elif args.proto == "lease":
            proto = Lease(ready, schedule)
        else:
            proto = ZooKeeper(ready, schedule)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if source:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((source, 0))
            sock.setblocking(False)
            async with asyncio.timeout(args.handshake_timeout):
                await loop.sock_connect(sock, (args.host, args.port))
                await loop.create_connection(lambda: proto, sock=sock)
                conns.append(proto)
                await ready
        except (OSError, TimeoutError, ConnectionError) as exc:
            STATS.failed += 1
            STATS.errors["connect: " + type(exc).__name__] += 1
            proto.close()
            sock.close()


async def commands(conns: list[Base]) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if line == "stats":
            emit("stats", **STATS.as_dict())
        elif line in ("quit", ""):
            return


async def main(args: argparse.Namespace) -> None:
    conns: list[Base] = []
    schedule: collections.deque[Any] = collections.deque()
    SessionProto.timeout = args.session_timeout
    WebSocket.path = args.path
    tick = asyncio.ensure_future(ticker(schedule))
    gate = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()
    opening = [asyncio.ensure_future(open_one(args, i, conns, schedule, gate))
               for i in range(args.count)]
    _done, pending = await asyncio.wait(opening, timeout=args.connect_timeout)
    emit("connected", seconds=time.monotonic() - started, **STATS.as_dict())
    try:
        await commands(conns)
    finally:
        for task in pending:
            task.cancel()
        tick.cancel()
        for proto in conns:
            proto.close()
        await asyncio.sleep(0.1)
        emit("stats", final=True, **STATS.as_dict())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--proto", choices=("tcp", "ws", "lease", "zk"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--path", default="/", help="request path (ws)")
    parser.add_argument("--sources", default="",
                        help="comma-separated source addresses to spread connections over")
    parser.add_argument("--concurrency", type=int, default=100,
                        help="handshakes in flight at once")
    parser.add_argument("--handshake-timeout", type=float, default=30.0)
    parser.add_argument("--connect-timeout", type=float, default=60.0,
                        help="stop waiting for the connect phase after this many seconds")
    parser.add_argument("--session-timeout", type=float, default=10.0, help="lease/zk, seconds")
    args = parser.parse_args(argv)
    args.sources = [s for s in args.sources.split(",") if s] or [""]
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
