"""The engine: one timer for many machines, lazy rescheduling, failures isolated."""

from __future__ import annotations

import socket

import anyio
import pytest
import trio
import trio.testing

from pulse import HeartbeatPolicy
from pulse._driver.engine import Engine, current_engine
from pulse._driver.writer import ControlWriter
from pulse.testing import heartbeat_pair


class Clock:
    """A timer client firing at the times in ``plan`` (one after the other)."""

    def __init__(self, *plan: float) -> None:
        self.plan = list(plan)
        self.calls: list[float] = []

    def next_deadline(self) -> float | None:
        return self.plan[0] if self.plan else None

    def handle_timer(self, now: float) -> None:
        self.calls.append(now)
        while self.plan and self.plan[0] <= now:
            self.plan.pop(0)


def test_due_clients_are_called_in_deadline_order_with_one_now() -> None:
    """run_due calls every due client once with the same now, and none that is not due."""
    engine = Engine()
    early, late, future = Clock(1.0), Clock(2.0), Clock(9.0)
    for client in (late, future, early):
        engine.watch(client)
    engine.run_due(2.5)
    assert early.calls == [2.5] and late.calls == [2.5] and future.calls == []
    assert len(engine) == 1 and engine.timer_calls == 2


def test_a_deadline_that_moved_later_is_requeued_without_a_call() -> None:
    """Lazy rescheduling: an entry whose client moved its deadline on costs no handle_timer."""
    engine = Engine()
    client = Clock(1.0)
    engine.watch(client)
    client.plan = [5.0]  # data arrived: the deadline moved later, the engine was not told
    engine.run_due(1.0)
    assert client.calls == []
    engine.run_due(4.9)
    assert client.calls == []
    engine.run_due(5.0)
    assert client.calls == [5.0]


def test_watch_is_free_when_the_queued_entry_is_not_later() -> None:
    """Watching again with an unchanged or later deadline adds no heap entry."""
    engine = Engine()
    client = Clock(1.0)
    engine.watch(client)
    client.plan = [3.0]
    engine.watch(client)
    engine.watch(client)
    assert len(engine._heap) == 1


def test_a_raising_client_is_dropped_and_told_and_others_go_on() -> None:
    """An exception in one client's handle_timer reaches its timer_failed only."""
    engine = Engine()
    failures: list[Exception] = []

    class Broken(Clock):
        def handle_timer(self, now: float) -> None:
            raise ValueError("boom")

        def timer_failed(self, exc: Exception) -> None:
            failures.append(exc)

    broken, healthy = Broken(1.0), Clock(1.0, 2.0)
    engine.watch(broken)
    engine.watch(healthy)
    engine.run_due(1.0)
    engine.run_due(2.0)
    assert [str(f) for f in failures] == ["boom"]
    assert healthy.calls == [1.0, 2.0]
    assert len(engine) == 0


def test_forgotten_clients_are_never_called() -> None:
    """forget() discards a client's pending entry."""
    engine = Engine()
    client = Clock(1.0)
    engine.watch(client)
    engine.forget(client)
    engine.run_due(10.0)
    assert client.calls == []


def test_late_wakeups_are_counted_as_stalls() -> None:
    """A wake-up later than stall_threshold after its deadline counts as a stall."""
    engine = Engine(stall_threshold=0.5)
    engine.watch(Clock(1.0))
    engine.watch(Clock(2.0))
    engine.run_due(1.2)
    assert engine.stalls == 0
    engine.run_due(4.0)
    assert engine.stalls == 1 and engine.worst_stall == pytest.approx(2.0)


def test_entries_of_forgotten_or_rescheduled_machines_are_no_stall() -> None:
    """A late wake-up that only finds stale heap entries (a machine forgotten, or one whose
    deadline moved on) touched no machine late: it is not a stall."""
    engine = Engine(stall_threshold=0.5)
    gone, moved = Clock(1.0), Clock(1.0)
    engine.watch(gone)
    engine.watch(moved)
    engine.forget(gone)
    moved.plan = [5.0]  # a data event moved its deadline later (lazy rescheduling)
    engine.run_due(3.0)
    assert engine.stalls == 0 and gone.calls == [] and moved.calls == []
    engine.run_due(5.1)
    assert engine.stalls == 0 and moved.calls == [5.1]


