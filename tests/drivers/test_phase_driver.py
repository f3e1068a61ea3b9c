"""Bounded phases on the engine's timer, in virtual time, and the shared dialer."""

from __future__ import annotations

import math
import socket

import pytest
import trio
import trio.testing

from pulse._driver.engine import current_engine
from pulse._driver.phase import Phase, bounded
from pulse._driver.streams import dial, peer_name
from pulse.errors import PhaseTimeout, PulseError


@pytest.fixture
def clock(autojump_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    """pytest-trio's autojump clock, under the short name these tests use."""
    return autojump_clock


async def test_overrunning_phase_raises_phase_timeout_near_its_deadline(
    clock: trio.testing.MockClock,
) -> None:
    """A handshake that never ends is cut at its timeout (within one engine step)."""
    start = trio.current_time()
    # (the outer fail_after turns a bound that never fires into a failure, not a hang)
    with (trio.fail_after(60), pytest.raises(PhaseTimeout) as caught,
          bounded(Phase.HANDSHAKE, 2.0, peer="h:1")):
        await trio.sleep_forever()
    elapsed = trio.current_time() - start
    assert 2.0 <= elapsed <= 2.0 + 2 * current_engine().resolution + 1e-9
    error = caught.value
    assert isinstance(error, PulseError) and isinstance(error, TimeoutError)
    assert (error.phase, error.timeout, error.peer) == ("handshake", 2.0, "h:1")
    assert "handshake with h:1 timed out after 2 s" in str(error)


async def test_phase_that_ends_in_time_leaves_no_timer(clock: trio.testing.MockClock) -> None:
    """A block that finishes before its deadline returns normally and is forgotten by the
    engine (no late cancel hits the code after it)."""
    engine = current_engine()
    with bounded(Phase.CONNECT, 5.0) as phase:
        await trio.sleep(1.0)
    assert not phase.expired and phase.finished
    await trio.sleep(10.0)  # past the old deadline: nothing fires
    assert engine is current_engine()


async def test_move_on_leaves_the_block_quietly(clock: trio.testing.MockClock) -> None:
    """With move_on the overrun ends the block without an error and says so."""
    with trio.fail_after(60), bounded(Phase.CLOSE, 1.0, move_on=True) as phase:
        await trio.sleep_forever()
    assert phase.expired


async def test_many_phases_share_the_one_engine(clock: trio.testing.MockClock) -> None:
    """Hundreds of concurrent phases each end at their own deadline, all on one timer."""
    ended: dict[int, float] = {}

    async def one(index: int) -> None:
        start = trio.current_time()
        with bounded(Phase.EXCHANGE, 0.5 + index * 0.1, move_on=True):
            await trio.sleep_forever()
        ended[index] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        for index in range(200):
            nursery.start_soon(one, index)
    for index, elapsed in ended.items():
        assert 0.5 + index * 0.1 <= elapsed <= 0.5 + index * 0.1 + 0.05


async def test_an_exception_inside_the_block_passes_through() -> None:
    """The phase only adds a deadline: the block's own error comes out unchanged."""
    with pytest.raises(KeyError), bounded(Phase.CONNECT, 10.0):
        raise KeyError("x")


async def test_dial_connects_and_names_the_peer() -> None:
    """dial opens a real loopback connection; peer_name gives host:port of the far end."""
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    async with listener:
        stream = await dial("127.0.0.1", port, timeout=5.0)
        async with stream:
            assert peer_name(stream) == f"127.0.0.1:{port}"


async def test_dial_refused_is_an_oserror_not_a_timeout() -> None:
    """A closed port fails at once with the OS's error, not after the timeout."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(OSError) as caught:
        await dial("127.0.0.1", port, timeout=5.0)
    assert not isinstance(caught.value, PhaseTimeout)


async def test_dial_that_hangs_in_tls_times_out_and_closes(
    clock: trio.testing.MockClock,
) -> None:
    """A server that accepts but never answers the TLS hello costs the dialer only its
    timeout, and the socket is closed behind it (the server sees EOF)."""
    import ssl

    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    saw_eof = trio.Event()

    async def silent_server() -> None:
        stream = await listener.accept()
        while await stream.receive_some(4096):
            pass  # swallow the client hello, never answer
        saw_eof.set()

    async with trio.open_nursery() as nursery, listener:
        nursery.start_soon(silent_server)
        with pytest.raises(PhaseTimeout, match=r"connect with 127\.0\.0\.1"):
            await dial("127.0.0.1", port, ssl_context=ssl.create_default_context(),
                       timeout=3.0)
        with trio.fail_after(5):
            await saw_eof.wait()
    assert math.isfinite(trio.current_time())


class _Listener:
    """A listener whose accepts fail with the given errors first, then hand out sockets."""

    def __init__(self, *failures: int) -> None:
        self.failures = list(failures)
        self.accepted_at: list[float] = []
        self.pairs: list[tuple[socket.socket, socket.socket]] = []

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        if self.failures:
            code = self.failures.pop(0)
            raise OSError(code, "accept failed")
        if len(self.pairs) >= 2:
            await trio.sleep_forever()
        self.accepted_at.append(trio.current_time())
        ours, theirs = socket.socketpair()
        self.pairs.append((ours, theirs))
        return trio.SocketStream(trio.socket.from_stdlib_socket(ours))


async def test_accept_forever_waits_out_a_descriptor_shortage(
    clock: trio.testing.MockClock,
) -> None:
    """Out of descriptors, accepting pauses ACCEPT_RETRY s and goes on; a connection whose
    handler raises is closed and costs nobody else."""
    import errno

    from pulse._driver.streams import ACCEPT_RETRY, accept_forever

    listener = _Listener(errno.EMFILE, errno.EMFILE)
    taken: list[trio.SocketStream] = []

    def take(stream: trio.SocketStream) -> None:
        taken.append(stream)
        if len(taken) == 1:
            raise RuntimeError("a bug in one connection's handler")

    start = trio.current_time()
    with trio.move_on_after(5):
        await accept_forever(listener, take)  # type: ignore[arg-type]
    assert len(taken) == 2
    assert listener.accepted_at[0] - start >= 2 * ACCEPT_RETRY
    assert taken[0].socket.fileno() == -1  # the failed one was closed
    assert taken[1].socket.fileno() != -1
    for ours, theirs in listener.pairs:
        ours.close()
        theirs.close()


async def test_accept_forever_raises_other_errors() -> None:
    """An accept error that is not a shortage (a closed listener) is not retried."""
    import errno

    from pulse._driver.streams import accept_forever

    with pytest.raises(OSError):
        await accept_forever(_Listener(errno.EBADF), lambda stream: None)  # type: ignore[arg-type]
