"""The reconnect driver on the engine: waits in virtual time, attempts one at a time."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from pulse._core.backoff import Backoff, Jitter
from pulse._core.reconnect import ReconnectMachine
from pulse._driver.engine import current_engine
from pulse._driver.reconnect import AttemptHandle, ReconnectDriver
from pulse.actions import Reconnect
from pulse.errors import ReconnectGaveUp


def fixed(**kw: object) -> Backoff:
    return Backoff(1.0, 8.0, 2.0, Jitter.NONE, **kw)  # type: ignore[arg-type]


async def test_failed_attempts_are_retried_after_the_backoff_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Refused attempts start at 0, 1, 3, 7 s (delays 1, 2, 4) and the fourth connects."""
    starts: list[float] = []
    waits: list[tuple[Reconnect, str]] = []

    async def attempt(handle: AttemptHandle) -> str:
        starts.append(trio.current_time())
        if len(starts) < 4:
            raise OSError("refused")
        handle.connected()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    driver = ReconnectDriver(ReconnectMachine(fixed()), attempt,
                             on_wait=lambda action, reason: waits.append((action, reason)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run)
        await trio.sleep(20)
        assert driver.machine.connects == 1
        nursery.cancel_scope.cancel()
    assert [round(t - starts[0], 6) for t in starts] == [0.0, 1.0, 3.0, 7.0]
    assert [w.delay for w, _ in waits] == [1.0, 2.0, 4.0]
    assert waits[0][1] == "OSError: refused"


async def test_waits_are_engine_deadlines_not_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """While waiting, no attempt task runs and the driver sits in the engine's heap."""

    async def attempt(handle: AttemptHandle) -> str:
        return "refused"

    driver = ReconnectDriver(ReconnectMachine(fixed()), attempt)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run)
        await trio.sleep(0.5)  # the first attempt failed at 0 and waits until 1.0
        assert not driver.attempt_running
        assert driver.next_deadline() is not None
        engine = current_engine()
        assert engine._queued.get(driver) == driver.next_deadline()
        nursery.cancel_scope.cancel()


async def test_lost_connection_waits_a_jittered_delay_then_reconnects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A connection that ends is a loss: the next attempt comes within uniform(0, initial)."""
    ended_at: list[float] = []
    starts: list[float] = []

    async def attempt(handle: AttemptHandle) -> str:
        starts.append(trio.current_time())
        handle.connected()
        await trio.sleep(5)
        ended_at.append(trio.current_time())
        return "server went away"

    backoff = Backoff(2.0, 30.0, rng=random.Random(7))
    driver = ReconnectDriver(ReconnectMachine(backoff), attempt)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run)
        await trio.sleep(6)
        nursery.cancel_scope.cancel()
    assert len(starts) == 2
    gap = starts[1] - ended_at[0]
    assert 0.0 < gap <= 2.0 + 0.02  # full jitter, at most one engine step late


async def test_give_up_from_the_attempt_ends_run_with_the_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An attempt raising ReconnectGaveUp ends run() with that very error and no retry."""
    refusal = ReconnectGaveUp("HTTP 403")
    calls = 0

    async def attempt(handle: AttemptHandle) -> str:
        nonlocal calls
        calls += 1
        raise refusal

    given_up: list[ReconnectGaveUp] = []
    driver = ReconnectDriver(ReconnectMachine(fixed()), attempt, on_give_up=given_up.append)
    with trio.fail_after(60):
        await driver.run()
    assert driver.error is refusal and given_up == [refusal] and calls == 1


async def test_max_attempts_ends_run(autojump_clock: trio.testing.MockClock) -> None:
    """With max_attempts=2 the driver makes 3 attempts (first + 2 retries) then gives up."""
    calls = 0

    async def attempt(handle: AttemptHandle) -> str:
        nonlocal calls
        calls += 1
        raise OSError("refused")

    driver = ReconnectDriver(ReconnectMachine(fixed(max_attempts=2)), attempt)
    with trio.fail_after(60):
        await driver.run()
    assert calls == 3
    assert driver.error is not None and "gave up after 2 attempts" in str(driver.error)


async def test_stop_during_a_wait_returns_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """stop() while waiting ends run() without another attempt."""
    calls = 0

    async def attempt(handle: AttemptHandle) -> str:
        nonlocal calls
        calls += 1
        return "refused"

    driver = ReconnectDriver(ReconnectMachine(fixed()), attempt)
    with trio.fail_after(0.6):  # run() returns right after the stop at 0.5
        async with trio.open_nursery() as nursery:
            nursery.start_soon(driver.run)
            await trio.sleep(0.5)
            driver.stop()
    assert calls == 1 and driver.error is None


async def test_retry_now_skips_the_wait(autojump_clock: trio.testing.MockClock) -> None:
    """retry_now() during a wait starts the next attempt at once."""
    starts: list[float] = []

    async def attempt(handle: AttemptHandle) -> str:
        starts.append(trio.current_time())
        return "refused"

    driver = ReconnectDriver(ReconnectMachine(Backoff(10.0, 10.0, jitter=Jitter.NONE)), attempt)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run)
        await trio.sleep(1)
        driver.retry_now()
        driver.retry_now()  # single flight: the second request adds nothing
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    assert len(starts) == 2 and starts[1] - starts[0] == pytest.approx(1.0)


async def test_unexpected_errors_propagate(autojump_clock: trio.testing.MockClock) -> None:
    """An exception outside retry_on is a bug: it leaves run() instead of being retried."""

    async def attempt(handle: AttemptHandle) -> str:
        raise KeyError("bug")

    driver = ReconnectDriver(ReconnectMachine(fixed()), attempt)
    with pytest.raises(KeyError), trio.fail_after(5):
        await driver.run()
