"""The shared probe on the engine: clients of one destination wait behind one probe while it
refuses (real loopback refusals), are released over a window, and stay independent of other
destinations and of each other's handshake refusals."""

from __future__ import annotations

import itertools
import random
import socket
from collections.abc import Callable

import trio
import trio.testing

from pulse._core.backoff import Backoff, Jitter
from pulse._core.reconnect import ReconnectMachine, ReconnectState
from pulse._driver.reconnect import Attempt, AttemptHandle, ReconnectDriver

HOST = "127.0.0.1"


def closed_port() -> int:
    """A loopback port nothing listens on (connects to it are refused)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
    return port


def backoff(seed: int, **kw: object) -> Backoff:
    return Backoff(1.0, 8.0, 2.0, Jitter.FULL, rng=random.Random(seed), **kw)  # type: ignore[arg-type]


class Tcp:
    """Attempts that connect to a loopback port for real and hold the connection until
    ``hang_up`` is set; records every attempt's start and how many were in flight."""

    def __init__(self, port: int, expected: int = 0) -> None:
        self.port = port
        self.expected = expected
        self.all_connected = trio.Event()
        self.starts: list[float] = []
        self.connected_at: list[float] = []
        self.in_flight = 0
        self.max_in_flight_after: dict[float, int] = {}
        self.hang_up = trio.Event()

    def attempt(self) -> Attempt:
        async def one(handle: AttemptHandle) -> str:
            self.starts.append(trio.current_time())
            self.in_flight += 1
            try:
                stream = await trio.open_tcp_stream(HOST, self.port)
            finally:
                self.in_flight -= 1
            handle.connected()
            self.connected_at.append(trio.current_time())
            if len(self.connected_at) == self.expected:
                self.all_connected.set()
            async with stream:
                await self.hang_up.wait()
            return "hung up"
        return one


async def listen(port: int, nursery: trio.Nursery) -> list[trio.SocketStream]:
    """Start accepting on ``port`` (connections are kept open in the returned list)."""
    listeners = await trio.open_tcp_listeners(port, host=HOST)
    accepted: list[trio.SocketStream] = []

    async def handler(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, handler, listeners)
    return accepted


async def storm(clients: int, shared: bool, outage: float) -> tuple[Tcp, list[ReconnectDriver],
                                                                    float]:
    """``clients`` clients connect to a refused port; after ``outage`` s a listener opens
    there; returns once all are connected (and when the listener opened)."""
    port = closed_port()
    tcp = Tcp(port, clients)
    drivers = [
        ReconnectDriver(ReconnectMachine(backoff(i)), tcp.attempt(),
                        destination=("tcp", HOST, port) if shared else None)
        for i in range(clients)
    ]
    async with trio.open_nursery() as nursery:
        for driver in drivers:
            nursery.start_soon(driver.run)
        await trio.sleep(outage)
        up = trio.current_time()
        await listen(port, nursery)
        await tcp.all_connected.wait()
        tcp.hang_up.set()
        for driver in drivers:
            driver.stop()
        nursery.cancel_scope.cancel()
    return tcp, drivers, up


async def test_one_probe_at_a_time_stands_for_every_waiting_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Twenty clients of one refusing loopback port: after the first refusals only one
    attempt at a time is made (the probe), so the outage costs far fewer attempts than
    twenty independent clients make in the same run."""
    gated, _, up = await storm(20, shared=True, outage=30.0)
    independent, _, up2 = await storm(20, shared=False, outage=30.0)
    during = [t for t in gated.starts if 0.0 < t < up]
    others = [t for t in independent.starts if 0.0 < t - independent.starts[0] < up2]
    assert len(during) * 2 < len(others)
    assert len(gated.starts) <= 20 + len(during) + 20 + 1
    assert len(gated.connected_at) == 20


async def test_released_clients_attempt_spread_over_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once the probe connects, the waiting clients each attempt once, at times spread over
    the release window after it, not all at once."""
    tcp, _, up = await storm(40, shared=True, outage=10.0)
    after = sorted(t for t in tcp.starts if t >= up)
    probe = after[0]
    released = after[1:]
    assert len(released) == 39  # each waiting client attempts once, and connects
    assert all(probe <= t <= probe + 0.5 + 0.05 for t in released)
    assert len({int((t - probe) * 10) for t in released}) >= 4


