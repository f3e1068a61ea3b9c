"""The ZooKeeper trio driver against an in-memory fake server, in virtual time.

The fake speaks the real wire format (through pulse's own jute codec) over
``trio.testing.memory_stream_pair`` and keeps a tiny znode table, so the timing rules and
the re-attach / expiry / re-register paths run in milliseconds with MockClock.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from pulse.plugins.zookeeper import ConnectionLoss, ZooKeeperSessionExpired, connect
from pulse.plugins.zookeeper.jute import (
    ConnectRequest,
    ConnectResponse,
    FrameDecoder,
    JuteReader,
    JuteWriter,
    ReplyHeader,
    RequestHeader,
    Stat,
    frame,
)
from pulse.plugins.zookeeper.protocol import ErrorCode, OpCode
from pulse.presence import SessionEvent, SessionState
from tests.zk_harness import poll_until


@dataclass
class FakeZooKeeper:
    """A minimal ZooKeeper: sessions, pings, ephemeral/persistent nodes, no watches."""

    hosts: list[tuple[str, int]] = field(default_factory=lambda: [("zk1", 1), ("zk2", 2)])
    refused: set[tuple[str, int]] = field(default_factory=set)
    silent: bool = False  # accept bytes but never answer
    expired: set[int] = field(default_factory=set)
    passwords: dict[int, bytes] = field(default_factory=dict)
    nodes: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # path -> (data, owner)
    pings: list[float] = field(default_factory=list)
    connects: list[tuple[tuple[str, int], ConnectRequest]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(0x1000))
    nursery: trio.Nursery | None = None

    async def open_stream(self, host: str, port: int) -> trio.abc.Stream:
        """The client's stream opener: refused hosts raise, others get a fake connection."""
        if (host, port) in self.refused:
            raise ConnectionRefusedError(f"{host}:{port} refused")
        client, server = trio.testing.memory_stream_pair()
        assert self.nursery is not None
        self.nursery.start_soon(self._serve, (host, port), server)
        return client

    def expire(self, session_id: int) -> None:
        """Expire a session server-side: its ephemeral nodes go."""
        self.expired.add(session_id)
        self.nodes = {p: v for p, v in self.nodes.items() if v[1] != session_id}

    async def _serve(self, host: tuple[str, int], stream: trio.abc.Stream) -> None:
        decoder = FrameDecoder()
        session = 0
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                for payload in decoder.feed(data):
                    if self.silent:
                        continue
                    if session == 0:
                        request = ConnectRequest.decode(payload)
                        self.connects.append((host, request))
                        session, reply = self._connect(request)
                        await stream.send_all(frame(reply.encode()))
                        if not session:
                            await stream.aclose()
                            return
                        continue
                    if session in self.expired:
                        await stream.aclose()
                        return
                    await stream.send_all(self._request(session, payload))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    def _connect(self, request: ConnectRequest) -> tuple[int, ConnectResponse]:
        if request.session_id == 0:
            session = next(self._ids)
            self.passwords[session] = bytes([session % 256]) * 16
        else:
            session = request.session_id
            if session in self.expired or self.passwords.get(session) != request.password:
                return 0, ConnectResponse(0, 0, bytes(16))
        return session, ConnectResponse(request.timeout_ms, session, self.passwords[session])

    def _request(self, session: int, payload: bytes) -> bytes:
        reader = JuteReader(payload)
        header = RequestHeader.read(reader)
        body = JuteWriter()
        err = 0
        if header.opcode == OpCode.PING:
            self.pings.append(trio.current_time())
        elif header.opcode == OpCode.CREATE:
            path = reader.read_string() or ""
            data = reader.read_buffer() or b""
            for _ in range(reader.read_int()):
                reader.read_int(), reader.read_string(), reader.read_string()
            flags = reader.read_int()
            parent = path.rsplit("/", 1)[0]
            if path in self.nodes:
                err = ErrorCode.NODE_EXISTS
            elif parent and parent not in self.nodes:
                err = ErrorCode.NO_NODE
            else:
                self.nodes[path] = (data, session if flags & 1 else 0)
                body.write_string(path)
        elif header.opcode in (OpCode.EXISTS, OpCode.GET_DATA):
            path = reader.read_string() or ""
            if path not in self.nodes:
                err = ErrorCode.NO_NODE
            else:
                data, owner = self.nodes[path]
                if header.opcode == OpCode.GET_DATA:
                    body.write_buffer(data)
                Stat(1, 1, 0, 0, 0, 0, 0, owner, len(data), 0, 1).write(body)
        elif header.opcode == OpCode.DELETE:
            path = reader.read_string() or ""
            if self.nodes.pop(path, None) is None:
                err = ErrorCode.NO_NODE
        elif header.opcode == OpCode.CLOSE_SESSION:
            self.expire(session)
        else:
            err = ErrorCode.UNIMPLEMENTED
        return frame(ReplyHeader(header.xid, 1, err).encode() + (b"" if err else body.getvalue()))


