"""Issue 10's attacks on live servers: the server's RSS and a neighbour's RTT before, during, after.

Usage::

    python benchmarks/attacks.py                 # every row
    python benchmarks/attacks.py --rows 2,4,8    # some rows
    python benchmarks/attacks.py --quick         # short phases and small attacks (smoke test)

For each row a fresh server runs on loopback (``pulse serve --listen …``, or Apache ZooKeeper
for row 7), a well-behaved neighbour measures round trips continuously (``pulse ping
--interval 0.1``; for the lease server and ZooKeeper a raw client of this script pings on its
own connection), and the server's VmRSS is sampled from /proc every 50 ms. The phases are
*before* (``--phase`` s), *during* (the attack, bounded in time and in count) and *after*
(``--phase`` s once every attacker is gone). Attackers are raw-protocol clients in a child
process of their own (threads inside it where an attack has many connections), so neither the
harness nor the neighbour shares an interpreter with them. The table gives RSS before / peak
during / after (MiB), the neighbour's RTT p50 and p99 per phase (ms) and what happened to the
attacker (the close code or reason it got, or the error answers it got).

The machine's cores are shared by the server, the attacker, the neighbour and this harness:
the numbers are what a neighbour sees when an attacker competes for the same CPU.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import multiprocessing
import os
import queue
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import free_port, pulse_command, rss_bytes, stop

MIB = 1024 * 1024
KIB = 1024
PING_INTERVAL = 0.1
HEARTBEAT_INTERVAL = 1.0  # what the heartbeat servers propose (rows 1-4, 8)
SERVER_TIMEOUT = 3.0  # silence after which they drop a client (issue 10 row 3 used 3 s)


# ----------------------------------------------------------------------------- raw protocols

def ws_upgrade(port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP connection to a WebSocket server, upgraded by hand (the 101 is read)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"upgrade refused: {head[:40]!r}")
    return sock


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (FIN set)."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def ws_server_frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of each complete unmasked frame in ``data``."""
    i = 0
    while len(data) - i >= 2:
        b0, b1 = data[i], data[i + 1]
        size, j = b1 & 0x7F, i + 2
        if size == 126:
            if len(data) - j < 2:
                return
            size, j = int.from_bytes(data[j:j + 2], "big"), j + 2
        elif size == 127:
            if len(data) - j < 8:
                return
            size, j = int.from_bytes(data[j:j + 8], "big"), j + 8
        if b1 & 0x80:
            j += 4
        if len(data) - j < size:
            return
        yield b0 & 0x0F, data[j:j + size]
        i = j + size


def ws_close_of(data: bytes) -> str | None:
    """``"1009 reason"`` of the close frame in ``data`` (None when there is none)."""
    for opcode, payload in ws_server_frames(data):
        if opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            return f"{code} {payload[2:].decode(errors='replace')}".strip()
    return None


def drain(sock: socket.socket, limit: float) -> tuple[bytes, bool]:
    """Everything readable within ``limit`` seconds; True when the peer closed."""
    sock.settimeout(limit)
    data = bytearray()
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(1 << 20)
            if not chunk:
                return bytes(data), True
            data += chunk
    except TimeoutError:
        pass
    except OSError:
        return bytes(data), True
    return bytes(data), False


def drain_until_close(sock: socket.socket, limit: float) -> tuple[bytes, bool]:
    """Read until a close frame or EOF arrives, at most ``limit`` seconds."""
    data = bytearray()
    deadline = time.monotonic() + limit
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                return bytes(data), True
            data += chunk
            if ws_close_of(bytes(data)) is not None:
                return bytes(data), False
    except TimeoutError:
        pass
    except OSError:
        return bytes(data), True
    return bytes(data), False


def lease_message(xid: int, op: str, args: dict[str, Any]) -> bytes:
    from pulse.codec import encode_message
    return encode_message([0, xid, 0, op, args])


