"""Row 1 of issue 10 against a Dubbo provider process: pipeline heartbeats, read a little, reset.

Usage::

    python fuzz/attack_dubbo_reset.py [--requests 20000] [--rounds 4]

Starts ``pulse serve --listen dubbo://127.0.0.1:<port>``, and per round opens a connection,
writes ``--requests`` heartbeat requests in one go, reads 1 kB, then resets the connection
(SO_LINGER 0). Prints the provider's RSS before and after, whether it survived each round and
whether a well-behaved neighbour still gets its heartbeat answered afterwards.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import struct
import subprocess
import sys
import time

from pulse.plugins.dubbo import codec


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def neighbour_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(codec.heartbeat_request(99))
            reply = sock.recv(64)
            return reply[:4] == bytes.fromhex("dabb2214")
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=4)
    options = parser.parse_args()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pulse.cli.main", "serve", "--listen", f"dubbo://127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not neighbour_ok(port):
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("the provider did not start")
            time.sleep(0.1)
        before = rss_mib(process.pid)
        payload = b"".join(codec.heartbeat_request(i + 1) for i in range(options.requests))
        survived = 0
        for _ in range(options.rounds):
            try:
                sock = socket.create_connection(("127.0.0.1", port))
            except OSError:
                break  # the provider is gone
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.settimeout(5)
            try:
                sock.sendall(payload)
            except OSError:
                pass
            try:
                sock.recv(1024)
            except OSError:
                pass
            sock.close()  # RST
            time.sleep(1.0)
            if process.poll() is None:
                survived += 1
        after = rss_mib(process.pid) if process.poll() is None else float("nan")
        if process.poll() is not None and process.stderr is not None:
            print(process.stderr.read()[-2000:].decode(errors="replace"), end="")
        print(f"rounds={options.rounds} survived={survived} rss_before={before:.0f}MiB "
              f"rss_after={after:.0f}MiB exit_code={process.poll()} "
              f"neighbour_answered={process.poll() is None and neighbour_ok(port)}")
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()


if __name__ == "__main__":
    main()