@pytest.fixture
async def fake() -> AsyncIterator[FakeZooKeeper]:
    """A fake server whose connections live in their own nursery."""
    server = FakeZooKeeper()
    async with trio.open_nursery() as nursery:
        server.nursery = nursery
        yield server
        nursery.cancel_scope.cancel()


def _url(fake: FakeZooKeeper) -> str:
    return "zk://" + ",".join(f"{h}:{p}" for h, p in fake.hosts)


async def _collect(
    session_events: AsyncIterator[SessionEvent], out: list[tuple[float, SessionEvent]]
) -> None:
    async for event in session_events:
        out.append((trio.current_time(), event))


async def test_idle_session_pings_every_third_of_the_timeout(
    fake: FakeZooKeeper, autojump_clock: trio.testing.MockClock
) -> None:
    """With a 3 s session an idle client pings every 1 s (half of the 2 s read timeout)."""
    async with connect(_url(fake), session_timeout=3.0, open_stream=fake.open_stream,
                       rng=random.Random(0)) as session:
        start = trio.current_time()
        await trio.sleep(10.5)
        assert session.state is SessionState.CONNECTED
    gaps = [b - a for a, b in itertools.pairwise([start, *fake.pings])]
    assert len(fake.pings) == 10
    assert all(gap == pytest.approx(1.0, abs=1e-6) for gap in gaps)


async def test_silent_server_is_dropped_and_session_reattached_elsewhere(
    fake: FakeZooKeeper, autojump_clock: trio.testing.MockClock
) -> None:
    """A server that stops answering is declared dead at the read timeout; the client
    re-attaches on the other host with the same session id and password, never expiring."""
    events: list[tuple[float, SessionEvent]] = []
    async with connect(_url(fake), session_timeout=3.0, open_stream=fake.open_stream,
                       rng=random.Random(0)) as session, trio.open_nursery() as nursery:
        nursery.start_soon(_collect, session.state_changes(), events)
        first_host = session.connected_host
        first_id = session.session_id
        start = trio.current_time()
        fake.silent = True
        fake.refused.add(first_host)  # type: ignore[arg-type]
        await poll_until(lambda: session.state is not SessionState.CONNECTED)
        lost_at = trio.current_time() - start
        fake.silent = False
        await poll_until(lambda: session.state is SessionState.CONNECTED)
        assert session.session_id == first_id
        assert session.connected_host != first_host
        nursery.cancel_scope.cancel()
    # The last answer came at most one ping interval before going silent.
    assert 1.0 <= lost_at <= 2.0 + 0.02
    states = [e.state for _, e in events]
    assert states == [SessionState.DISCONNECTED, SessionState.CONNECTED]
    reattach = fake.connects[-1][1]
    assert reattach.session_id == first_id and reattach.password == fake.passwords[first_id]


async def test_client_side_expiry_when_no_server_answers(
    fake: FakeZooKeeper, autojump_clock: trio.testing.MockClock
) -> None:
    """All servers unreachable: EXPIRED one session timeout after the last answer, and
    requests then raise SessionExpired."""
    async with connect(_url(fake), session_timeout=2.0, open_stream=fake.open_stream,
                       rng=random.Random(0)) as session:
        events: list[tuple[float, SessionEvent]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect, session.state_changes(), events)
            await trio.sleep(0.3)
            fake.silent = True
            fake.refused.update(fake.hosts)
            await poll_until(lambda: session.state is SessionState.EXPIRED, interval=0.001)
            nursery.cancel_scope.cancel()
        last_answer = fake.pings[-1] if fake.pings else 0.0
        expired_at, expired = events[-1]
        assert expired.state is SessionState.EXPIRED and "client-side" in expired.reason
        assert 2.0 <= expired_at - last_answer <= 2.0 + 0.7  # + at most one ping interval
        with pytest.raises(ZooKeeperSessionExpired):
            await session.get("/x")


