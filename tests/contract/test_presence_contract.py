"""One contract, three session backends: the embedded lease server, Apache ZooKeeper, gossip.

Every test here runs three times, against ``pulse serve --listen pulse://…`` (a real server
process), against a real ZooKeeper server, and against a gossip group without a server
(``gossip://`` through a ``pulse member`` seed process), through nothing but
``pulse.registry.connect_session`` and the :class:`pulse.presence.PresenceSession` API —
the only things users and the ``pulse agent`` / ``pulse watch`` commands touch. Where gossip
differs by design (no server negotiates the timeout; failure detection is SWIM's, a few
protocol periods) the test says so and checks gossip's own documented behaviour.

Every test also runs on every loop: trio, asyncio and uvloop (:func:`tests.loops.on_every_loop`;
the bodies use anyio, which is trio's own API under trio).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from pulse.errors import KeyExists, NoServerReachable, NotOwner, SessionClosed, SessionExpired
from pulse.presence import PresenceEvent, PresenceSession, SessionState
from pulse.registry import connect_session
from tests.loops import on_every_loop

pytestmark = pytest.mark.e2e

TICK = 0.2  # both backends: lease --tick 0.2, ZooKeeper tickTime=200
TIMEOUT = 1.0  # session timeout used throughout
SLACK = 0.35  # scheduling slack on a loaded 2-core machine, on top of timeout + tick
PULSE = [sys.executable, "-m", "pulse.cli.main"]


@pytest.fixture(scope="module")
def lease_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `pulse serve` lease server process on a free loopback port."""
    workdir = tmp_path_factory.mktemp("lease")
    proc = subprocess.Popen(
        [*PULSE, "serve", "--listen", "pulse://127.0.0.1:0", "--tick", str(TICK)],
        stdout=subprocess.PIPE, cwd=workdir,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "pulse serve printed nothing within 20 s"
        banner = proc.stdout.readline().decode()
        assert "listening on pulse://" in banner, banner
        yield banner.strip().rsplit(" ", 1)[-1]
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def gossip_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `pulse member` seed process probing at the sessions' pace (timeout / 5)."""
    from tests.e2e._serf import free_port

    workdir = tmp_path_factory.mktemp("gossip")
    port = free_port()
    proc = subprocess.Popen(
        [*PULSE, "member", "--listen", f"gossip://127.0.0.1:{port}", "--name", "seed",
         "--probe-interval", str(TIMEOUT / 5), "--json"],
        stdout=subprocess.PIPE, cwd=workdir,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "pulse member printed nothing within 20 s"
        assert b'"seed"' in proc.stdout.readline()
        yield f"gossip://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def is_gossip(url: str) -> bool:
    """True for the serverless gossip backend."""
    return url.startswith("gossip://")


@pytest.fixture(params=["lease", "zookeeper", "gossip"])
def backend(request: pytest.FixtureRequest) -> str:
    """The URL of the backend under test."""
    name = {"lease": "lease_url", "zookeeper": "zookeeper_url", "gossip": "gossip_url"}[request.param]
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture
def prefix() -> str:
    """A fresh presence prefix per test (the ZooKeeper server is shared)."""
    return f"/contract/{uuid.uuid4().hex[:12]}"


class Watcher:
    """Consumes a watch in the background and records every event."""

    def __init__(self) -> None:
        self.events: list[PresenceEvent] = []
        self.times: list[float] = []
        self._changed = anyio.Event()

    async def run(self, session: PresenceSession, prefix: str) -> None:
        async for event in session.watch(prefix):
            self.events.append(event)
            self.times.append(anyio.current_time())
            self._changed.set()
            self._changed = anyio.Event()

    async def wait_for(self, kind: str, name: str, limit: float = 10.0) -> float:
        with anyio.fail_after(limit):
            while True:
                for event, at in zip(self.events, self.times, strict=True):
                    if (event.event, event.id) == (kind, name):
                        return at
                await self._changed.wait()

    def seen(self) -> list[tuple[str, str, bool]]:
        return [(e.event, e.id, e.initial) for e in self.events]


async def visible(session: PresenceSession, key: str) -> None:
    """Wait until ``session`` sees ``key`` (at once on the server backends; gossip is
    eventually consistent: a registration reaches other members by gossip)."""
    with anyio.fail_after(5):
        while True:
            if await session.get(key) is not None:
                return
            await anyio.sleep(0.05)


async def start_watch(nursery: anyio.abc.TaskGroup, session: PresenceSession, prefix: str,
                      sentinel: PresenceSession) -> Watcher:
    """Start a watch and wait until it is armed (its snapshot shows the sentinel member)."""
    await sentinel.register(f"{prefix}/sentinel", b"s")
    await visible(session, f"{prefix}/sentinel")
    watcher = Watcher()
    nursery.start_soon(watcher.run, session, prefix)
    await watcher.wait_for("online", "sentinel")
    return watcher


@asynccontextmanager
async def two_sessions(backend: str) -> AsyncIterator[tuple[PresenceSession, PresenceSession]]:
    """Two sessions on ``backend`` for the block."""
    async with connect_session(backend, session_timeout=TIMEOUT) as first, \
            connect_session(backend, session_timeout=TIMEOUT) as second:
        yield first, second


@on_every_loop
async def test_session_is_connected_with_a_negotiated_timeout(backend: str) -> None:
    """A new session is CONNECTED, has an id, and reports the timeout it was granted."""
    async with connect_session(backend, session_timeout=TIMEOUT) as session:
        assert session.state is SessionState.CONNECTED
        assert session.session_id is not None
        assert 2 * TICK <= session.session_timeout <= 20 * TICK
        assert session.session_timeout == pytest.approx(TIMEOUT)
    assert session.state is SessionState.CLOSED


@on_every_loop
async def test_timeout_is_negotiated_into_the_server_bounds(backend: str) -> None:
    """Asking for far more than 20 ticks yields at most 20 ticks; far less, at least 2 (gossip:
    no server negotiates, the timeout is taken as given and sets the probe period).

    "Far less" is 0.1 s, a quarter of 2 ticks: until the server answers, the client's
    connect timeout is the timeout it asked for (ZooKeeper's rule), and 10 ms was too short
    for a connection on a loaded machine."""
    if is_gossip(backend):
        for asked in (600.0, 0.01):
            async with connect_session(backend, session_timeout=asked) as session:
                assert session.session_timeout == asked
        return
    async with connect_session(backend, session_timeout=600) as session:
        assert session.session_timeout == pytest.approx(20 * TICK)
    async with connect_session(backend, session_timeout=0.1) as session:
        assert session.session_timeout == pytest.approx(2 * TICK)


@on_every_loop
async def test_register_get_list_unregister(backend: str, prefix: str) -> None:
    """A registration is visible through get and list and disappears when unregistered."""
    async with connect_session(backend, session_timeout=TIMEOUT) as session:
        assert await session.get(f"{prefix}/a") is None
        assert await session.list(prefix) == {}
        await session.register(f"{prefix}/a", b"alpha")
        await session.register(f"{prefix}/b", b"")
        assert await session.get(f"{prefix}/a") == b"alpha"
        assert await session.list(prefix) == {"a": b"alpha", "b": b""}
        await session.unregister(f"{prefix}/a")
        assert await session.get(f"{prefix}/a") is None
        assert await session.list(prefix) == {"b": b""}


@on_every_loop
async def test_another_session_cannot_take_or_remove_a_live_key(backend: str, prefix: str
                                                                ) -> None:
    """A key held by a live session raises KeyExists for others, and NotOwner on unregister."""
    async with two_sessions(backend) as (first, second):
        await first.register(f"{prefix}/held", b"1")
        # Gossip checks ownership in the member's own view: the registration must reach it first.
        await visible(second, f"{prefix}/held")
        with pytest.raises(KeyExists):
            await second.register(f"{prefix}/held", b"2")
        with pytest.raises(NotOwner):
            await second.unregister(f"{prefix}/held")
        assert await second.get(f"{prefix}/held") == b"1"


@on_every_loop
async def test_watch_reports_snapshot_then_changes_in_order(backend: str, prefix: str) -> None:
    """Initial members come first (initial=True), then online/offline in order, once each."""
    async with two_sessions(backend) as (observer, member):
        await member.register(f"{prefix}/early", b"e")
        await visible(observer, f"{prefix}/early")
        async with anyio.create_task_group() as nursery:
            watcher = await start_watch(nursery, observer, prefix, member)
            await member.register(f"{prefix}/late", b"l")
            await watcher.wait_for("online", "late")
            await member.unregister(f"{prefix}/early")
            await watcher.wait_for("offline", "early")
            await anyio.sleep(3 * TICK)  # room for any duplicate to show up
            nursery.cancel_scope.cancel()
    seen = watcher.seen()
    initial = sorted(e for e in seen if e[2])
    assert initial == [("online", "early", True), ("online", "sentinel", True)]
    changes = [e for e in seen if not e[2]]
    assert changes == [("online", "late", False), ("offline", "early", False)]
    late = next(e for e in watcher.events if e.id == "late")
    assert late.data == b"l"


@on_every_loop
async def test_closing_a_session_removes_its_registrations_at_once(
    backend: str, prefix: str,
) -> None:
    """Closing a session deletes its keys immediately (not after the timeout)."""
    async with connect_session(backend, session_timeout=TIMEOUT) as observer, \
            connect_session(backend, session_timeout=TIMEOUT) as sentinel, \
            anyio.create_task_group() as nursery:
        watcher = await start_watch(nursery, observer, prefix, sentinel)
        async with connect_session(backend, session_timeout=TIMEOUT) as leaving:
            await leaving.register(f"{prefix}/leaving", b"")
            await watcher.wait_for("online", "leaving")
        closed_at = anyio.current_time()
        gone_at = await watcher.wait_for("offline", "leaving")
        nursery.cancel_scope.cancel()
    assert gone_at - closed_at < TIMEOUT / 2


@on_every_loop
async def test_killed_agent_goes_offline_within_timeout_plus_tick(
    backend: str, prefix: str, tmp_path: Path,
) -> None:
    """`pulse agent` SIGKILLed: watchers see it offline within session timeout + tick."""
    async with connect_session(backend, session_timeout=TIMEOUT) as observer, \
            connect_session(backend, session_timeout=TIMEOUT) as sentinel, \
            anyio.create_task_group() as nursery:
        watcher = await start_watch(nursery, observer, prefix, sentinel)
        agent = await anyio.open_process(
            [*PULSE, "agent", "--server", backend, "--id", "victim", "--prefix", prefix,
             "--session-timeout", str(TIMEOUT), "--meta", "role=contract"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            await watcher.wait_for("online", "victim", limit=20)
            await anyio.sleep(TIMEOUT)  # a few heartbeats, so the session is steady
            os.kill(agent.pid, signal.SIGKILL)
            killed_at = anyio.current_time()
            gone_at = await watcher.wait_for("offline", "victim", limit=10)
        finally:
            with contextlib.suppress(ProcessLookupError):  # asyncio: already reaped
                agent.kill()
            with anyio.move_on_after(10):
                await agent.wait()
        nursery.cancel_scope.cancel()
    latency = gone_at - killed_at
    # Gossip: a probe round, the probe timeout, then a suspicion timeout that Lifeguard starts
    # at 6x its minimum and lowers as other members confirm: about 1.5-3 session timeouts.
    bound = 3 * TIMEOUT + SLACK if is_gossip(backend) else TIMEOUT + TICK + SLACK
    assert latency <= bound, f"offline after {latency:.3f} s"
    assert latency > 0


@on_every_loop
async def test_state_changes_report_close(backend: str) -> None:
    """state_changes() reports the transition to CLOSED when the session is closed."""
    states: list[SessionState] = []
    closed = anyio.Event()
    async with connect_session(backend, session_timeout=TIMEOUT) as session:
        changes = session.state_changes()

        async def record() -> None:
            async for change in changes:
                states.append(change.state)
                if change.state is SessionState.CLOSED:
                    closed.set()

        async with anyio.create_task_group() as nursery:
            nursery.start_soon(record)
            await anyio.sleep(0.05)
            await session.aclose()
            with anyio.move_on_after(5):
                await closed.wait()
            nursery.cancel_scope.cancel()
    assert SessionState.CLOSED in states


@on_every_loop
async def test_pulse_watch_json_reports_online_and_offline(
    backend: str, prefix: str, tmp_path: Path,
) -> None:
    """`pulse watch --json` prints one object per change with `event` and `id`, on both backends."""
    import json

    watch = await anyio.open_process(
        [*PULSE, "watch", "--server", backend, "--prefix", prefix, "--json",
         "--session-timeout", str(TIMEOUT)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert watch.stdout is not None
    lines: list[dict[str, object]] = []
    buffer = b""

    async def read_until(kind: str, name: str) -> None:
        nonlocal buffer
        with anyio.fail_after(20):
            while not any(line.get("event") == kind and line.get("id") == name
                          for line in lines):
                assert watch.stdout is not None
                try:
                    chunk = await watch.stdout.receive(4096)
                except anyio.EndOfStream:
                    raise AssertionError("pulse watch ended early") from None
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                lines.extend(json.loads(line) for line in complete if line.strip())

    try:
        async with connect_session(backend, session_timeout=TIMEOUT) as member:
            await member.register(f"{prefix}/first", b"")
            await read_until("online", "first")
            await member.register(f"{prefix}/second", b"")
            await read_until("online", "second")
        await read_until("offline", "first")
        await read_until("offline", "second")
    finally:
        watch.terminate()
        with anyio.move_on_after(10):
            await watch.aclose()  # its stdout too, then the exit


# --------------------------------------------------------------------------- error paths
# The same situation raises the same exception type on both backends.


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[1].split("/", 1)[0].rpartition(":")
    return host, int(port)


class Cutter:
    """A loopback TCP proxy in front of the backend that can cut every link and refuse
    new ones (a server that became unreachable)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.blocked = False
        self.port = 0
        self._links: list[anyio.CancelScope] = []

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        await listener.serve(self._link)

    async def _link(self, client: anyio.abc.SocketStream) -> None:
        if self.blocked:
            await client.aclose()
            return
        with anyio.CancelScope() as scope:
            self._links.append(scope)
            server = await anyio.connect_tcp(*self.target)
            async with client, server, anyio.create_task_group() as nursery:
                nursery.start_soon(self._pump, client, server)
                nursery.start_soon(self._pump, server, client)

    @staticmethod
    async def _pump(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
        try:
            async for data in source:
                await sink.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    def block(self) -> None:
        self.blocked = True
        for scope in self._links:
            scope.cancel()


@on_every_loop
async def test_no_server_reachable_raises_no_server_reachable(backend: str) -> None:
    """Nothing listens at the URL: entering connect raises NoServerReachable within the start
    timeout on both backends."""
    scheme = backend.split("://", 1)[0]
    url = f"{scheme}://127.0.0.1:{_free_port()}"
    started = anyio.current_time()
    with pytest.raises(NoServerReachable):
        async with connect_session(url, session_timeout=TIMEOUT, start_timeout=TIMEOUT):
            pass  # pragma: no cover
    assert TIMEOUT - 0.05 <= anyio.current_time() - started <= TIMEOUT + 1.0


@on_every_loop
async def test_use_after_close_raises_session_closed(backend: str, prefix: str) -> None:
    """Every request on a closed session raises SessionClosed on both backends."""
    async with connect_session(backend, session_timeout=TIMEOUT) as session:
        await session.register(f"{prefix}/a", b"")
    assert session.state is SessionState.CLOSED
    with pytest.raises(SessionClosed):
        await session.register(f"{prefix}/a", b"")
    with pytest.raises(SessionClosed):
        await session.get(f"{prefix}/a")
    with pytest.raises(SessionClosed):
        await session.list(prefix)


@pytest.fixture(params=["lease", "zookeeper"])
def server_backend(request: pytest.FixtureRequest) -> str:
    """The URL of a backend with a server that holds the session's lease (not gossip, whose
    sessions have no server to be cut off from: a member stays CONNECTED and others see it
    fail)."""
    url: str = request.getfixturevalue("lease_url" if request.param == "lease" else "zookeeper_url")
    return url


@on_every_loop
async def test_expired_session_raises_session_expired(server_backend: str, prefix: str) -> None:
    """Cut off from every server, the session expires one timeout after it last heard one;
    then requests and its watch raise SessionExpired on both server backends."""
    backend = server_backend
    async with anyio.create_task_group() as nursery:
        cutter = Cutter(_host_port(backend))
        await nursery.start(cutter.run)
        url = backend.split("://", 1)[0] + f"://127.0.0.1:{cutter.port}"
        async with connect_session(url, session_timeout=TIMEOUT) as session:
            changes = session.state_changes()
            await session.register(f"{prefix}/a", b"")
            events = session.watch(prefix)
            first = await events.__anext__()
            assert (first.event, first.id) == ("online", "a")
            cutter.block()
            cut_at = anyio.current_time()
            seen = []
            with anyio.fail_after(TIMEOUT * 3):
                async for change in changes:
                    seen.append(change.state)
                    if change.state is SessionState.EXPIRED:
                        break
            assert seen == [SessionState.DISCONNECTED, SessionState.EXPIRED]
            assert anyio.current_time() - cut_at <= TIMEOUT + SLACK
            with pytest.raises(SessionExpired):
                await session.register(f"{prefix}/b", b"")
            with pytest.raises(SessionExpired):
                await session.get(f"{prefix}/a")
            with pytest.raises(SessionExpired), anyio.fail_after(TIMEOUT):
                await events.__anext__()
        nursery.cancel_scope.cancel()


@on_every_loop
async def test_refused_session_password_raises_session_expired(backend: str, prefix: str
                                                               ) -> None:
    """Resuming a live session with a wrong password is refused: entering connect raises
    SessionExpired on both backends (ZooKeeper does not tell a wrong password from an
    expired session, so neither backend does), and the real session is untouched."""
    async with connect_session(backend, session_timeout=TIMEOUT) as owner:
        assert owner.session_id is not None
        with pytest.raises(SessionExpired), anyio.fail_after(TIMEOUT * 3):
            async with connect_session(backend, session_timeout=TIMEOUT,
                                       session_id=owner.session_id,
                                       session_password=b"\x01" * 16):
                pass  # pragma: no cover
        await anyio.sleep(TIMEOUT / 2)
        assert owner.state is SessionState.CONNECTED
        await owner.register(f"{prefix}/owner", b"o")  # the real session still works
        assert await owner.get(f"{prefix}/owner") == b"o"


@on_every_loop
async def test_unknown_session_id_raises_session_expired(backend: str) -> None:
    """Resuming a session that was closed (the server no longer knows it) raises
    SessionExpired on both backends."""
    async with connect_session(backend, session_timeout=TIMEOUT) as gone:
        session_id = gone.session_id
    with pytest.raises(SessionExpired), anyio.fail_after(TIMEOUT * 3):
        async with connect_session(backend, session_timeout=TIMEOUT, session_id=session_id,
                                   session_password=b"\x00" * 16):
            pass  # pragma: no cover
