"""``pulse watch``: who is online under a prefix, live.

Without ``--json`` a table is redrawn in place (on a terminal; elsewhere each change is
printed as a line). With ``--json`` every change is one JSON object on its own line:
``{"event": "online"|"offline", "id": …, "time": unix seconds, "initial": bool, "data": {…}}``.
If the watcher's own session expires, a new one is started and only real differences from
what was already reported are printed. Uses only the backend-neutral presence API.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from pulse.cli._errors import describe, reportable
from pulse.cli._presence import PRESENCE_PREFIX, PresenceTable, event_json, wall_time
from pulse.cli._run import bind_address, cancel_on_signal
from pulse.errors import ConnectionClosed, NoPlugin, SessionExpired
from pulse.presence import PresenceEvent, PresenceSession
from pulse.registry import connect_session

HELP = "show live who is online under a presence prefix (table or JSON lines)"

RESYNC_QUIET = 0.5
RTT_INTERVAL = 2.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pulse watch``."""
    parser.add_argument("--server", required=True, metavar="URL", action="append",
                        help="session backend, e.g. pulse://127.0.0.1:7400 or zk://host:2181; "
                             "repeat it to merge independent registries (online while any "
                             "reachable one holds the registration)")
    parser.add_argument("--prefix", default=None,
                        help=f"the prefix whose children are watched (default {PRESENCE_PREFIX}); "
                             "on gossip:// a prefix selects presence registrations instead of "
                             "the member table")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object per line and per change")
    parser.add_argument("--session-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="the watcher's own session timeout (default 10)")
    parser.add_argument("--members", action="store_true",
                        help="gossip:// only: show the group's members (name, address, state, "
                             "incarnation, tags) — the default on gossip:// unless --prefix "
                             "is given")
    parser.add_argument("--bind", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="with --members: the watcher's own gossip address, reachable by the "
                             "group (default a free loopback port)")
    parser.add_argument("--name", default=None,
                        help="with --members: the watcher's member name (default pulse-watch-PID)")


async def _close_iterator(events: AsyncIterator[PresenceEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        with trio.CancelScope(shield=True):
            await aclose()


async def follow(session: PresenceSession, prefix: str, table: PresenceTable,
                 emit: Callable[[PresenceEvent], None], *, resync: bool) -> None:
    """Apply the watch of ``prefix`` to ``table`` and ``emit`` each real change.

    With ``resync`` (a new session after an expiry) members the table still shows online but
    missing from the new session's initial snapshot are reported offline once the snapshot
    has been delivered (the first non-initial event, or half a second of quiet). The watch
    is iterated in its own task, so the quiet timer never cancels the iterator itself (an
    async generator would not survive that).
    """
    stale = table.online_ids() if resync else set()
    send, receive = trio.open_memory_channel[PresenceEvent](math.inf)

    async def pump() -> None:
        events = aiter(session.watch(prefix))
        try:
            async with send:
                async for event in events:
                    await send.send(event)
        finally:
            await _close_iterator(events)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        async with receive:
            while True:
                event: PresenceEvent | None = None
                try:
                    if stale:
                        with trio.move_on_after(RESYNC_QUIET):
                            event = await receive.receive()
                    else:
                        event = await receive.receive()
                except trio.EndOfChannel:
                    return
                if stale and (event is None or not event.initial):
                    for name in sorted(stale):
                        gone = PresenceEvent("offline", name)
                        if table.apply(gone, wall_time()):
                            emit(gone)
                    stale = set()
                if event is None:
                    continue
                if event.initial:
                    stale.discard(event.id)
                if table.apply(event, wall_time()):
                    emit(event)


class _Screen:
    """Where changes go: JSON lines, plain lines, or a live rich table."""

    def __init__(self, args: argparse.Namespace, table: PresenceTable) -> None:
        self.args = args
        self.table = table
        self.rtt: float | None = None
        self.live = None
        if not args.json and sys.stdout.isatty():
            from rich.live import Live

            self.live = Live(auto_refresh=False, transient=False)
            self.live.update(self._render())

    def _render(self) -> Any:
        online = len(self.table.online_ids())
        rtt = "-" if self.rtt is None else f"{self.rtt * 1000:.1f} ms"
        server = self.args.server if isinstance(self.args.server, str) else " + ".join(
            self.args.server)
        title = (f"{self.args.prefix} on {server} — {online} online, "
                 f"watcher RTT {rtt}")
        width = self.live.console.width if self.live is not None else None
        return self.table.render(title, wall_time(), width=width)

    def emit(self, event: PresenceEvent) -> None:
        if self.args.json:
            print(event_json(event, wall_time()), flush=True)
        elif self.live is None:
            suffix = " (initial)" if event.initial else ""
            print(f"{event.event:7} {event.id}{suffix}", flush=True)
        self.refresh()

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._render(), refresh=True)

    @contextmanager
    def shown(self) -> Iterator[None]:
        """Show the live table (if any) for the ``with`` block."""
        if self.live is None:
            yield
            return
        self.live.start()
        try:
            yield
        finally:
            self.live.stop()


async def _measure_rtt(session: PresenceSession, prefix: str, screen: _Screen) -> None:
    while True:
        before = trio.current_time()
        await session.get(prefix)
        screen.rtt = trio.current_time() - before
        screen.refresh()
        await trio.sleep(RTT_INTERVAL)


async def _watch(args: argparse.Namespace) -> int:
    table = PresenceTable()
    screen = _Screen(args, table)
    resync = False
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as outer:
            outer.start_soon(cancel_on_signal, signals, outer.cancel_scope)
            with screen.shown():
                while True:
                    try:
                        async with connect_session(
                            args.server, session_timeout=args.session_timeout
                        ) as session, trio.open_nursery() as nursery:
                            nursery.start_soon(_measure_rtt, session, args.prefix, screen)
                            await follow(session, args.prefix, table, screen.emit,
                                         resync=resync)
                            nursery.cancel_scope.cancel()
                    except* (SessionExpired, ConnectionClosed, OSError) as group:
                        print(f"pulse watch: session lost ({group.exceptions[0]}); "
                              "starting a new one", file=sys.stderr)
                    resync = True
                    await trio.sleep(1.0)
    return 0


async def _watch_multi(args: argparse.Namespace) -> int:
    """Merge the views of several independent registries (:mod:`pulse.multiregistry`):
    online/offline lines as for one server, a warning on stderr when a registry is lost or
    comes back."""
    from pulse._core.merged_view import RegistryChange, RegistryState
    from pulse.multiregistry import connect_registries

    urls: list[str] = list(args.server)
    table = PresenceTable()
    screen = _Screen(args, table)
    lost: set[str] = set()

    def on_registry_change(change: RegistryChange) -> None:
        if change.state is RegistryState.LOST:
            lost.add(change.name)
            frozen = "; no registry reachable: the view is frozen until one is back" \
                if change.live == 0 else ""
            print(f"pulse watch: registry {change.name} lost ({change.reason}); "
                  f"{change.live} of {len(urls)} live{frozen}", file=sys.stderr, flush=True)
        elif change.name in lost:
            lost.discard(change.name)
            print(f"pulse watch: registry {change.name} is back; "
                  f"{change.live} of {len(urls)} live", file=sys.stderr, flush=True)
        screen.refresh()

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with connect_registries(urls, session_timeout=args.session_timeout) as regs, \
                regs.watch(args.prefix, on_registry_change=on_registry_change) as events, \
                trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_signal, signals, nursery.cancel_scope)
            with screen.shown():
                async for event in events:
                    if table.apply(event, wall_time()):
                        screen.emit(event)
    return 0


async def _watch_members(args: argparse.Namespace) -> int:
    """Join the gossip group as a member and show its member table until a signal."""
    from pulse._core.swim import MemberEventKind
    from pulse._driver.engine import current_engine
    from pulse.cli._members import MemberTable, member_json, member_line
    from pulse.plugins.gossip.driver import gossip_member, member_state_name
    from pulse.registry import parse_url

    endpoint = parse_url(args.server, default_port=7946)
    bind = bind_address(args.bind)
    name = args.name or f"pulse-watch-{os.getpid()}"
    table = MemberTable()
    live = None
    if not args.json and sys.stdout.isatty():
        from rich.live import Live

        live = Live(auto_refresh=False, transient=False)

    def refresh() -> None:
        if live is None:
            return
        counts = table.counts()
        summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        title = f"members of {args.server} — {summary}"
        live.update(table.render(title, wall_time(), name), refresh=True)

    def show(kind: str, row: Any, event: Any, initial: bool) -> None:
        if args.json:
            print(member_json(kind, row, event, initial=initial), flush=True)
        elif live is None:
            print(member_line(kind, row, event, initial=initial), flush=True)
        refresh()

    first_kind = {"alive": MemberEventKind.JOINED.value, "suspect": "suspect", "failed": "failed",
                  "left": "left"}
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with gossip_member(bind, name, join=list(endpoint.hosts),
                                 join_timeout=args.session_timeout) as gm, \
                trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_signal, signals, nursery.cancel_scope)
            if live is not None:
                live.start()

                async def age_rows() -> None:  # the SINCE column keeps counting
                    while True:
                        await trio.sleep(1.0)
                        refresh()

                nursery.start_soon(age_rows)
            try:
                snapshot_at = current_engine().now()
                for member in gm.all_members():
                    row = table.apply(member, wall_time())
                    if row is not None:
                        show(first_kind[member_state_name(member)], row, None, True)
                async for event in gm.events():
                    if event.at < snapshot_at:
                        continue  # from before the initial snapshot, which already has it
                    row = table.apply(event.member, wall_time())
                    if row is not None:
                        show(event.kind.value, row, event, False)
            finally:
                if live is not None:
                    live.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    """Watch until SIGTERM / Ctrl-C; exit status 0, 2 for bad options, 1 on other errors."""
    from pulse.cli.cmd_agent import check_servers, servers

    urls = servers(args)
    args.server = urls[0] if len(urls) == 1 else urls
    gossip = any(url.startswith("gossip://") for url in urls)
    if args.members or (args.prefix is None and gossip):
        if len(urls) > 1:
            print("pulse watch: --server is repeated only for presence registries, not for "
                  "the gossip member table", file=sys.stderr)
            return 2
        return _run_members(args)
    if args.prefix is None:
        args.prefix = PRESENCE_PREFIX
    try:
        check_servers(urls)
        if not args.prefix.startswith("/"):
            raise ValueError(f"--prefix must be an absolute path starting with '/', "
                             f"got {args.prefix!r}")
    except (ValueError, NoPlugin) as exc:
        print(f"pulse watch: {exc}", file=sys.stderr)
        return 2
    return _run_reported(_watch if len(urls) == 1 else _watch_multi, args)


def _run_reported(watch: Callable[[argparse.Namespace], Awaitable[int]],
                  args: argparse.Namespace) -> int:
    """Run ``watch`` under trio; an error a user can act on is one line on stderr (status 2
    for bad input, 1 otherwise), anything else propagates."""
    try:
        status: int = trio.run(watch, args)
    except BaseException as error:
        lone = reportable(error)
        if lone is None:
            raise
        print(f"pulse watch: {describe(lone, timeout=args.session_timeout)}", file=sys.stderr)
        return 2 if isinstance(lone, ValueError) else 1
    return status


def _run_members(args: argparse.Namespace) -> int:
    from pulse.registry import parse_url

    try:
        endpoint = parse_url(args.server, default_port=7946)
        if endpoint.scheme != "gossip":
            raise ValueError(f"--members needs a gossip://HOST:PORT server, not {endpoint.scheme}://")
        bind_address(args.bind)
    except ValueError as exc:
        print(f"pulse watch: {exc}", file=sys.stderr)
        return 2
    return _run_reported(_watch_members, args)


if __name__ == "__main__":  # pragma: no cover - `python -m pulse.cli.cmd_watch`
    from pulse.cli._standalone import standalone

    sys.exit(standalone(sys.modules[__name__], "watch"))