async def test_the_running_engine_sleeps_until_the_earliest_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Under trio, clients are called at their deadlines, and a new earlier deadline wakes
    the sleeping engine early."""
    engine = current_engine()
    base = trio.current_time()
    slow = Clock(base + 10.0)
    engine.watch(slow)
    await trio.sleep(1.0)
    fast = Clock(base + 2.0, base + 3.0)
    engine.watch(fast)
    await trio.sleep(20.0)
    assert fast.calls == [base + 2.0, base + 3.0]
    assert slow.calls == [base + 10.0]
    assert current_engine() is engine  # one per run


def _count_tasks() -> int:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    stack = [root]
    count = 0
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def test_a_heartbeat_connection_costs_one_task(autojump_clock: trio.testing.MockClock) -> None:
    """Heartbeat connections run one reader task each and share the one engine: no timer
    task or cancel scope per connection."""
    policy = HeartbeatPolicy(interval=1.0, timeout=3.0)
    current_engine()
    before = _count_tasks()
    async with heartbeat_pair(policy, policy) as (left, right):
        during = _count_tasks()
        await trio.sleep(30)  # heartbeats flow; nobody is declared dead
        assert not left.closed and not right.closed
        assert left.stats().pongs_received >= 10 and right.stats().pongs_received >= 10
    # heartbeat_pair's own task for the right side, plus one reader per connection.
    assert during - before <= 3


def _socketpair() -> tuple[trio.SocketStream, socket.socket]:
    ours, theirs = socket.socketpair()
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs


async def test_control_frames_reach_the_socket_without_a_checkpoint() -> None:
    """A control frame is written synchronously: the peer can read it before we await."""
    stream, peer = _socketpair()
    writer = ControlWriter(stream, anyio.Lock(), lambda exc: None)
    assert writer.send(b"ping-16-bytes!!!")
    assert peer.recv(100) == b"ping-16-bytes!!!"
    await stream.aclose()
    peer.close()


async def test_owed_frames_are_finished_by_a_task_and_never_cut() -> None:
    """When the socket buffer is full the rest of a frame is owed whole, later frames are
    bounded by the backlog, and a task writes them once the peer reads."""
    stream, peer = _socketpair()
    peer.setblocking(False)
    failures: list[BaseException] = []
    writer = ControlWriter(stream, anyio.Lock(), failures.append, backlog=64)
    async with anyio.create_task_group() as nursery:
        writer.nursery = nursery
        big = b"x" * (1 << 20)
        assert not writer.send(big)  # the buffer fills part-way: the rest is owed
        assert writer.owed > 64  # a started frame is kept whole, beyond the backlog
        assert not writer.send(b"y" * 16)
        assert writer.dropped == 1
        received = bytearray()
        with trio.fail_after(5):
            while len(received) < len(big):
                await trio.lowlevel.checkpoint()
                try:
                    received += peer.recv(1 << 16)
                except BlockingIOError:
                    await trio.sleep(0.001)
        assert received == big and writer.owed == 0
        assert writer.send(b"z" * 16)
    assert failures == []
    await stream.aclose()
    peer.close()


async def test_a_broken_socket_is_reported_once() -> None:
    """A write to a socket whose peer is gone calls on_error once; later sends drop."""
    stream, peer = _socketpair()
    failures: list[BaseException] = []
    writer = ControlWriter(stream, anyio.Lock(), failures.append)
    peer.close()
    for _ in range(3):
        writer.send(b"0123456789abcdef")
    assert len(failures) == 1 and isinstance(failures[0], OSError)
    await stream.aclose()


def test_close_deadlines_share_one_wakeup() -> None:
    """With a resolution, deadlines within one step are handled in one wake-up, never early."""
    engine = Engine(resolution=0.02)
    a, b = Clock(1.001), Clock(1.015)
    engine.watch(a)
    engine.watch(b)
    assert engine._coalesce(1.001) == pytest.approx(1.02)
    assert engine._coalesce(0.06) >= 0.06  # never before the deadline, even by rounding
    engine.run_due(engine._coalesce(1.001))
    assert a.calls == b.calls == [pytest.approx(1.02)]
    assert engine.wakeups == 1


async def _socket_pair_connections(
    policy: HeartbeatPolicy, **options: object,
) -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = socket.socketpair()
    return (trio.SocketStream(trio.socket.from_stdlib_socket(a)),
            trio.SocketStream(trio.socket.from_stdlib_socket(b)))


async def test_socket_connections_are_read_by_the_engine_without_tasks() -> None:
    """Over plain sockets the engine's readiness set reads for every connection: no reader
    task at all, and messages and heartbeats still flow both ways."""
    from pulse import heartbeat

    policy = HeartbeatPolicy(interval=0.05, timeout=1.0)
    left_stream, right_stream = await _socket_pair_connections(policy)
    current_engine()
    before = _count_tasks()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            ready: trio.Event = trio.Event()

            async def right_side() -> None:
                async with heartbeat(right_stream, policy) as conn:
                    ready.set()
                    async for message in conn:
                        await conn.send(message * 2)

            nursery.start_soon(right_side)
            async with heartbeat(left_stream, policy) as left:
                await ready.wait()
                during = _count_tasks()
                await left.send(21)
                assert await left.receive() == 42
                await trio.sleep(0.3)  # idle: a few heartbeats each way
                assert left.stats().pongs_received >= 2
            nursery.cancel_scope.cancel()
    assert during - before <= 1  # right_side only


async def test_a_slow_application_stops_reading_past_the_hold_limit_and_loses_nothing() -> None:
    """Past a full receive queue the engine keeps reading up to hold_limit bytes, then
    stops (TCP pushes back on the sender); once the application reads, every message
    arrives in order, including those sent right before the peer said goodbye."""
    from pulse import heartbeat

    policy = HeartbeatPolicy(interval=0.5, timeout=5.0)
    left_stream, right_stream = await _socket_pair_connections(policy)
    payload = b"m" * 1000
    count = 3000  # 3 MB: far more than the hold limit and the socket buffers
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            sent = 0

            async def sender() -> None:
                nonlocal sent
                async with heartbeat(left_stream, policy) as conn:
                    for i in range(count):
                        await conn.send([i, payload])
                        sent += 1

            nursery.start_soon(sender)
            async with heartbeat(right_stream, policy, receive_buffer=4,
                                 hold_limit=64 * 1024) as right:
                await trio.sleep(0.5)  # the application reads nothing for a while
                assert sent < count  # the sender is held back by TCP
                assert right._held is not None
                assert len(right._held) * 1000 <= right.hold_limit + 64 * 1024 + 8000
                got = [(await right.receive())[0] for _ in range(count)]
                assert got == list(range(count))


def test_a_stall_is_logged_once_for_the_whole_process() -> None:
    """1,000 machines due during a 2 s stall give one local_pause event (with how late and
    how many machines), not one per machine; an on-time wake-up gives none."""
    from structlog.testing import capture_logs

    engine = Engine(stall_threshold=0.5)
    clients = [Clock(1.0 + i / 10_000) for i in range(1000)]
    for client in clients:
        engine.watch(client)
    with capture_logs() as logs:
        engine.run_due(3.0)
        engine.watch(Clock(4.0))
        engine.run_due(4.01)
    pauses = [entry for entry in logs if entry["event"] == "local_pause"]
    assert len(pauses) == 1
    assert pauses[0]["machines"] == 1000 and pauses[0]["late_by"] == pytest.approx(2.0)
    assert engine.stalls == 1


class _Counter:
    """A reader that counts its calls and, unless ``flood``, drains its socket."""

    def __init__(self, sock: socket.socket, *, flood: bool = False) -> None:
        self.sock, self.flood, self.calls = sock, flood, 0

    def on_readable(self, now: float) -> None:
        self.calls += 1
        if not self.flood:
            self.sock.recv(4096)


def test_every_ready_socket_is_read_in_one_pass_beyond_one_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """More ready sockets than one epoll batch holds are all read before the pass's
    verdicts (a reply left unread would let a live peer be judged silent under load); a
    socket that stays readable cannot make the pass go on without end."""
    import pulse._driver.engine as engine_module

    monkeypatch.setattr(engine_module, "MAX_READY", 4)
    engine = Engine()
    pairs = [socket.socketpair() for _ in range(11)]
    try:
        readers = []
        for index, (ours, theirs) in enumerate(pairs):
            ours.setblocking(False)
            reader = _Counter(ours, flood=index == 0)
            engine.add_reader(ours, reader)
            readers.append(reader)
            theirs.send(b"pong")
        engine.run_ready(0.0)
        assert all(reader.calls >= 1 for reader in readers)
        assert sum(reader.calls for reader in readers) <= len(readers) + 4
    finally:
        for ours, theirs in pairs:
            engine.remove_reader(ours)
            ours.close()
            theirs.close()
