"""The memberlist codec against a real Serf agent (Debian's ``serf``) on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator

import pytest

from pulse._core.swim_messages import Ack, Alive, NodeState, Ping, PushNodeState, PushPull
from pulse.plugins.gossip.codec import (
    MessageType,
    StreamDecoder,
    decode_packet,
    decode_serf_tags,
    encode_packet,
    encode_serf_tags,
    encode_stream,
)

from ._wait import accepts_connections, wait_until

pytestmark = pytest.mark.e2e

SERF = shutil.which("serf")
if SERF is None:
    if os.environ.get("CI"):
        raise RuntimeError("serf is required in CI (scripts/test.sh installs it)")
    pytest.skip("serf is not installed", allow_module_level=True)


def _free_port() -> int:
    # A port free for both UDP and TCP (memberlist binds both).
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = int(t.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


class SerfAgent:
    """A ``serf agent`` process with its gossip and RPC ports."""

    def __init__(self, name: str, tags: dict[str, str]) -> None:
        self.name = name
        self.port = _free_port()
        self.rpc = _free_port()
        args = [str(SERF), "agent", "-node", name, "-bind", f"127.0.0.1:{self.port}",
                "-rpc-addr", f"127.0.0.1:{self.rpc}"]
        for key, value in tags.items():
            args += ["-tag", f"{key}={value}"]
        # Output is discarded: an unread pipe could fill up and stall the agent.
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 10.0) -> None:
        wait_until(lambda: accepts_connections(self.port), timeout=timeout,
                   what="serf agent starting", process=self.proc)

    def members(self) -> str:
        out = subprocess.run([str(SERF), "members", "-rpc-addr", f"127.0.0.1:{self.rpc}"],
                             capture_output=True, text=True, timeout=5, check=True)
        return out.stdout

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def agent() -> Iterator[SerfAgent]:
    a = SerfAgent("serf-alpha", {"role": "web", "dc": "loop"})
    try:
        a.wait_ready()
        yield a
    finally:
        a.stop()


def test_serf_answers_our_ping_with_an_ack_we_decode(agent: SerfAgent) -> None:
    """A ping encoded by the codec gets serf's ack (same sequence number) and its gossip decoded."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(3.0)
        me = s.getsockname()
        s.sendto(encode_packet([Ping(4242, agent.name, (me[0], me[1]), "pulse-probe")]),
                 ("127.0.0.1", agent.port))
        data, _ = s.recvfrom(65536)
    # serf compresses (LZW) whenever that is smaller, which its ack with coordinates is.
    assert data[0] == MessageType.COMPRESS
    messages = decode_packet(data)
    acks = [m for m in messages if isinstance(m, Ack)]
    assert [a.seq_no for a in acks] == [4242]
    # serf piggybacks its own alive (with its tags) on the ack while that gossip is fresh.
    alives = [m for m in messages if isinstance(m, Alive)]
    for alive in alives:
        assert alive.node == agent.name
        assert decode_serf_tags(alive.meta) == {"role": "web", "dc": "loop"}


def test_serf_ignores_a_ping_for_another_node(agent: SerfAgent) -> None:
    """A ping naming a different node gets no ack (memberlist checks the target name)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(1.0)
        s.sendto(encode_packet([Ping(1, "someone-else", s.getsockname(), "pulse-probe")]),
                 ("127.0.0.1", agent.port))
        with pytest.raises(TimeoutError):
            s.recvfrom(65536)


def test_push_pull_exchange_with_serf(agent: SerfAgent) -> None:
    """A TCP push-pull returns serf's state (its name, address and tags) and serf lists our node."""
    ours = PushNodeState("pulse-member", ("127.0.0.1", _free_port()), encode_serf_tags({"zone": "z1"}), 1,
                         NodeState.ALIVE, (1, 5, 2, 2, 5, 5))
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as conn:
        conn.sendall(encode_stream(PushPull(join=True, states=(ours,))))
        decoder = StreamDecoder()
        reply = None
        while reply is None:
            chunk = conn.recv(4096)
            assert chunk, "serf closed the stream before a whole push-pull arrived"
            reply = decoder.feed(chunk)
    assert isinstance(reply, PushPull)
    by_name = {s.name: s for s in reply.states}
    theirs = by_name[agent.name]
    assert theirs.addr == ("127.0.0.1", agent.port)
    assert theirs.state == NodeState.ALIVE
    assert decode_serf_tags(theirs.meta) == {"role": "web", "dc": "loop"}
    assert len(theirs.vsn) == 6 and theirs.vsn[0] <= theirs.vsn[2] <= theirs.vsn[1]
    # serf merged our state: `serf members` lists the pulse node with its tags.

    def listing_with_us() -> str:
        listing = agent.members()
        return listing if "pulse-member" in listing else ""

    listing = wait_until(listing_with_us, timeout=5, what="serf listing pulse-member",
                         process=agent.proc)
    line = next(line for line in listing.splitlines() if line.startswith("pulse-member"))
    assert "zone=z1" in line


def test_compressed_push_pull_is_understood_by_serf(agent: SerfAgent) -> None:
    """Serf decodes our LZW-compressed push-pull (proof that our LZW matches Go's)."""
    ours = PushNodeState("pulse-lzw", ("127.0.0.1", _free_port()), encode_serf_tags({"codec": "lzw"}), 1,
                         NodeState.ALIVE, (1, 5, 2, 2, 5, 5))
    with socket.create_connection(("127.0.0.1", agent.port), timeout=5) as conn:
        conn.sendall(encode_stream(PushPull(join=False, states=(ours,)), compress=True))
        decoder = StreamDecoder()
        reply = None
        while reply is None:
            chunk = conn.recv(4096)
            assert chunk
            reply = decoder.feed(chunk)
    assert isinstance(reply, PushPull)
    assert agent.name in {s.name for s in reply.states}
    wait_until(lambda: "pulse-lzw" in agent.members(), timeout=5,
               what="serf listing pulse-lzw", process=agent.proc)
    assert "codec=lzw" in agent.members()
