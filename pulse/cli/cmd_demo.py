"""``pulse demo``: failure detection you can watch, on one machine, in about 15 seconds.

What it does:

1. starts an embedded lease server in this process on 127.0.0.1 (a free port);
2. starts N ``pulse agent`` processes (``python -m pulse.cli.cmd_agent …``: the same code
   without loading every other command, each in its own temporary directory), and watches
   ``/pulse/presence`` until all N are online;
3. injects failures: SIGKILL one agent, SIGSTOP one for longer than the session timeout
   (then SIGCONT it: it finds its session expired and registers again), SIGSTOP one for a
   quarter of the timeout (it must *not* be reported offline), and SIGKILL a second agent
   half a timeout later; the others stay healthy and must never be reported offline;
4. shows the live table (on a terminal) or one line per event, then a summary: each
   failure's detection latency against the bound ``session timeout + tick``.

The exit status is 0 when every failure was detected within the bound and no healthy (or
briefly paused) agent was reported offline, 1 otherwise, 2 for bad options, 130 when
interrupted. Every agent
process is killed on the way out, whatever happens (they also die with this process, via
``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import math
import os
import signal
import subprocess
import sys
import tempfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pulse.cli._presence import PRESENCE_PREFIX, PresenceTable, wall_time
from pulse.cli._run import cancel_on_signal
from pulse.presence import PresenceEvent
from pulse.registry import ServeOptions, connect_session, serve_function

HELP = "run a lease server and N agents on loopback, kill and pause some, report detection"

ROLES = ("kill", "long-pause", "short-pause", "kill")
START_TIMEOUT = 30.0
SETTLE = 0.5
EXIT_GRACE = 2.0
LOG_LINES = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pulse demo``."""
    parser.add_argument("--agents", type=int, default=6, metavar="N",
                        help="agent processes to start (default 6; the first 4 get failures)")
    parser.add_argument("--session-timeout", type=float, default=3.0, metavar="SECONDS",
                        help="session timeout of every agent (default 3)")
    parser.add_argument("--tick", type=float, default=None, metavar="SECONDS",
                        help="the server's expiry tick (default: session timeout / 6)")
    parser.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                        help="run at least this long in total, showing the table after the "
                             "scenario (default 0: as long as the scenario needs)")


@dataclass(slots=True)
class Agent:
    """One agent process and what happened to it."""

    name: str
    role: str
    process: Any = None  # trio.Process
    log_path: Path | None = None
    fault_at: float | None = None
    fault: str = ""
    resumed_at: float | None = None
    offline_at: list[float] = field(default_factory=list)
    online_at: list[float] = field(default_factory=list)

    def first_offline_after(self, moment: float) -> float | None:
        """The first offline event at or after ``moment``."""
        return next((t for t in self.offline_at if t >= moment), None)


