"""``pulse run --leader``: run a command only while this process leads an election.

``pulse run --leader --server URL --name NAME [--session-timeout S] -- COMMAND …`` joins the
election ``/pulse/leader/NAME`` on ``URL`` (``pulse://``, ``zk://``, or ``gossip://SEEDS`` with
``--expect N``, the number of candidates, and optionally ``--bind HOST:PORT``) and, while it leads,
runs COMMAND with ``PULSE_FENCING_TOKEN`` (a decimal integer that grows with every new
leadership) in its environment:

* leadership in doubt (see :mod:`pulse.election`) → COMMAND's process group gets SIGTERM,
  then SIGKILL after the grace (``margin / 2``, ``T / 6`` by default); the process then
  stands as a candidate again and restarts COMMAND when it leads again;
* COMMAND exits by itself → ``pulse run`` resigns and exits with COMMAND's status;
* SIGTERM or Ctrl-C → COMMAND is stopped the same way and ``pulse run`` exits (143 / 130).

COMMAND runs under a watchdog process (:mod:`pulse.cli._watchdog`) fed over a pipe with the
time until which leadership is certain; if the feed stops (this process is stopped, hung or
killed), the watchdog SIGKILLs COMMAND's process group at that time, which is before the
server can expire the session and so before another candidate can be elected.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import trio

from pulse._core.election import MARGIN_FRACTION
from pulse._driver.engine import current_engine
from pulse._log import get_logger
from pulse.cli._run import bind_address, cancel_on_signal
from pulse.election import Leadership, LeadershipLost, election
from pulse.errors import PulseError
from pulse.presence import SessionState
from pulse.registry import connect_session

HELP = "run a command only while this process leads an election (failover without split brain)"
LEADER_PREFIX = "/pulse/leader"
TOKEN_ENV = "PULSE_FENCING_TOKEN"
WATCHDOG = Path(__file__).with_name("_watchdog.py")
#: Pause before trying again after the session could not be opened or ended.
RETRY_PAUSE = 0.5

log = get_logger("pulse.run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pulse run``."""
    parser.add_argument("--leader", action="store_true", required=True,
                        help="run COMMAND only while this process leads the election NAME")
    parser.add_argument("--server", required=True, metavar="URL",
                        help="session backend, e.g. pulse://127.0.0.1:7400 or zk://host:2181")
    parser.add_argument("--name", required=True, metavar="NAME",
                        help=f"the election: {LEADER_PREFIX}/NAME")
    parser.add_argument("--id", dest="candidate_id", metavar="ID",
                        help="this candidate's name (default: host.pid)")
    parser.add_argument("--session-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="proposed session timeout (the server clamps it; default 10); "
                             "on gossip:// the lease of a vote")
    parser.add_argument("--expect", type=int, metavar="N",
                        help="gossip:// only, required there: how many candidates the election "
                             "has (one leads only with the grants of a strict majority)")
    parser.add_argument("--bind", metavar="HOST:PORT",
                        help="gossip:// only: this candidate's gossip address (default a free "
                             "loopback port; other candidates list it in their seeds)")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the command to run while leading")


def _candidate_id(given: str | None) -> str:
    if given:
        if "/" in given or "-" in given:
            raise ValueError(f"--id must not contain '/' or '-': {given!r}")
        return given
    host = socket.gethostname().replace("-", "_").replace("/", "_") or "host"
    return f"{host}.{os.getpid()}"


class _Child:
    """COMMAND under its watchdog, in a process group of its own."""

    def __init__(self, process: trio.Process, feed: int, grace: float) -> None:
        self.process = process
        self.feed = feed
        self.grace = grace

    def feed_until(self, safe_until: float) -> None:
        """Let COMMAND run until ``safe_until`` (engine time) plus the grace."""
        mono = time.monotonic()
        deadline = mono + (safe_until + self.grace - current_engine().now())
        with contextlib.suppress(OSError):
            os.write(self.feed, f"{deadline:.6f}\n".encode())

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    async def stop(self) -> None:
        """SIGTERM the group, SIGKILL it after the grace; wait for the watchdog."""
        engine = current_engine()
        with trio.CancelScope(shield=True):
            if self.process.returncode is None:
                self.signal_group(signal.SIGTERM)
                with engine.move_on_after(self.grace):
                    await self.process.wait()
            self.signal_group(signal.SIGKILL)
            await self.process.wait()
            with contextlib.suppress(OSError):
                os.close(self.feed)