async def test_probe_delays_grow_and_are_jittered(autojump_clock: trio.testing.MockClock) -> None:
    """The probes of a long outage thin out (a capped backoff) instead of a fixed beat."""
    tcp, _, up = await storm(5, shared=True, outage=120.0)
    probes = sorted(t for t in tcp.starts if 0.0 < t < up)
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert len(probes) >= 10
    assert all(gap <= 8.0 + 0.05 for gap in gaps)  # the cap
    assert len({round(gap, 3) for gap in gaps}) > len(gaps) // 2  # jittered


async def test_destinations_are_independent(autojump_clock: trio.testing.MockClock) -> None:
    """Clients of a listening port connect at once while those of a refusing port wait
    behind its gate, and a client that joins later for the good port is not held."""
    down_port = closed_port()
    down_tcp = Tcp(down_port)
    async with trio.open_nursery() as nursery:
        up_port = closed_port()
        await listen(up_port, nursery)
        up_tcp = Tcp(up_port)
        down = [ReconnectDriver(ReconnectMachine(backoff(i)), down_tcp.attempt(),
                                destination=("tcp", HOST, down_port)) for i in range(5)]
        up = [ReconnectDriver(ReconnectMachine(backoff(10 + i)), up_tcp.attempt(),
                              destination=("tcp", HOST, up_port)) for i in range(5)]
        for driver in down + up:
            nursery.start_soon(driver.run)
        await trio.sleep(0.5)
        assert len(up_tcp.connected_at) == 5
        late = ReconnectDriver(ReconnectMachine(backoff(99)), up_tcp.attempt(),
                               destination=("tcp", HOST, up_port))
        nursery.start_soon(late.run)
        await trio.sleep(0.1)
        assert len(up_tcp.connected_at) == 6
        assert sum(d.machine.state is ReconnectState.HELD for d in down) >= 4
        up_tcp.hang_up.set()
        nursery.cancel_scope.cancel()


async def test_handshake_refusal_holds_nobody_back(autojump_clock: trio.testing.MockClock) -> None:
    """Clients whose TCP connects but whose handshake is refused back off on their own:
    none waits behind a gate, and each keeps its own pace of attempts."""
    attempts = 0
    async with trio.open_nursery() as nursery:
        port = closed_port()
        await listen(port, nursery)

        async def refused(handle: AttemptHandle) -> str:
            nonlocal attempts
            attempts += 1
            stream = await trio.open_tcp_stream(HOST, port)
            handle.reached()
            await stream.aclose()
            return "handshake refused: HTTP 503"

        drivers = [ReconnectDriver(ReconnectMachine(backoff(i)), refused,
                                   destination=("tcp", HOST, port)) for i in range(5)]
        for driver in drivers:
            nursery.start_soon(driver.run)
        for _ in range(100):
            await trio.sleep(0.1)
            assert not any(d.machine.state is ReconnectState.HELD for d in drivers)
        assert attempts >= 5 * 3
        nursery.cancel_scope.cancel()


class Switch:
    """A fake destination: refuses while ``down``; a ``hang`` attempt never returns."""

    def __init__(self) -> None:
        self.down = True
        self.starts: list[tuple[float, int]] = []
        self.hang: Callable[[int], bool] = lambda _: False
        self.connected = trio.Event()
        self._started = trio.Event()

    async def wait_starts(self, count: int) -> None:
        """Return once ``count`` attempts have started."""
        while len(self.starts) < count:
            await self._started.wait()
            self._started = trio.Event()

    def attempt(self, index: int) -> Attempt:
        async def one(handle: AttemptHandle) -> str:
            self.starts.append((trio.current_time(), index))
            self._started.set()
            await trio.lowlevel.checkpoint()
            if self.hang(index):
                await trio.sleep_forever()
            if self.down:
                raise ConnectionRefusedError(111, "Connection refused")
            handle.connected()
            self.connected.set()
            await trio.sleep_forever()
            return "never"
        return one


