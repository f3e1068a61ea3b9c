"""`pulse watch`'s follow loop against a scripted session, in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio
import trio.testing

from pulse.cli._presence import PresenceTable
from pulse.cli.cmd_watch import follow
from pulse.presence import PresenceEvent


class Scripted:
    """Just enough of a PresenceSession: watch() replays (delay, event) pairs, then ends."""

    def __init__(self, script: list[tuple[float, PresenceEvent]]) -> None:
        self.script = script

    async def _events(self) -> AsyncIterator[PresenceEvent]:
        for delay, event in self.script:
            await trio.sleep(delay)
            yield event

    def watch(self, prefix: str) -> AsyncIterator[PresenceEvent]:
        return self._events()


async def run(table: PresenceTable, script: list[tuple[float, PresenceEvent]],
              resync: bool) -> list[tuple[str, str]]:
    emitted: list[tuple[str, str]] = []
    await follow(Scripted(script), "/p", table,  # type: ignore[arg-type]
                 lambda e: emitted.append((e.event, e.id)), resync=resync)
    return emitted


async def test_first_watch_reports_everything(autojump_clock: trio.testing.MockClock) -> None:
    """Without resync every event is emitted as it comes."""
    table = PresenceTable()
    emitted = await run(table, [(0, PresenceEvent("online", "a", initial=True)),
                                (1, PresenceEvent("online", "b")),
                                (1, PresenceEvent("offline", "a"))], resync=False)
    assert emitted == [("online", "a"), ("online", "b"), ("offline", "a")]


async def test_resync_reports_only_differences(autojump_clock: trio.testing.MockClock) -> None:
    """After the watcher's own session was replaced: members still present are not repeated,
    members missing from the new snapshot go offline after the snapshot (half a second of
    quiet), newcomers come online."""
    table = PresenceTable()
    for name in ("a", "b", "c"):
        table.apply(PresenceEvent("online", name, b""), 0.0)
    emitted = await run(table, [(0, PresenceEvent("online", "a", b"", initial=True)),
                                (0, PresenceEvent("online", "d", b"", initial=True)),
                                (5, PresenceEvent("online", "e", b""))], resync=True)
    assert emitted == [("online", "d"), ("offline", "b"), ("offline", "c"), ("online", "e")]
    assert table.online_ids() == {"a", "d", "e"}


async def test_resync_ends_at_the_first_live_event(autojump_clock: trio.testing.MockClock) -> None:
    """A non-initial event also marks the end of the snapshot."""
    table = PresenceTable()
    table.apply(PresenceEvent("online", "a", b""), 0.0)
    emitted = await run(table, [(0, PresenceEvent("online", "x", b""))], resync=True)
    assert emitted == [("offline", "a"), ("online", "x")]