def _death_signal_setup() -> Any:
    """A ``preexec_fn`` asking Linux to SIGKILL the child when this process dies.

    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked the child exits, so children
    must be forked from the main thread (trio's ``open_process`` forks from a worker thread,
    whose exit would kill the agents): :meth:`Demo.spawn` calls ``subprocess.Popen`` from the
    trio thread. libc is loaded here, before forking; the child only makes one call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def setup() -> None:  # pragma: no cover - runs in the child between fork and exec
        prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return setup


class Demo:
    """The scenario, its clock and its bookkeeping."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.timeout = float(args.session_timeout)
        self.tick = float(args.tick) if args.tick else self.timeout / 6
        self.bound = self.timeout + self.tick
        self.agents = [
            Agent(f"agent-{i + 1}", ROLES[i] if i < len(ROLES) else "healthy")
            for i in range(args.agents)
        ]
        self.by_name = {agent.name: agent for agent in self.agents}
        self.table = PresenceTable()
        self.start = 0.0
        self.url = ""
        self.live: Any = None
        self.changed = trio.Event()
        self.scenario_over = math.inf
        self.completed = False
        self.interrupted = False
        self.log_lines: deque[str] = deque(maxlen=LOG_LINES)
        self.preexec = _death_signal_setup()

    # -- output --------------------------------------------------------------------------

    def _interrupted(self, signum: int) -> None:
        """A SIGINT or SIGTERM ends the scenario early: no verdict."""
        self.say("interrupted")
        self.interrupted = True

    def say(self, text: str) -> None:
        line = f"[{trio.current_time() - self.start:6.2f}s] {text}"
        self.log_lines.append(line)
        if self.live is None:
            print(line, flush=True)
        else:
            self.refresh()

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render(), refresh=True)

    def render(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        extra = {a.name: {"fault": a.fault or "-"} for a in self.agents}
        online = len(self.table.online_ids())
        title = (f"pulse demo — {online}/{len(self.agents)} online, session timeout "
                 f"{self.timeout:.3g} s, tick {self.tick:.3g} s, bound {self.bound:.3g} s")
        width = self.live.console.width if self.live is not None else None
        table = self.table.render(title, wall_time(), extra, width=width)
        return Group(table, Text("\n".join(self.log_lines)))

    # -- watching ------------------------------------------------------------------------

    async def watch(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with connect_session(self.url, session_timeout=self.timeout) as session:
            events = aiter(session.watch(PRESENCE_PREFIX))
            task_status.started()
            async for event in events:
                self.on_event(event)

    def on_event(self, event: PresenceEvent) -> None:
        now = trio.current_time()
        agent = self.by_name.get(event.id)
        self.table.apply(event, wall_time())
        if agent is not None:
            (agent.online_at if event.event == "online" else agent.offline_at).append(now)
            detail = ""
            if event.event == "offline" and now >= self.scenario_over:
                detail = " (stopped by the demo)"
            elif event.event == "offline" and agent.fault_at is not None:
                latency = now - agent.fault_at
                detail = (f" — {latency:.3f} s after {agent.fault} "
                          f"(bound {self.bound:.3g} s)")
            self.say(f"{event.id} {event.event}{detail}")
        self.changed.set()
        self.changed = trio.Event()
        self.refresh()

    async def wait_for(self, predicate: Any, deadline: float) -> bool:
        """Wait until ``predicate()`` holds or ``deadline`` passes."""
        with trio.move_on_at(deadline):
            while not predicate():
                await self.changed.wait()
            return True
        return bool(predicate())

    # -- agents --------------------------------------------------------------------------

    def spawn(self, agent: Agent) -> None:
        """Start one agent, forked from this (the main) thread; see _death_signal_setup."""
        directory = self.workdir / agent.name
        directory.mkdir()
        agent.log_path = directory / "agent.log"
        command = [sys.executable, "-m", "pulse.cli.cmd_agent", "--server", self.url,
                   "--id", agent.name, "--session-timeout", repr(self.timeout),
                   "--meta", f"role={agent.role}"]
        with agent.log_path.open("wb") as log:
            agent.process = subprocess.Popen(
                command, cwd=directory, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=self.preexec,
            )

    def send_signal(self, agent: Agent, signum: signal.Signals) -> float:
        now = trio.current_time()
        if agent.process is not None and agent.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent.process.pid, signum)
        return now

    async def _reap(self, agents: list[Agent], timeout: float) -> None:
        # Popen children cannot be awaited without a thread; a bounded 20 ms poll is enough.
        with trio.move_on_after(timeout):
            while any(a.process.poll() is None for a in agents):  # noqa: ASYNC110
                await trio.sleep(0.02)

    async def cleanup(self) -> None:
        """Stop every agent: SIGTERM the running ones, then SIGKILL whatever is left."""
        running = [a for a in self.agents if a.process is not None and a.process.poll() is None]
        for agent in running:
            self.send_signal(agent, signal.SIGCONT)
            self.send_signal(agent, signal.SIGTERM)
        await self._reap(running, EXIT_GRACE)
        for agent in running:
            self.send_signal(agent, signal.SIGKILL)
        await self._reap(running, EXIT_GRACE)

    # -- the scenario --------------------------------------------------------------------

    async def scenario(self) -> None:
        for agent in self.agents:
            self.spawn(agent)
            self.say(f"started {agent.name} (pid {agent.process.pid}, {agent.role})")
            await trio.lowlevel.checkpoint()
        deadline = trio.current_time() + START_TIMEOUT
        if not await self.wait_for(
            lambda: all(a.online_at for a in self.agents), deadline
        ):
            missing = [a.name for a in self.agents if not a.online_at]
            raise RuntimeError(f"agents never came online: {', '.join(missing)}")
        self.say(f"all {len(self.agents)} agents online")
        await trio.sleep(SETTLE)

        by_role: dict[str, list[Agent]] = {}
        for agent in self.agents:
            by_role.setdefault(agent.role, []).append(agent)
        kills = by_role.get("kill", [])
        long_pause = by_role.get("long-pause", [])
        short_pause = by_role.get("short-pause", [])
        short = self.timeout / 4
        t0 = trio.current_time()

        if kills:
            self.fault(kills[0], signal.SIGKILL, "SIGKILL")
        for agent in long_pause:
            self.fault(agent, signal.SIGSTOP, "SIGSTOP")
        for agent in short_pause:
            self.fault(agent, signal.SIGSTOP, f"SIGSTOP {short:.2g} s")
        if short_pause:
            await trio.sleep_until(t0 + short)
            for agent in short_pause:
                agent.resumed_at = self.send_signal(agent, signal.SIGCONT)
                self.say(f"SIGCONT {agent.name} after {short:.2g} s (shorter than the timeout)")
        for agent in kills[1:]:
            await trio.sleep_until(t0 + self.timeout / 2)
            self.fault(agent, signal.SIGKILL, "SIGKILL")

        expected = kills + long_pause
        last_fault = max((a.fault_at or t0) for a in expected) if expected else t0
        await self.wait_for(
            lambda: all(a.first_offline_after(a.fault_at or 0) is not None for a in expected),
            last_fault + self.bound + 2.0,
        )
        for agent in long_pause:
            await trio.sleep_until(max(trio.current_time(),
                                       (agent.fault_at or t0) + self.timeout + 2 * self.tick))
            agent.resumed_at = self.send_signal(agent, signal.SIGCONT)
            pause = agent.resumed_at - (agent.fault_at or t0)
            agent.fault = f"SIGSTOP {pause:.2g} s"
            self.say(f"SIGCONT {agent.name} after {pause:.2g} s: it must register again")
        if long_pause:
            await self.wait_for(
                lambda: all(any(t >= (a.resumed_at or 0) for t in a.online_at)
                            for a in long_pause),
                trio.current_time() + self.timeout + 3.0,
            )
        self.scenario_over = trio.current_time()
        self.completed = True

    def fault(self, agent: Agent, signum: signal.Signals, label: str) -> None:
        agent.fault_at = self.send_signal(agent, signum)
        agent.fault = label
        self.say(f"{label} {agent.name} (pid {agent.process.pid})")
        self.refresh()

    # -- verdict -------------------------------------------------------------------------

    def verdicts(self) -> list[tuple[Agent, str, str, bool]]:
        """Per agent: expectation, what happened, and whether that is right."""
        rows = []
        for agent in self.agents:
            fault_at = agent.fault_at
            if agent.role in ("kill", "long-pause") and fault_at is not None:
                detected = agent.first_offline_after(fault_at)
                if detected is None:
                    rows.append((agent, f"offline ≤ {self.bound:.3g} s", "not detected", False))
                    continue
                latency = detected - fault_at
                happened = f"offline after {latency:.3f} s"
                ok = latency <= self.bound
                if agent.role == "long-pause":
                    back = any(t >= (agent.resumed_at or math.inf) for t in agent.online_at)
                    happened += ", back online" if back else ", never came back"
                    ok = ok and back
                rows.append((agent, f"offline ≤ {self.bound:.3g} s", happened, ok))
            else:
                since = fault_at if fault_at is not None else self.start
                early = [t for t in agent.offline_at if since <= t < self.scenario_over]
                happened = "stayed online" if not early else "reported offline (false positive)"
                rows.append((agent, "stays online", happened, not early))
        return rows

    def summary(self, console: Any = None) -> bool:
        """Print the verdict table, latencies and PASS/FAIL on ``console``; True if passed.

        The table fits 80 columns: agent and OK never wrap, long cells wrap inside their
        column instead of being cut off.
        """
        from rich.console import Console
        from rich.table import Table

        rows = self.verdicts()
        table = Table(title=f"failure detection (session timeout {self.timeout:.3g} s + tick "
                            f"{self.tick:.3g} s = bound {self.bound:.3g} s)",
                      title_justify="left")
        table.add_column("AGENT", no_wrap=True, min_width=8)
        table.add_column("FAULT", overflow="fold")
        table.add_column("EXPECTED", overflow="fold")
        table.add_column("OBSERVED", overflow="fold", ratio=2)
        table.add_column("OK", no_wrap=True, min_width=3)
        for agent, expected, happened, ok in rows:
            table.add_row(agent.name, agent.fault or "-", expected, happened,
                          "[green]yes[/green]" if ok else "[red]NO[/red]")
        if console is None:
            # On a terminal, its width; in a pipe, COLUMNS if set, else wide enough for one
            # line per agent.
            console = Console() if sys.stdout.isatty() or "COLUMNS" in os.environ \
                else Console(width=120)
        console.print(table)
        measured = []
        for agent in self.agents:
            if agent.role in ("kill", "long-pause") and agent.fault_at is not None:
                detected = agent.first_offline_after(agent.fault_at)
                if detected is not None:
                    measured.append(detected - agent.fault_at)
        if measured:
            console.print(f"detection latency: min {min(measured):.3f} s, max "
                          f"{max(measured):.3f} s, bound {self.bound:.3g} s "
                          f"({len(measured)} failures)")
        passed = all(ok for _, _, _, ok in rows)
        console.print("result: " + ("[green]PASS[/green]" if passed else "[red]FAIL[/red]"))
        return passed

    # -- everything ----------------------------------------------------------------------

    async def run(self) -> int:
        self.start = trio.current_time()
        endpoint, serve = serve_function("pulse://127.0.0.1:0")
        options = ServeOptions(extra={
            "tick": self.tick,
            "min_timeout": min(2 * self.tick, self.timeout),
            "max_timeout": max(20 * self.tick, self.timeout),
        })
        passed = False
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_on_signal, signals, nursery.cancel_scope,
                                   self._interrupted)
                listeners = await nursery.start(serve, endpoint, options)
                host, port = listeners[0].socket.getsockname()[:2]
                self.url = f"pulse://{host}:{port}"
                self.say(f"lease server on {self.url} (tick {self.tick:.3g} s)")
                await nursery.start(self.watch)
                self.start_live()
                try:
                    await self.scenario()
                    end = self.start + self.args.duration
                    await trio.sleep_until(max(end, trio.current_time() + 1.0))
                except RuntimeError as exc:
                    self.say(f"demo failed: {exc}")
                    self.show_logs()
                finally:
                    with trio.CancelScope(shield=True):
                        self.scenario_over = min(self.scenario_over, trio.current_time())
                        self.stop_live()
                        await self.cleanup()
                        if self.interrupted:
                            # A run cut short proves nothing: no table, no PASS/FAIL.
                            print("interrupted before the scenario ended: no verdict", flush=True)
                        elif all(a.online_at for a in self.agents):
                            passed = self.summary() and self.completed
                nursery.cancel_scope.cancel()
        if self.interrupted:
            return 130
        return 0 if passed else 1

    def start_live(self) -> None:
        if sys.stdout.isatty():
            from rich.live import Live

            self.live = Live(auto_refresh=False)
            self.live.update(self.render())   # rendered for the live console's width
            self.live.start()

    def stop_live(self) -> None:
        if self.live is not None:
            self.live.update(self.render(), refresh=True)
            self.live.stop()
            self.live = None

    def show_logs(self) -> None:
        for agent in self.agents:
            if agent.log_path is not None and agent.log_path.exists():
                tail = agent.log_path.read_text(errors="replace").splitlines()[-5:]
                print(f"--- {agent.name} ({agent.log_path}):", *tail, sep="\n  ", flush=True)


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every failure was detected within timeout + tick."""
    if args.agents < 1:
        print("pulse demo: --agents must be at least 1", file=sys.stderr)
        return 2
    if not args.session_timeout > 0 or (args.tick is not None and not args.tick > 0):
        print("pulse demo: --session-timeout and --tick must be > 0", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pulse-demo-") as workdir:
        return trio.run(Demo(args, Path(workdir)).run)


if __name__ == "__main__":  # pragma: no cover - `python -m pulse.cli.cmd_demo`
    from pulse.cli._standalone import standalone

    sys.exit(standalone(sys.modules[__name__], "demo"))