async def test_released_client_that_fails_backs_off_on_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the destination refuses again right after the probe got through, the released
    clients' refusals are their own: they wait their own backoff, not the gate."""
    switch = Switch()
    drivers = [ReconnectDriver(ReconnectMachine(backoff(i)), switch.attempt(i),
                               destination=("fake", 1)) for i in range(6)]
    async with trio.open_nursery() as nursery:
        for driver in drivers:
            nursery.start_soon(driver.run)
        await trio.sleep(5.0)
        switch.down = False
        await switch.connected.wait()
        switch.down = True  # down again before the releases
        await trio.sleep(0.6)  # every release is over
        states = [d.machine.state for d in drivers]
        assert states.count(ReconnectState.CONNECTED) == 1
        assert states.count(ReconnectState.WAITING) + states.count(ReconnectState.ATTEMPTING) >= 4
        nursery.cancel_scope.cancel()


async def test_cancelled_waiting_client_leaves_the_gate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A waiting client whose task is cancelled is never probed for or released again."""
    switch = Switch()
    drivers = [ReconnectDriver(ReconnectMachine(backoff(i)), switch.attempt(i),
                               destination=("fake", 2)) for i in range(4)]
    async with trio.open_nursery() as nursery:
        scopes = []
        for driver in drivers:
            scope = trio.CancelScope()
            scopes.append(scope)

            async def run(driver: ReconnectDriver = driver, scope: trio.CancelScope = scope) -> None:
                with scope:
                    await driver.run()
            nursery.start_soon(run)
        await trio.sleep(0.5)
        assert all(d.machine.state is ReconnectState.HELD for d in drivers[1:])
        scopes[2].cancel()
        cancelled_at = trio.current_time()
        await trio.sleep(30.0)
        switch.down = False

        def connected() -> list[bool]:
            return [d.machine.state is ReconnectState.CONNECTED for d in drivers]

        # The next probe comes within the probe's capped, jittered backoff (virtual time).
        with trio.move_on_after(120.0):
            while connected() != [True, True, False, True]:  # noqa: ASYNC110 - polls machine states in virtual time
                await trio.sleep(0.1)
        assert not any(i == 2 and t > cancelled_at for t, i in switch.starts)
        assert connected() == [True, True, False, True]
        nursery.cancel_scope.cancel()


async def test_cancelled_probe_hands_the_probe_to_another_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelling the client whose attempt is the probe (stuck in a connect) makes another
    waiting client probe at once instead of leaving everyone waiting."""
    switch = Switch()
    drivers = [ReconnectDriver(ReconnectMachine(backoff(i)), switch.attempt(i),
                               destination=("fake", 3)) for i in range(3)]
    first_round = len(drivers)
    switch.hang = lambda index: len(switch.starts) > first_round  # the first probe hangs
    async with trio.open_nursery() as nursery:
        scopes = []
        for driver in drivers:
            scope = trio.CancelScope()
            scopes.append(scope)

            async def run(driver: ReconnectDriver = driver, scope: trio.CancelScope = scope) -> None:
                with scope:
                    await driver.run()
            nursery.start_soon(run)
        await switch.wait_starts(first_round + 1)
        _, prober = switch.starts[-1]
        await trio.sleep(20.0)
        assert len(switch.starts) == first_round + 1  # stuck: nobody else attempts meanwhile
        switch.hang = lambda _: False
        scopes[prober].cancel()
        cancelled_at = trio.current_time()
        await trio.sleep(0.1)
        assert len(switch.starts) >= first_round + 2
        t, index = switch.starts[first_round + 1]
        assert index != prober and t - cancelled_at <= 0.05
        nursery.cancel_scope.cancel()


async def test_held_clients_keep_their_give_up_rules(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Clients with max_attempts=4 waiting behind a gate give up once four attempts (their
    own or probes made for them) failed; run() returns with the error set."""
    port = closed_port()
    tcp = Tcp(port)
    drivers = [ReconnectDriver(ReconnectMachine(backoff(i, max_attempts=4)), tcp.attempt(),
                               destination=("tcp", HOST, port)) for i in range(5)]
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            for driver in drivers:
                nursery.start_soon(driver.run)
    assert all(d.error is not None for d in drivers)
    assert len(tcp.starts) < 5 * 5  # fewer than five independent clients would make
