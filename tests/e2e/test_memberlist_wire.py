"""The memberlist codec against a real Serf agent (Debian's ``serf``) on loopback."""

from __future__ import annotations

import socket
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

from ._serf import SerfAgent, free_port, require_serf
from ._wait import wait_until

pytestmark = pytest.mark.e2e

require_serf()


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
    ours = PushNodeState("pulse-member", ("127.0.0.1", free_port()), encode_serf_tags({"zone": "z1"}), 1,
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
        listing = agent.listing()
        return listing if "pulse-member" in listing else ""

    listing = wait_until(listing_with_us, timeout=5, what="serf listing pulse-member",
                         process=agent.proc)
    line = next(line for line in listing.splitlines() if line.startswith("pulse-member"))
    assert "zone=z1" in line


def test_compressed_push_pull_is_understood_by_serf(agent: SerfAgent) -> None:
    """Serf decodes our LZW-compressed push-pull (proof that our LZW matches Go's)."""
    ours = PushNodeState("pulse-lzw", ("127.0.0.1", free_port()), encode_serf_tags({"codec": "lzw"}), 1,
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
    wait_until(lambda: "pulse-lzw" in agent.listing(), timeout=5,
               what="serf listing pulse-lzw", process=agent.proc)
    assert "codec=lzw" in agent.listing()