async def test_server_reported_expiry_and_automatic_reregistration(
    fake: FakeZooKeeper, autojump_clock: trio.testing.MockClock
) -> None:
    """A re-attach refused with timeout 0 means EXPIRED; with reregister the client starts
    a new session and re-creates its registration there."""
    async with connect(_url(fake) + "/app", session_timeout=2.0, open_stream=fake.open_stream,
                       reregister=True, rng=random.Random(0)) as session:
        await session.register("/presence/dev", b"meta")
        old = session.session_id
        assert fake.nodes["/app/presence/dev"] == (b"meta", old)
        fake.expire(old)  # type: ignore[arg-type]
        await poll_until(
            lambda: session.session_id != old and session.state is SessionState.CONNECTED
        )
        await poll_until(lambda: "/app/presence/dev" in fake.nodes)
        assert fake.nodes["/app/presence/dev"] == (b"meta", session.session_id)
        assert await session.get("/presence/dev") == b"meta"


async def test_reregistration_takes_over_the_old_sessions_node(
    fake: FakeZooKeeper, autojump_clock: trio.testing.MockClock
) -> None:
    """After client-side expiry the server may still hold the old session's node: the new
    session deletes it (its owner is the expired session) and registers again."""
    async with connect(_url(fake), session_timeout=2.0, open_stream=fake.open_stream,
                       reregister=True, rng=random.Random(0)) as session:
        await session.register("/dev", b"1")
        old = session.session_id
        fake.silent = True
        fake.refused.update(fake.hosts)
        await poll_until(lambda: session.session_id != old)
        assert fake.nodes["/dev"][1] == old  # the server never expired it
        fake.silent = False
        fake.refused.clear()
        await poll_until(lambda: fake.nodes.get("/dev", (b"", old))[1] not in (old, 0))
        assert fake.nodes["/dev"] == (b"1", session.session_id)


async def test_register_refuses_a_key_held_by_another_session(
    fake: FakeZooKeeper, autojump_clock: trio.testing.MockClock
) -> None:
    """Registering a key another live session holds raises NodeExistsError."""
    from pulse.plugins.zookeeper import NodeExistsError

    fake.nodes["/dev"] = (b"x", 0xABC)
    async with connect(_url(fake), session_timeout=2.0, open_stream=fake.open_stream) as session:
        with pytest.raises(NodeExistsError, match="0xabc"):
            await session.register("/dev")


async def test_start_gives_up_when_no_server_answers(
    fake: FakeZooKeeper, autojump_clock: trio.testing.MockClock
) -> None:
    """Entering the context raises ConnectionLoss after start_timeout if nobody answers."""
    fake.refused.update(fake.hosts)
    with pytest.raises(ConnectionLoss, match="no ZooKeeper server answered within 5"):
        async with connect(_url(fake), session_timeout=2.0, open_stream=fake.open_stream,
                           start_timeout=5.0):
            pass  # pragma: no cover


async def test_close_sends_close_session_and_reports_closed(
    fake: FakeZooKeeper, autojump_clock: trio.testing.MockClock
) -> None:
    """Leaving the context closes the session: its ephemeral nodes vanish at once."""
    async with connect(_url(fake), session_timeout=2.0, open_stream=fake.open_stream) as session:
        await session.register("/dev")
        changes = session.state_changes()
    assert "/dev" not in fake.nodes
    assert session.state is SessionState.CLOSED
    assert [e.state async for e in changes] == [SessionState.CLOSED]


async def test_exceptions_from_the_body_are_not_wrapped(
    fake: FakeZooKeeper, autojump_clock: trio.testing.MockClock
) -> None:
    """An exception raised inside ``async with connect(...)`` comes out as itself, not as an
    ExceptionGroup from the session's background nursery."""
    with pytest.raises(KeyError, match="boom"):
        async with connect(_url(fake), session_timeout=2.0, open_stream=fake.open_stream):
            raise KeyError("boom")


async def test_registry_url_reaches_the_plugin() -> None:
    """zk:// URLs resolve to this plugin through the entry-point registry."""
    from pulse.registry import get_plugin

    plugin = get_plugin("zk")
    assert plugin.name == "zookeeper" and plugin.connect_session is not None
