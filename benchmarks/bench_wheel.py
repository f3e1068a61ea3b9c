"""One hashed timing wheel vs one trio task per channel, for many heartbeat channels.

Run:  python benchmarks/bench_wheel.py [--channels 10000] [--minutes 1]

Every channel runs the same pure Dubbo rules (pulse._core.channel_heartbeat: heartbeat 10 s,
timeout 30 s; the peer answers each heartbeat at once). What differs is how their deadlines
are kept:

* ``wheel``: one HashedWheel (1 s tick, 128 slots) and ONE sleeping trio task;
* ``tasks``: one trio task per channel, each sleeping until its own next deadline;
* ``pulse.rpc``: the full integration surface (HeartbeatTimer + RpcChannel, hooks, logging
  filtered), i.e. the wheel plus what a framework gets on top.

Measured: memory held by the channels' timers (tracemalloc), CPU time to run one virtual
minute under trio's MockClock (so no real sleeping is timed), wake-ups, and the cost of
scheduling and cancelling one timer. Ratios are tasks / wheel.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import structlog
import trio
import trio.testing

from pulse._core.channel_heartbeat import ChannelHeartbeat, ChannelTiming, Role
from pulse._core.wheel import HashedWheel
from pulse.actions import SendPing
from pulse.rpc import HeartbeatTimer

TIMING = ChannelTiming(10.0)  # heartbeat 10 s, timeout 30 s
SPREAD = 10.0  # channels open uniformly over the first 10 s, so heartbeats spread out


def new_core(now: float, ids: Callable[[], int]) -> ChannelHeartbeat:
    return ChannelHeartbeat(Role.PROVIDER, TIMING, now, next_request_id=ids)


def handle(core: ChannelHeartbeat, now: float) -> None:
    for action in core.handle_timer(now):
        if isinstance(action, SendPing):
            core.write(now)
            core.heartbeat_response(now, action.seq)  # the peer answers at once


class Result:
    def __init__(self, name: str) -> None:
        self.name = name
        self.memory = 0
        self.cpu = 0.0
        self.wakeups = 0
        self.heartbeats = 0


# -- the three ways to keep the deadlines ------------------------------------------------------


async def run_wheel(n: int, minutes: float, result: Result) -> None:
    ids = itertools.count(1).__next__
    wheel: HashedWheel[ChannelHeartbeat] = HashedWheel(trio.current_time(), tick=1.0, slots=128)
    cores: list[ChannelHeartbeat] = []

    async def timer_task() -> None:
        while True:
            deadline = wheel.next_deadline()
            await trio.sleep_until(deadline if deadline is not None else float("inf"))
            now = trio.current_time()
            result.wakeups += 1
            for core in wheel.handle_timer(now):
                handle(core, now)
                nd = core.next_deadline()
                if nd is not None:
                    wheel.schedule(nd, core)

    async with trio.open_nursery() as nursery:
        gc.collect()
        before = snapshot()
        start = trio.current_time()
        rng = random.Random(1)
        for _ in range(n):
            core = new_core(start + rng.uniform(0, SPREAD), ids)
            cores.append(core)
            nd = core.next_deadline()
            assert nd is not None
            wheel.schedule(nd, core)
        nursery.start_soon(timer_task)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        result.memory = memory_since(before)
        cpu = time.process_time()
        await trio.sleep(60 * minutes)
        result.cpu = time.process_time() - cpu
        result.heartbeats = sum(c.heartbeats_sent for c in cores)
        nursery.cancel_scope.cancel()


async def run_tasks(n: int, minutes: float, result: Result) -> None:
    ids = itertools.count(1).__next__
    cores: list[ChannelHeartbeat] = []

    async def channel_task(core: ChannelHeartbeat) -> None:
        while True:
            deadline = core.next_deadline()
            assert deadline is not None
            await trio.sleep_until(deadline)
            result.wakeups += 1
            handle(core, trio.current_time())

    async with trio.open_nursery() as nursery:
        gc.collect()
        before = snapshot()
        start = trio.current_time()
        rng = random.Random(1)
        for _ in range(n):
            core = new_core(start + rng.uniform(0, SPREAD), ids)
            cores.append(core)
            nursery.start_soon(channel_task, core)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        result.memory = memory_since(before)
        cpu = time.process_time()
        await trio.sleep(60 * minutes)
        result.cpu = time.process_time() - cpu
        result.heartbeats = sum(c.heartbeats_sent for c in cores)
        nursery.cancel_scope.cancel()


class _Answering:
    """Hooks and messages of a framework whose peer answers every heartbeat at once."""

    channel: Any = None

    def request(self, request_id: int) -> int:
        return request_id

    def response(self, request_id: int) -> int:
        return request_id

    def send_heartbeat(self, message: int) -> None:
        self.channel.wrote()
        self.channel.heartbeat_response(message)

    def close(self, reason: str) -> None:
        raise AssertionError(f"no channel should die here: {reason}")


async def run_rpc(n: int, minutes: float, result: Result) -> None:
    async with trio.open_nursery() as nursery:
        timer = HeartbeatTimer(tick=1.0, slots=128)
        await nursery.start(timer.run)
        gc.collect()
        before = snapshot()
        channels = []
        rng = random.Random(1)
        start = trio.current_time()
        opens = sorted(start + rng.uniform(0, SPREAD) for _ in range(n))
        for opened in opens:  # the same spread of open times as the other two
            await trio.sleep_until(opened)
            hooks = _Answering()
            hooks.channel = timer.open_channel(Role.PROVIDER, hooks, hooks, timing=TIMING)
            channels.append(hooks.channel)
        await trio.testing.wait_all_tasks_blocked()
        gc.collect()
        result.memory = memory_since(before)
        wakeups = timer.wakeups
        cpu = time.process_time()
        await trio.sleep(60 * minutes)
        result.cpu = time.process_time() - cpu
        result.wakeups = timer.wakeups - wakeups
        result.heartbeats = sum(c.core.heartbeats_sent for c in channels)
        nursery.cancel_scope.cancel()


def snapshot() -> tracemalloc.Snapshot | None:
    """A memory snapshot when this run measures memory (tracemalloc on), else None."""
    return tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None


def memory_since(before: tracemalloc.Snapshot | None) -> int:
    if before is None:
        return 0
    after = tracemalloc.take_snapshot()
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


# -- schedule / cancel cost ---------------------------------------------------------------------


def wheel_costs(n: int) -> tuple[float, float]:
    """ns per schedule and per cancel on a wheel already holding ``n`` timers."""
    rng = random.Random(2)
    wheel: HashedWheel[int] = HashedWheel(0.0, tick=1.0, slots=128)
    for i in range(n):
        wheel.schedule(rng.uniform(0, 120), i)
    deadlines = [rng.uniform(0, 120) for _ in range(n)]
    t0 = time.perf_counter()
    timers = [wheel.schedule(d, i) for i, d in enumerate(deadlines)]
    t1 = time.perf_counter()
    for timer in timers:
        wheel.cancel(timer)
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e9, (t2 - t1) / n * 1e9


async def task_costs(n: int) -> tuple[float, float]:
    """ns per re-arm (moving a sleeping task's deadline) and per cancel (waking it to exit),
    with ``n`` channel tasks asleep: what one-task-per-channel pays for the same operations."""
    rng = random.Random(2)
    scopes: list[trio.CancelScope] = []

    async def sleeper(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope(deadline=trio.current_time() + rng.uniform(60, 120)) as scope:
            task_status.started(scope)
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            scopes.append(await nursery.start(sleeper))
        now = trio.current_time()
        deadlines = [now + rng.uniform(60, 120) for _ in range(n)]
        t0 = time.perf_counter()
        for scope, deadline in zip(scopes, deadlines, strict=True):
            scope.deadline = deadline
        await trio.lowlevel.checkpoint()  # let trio absorb the new deadlines
        t1 = time.perf_counter()
        for scope in scopes:
            scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        t2 = time.perf_counter()
    return (t1 - t0) / n * 1e9, (t2 - t1) / n * 1e9


# -- main ----------------------------------------------------------------------------------------


def run_one(fn: Callable[..., Any], n: int, minutes: float, name: str) -> Result:
    """Two runs: one under tracemalloc for memory only, one without it for CPU time."""
    memory = Result(name)
    tracemalloc.start()
    try:
        trio.run(fn, n, 0.0, memory, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        tracemalloc.stop()
    result = Result(name)
    trio.run(fn, n, minutes, result, clock=trio.testing.MockClock(autojump_threshold=0))
    result.memory = memory.memory
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=1.0, help="virtual minutes to run")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n = args.channels

    wheel = run_one(run_wheel, n, args.minutes, "wheel (1 task)")
    tasks = run_one(run_tasks, n, args.minutes, "task per channel")
    rpc = run_one(run_rpc, n, args.minutes, "pulse.rpc (wheel)")
    w_sched, w_cancel = wheel_costs(n)
    t_sched, t_cancel = trio.run(task_costs, n, clock=trio.testing.MockClock())

    per_minute = 1.0 / args.minutes
    print(f"{n} channels, heartbeat {TIMING.heartbeat:g} s, peers answer at once, "
          f"{args.minutes:g} virtual minute(s)\n")
    print(
        f"{'':22}{'memory':>12}{'CPU/virt. min':>15}{'wake-ups':>10}{'heartbeats':>12}"
        f"{'CPU/heartbeat':>15}"
    )
    for r in (wheel, tasks, rpc):
        print(
            f"{r.name:22}{r.memory / 1e6:>9.2f} MB{r.cpu * per_minute * 1e3:>12.1f} ms"
            f"{r.wakeups:>10}{r.heartbeats:>12}{r.cpu / max(1, r.heartbeats) * 1e6:>12.1f} us"
        )
    print()
    print(f"{'':22}{'schedule':>12}{'cancel':>12}")
    print(f"{'wheel':22}{w_sched:>9.0f} ns{w_cancel:>9.0f} ns")
    print(f"{'task per channel':22}{t_sched:>9.0f} ns{t_cancel:>9.0f} ns   (re-arm / cancel+exit)")
    print()
    print("ratios (task per channel / wheel):")
    print(f"  memory        {tasks.memory / wheel.memory:6.1f} x")
    print(f"  CPU           {tasks.cpu / wheel.cpu:6.1f} x")
    print(f"  wake-ups      {tasks.wakeups / max(1, wheel.wakeups):6.1f} x")
    print(f"  schedule      {t_sched / w_sched:6.1f} x")
    print(f"  cancel        {t_cancel / w_cancel:6.1f} x")
    rpc_cpu = (rpc.cpu / rpc.heartbeats) / (wheel.cpu / wheel.heartbeats)
    print(f"pulse.rpc over the bare wheel: memory {rpc.memory / wheel.memory:.1f} x, "
          f"CPU per heartbeat {rpc_cpu:.1f} x")


if __name__ == "__main__":
    main()
