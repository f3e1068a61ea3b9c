"""The gossip driver on the engine: real loopback UDP/TCP sockets, virtual time (MockClock)."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterable

import pytest
import trio
import trio.testing

from pulse._core.swim import MemberEvent, MemberEventKind, SwimConfig
from pulse._driver.engine import current_engine
from pulse.plugins.gossip.codec import encode_serf_tags
from pulse.plugins.gossip.driver import GossipJoinError, GossipMember, gossip_member, tags_of

LOOP = ("127.0.0.1", 0)


def _config(**changes: object) -> SwimConfig:
    # name/addr/meta are replaced by gossip_member; the rest are memberlist's LAN defaults.
    return SwimConfig(name="x", addr=("127.0.0.1", 1), **changes)  # type: ignore[arg-type]


async def _collect(member: GossipMember, into: list[MemberEvent]) -> None:
    async for event in member.events():
        into.append(event)


async def _until(events: list[MemberEvent], kind: MemberEventKind, name: str) -> MemberEvent:
    while True:
        for event in events:
            if event.kind == kind and event.member.name == name:
                return event
        await trio.sleep(0.01)


def _names(members: Iterable[object]) -> set[str]:
    return {m.name for m in members}  # type: ignore[attr-defined]


async def test_two_members_join_and_list_each_other_with_tags(
        autojump_clock: trio.testing.MockClock) -> None:
    """After a join both members list both names with their tags; the first events() iterator
    receives the joins that happened before it subscribed."""
    async with gossip_member(LOOP, "a", tags={"role": "web"}, rng=random.Random(1)) as a, \
            gossip_member(LOOP, "b", tags={"role": "db"}, join=[a.addr], rng=random.Random(2)) as b:
        assert _names(b.members()) == {"a", "b"}  # the join's push-pull answered before returning
        await trio.sleep(1.0)
        assert _names(a.members()) == {"a", "b"}
        assert {m.name: tags_of(m) for m in a.members()} == {"a": {"role": "web"}, "b": {"role": "db"}}
        events: list[MemberEvent] = []
        with trio.move_on_after(0.5):
            await _collect(b, events)
        assert {(e.kind, e.member.name) for e in events} == {
            (MemberEventKind.JOINED, "a"), (MemberEventKind.JOINED, "b")}


async def test_members_stay_alive_for_a_minute_of_probing(autojump_clock: trio.testing.MockClock) -> None:
    """Three members probing each other for 60 virtual seconds raise no suspicion at all."""
    events: list[MemberEvent] = []
    async with gossip_member(LOOP, "a", rng=random.Random(1)) as a, \
            gossip_member(LOOP, "b", join=[a.addr], rng=random.Random(2)) as b, \
            gossip_member(LOOP, "c", join=[b.addr], rng=random.Random(3)), \
            trio.open_nursery() as nursery:
        nursery.start_soon(_collect, a, events)
        await trio.sleep(60)
        assert _names(a.members()) == {"a", "b", "c"}
        assert not [e for e in events if e.kind in (MemberEventKind.SUSPECT, MemberEventKind.FAILED)]
        assert a.swim.counters.probes >= 50  # about one probe per second
        assert a.counters.packets_in > 0 and a.counters.bad_packets == 0
        nursery.cancel_scope.cancel()


async def test_hung_member_is_suspected_then_failed(autojump_clock: trio.testing.MockClock) -> None:
    """A member that stops reading its UDP socket is suspect, then failed, within the SWIM bound."""
    cfg = _config(tcp_pings=False, push_pull_interval=1000.0)
    events: list[MemberEvent] = []
    async with gossip_member(LOOP, "a", config=cfg, rng=random.Random(1)) as a, \
            gossip_member(LOOP, "b", config=cfg, join=[a.addr], rng=random.Random(2)) as b, \
            trio.open_nursery() as nursery:
        nursery.start_soon(_collect, a, events)
        await trio.sleep(5)
        engine = current_engine()
        engine.remove_reader(b._udp)  # b hears nothing any more (as if its process hung)
        engine.forget(b)
        hung = trio.current_time()
        with trio.fail_after(20):
            failed = await _until(events, MemberEventKind.FAILED, "b")
        suspect = await _until(events, MemberEventKind.SUSPECT, "b")
        assert hung < suspect.at <= failed.at
        # Probe period 1 s with two members, suspicion timeout 4 s (memberlist's at N=2).
        assert failed.at - suspect.at == pytest.approx(4.0, abs=0.1)
        assert failed.at - hung < 8
        assert failed.confirmed_by == ("a",)
        assert _names(a.members()) == {"a"}
        nursery.cancel_scope.cancel()


async def test_tag_update_reaches_the_other_member(autojump_clock: trio.testing.MockClock) -> None:
    """update_tags gossips new metadata: the other member sees an update event with the new tags."""
    events: list[MemberEvent] = []
    async with gossip_member(LOOP, "a", rng=random.Random(1)) as a, \
            gossip_member(LOOP, "b", tags={"v": "1"}, join=[a.addr], rng=random.Random(2)) as b, \
            trio.open_nursery() as nursery:
        nursery.start_soon(_collect, a, events)
        await trio.sleep(1)
        await b.update_tags({"v": "2"})
        with trio.fail_after(2):
            update = await _until(events, MemberEventKind.UPDATED, "b")
        assert update.member.meta == encode_serf_tags({"v": "2"})
        assert tags_of(next(m for m in a.members() if m.name == "b")) == {"v": "2"}
        nursery.cancel_scope.cancel()


async def test_leaving_the_block_is_a_graceful_leave(autojump_clock: trio.testing.MockClock) -> None:
    """Exiting a member's block announces the leave: the other sees left (not failed) at once."""
    events: list[MemberEvent] = []
    async with gossip_member(LOOP, "a", rng=random.Random(1)) as a, trio.open_nursery() as nursery:
        nursery.start_soon(_collect, a, events)
        async with gossip_member(LOOP, "b", join=[a.addr], rng=random.Random(2)):
            await trio.sleep(2)
        left_at = trio.current_time()
        with trio.fail_after(1):
            left = await _until(events, MemberEventKind.LEFT, "b")
        assert left.at <= left_at
        assert not [e for e in events if e.kind == MemberEventKind.FAILED]
        assert _names(a.members()) == {"a"}
        nursery.cancel_scope.cancel()


