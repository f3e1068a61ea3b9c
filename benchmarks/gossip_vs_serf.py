"""Failure detection of a pulse gossip member next to Serf's own, on loopback, same run.

Run:  python benchmarks/gossip_vs_serf.py [--trials 3]

Needs the ``serf`` binary (Debian's package). Every cluster uses memberlist's LAN defaults on
both sides (probe every 1 s, probe timeout 500 ms, suspicion multiplier 4). Scenarios:

* ``stop serf, 3 members``: serf-1, serf-2 and a pulse member; serf-2 is SIGSTOPped. Times
  from the signal to the failed verdict in pulse (its event) and in serf-1 (``serf members``,
  polled every 50 ms). Whoever decides first gossips ``dead`` to the other, so the later time
  is bounded by the earlier; the ``first`` column says whose verdict it was.
* ``stop serf, pair``: each observer alone with the stopped agent (pulse+serf-2, and
  serf-1+serf-2): independent detection times.
* ``kill pulse`` / ``kill serf``: a ``pulse member`` process, or a serf agent, is SIGKILLed
  in a pair with serf-1; time until serf-1 lists it failed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import trio

from pulse._core.swim import MemberEvent, MemberEventKind
from pulse.plugins.gossip.driver import gossip_member

SERF = shutil.which("serf") or "serf"


def _free_port() -> int:
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


class Agent:
    def __init__(self, name: str, join: int | None = None) -> None:
        self.name, self.port, self.rpc = name, _free_port(), _free_port()
        args = [SERF, "agent", "-node", name, "-bind", f"127.0.0.1:{self.port}",
                "-rpc-addr", f"127.0.0.1:{self.rpc}"]
        if join:
            args += ["-join", f"127.0.0.1:{join}"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.rpc), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)

    async def status(self, name: str) -> str | None:
        r = await trio.run_process([SERF, "members", "-rpc-addr", f"127.0.0.1:{self.rpc}", "-format",
                                    "json"], capture_stdout=True, capture_stderr=True)
        for m in json.loads(r.stdout)["members"]:
            if m["name"] == name:
                return str(m["status"])
        return None

    async def wait_status(self, name: str, status: str, limit: float = 60.0) -> float:
        with trio.fail_after(limit):  # a stuck trial fails instead of hanging the run
            while await self.status(name) != status:  # noqa: ASYNC110 - polling a CLI
                await trio.sleep(0.05)
        return trio.current_time()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait()


async def _pulse_failed(events: list[MemberEvent], name: str) -> MemberEvent:
    while True:
        for e in events:
            if e.kind == MemberEventKind.FAILED and e.member.name == name:
                return e
        await trio.sleep(0.01)


async def stop_serf_three() -> tuple[float, float, str]:
    s1 = Agent("serf-1")
    s2 = Agent("serf-2", join=s1.port)
    try:
        events: list[MemberEvent] = []
        async with gossip_member(("127.0.0.1", 0), "pulse", join=[("127.0.0.1", s1.port)]) as m, \
                trio.open_nursery() as nursery:
            async def collect() -> None:
                async for e in m.events():
                    events.append(e)
            nursery.start_soon(collect)
            await s1.wait_status("pulse", "alive")
            await s2.wait_status("pulse", "alive")
            while "serf-2" not in {x.name for x in m.members()}:  # noqa: ASYNC110
                await trio.sleep(0.05)
            await trio.sleep(2)
            s2.proc.send_signal(signal.SIGSTOP)
            t0 = trio.current_time()
            times: dict[str, float] = {}

            async def by_pulse() -> None:
                e = await _pulse_failed(events, "serf-2")
                times["pulse"] = e.at - t0
                times["first"] = 0.0 if e.confirmed_by[:1] == ("pulse",) else 1.0

            async def by_serf() -> None:
                times["serf"] = await s1.wait_status("serf-2", "failed") - t0

            with trio.fail_after(60):
                async with trio.open_nursery() as inner:
                    inner.start_soon(by_pulse)
                    inner.start_soon(by_serf)
            nursery.cancel_scope.cancel()
        first = "pulse" if times["first"] == 0.0 else "serf-1"
        return times["pulse"], times["serf"], first
    finally:
        s1.stop()
        s2.stop()


async def stop_serf_pair_pulse() -> float:
    s2 = Agent("serf-2")
    try:
        events: list[MemberEvent] = []
        async with gossip_member(("127.0.0.1", 0), "pulse", join=[("127.0.0.1", s2.port)]) as m, \
                trio.open_nursery() as nursery:
            async def collect() -> None:
                async for e in m.events():
                    events.append(e)
            nursery.start_soon(collect)
            await s2.wait_status("pulse", "alive")
            await trio.sleep(2)
            s2.proc.send_signal(signal.SIGSTOP)
            t0 = trio.current_time()
            with trio.fail_after(60):
                e = await _pulse_failed(events, "serf-2")
            nursery.cancel_scope.cancel()
        return e.at - t0
    finally:
        s2.stop()


async def stop_serf_pair_serf() -> float:
    s1 = Agent("serf-1")
    s2 = Agent("serf-2", join=s1.port)
    try:
        await s1.wait_status("serf-2", "alive")
        await trio.sleep(2)
        s2.proc.send_signal(signal.SIGSTOP)
        t0 = trio.current_time()
        with trio.fail_after(60):
            return await s1.wait_status("serf-2", "failed") - t0
    finally:
        s1.stop()
        s2.stop()


async def kill_pulse() -> float:
    s1 = Agent("serf-1")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable,  # noqa: ASYNC220 - started before timing
                                 "-m", "pulse.cli.main", "member", "--listen",
                                 f"gossip://127.0.0.1:{_free_port()}", "--name", "pulse-proc",
                                 "--join", f"127.0.0.1:{s1.port}", "--join-timeout", "10"],
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            try:
                await s1.wait_status("pulse-proc", "alive", limit=30.0)
            except trio.TooSlowError:
                err.seek(0)
                print(f"kill pulse: the member never showed up in serf-1 (exit status "
                      f"{proc.poll()}): {err.read().decode(errors='replace')[-2000:]}", file=sys.stderr)
                raise
            await trio.sleep(2)
            proc.kill()
            t0 = trio.current_time()
            with trio.fail_after(60):
                return await s1.wait_status("pulse-proc", "failed") - t0
        finally:
            proc.kill()
            proc.wait()
            s1.stop()


async def kill_serf() -> float:
    s1 = Agent("serf-1")
    s2 = Agent("serf-2", join=s1.port)
    try:
        await s1.wait_status("serf-2", "alive")
        await trio.sleep(2)
        s2.proc.kill()
        t0 = trio.current_time()
        with trio.fail_after(60):
            return await s1.wait_status("serf-2", "failed") - t0
    finally:
        s1.stop()
        s2.stop()


def _row(label: str, values: list[float]) -> str:
    cells = " ".join(f"{v:5.2f}" for v in values)
    return f"{label:<34} median {statistics.median(values):5.2f} s   ({cells})"


async def main(trials: int) -> None:
    three = [await stop_serf_three() for _ in range(trials)]
    print(_row("stop serf, 3 members: pulse", [t[0] for t in three]))
    print(_row("stop serf, 3 members: serf-1", [t[1] for t in three]))
    print("  first verdict by:", ", ".join(t[2] for t in three))
    print(_row("stop serf, pair: pulse observes", [await stop_serf_pair_pulse() for _ in range(trials)]))
    print(_row("stop serf, pair: serf observes", [await stop_serf_pair_serf() for _ in range(trials)]))
    print(_row("kill pulse member: serf-1 sees", [await kill_pulse() for _ in range(trials)]))
    print(_row("kill serf agent: serf-1 sees", [await kill_serf() for _ in range(trials)]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    trio.run(main, parser.parse_args().trials)