async def _run_child(command: list[str], leadership: Leadership, grace: float) -> int | None:
    """Run COMMAND while leading; its status if it exited by itself, None if the watchdog
    stopped it (leadership lapsed while this process was not running)."""
    safe = leadership.safe_until
    if safe is None:
        raise LeadershipLost(leadership.reason or "in doubt before COMMAND started")
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    deadline = time.monotonic() + (safe + grace - current_engine().now())
    env = dict(os.environ)
    env[TOKEN_ENV] = str(leadership.token)
    env["PULSE_LEADER_KEY"] = leadership.key
    # Run by path in isolated mode: it needs only the standard library, and starting it
    # this way takes ~30 ms instead of ~450 ms for importing the pulse package.
    argv = [sys.executable, "-I", str(WATCHDOG), str(read_end), f"{deadline:.6f}",
            "--", *command]
    try:
        process = await trio.lowlevel.open_process(argv, env=env, pass_fds=(read_end,),
                                                   start_new_session=True)
    finally:
        os.close(read_end)
    child = _Child(process, write_end, grace)
    leadership.on_confirmed = child.feed_until
    log.info("command_started", token=leadership.token, pid=process.pid)
    try:
        code = await process.wait()
    finally:
        leadership.on_confirmed = None
        await child.stop()
        log.info("command_stopped", token=leadership.token, status=process.returncode)
    if code == -signal.SIGKILL:
        return None  # the watchdog killed the group: our leadership lapsed
    return 128 - code if code < 0 else code


def _is_gossip(url: str) -> bool:
    return url.partition("://")[0].lower() == "gossip"


def _check_gossip_options(args: argparse.Namespace) -> None:
    """--expect is required on gossip:// and refused elsewhere; so is --bind (optional)."""
    if _is_gossip(args.server):
        if args.expect is None:
            raise ValueError("--expect N is required with gossip:// (the number of candidates)")
        if args.expect < 1:
            raise ValueError(f"--expect must be >= 1, got {args.expect}")
        if args.bind is not None:
            bind_address(args.bind)
    elif args.expect is not None or args.bind is not None:
        raise ValueError("--expect and --bind apply to gossip:// only (a server decides the "
                         "election on pulse:// and zk://)")


def _seeds_without(url: str, bind: tuple[str, int]) -> str:
    """``url`` without our own address among its seeds (unless it is the only one).

    Every candidate may list every candidate's address; joining through our own would
    succeed at once, alone, and leave the candidates started together in separate groups.
    Without it the join is retried until another candidate answers.
    """
    scheme, _, rest = url.partition("://")
    seeds = [s for s in rest.split(",") if s]
    own = {f"{bind[0]}:{bind[1]}", f"[{bind[0]}]:{bind[1]}"}
    others = [s for s in seeds if s not in own]
    return f"{scheme}://{','.join(others)}" if others and len(others) < len(seeds) else url


async def _supervise(args: argparse.Namespace, command: list[str]) -> int:
    engine = current_engine()
    path = f"{LEADER_PREFIX}/{args.name}"
    candidate = _candidate_id(args.candidate_id)
    options: dict[str, Any] = {}
    server = args.server
    if args.bind is not None:
        options["bind"] = bind_address(args.bind)
        server = _seeds_without(server, options["bind"])
    if _is_gossip(server):
        # A seed that is stopped (not dead) accepts the join's TCP stream and never answers:
        # do not let it hold the join for memberlist's 10 s.
        options["stream_timeout"] = args.session_timeout
    while True:
        try:
            async with connect_session(server, session_timeout=args.session_timeout,
                                       **options) as session:
                while session.state not in (SessionState.EXPIRED, SessionState.CLOSED):
                    try:
                        async with election(session, path, id=candidate,
                                            expect=args.expect) as leadership:
                            # Half the margin to stop politely; the other half (T / 6) is
                            # left for SIGKILL and for the rates of the clocks.
                            grace = session.session_timeout * MARGIN_FRACTION / 2
                            status = await _run_child(command, leadership, grace)
                        if status is not None:
                            return status
                    except LeadershipLost as exc:
                        log.warning("leadership_lost", reason=str(exc))
        except PulseError as exc:
            log.warning("session_failed", reason=str(exc))
        except OSError as exc:
            log.warning("session_failed", reason=str(exc))
        await engine.sleep(RETRY_PAUSE)


async def _main(args: argparse.Namespace, command: list[str]) -> int:
    status = 0

    def stopped_by(signum: int) -> None:
        nonlocal status
        status = 128 + signum

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def supervise() -> None:
                nonlocal status
                status = await _supervise(args, command)
                nursery.cancel_scope.cancel()

            nursery.start_soon(cancel_on_signal, signals, nursery.cancel_scope, stopped_by)
            nursery.start_soon(supervise)
    return status


def run(args: argparse.Namespace) -> int:
    """Run ``pulse run``."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ValueError("no COMMAND given (pulse run --leader … -- COMMAND …)")
    if not args.session_timeout > 0:
        raise ValueError(f"--session-timeout must be > 0, got {args.session_timeout}")
    _candidate_id(args.candidate_id)
    _check_gossip_options(args)
    return trio.run(_main, args, command)