async def test_garbage_packets_are_counted_and_ignored(autojump_clock: trio.testing.MockClock) -> None:
    """Undecodable datagrams (and encrypted ones) are dropped; the member keeps working."""
    async with gossip_member(LOOP, "a", rng=random.Random(1)) as a, \
            gossip_member(LOOP, "b", join=[a.addr], rng=random.Random(2)):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for junk in (b"\xff\x00", b"\x0a" + b"x" * 40, b""):
                s.sendto(junk, a.addr)
        await trio.sleep(3)
        assert a.counters.bad_packets == 3
        assert _names(a.members()) == {"a", "b"}


async def test_join_through_nobody_raises(autojump_clock: trio.testing.MockClock) -> None:
    """A join whose seeds all refuse the stream raises GossipJoinError (no member is left behind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        t.bind(("127.0.0.1", 0))
        dead = t.getsockname()
    with pytest.raises(GossipJoinError):
        async with gossip_member(LOOP, "a", join=[dead]):
            pass  # pragma: no cover


async def test_too_many_datagrams_are_read_over_several_wakeups(
        autojump_clock: trio.testing.MockClock) -> None:
    """A burst larger than one wake-up's budget is still read completely."""
    from pulse._core.swim_messages import Ping
    from pulse.plugins.gossip.codec import encode_packet

    async with gossip_member(LOOP, "a", rng=random.Random(1)) as a:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            me = s.getsockname()
            for seq in range(200):
                s.sendto(encode_packet([Ping(seq, "a", me, "probe")]), a.addr)
            await trio.sleep(0.5)
            acks = 0
            while True:
                try:
                    s.recvfrom(65536)
                except BlockingIOError:
                    break
                acks += 1
        assert a.counters.packets_in == 200
        assert acks == 200


async def test_packets_are_compressed_towards_a_peer_that_compresses(
        autojump_clock: trio.testing.MockClock) -> None:
    """An uncompressed ping gets an uncompressed ack; once the peer's ping arrives
    LZW-compressed, the ack (with its piggybacked gossip) goes back compressed too."""
    from pulse._core.swim_messages import Ack, Ping
    from pulse.plugins.gossip.codec import decode_packet, encode_packet, is_compressed_packet

    blob = "abcdef" * 60  # a large, repetitive tag: the piggybacked alive compresses well
    async with gossip_member(LOOP, "a", rng=random.Random(1)) as a, \
            gossip_member(LOOP, "b", tags={"blob": blob}, join=[a.addr], rng=random.Random(2)):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            me = s.getsockname()
            s.sendto(encode_packet([Ping(1, "a", me, "probe")]), a.addr)
            s.sendto(encode_packet([Ping(2, "a", me, "probe")], compress=True,
                                   compress_if_smaller=False), a.addr)
            await trio.sleep(0.01)
            replies = [s.recvfrom(65536)[0], s.recvfrom(65536)[0]]
        acks = {m.seq_no: is_compressed_packet(r) for r in replies for m in decode_packet(r)
                if isinstance(m, Ack)}
        assert acks == {1: False, 2: True}
        assert a.compresses(me)
        assert a.counters.packets_compressed_in == 1
        assert a.counters.packets_compressed_out == 1
        assert not a.compresses(("127.0.0.1", 1))


async def test_stream_reply_is_compressed_like_the_request(
        autojump_clock: trio.testing.MockClock) -> None:
    """A push-pull that arrives LZW-compressed is answered compressed, a plain one plainly;
    both answers decode to the member's state."""
    from pulse._core.swim_messages import PushPull
    from pulse.plugins.gossip.codec import StreamDecoder, encode_stream

    async with gossip_member(LOOP, "a", rng=random.Random(1)) as a:
        for compress in (False, True):
            stream = await trio.open_tcp_stream(*a.addr)
            async with stream:
                await stream.send_all(encode_stream(PushPull(False, ()), compress=compress))
                decoder = StreamDecoder()
                reply = None
                while reply is None:
                    chunk = await stream.receive_some(65536)
                    assert chunk
                    reply = decoder.feed(chunk)
            assert isinstance(reply, PushPull)
            assert [s.name for s in reply.states] == ["a"]
            assert decoder.compressed is compress
