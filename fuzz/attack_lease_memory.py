"""Memory attacks on a lease server process (issue 10, row 5): measure its RSS.

Usage::

    python fuzz/attack_lease_memory.py keys      # 16 sessions × 1,000 keys of 64 KiB, pipelined
    python fuzz/attack_lease_memory.py watches   # 64 MB of keys, then 20 pipelined watches
                                                 # from a client that never reads

It starts ``pulse serve --listen pulse://127.0.0.1:<port>`` (the ``pulse`` package importable
by ``python``; set ``PYTHONPATH`` to measure another checkout), runs the attack for at most
``--seconds``, samples the server's RSS every 50 ms and prints RSS before, peak during and
after (the attackers gone), plus what the server answered. Loopback only; the server is
killed at the end.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable

import trio

from pulse.codec import MessageDecoder, encode_message

KIB = 1024


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Client:
    """A raw lease client that pipelines requests and counts the answers by code."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = MessageDecoder(64 * 1024 * 1024)
        self.codes: collections.Counter[str] = collections.Counter()
        self.xid = 0
        self.closed = False

    async def send(self, op: str, args: dict[str, object]) -> None:
        self.xid += 1
        await self.stream.send_all(encode_message([0, self.xid, 0, op, args]))

    async def read_all(self) -> None:
        try:
            while data := await self.stream.receive_some(1 << 20):
                for message in self.decoder.feed(data):
                    if isinstance(message, list) and message and message[0] == 1:
                        self.codes[str(message[2])] += 1
                    elif isinstance(message, list) and message and message[0] == 2:
                        self.codes[f"notice:{message[2]}"] += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.closed = True


async def open_client(port: int, nursery: trio.Nursery, *, read: bool = True) -> Client:
    client = Client(await trio.open_tcp_stream("127.0.0.1", port))
    await client.send("connect", {"timeout": 30.0})
    if read:
        nursery.start_soon(client.read_all)
    return client


async def attack_keys(port: int, nursery: trio.Nursery, clients: list[Client]) -> None:
    data = b"x" * (64 * KIB)

    async def one(index: int) -> None:
        client = await open_client(port, nursery)
        clients.append(client)
        for key in range(1000):
            await client.send("register", {"key": f"/attack/s{index}/k{key}", "data": data})

    async with trio.open_nursery() as inner:
        for index in range(16):
            inner.start_soon(one, index)


async def attack_watches(port: int, nursery: trio.Nursery, clients: list[Client]) -> None:
    data = b"x" * (64 * KIB)
    for index in range(64):  # 64 sessions × 16 keys × 64 KiB = 64 MiB under /attack
        client = await open_client(port, nursery)
        clients.append(client)
        for key in range(16):
            await client.send("register", {"key": f"/attack/s{index}-k{key}", "data": data})
    await trio.sleep(1.0)
    reader = await open_client(port, nursery, read=False)  # never reads a byte
    clients.append(reader)
    for watch_id in range(1, 21):
        await reader.send("watch", {"prefix": "/attack", "watch_id": watch_id})


ATTACKS: dict[str, Callable[[int, trio.Nursery, list[Client]], Awaitable[None]]] = {
    "keys": attack_keys,
    "watches": attack_watches,
}


async def main(attack: str, seconds: float) -> None:
    port = free_port()
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "pulse.cli.main", "serve", "--listen", f"pulse://127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with trio.fail_after(15):
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.05)
        await trio.sleep(0.5)
        before = rss_mib(process.pid)
        peak = before
        clients: list[Client] = []

        async def sample() -> None:
            nonlocal peak
            while True:
                if process.returncode is not None:
                    return
                peak = max(peak, rss_mib(process.pid))
                await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            with trio.move_on_after(seconds):
                await ATTACKS[attack](port, nursery, clients)
                await trio.sleep(seconds)
            for client in clients:
                await trio.aclose_forcefully(client.stream)
            await trio.sleep(3.0)  # sessions still count until they expire: measure anyway
            after = rss_mib(process.pid) if process.returncode is None else float("nan")
            nursery.cancel_scope.cancel()
        codes: collections.Counter[str] = collections.Counter()
        for client in clients:
            codes.update(client.codes)
        print(f"attack={attack} rss_before={before:.0f}MiB rss_peak={peak:.0f}MiB "
              f"rss_after={after:.0f}MiB server_alive={process.returncode is None} "
              f"answers={dict(codes)}")
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                os.kill(process.pid, signal.SIGKILL)
            await process.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("--seconds", type=float, default=10.0)
    options = parser.parse_args()
    trio.run(main, options.attack, options.seconds)
