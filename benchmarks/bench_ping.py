"""Heartbeat round trip on loopback: pulse over TCP next to a bare TCP echo of equal size.

Both run in the same process and the same trio loop, one after the other, N round trips
each, so the ratio shows what pulse's framing, decoding and liveness bookkeeping add on
top of the kernel's loopback round trip. Also times frame encode/decode against plain
msgpack. Run:  python benchmarks/bench_ping.py [N]
"""

from __future__ import annotations

import statistics
import sys
import time

import msgpack
import trio

from pulse import HeartbeatPolicy
from pulse.frames import FrameDecoder, Ping, encode_frame
from pulse.plugins.tcp import connect_tcp, echo, serve_tcp

QUIET = HeartbeatPolicy(interval=60.0, timeout=180.0)


async def raw_echo_rtts(n: int, size: int) -> list[float]:
    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, echo, 0)
        port = listeners[0].socket.getsockname()[1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        payload = b"x" * size
        rtts = []
        for _ in range(n):
            start = time.perf_counter()
            await stream.send_all(payload)
            got = 0
            while got < size:
                got += len(await stream.receive_some(65536))
            rtts.append(time.perf_counter() - start)
        await stream.aclose()
        nursery.cancel_scope.cancel()
    return rtts


async def pulse_ping_rtts(n: int) -> list[float]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: serve_tcp(echo, port=0, policy=QUIET, task_status=task_status))
        port = listeners[0].socket.getsockname()[1]
        rtts = []
        async with connect_tcp("127.0.0.1", port, QUIET) as conn:
            for _ in range(n):
                start = time.perf_counter()
                await conn.ping()
                rtts.append(time.perf_counter() - start)
        nursery.cancel_scope.cancel()
    return rtts


def codec_rates(n: int) -> tuple[float, float]:
    frames = [Ping(i, 123456.789 + i) for i in range(n)]
    start = time.perf_counter()
    wire = b"".join(encode_frame(f) for f in frames)
    decoded = FrameDecoder().feed(wire)
    pulse_s = time.perf_counter() - start
    assert len(decoded) == n
    start = time.perf_counter()
    packed = [msgpack.packb([2, i, 123456.789 + i]) for i in range(n)]
    unpacker = msgpack.Unpacker()
    unpacker.feed(b"".join(packed))
    assert sum(1 for _ in unpacker) == n
    raw_s = time.perf_counter() - start
    return n / pulse_s, n / raw_s


def summary(name: str, rtts: list[float]) -> float:
    median = statistics.median(rtts)
    p99 = sorted(rtts)[int(len(rtts) * 0.99) - 1]
    print(f"{name:<28} median {median * 1e6:8.1f} µs   p99 {p99 * 1e6:8.1f} µs")
    return median


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    ping_size = len(encode_frame(Ping(1, 123456.789)))
    print(f"{n} round trips on 127.0.0.1; pulse PING frame = {ping_size} bytes")
    raw = summary(f"bare TCP echo ({ping_size} B)", trio.run(raw_echo_rtts, n, ping_size))
    ours = summary("pulse heartbeat ping/pong", trio.run(pulse_ping_rtts, n))
    print(f"ratio pulse / bare TCP: {ours / raw:.2f}x")
    pulse_rate, raw_rate = codec_rates(100_000)
    print(f"frame encode+decode: pulse {pulse_rate:,.0f}/s, plain msgpack {raw_rate:,.0f}/s "
          f"(ratio {raw_rate / pulse_rate:.2f}x)")


if __name__ == "__main__":
    main()