class LeaseReader(threading.Thread):
    """Counts a lease connection's answers by code and its notices."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        from pulse.codec import MessageDecoder
        self.sock = sock
        self.decoder = MessageDecoder(64 * MIB)
        self.codes: collections.Counter[str] = collections.Counter()
        self.closed = False
        self.session_id: int | None = None

    def run(self) -> None:
        try:
            while data := self.sock.recv(1 << 20):
                for message in self.decoder.feed(data):
                    if isinstance(message, list) and message and message[0] == 1:
                        code = str(message[2])
                        self.codes[code] += 1
                        if code == "ok" and isinstance(message[3], dict) and self.session_id is None:
                            self.session_id = message[3].get("session_id")
                    elif isinstance(message, list) and message and message[0] == 2:
                        body = message[3] if len(message) > 3 else {}
                        what = body.get("code") or body.get("state") if isinstance(body, dict) \
                            else None
                        self.codes[f"notice {message[2]}:{what}"] += 1
        except OSError:
            pass
        self.closed = True


def lease_open(port: int, timeout: float = 2.0) -> tuple[socket.socket, LeaseReader]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(lease_message(1, "connect", {"timeout": timeout}))
    reader = LeaseReader(sock)
    reader.start()
    return sock, reader


def summarise_codes(readers: list[LeaseReader]) -> str:
    codes: collections.Counter[str] = collections.Counter()
    for reader in readers:
        codes.update(reader.codes)
    closed = sum(reader.closed for reader in readers)
    parts = ", ".join(f"{count} {code}" for code, count in codes.most_common())
    return f"answers: {parts}; {closed}/{len(readers)} connections closed by the server"


# ----------------------------------------------------------------------------- attacks
# Each runs in a child process: attack(port, seconds, quick) -> outcome text.

def attack_cpu_hog(port: int, seconds: float, quick: bool) -> str:
    """Control: an "attacker" that sends nothing and only keeps one core busy, building the
    same ping frames row 8 sends; what the neighbour sees here is the shared machine."""
    from pulse.frames import FrameType, encode_heartbeat
    built = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        b"".join(encode_heartbeat(FrameType.PING, built + i, time.monotonic()) for i in range(1000))
        built += 1000
    return f"built {built} ping frames in {seconds:g} s, sent none"


def attack_dubbo_reset(port: int, seconds: float, quick: bool) -> str:
    """Row 1: pipeline 20,000 heartbeat requests, read 1 kB, reset (SO_LINGER 0); 4 rounds."""
    from pulse.plugins.dubbo import codec
    requests, rounds = (2_000, 2) if quick else (20_000, 4)
    payload = b"".join(codec.heartbeat_request(i + 1) for i in range(requests))
    done = 0
    deadline = time.monotonic() + seconds
    for _ in range(rounds):
        if time.monotonic() > deadline:
            break
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError as exc:
            return f"connect refused after {done} rounds: {exc!r} (the provider is gone)"
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        try:
            sock.sendall(payload)
        except OSError:
            pass  # the provider stopped reading (its outbox is full): TCP pushed back
        try:
            sock.recv(1024)
        except OSError:
            pass
        sock.close()  # RST
        done += 1
    return f"{done}/{rounds} rounds of {requests} pipelined heartbeats + RST"


def attack_ws_pings_unread(port: int, seconds: float, quick: bool) -> str:
    """Row 2: 125-byte pings as fast as possible, never reading."""
    sock = ws_upgrade(port)
    batch = b"".join(ws_frame(0x9, os.urandom(125)) for _ in range(100))
    sent = 0
    closed = ""
    start = time.monotonic()
    deadline = start + seconds
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            sock.sendall(batch)
            sent += 100
        except TimeoutError:
            continue  # the server stopped reading us: TCP pushes back
        except OSError as exc:
            closed = f"send failed after {time.monotonic() - start:.1f} s: {type(exc).__name__}"
            break
    data, eof = drain(sock, 2.0)
    close = ws_close_of(data)
    sock.close()
    if close is not None:
        return f"{sent} pings; closed {close}"
    return f"{sent} pings; {closed or 'still open after ' + format(seconds, 'g') + ' s'}" + \
        (" (EOF)" if eof else "")


def attack_ws_trickle(port: int, seconds: float, quick: bool) -> str:
    """Row 3: 50 clients send one byte of a never-finished frame per second after the upgrade."""
    count = 10 if quick else 50
    socks = [ws_upgrade(port) for _ in range(count)]
    frame = ws_frame(0x2, b"x" * 200)  # each client trickles this frame's bytes
    start = time.monotonic()
    closed_at: dict[int, float] = {}
    codes: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    received = {i: bytearray() for i in range(count)}
    position = 0
    while len(closed_at) < count and time.monotonic() - start < seconds:
        for i, sock in enumerate(socks):
            if i not in closed_at and position < len(frame):
                try:
                    sock.send(frame[position:position + 1])
                except OSError:
                    closed_at[i] = time.monotonic() - start
                    codes["send failed"] += 1
        position += 1
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            live = [s for i, s in enumerate(socks) if i not in closed_at]
            if not live:
                break
            readable, _, _ = select.select(live, [], [], max(0.0, until - time.monotonic()))
            for sock in readable:
                i = socks.index(sock)
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    chunk = b""
                received[i] += chunk
                close = ws_close_of(bytes(received[i]))
                if not chunk or close is not None:
                    closed_at[i] = time.monotonic() - start
                    code = close.split(" ", 1)[0] if close else "EOF"
                    codes[code] += 1
                    examples.setdefault(code, close or "EOF")
    for sock in socks:
        sock.close()
    if not closed_at:
        return f"0/{count} closed within {seconds:g} s"
    times = sorted(closed_at.values())
    kinds = ", ".join(f"{n}× {examples[c]}" for c, n in codes.most_common())
    return (f"{len(closed_at)}/{count} closed after {times[0]:.1f}-{times[-1]:.1f} s "
            f"(server timeout {SERVER_TIMEOUT:g} s): {kinds}")


def attack_ws_4gb_header(port: int, seconds: float, quick: bool) -> str:
    """Row 4: a binary frame header declaring 4 GiB, then nothing; again on a new connection
    as soon as the server closes the previous one, for ``seconds`` (at most 1,000 times)."""
    closes: collections.Counter[str] = collections.Counter()
    took: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(took) < 1000:
        sock = ws_upgrade(port)
        start = time.monotonic()
        sock.sendall(struct.pack("!BBQ", 0x82, 0x80 | 127, 4 * 1024 * MIB) + os.urandom(4))
        data, eof = drain_until_close(sock, 5.0)
        took.append((time.monotonic() - start) * 1000)
        close = ws_close_of(data)
        closes[close.split(" ")[0] if close else ("EOF" if eof else "still open")] += 1
        sock.close()
    kinds = ", ".join(f"{n}× {c}" for c, n in closes.most_common())
    return (f"{len(took)} connections: closed {kinds} after p50 {statistics.median(took):.0f} ms, "
            f"max {max(took):.0f} ms")


def attack_lease_keys(port: int, seconds: float, quick: bool) -> str:
    """Row 5a: 16 sessions each pipeline 1,000 registrations of 64 KiB."""
    sessions, keys = (4, 100) if quick else (16, 1000)
    data = b"x" * (64 * KIB)
    readers: list[LeaseReader] = []
    deadline = time.monotonic() + seconds

    def one(index: int) -> None:
        sock, reader = lease_open(port)
        readers.append(reader)
        sock.settimeout(1.0)
        for key in range(keys):
            if time.monotonic() > deadline:
                break
            try:
                sock.sendall(lease_message(key + 2, "register",
                                           {"key": f"/attack/s{index}/k{key}", "data": data}))
            except TimeoutError:
                continue
            except OSError:
                break

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(sessions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 1)
    time.sleep(1.0)  # the last answers
    return summarise_codes(readers)


def attack_lease_watches(port: int, seconds: float, quick: bool) -> str:
    """Row 5b: 64 MiB of keys, then 20 pipelined watches of them from a client that never reads."""
    writers = 16 if quick else 64
    data = b"x" * (64 * KIB)
    readers: list[LeaseReader] = []
    socks = []
    for index in range(writers):  # 64 sessions × 16 keys × 64 KiB = 64 MiB (the per-session
        sock, reader = lease_open(port, timeout=10.0)  # quota is 1 MiB: 16 keys fit)
        readers.append(reader)
        socks.append(sock)
        for key in range(16):
            sock.sendall(lease_message(key + 2, "register",
                                       {"key": f"/attack/s{index}-k{key}", "data": data}))
    time.sleep(1.0)
    stored = summarise_codes(readers)
    watcher = socket.create_connection(("127.0.0.1", port))
    watcher.sendall(lease_message(1, "connect", {"timeout": 10.0}))
    watcher.settimeout(1.0)
    for watch_id in range(1, 21):
        try:
            watcher.sendall(lease_message(watch_id + 1, "watch",
                                          {"prefix": "/attack", "watch_id": watch_id}))
        except OSError:
            break
    time.sleep(min(seconds, 3.0))
    answered, eof = drain(watcher, 2.0)
    from pulse.codec import MessageDecoder
    codes: collections.Counter[str] = collections.Counter()
    for message in MessageDecoder(64 * MIB).feed(answered):
        if isinstance(message, list) and message and message[0] == 1:
            codes[str(message[2])] += 1
        elif isinstance(message, list) and message and message[0] == 2:
            codes[f"notice {message[2]}"] += 1
    for sock in [*socks, watcher]:
        sock.close()
    watched = ", ".join(f"{n} {c}" for c, n in codes.most_common())
    return f"keys: {stored}; the 20 watches: {watched}" + (" (closed)" if eof else "")


def attack_lease_squat(port: int, seconds: float, quick: bool) -> str:
    """Row 6: register the presence prefix itself as an ephemeral key."""
    sock, reader = lease_open(port)
    sock.sendall(lease_message(2, "register", {"key": "/pulse/presence", "data": b""}))
    sock.sendall(lease_message(3, "register", {"key": "/pulse", "data": b""}))
    time.sleep(1.0)
    sock.close()
    return f"register /pulse/presence and /pulse: {summarise_codes([reader])}"


def attack_lease_request_flood(port: int, seconds: float, quick: bool) -> str:
    """Row 5c: one session pipelines pings as fast as it can (the request-rate quota)."""
    sock, reader = lease_open(port)
    batch = b"".join(lease_message(i + 2, "ping", {}) for i in range(1000))
    sent = 0
    start = time.monotonic()
    sock.settimeout(0.5)
    while time.monotonic() - start < seconds and not reader.closed:
        try:
            sock.sendall(batch)
            sent += 1000
        except TimeoutError:
            continue
        except OSError:
            break
    took = time.monotonic() - start
    reader.join(2.0)
    sock.close()
    return f"{sent} pings pipelined in {took:.1f} s; {summarise_codes([reader])}"


def attack_tcp_ping_flood(port: int, seconds: float, quick: bool) -> str:
    """Row 8: one client floods a tcp:// server with pings (reading the pongs), and connects
    again whenever it is closed, for ``seconds``."""
    from pulse.errors import RemoteProtocolError
    from pulse.frames import Close, FrameDecoder, FrameType, Hello, encode_frame, encode_heartbeat
    sent = 0
    reasons: collections.Counter[str] = collections.Counter()
    lifetimes: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(lifetimes) < 1000:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(encode_frame(Hello(1, HEARTBEAT_INTERVAL, SERVER_TIMEOUT, "attacker")))
        decoder = FrameDecoder()
        reason = ""
        start = time.monotonic()
        sock.settimeout(0.5)
        while time.monotonic() < end and not reason:
            batch = b"".join(encode_heartbeat(FrameType.PING, sent + i, time.monotonic())
                             for i in range(1000))
            try:
                sock.sendall(batch)
                sent += 1000
            except TimeoutError:
                pass
            except OSError as exc:
                reason = f"send failed: {type(exc).__name__}"
            while select.select([sock], [], [], 0)[0]:
                try:
                    chunk = sock.recv(1 << 20)
                except OSError as exc:
                    reason = reason or f"recv failed: {type(exc).__name__}"
                    break
                if not chunk:
                    reason = reason or "EOF"
                    break
                try:
                    for frame in decoder.feed(chunk):
                        if isinstance(frame, Close):
                            reason = f"closed: {frame.reason}"
                except RemoteProtocolError:
                    pass
        sock.close()
        if reason:
            lifetimes.append(time.monotonic() - start)
            reasons[reason] += 1
    kinds = ", ".join(f"{n}× {c}" for c, n in reasons.most_common())
    life = (f", each lived p50 {statistics.median(lifetimes) * 1000:.0f} ms"
            if lifetimes else "")
    return f"{sent} pings on {max(1, len(lifetimes))} connections{life}: {kinds or 'never closed'}"


# ----------------------------------------------------------------------------- neighbours

def neighbour_lease(port: int) -> None:
    """A raw lease client that pings every PING_INTERVAL and prints each RTT as JSON."""
    from pulse.codec import MessageDecoder
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(lease_message(1, "connect", {"timeout": 10.0}))
    decoder = MessageDecoder(16 * MIB)
    sock.settimeout(5.0)
    xid = 1
    while True:
        messages = decoder.feed(sock.recv(65536))
        if any(isinstance(m, list) and m[0] == 1 and m[1] == 1 for m in messages):
            break
    while True:
        xid += 1
        sent = time.monotonic()
        sock.sendall(lease_message(xid, "ping", {}))
        answered = False
        while not answered:
            data = sock.recv(65536)
            if not data:
                print(json.dumps({"event": "closed"}), flush=True)
                return
            answered = any(isinstance(m, list) and m[0] == 1 and m[1] == xid
                           for m in decoder.feed(data))
        rtt = time.monotonic() - sent
        print(json.dumps({"event": "pong", "rtt_ms": round(rtt * 1000, 3)}), flush=True)
        time.sleep(max(0.0, PING_INTERVAL - rtt))


def neighbour_zk(port: int) -> None:
    """A kazoo client timing ``exists('/')`` every PING_INTERVAL, printed as JSON."""
    from kazoo.client import KazooClient
    client = KazooClient(hosts=f"127.0.0.1:{port}", timeout=10.0)
    client.start(timeout=10)
    while True:
        sent = time.monotonic()
        client.exists("/")
        rtt = time.monotonic() - sent
        print(json.dumps({"event": "pong", "rtt_ms": round(rtt * 1000, 3)}), flush=True)
        time.sleep(max(0.0, PING_INTERVAL - rtt))


# ----------------------------------------------------------------------------- the harness

@dataclass
class Recorder:
    """RSS samples of the server and RTT samples of the neighbour, with their times."""

    pid: int
    rss: list[tuple[float, float]] = field(default_factory=list)
    rtt: list[tuple[float, float]] = field(default_factory=list)
    neighbour_note: str = ""
    stop: threading.Event = field(default_factory=threading.Event)

    def sample_rss(self) -> None:
        while not self.stop.is_set():
            try:
                self.rss.append((time.monotonic(), rss_bytes(self.pid) / MIB))
            except (OSError, RuntimeError):
                return  # the server is gone
            self.stop.wait(0.05)

    def read_neighbour(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "pong":
                self.rtt.append((time.monotonic(), float(event["rtt_ms"])))
            elif event.get("event") in ("summary", "closed") and event.get("reason"):
                self.neighbour_note = str(event["reason"])
            elif event.get("event") == "closed":
                self.neighbour_note = "neighbour's connection closed"

    def rtts(self, start: float, end: float) -> list[float]:
        return [rtt for at, rtt in self.rtt if start <= at < end]

    def rss_in(self, start: float, end: float) -> list[float]:
        return [rss for at, rss in self.rss if start <= at <= end]


@dataclass
class Row:
    number: str
    name: str
    scheme: str  # tcp, ws, dubbo, pulse, zk
    attack: Callable[[int, float, bool], str]
    seconds: float = 10.0


@dataclass
class Result:
    row: Row
    rss: tuple[float, float, float]
    p50: tuple[float | None, float | None, float | None]
    p99: tuple[float | None, float | None, float | None]
    samples: tuple[int, int, int]
    outcome: str


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait_port(port: int, process: subprocess.Popen[Any] | None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout:g} s")


def _run_attack(attack: Callable[[int, float, bool], str], port: int, seconds: float,
                quick: bool, results: Any) -> None:
    try:
        results.put(attack(port, seconds, quick))
    except Exception as exc:  # reported in the table, not raised
        results.put(f"attacker failed: {exc!r}")


@contextmanager
def server_for(row: Row, port: int, workdir: Path) -> Iterator[tuple[int, str]]:
    """Start the row's server; yield (pid to sample, neighbour URL or scheme:port)."""
    if row.scheme == "zk":
        from tests.zk_harness import ZooKeeperServer, find_zookeeper
        install = find_zookeeper()
        if install is None:
            raise RuntimeError("java / ZooKeeper not installed")
        zk = ZooKeeperServer(install, workdir)
        zk.start()
        try:
            zk.wait_serving()
            assert zk.process is not None
            yield zk.process.pid, f"zk:{zk.client_port}"
        finally:
            zk.stop()
        return
    url = f"{row.scheme}://127.0.0.1:{port}"
    args = [*pulse_command(), "serve", "--listen", url]
    if row.scheme != "pulse":
        args += ["--interval", str(HEARTBEAT_INTERVAL), "--timeout", str(SERVER_TIMEOUT)]
    # The server's log goes to a file: an unread pipe would fill and stall the server.
    log_path = workdir / "server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(port, process)
        yield process.pid, url + ("/" if row.scheme == "ws" else "")
    finally:
        alive = process.poll() is None
        stop(process)
        if not alive:
            tail = log_path.read_text(errors="replace")[-300:]
            print(f"row {row.number}: the server had exited: {tail.strip()}", file=sys.stderr)


def neighbour_command(target: str) -> list[str]:
    if target.startswith("pulse://"):
        return [sys.executable, __file__, "--neighbour-lease", target.rsplit(":", 1)[1]]
    if target.startswith("zk:"):
        return [sys.executable, __file__, "--neighbour-zk", target.split(":", 1)[1]]
    return [*pulse_command(), "ping", target, "--interval", str(PING_INTERVAL),
            "--timeout", "5", "--json"]


def run_row(row: Row, phase: float, quick: bool) -> Result:
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir, server_for(row, port, Path(workdir)) as (
            pid, target):
        attack_port = int(target.split(":")[-1].rstrip("/")) if row.scheme == "zk" else port
        recorder = Recorder(pid)
        sampler = threading.Thread(target=recorder.sample_rss, daemon=True)
        sampler.start()
        neighbour = subprocess.Popen(neighbour_command(target), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        reader = threading.Thread(target=recorder.read_neighbour, args=(neighbour,), daemon=True)
        reader.start()
        try:
            settle = time.monotonic() + 15
            while len(recorder.rtt) < 3 and time.monotonic() < settle:
                time.sleep(0.05)  # the neighbour is connected and answered
            t0 = time.monotonic()
            time.sleep(phase)
            t1 = time.monotonic()
            seconds = min(row.seconds, 3.0) if quick else row.seconds
            context = multiprocessing.get_context("fork")
            results = context.Queue()
            child = context.Process(target=_run_attack,
                                    args=(row.attack, attack_port, seconds, quick, results))
            child.start()
            try:
                outcome = results.get(timeout=seconds + 30)
            except queue.Empty:
                outcome = "attacker killed at its time limit"
            child.join(5)
            if child.is_alive():
                child.kill()
                child.join()
            t2 = time.monotonic()
            time.sleep(phase)
            t3 = time.monotonic()
        finally:
            recorder.stop.set()
            if neighbour.poll() is None:
                neighbour.terminate()
            try:
                neighbour.wait(5)
            except subprocess.TimeoutExpired:
                neighbour.kill()
                neighbour.wait()
            reader.join(2)
        if neighbour.returncode not in (0, -15, None) and not recorder.neighbour_note:
            err = neighbour.stderr.read().strip().splitlines() if neighbour.stderr else []
            recorder.neighbour_note = err[-1] if err else f"exit {neighbour.returncode}"
        before = recorder.rss_in(t0, t1)
        during = recorder.rss_in(t1, t2)
        after = recorder.rss_in(t3 - 0.5, t3)
        phases = [(t0, t1), (t1, t2), (t2, t3)]
        rtts = [recorder.rtts(a, b) for a, b in phases]
        if recorder.neighbour_note:
            outcome += f" [neighbour: {recorder.neighbour_note}]"
        return Result(
            row,
            (statistics.median(before) if before else float("nan"),
             max(during) if during else float("nan"),
             statistics.median(after) if after else float("nan")),
            tuple(percentile(r, 0.5) for r in rtts),  # type: ignore[arg-type]
            tuple(percentile(r, 0.99) for r in rtts),  # type: ignore[arg-type]
            tuple(len(r) for r in rtts),  # type: ignore[arg-type]
            outcome,
        )


def attack_zk_delete(port: int, seconds: float, quick: bool) -> str:
    """Row 7: kazoo deletes a live ``pulse agent``'s presence node, 10 times; time until the
    agent has put it back."""
    from kazoo.client import KazooClient
    agent = subprocess.Popen([*pulse_command(), "agent", "--server", f"zk://127.0.0.1:{port}",
                              "--id", "victim", "--session-timeout", "6"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = KazooClient(hosts=f"127.0.0.1:{port}", timeout=10.0)
    client.start(timeout=10)
    path = "/pulse/presence/victim"
    back: list[float] = []
    missing = 0
    try:
        deadline = time.monotonic() + 20
        while client.exists(path) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if client.exists(path) is None:
            return "the agent never registered"
        rounds = 3 if quick else 10
        end = time.monotonic() + seconds
        for _ in range(rounds):
            if time.monotonic() > end:
                break
            client.delete(path)
            deleted = time.monotonic()
            while client.exists(path) is None:
                if time.monotonic() - deleted > 5:
                    missing += 1
                    break
                time.sleep(0.002)
            else:
                back.append((time.monotonic() - deleted) * 1000)
            time.sleep(0.2)
    finally:
        client.stop()
        client.close()
        stop(agent)
    if not back:
        return f"node never came back ({missing} deletes)"
    return (f"{len(back)}/{len(back) + missing} deletes: node back after "
            f"p50 {statistics.median(back):.0f} ms, max {max(back):.0f} ms")


ROWS = [
    Row("0", "control (tcp): one core kept busy by a process sending nothing", "tcp",
        attack_cpu_hog, seconds=5.0),
    Row("1", "Dubbo: 20,000 pipelined heartbeats, read 1 kB, RST (×4)", "dubbo",
        attack_dubbo_reset),
    Row("2", "WebSocket: 125-byte pings, never read", "ws", attack_ws_pings_unread),
    Row("3", "WebSocket: 50 clients trickle 1 byte/s", "ws", attack_ws_trickle),
    Row("4", "WebSocket: frame headers declaring 4 GiB, one connection after another", "ws",
        attack_ws_4gb_header, seconds=5.0),
    Row("5a", "lease: 16 sessions × 1,000 keys of 64 KiB, pipelined", "pulse",
        attack_lease_keys),
    Row("5b", "lease: 64 MiB of keys, 20 pipelined watches never read", "pulse",
        attack_lease_watches),
    Row("5c", "lease: one session pipelines pings flat out", "pulse",
        attack_lease_request_flood),
    Row("6", "lease: register /pulse/presence (squat)", "pulse", attack_lease_squat,
        seconds=1.0),
    Row("7", "zk: kazoo deletes a live agent's node (×10)", "zk", attack_zk_delete),
    Row("8", "tcp: one client floods pings, reconnecting when closed", "tcp",
        attack_tcp_ping_flood, seconds=5.0),
]


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def print_table(results: list[Result]) -> None:
    print("| row | attack | RSS MiB before / peak / after | neighbour RTT p50 ms "
          "before / during / after | p99 ms before / during / after | samples | outcome |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        rss = " / ".join(f"{v:.0f}" for v in r.rss)
        p50 = " / ".join(fmt(v) for v in r.p50)
        p99 = " / ".join(fmt(v) for v in r.p99)
        samples = "/".join(str(n) for n in r.samples)
        print(f"| {r.row.number} | {r.row.name} | {rss} | {p50} | {p99} | {samples} | "
              f"{r.outcome.replace('|', '/')} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", help="comma-separated row numbers (default: all)")
    parser.add_argument("--phase", type=float, default=3.0, help="seconds before and after")
    parser.add_argument("--quick", action="store_true", help="small attacks, short phases")
    parser.add_argument("--neighbour-lease", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--neighbour-zk", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.neighbour_lease:
        neighbour_lease(args.neighbour_lease)
        return
    if args.neighbour_zk:
        neighbour_zk(args.neighbour_zk)
        return
    wanted = set(args.rows.split(",")) if args.rows else None
    phase = min(args.phase, 1.0) if args.quick else args.phase
    results = []
    for row in ROWS:
        if wanted is not None and row.number not in wanted:
            continue
        print(f"row {row.number}: {row.name} …", file=sys.stderr, flush=True)
        results.append(run_row(row, phase, args.quick))
    print_table(results)


if __name__ == "__main__":
    main()
