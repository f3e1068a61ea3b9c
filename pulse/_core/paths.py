"""One peer reached over several paths: dead only when every path is silent.

Linux-HA Heartbeat's model: two nodes heartbeat each other over a serial line *and*
Ethernet; one link failing is a warning, not a failover. Here a *path* is one way of
reaching the same peer (a URL, or the same URL from another local address); the driver runs
an ordinary heartbeat over each and tells this machine what it hears.

The rules this machine keeps:

* A path starts ``PENDING`` (not heard yet), becomes ``UP`` when heard and ``DOWN`` when it
  has been silent for ``timeout`` seconds (a pending path: since the watch began) or when the
  driver reports its connection lost. Every change is an action: :class:`PathUp`,
  :class:`PathDown`.
* The peer is alive while any path is ``UP`` or still ``PENDING`` within its first
  ``timeout``; it is declared dead (:class:`PeerDead`, once) only when every path is
  ``DOWN``. So the peer is dead at the latest ``timeout`` seconds after the last heartbeat
  heard on any path. A path heard again after that revives it (:class:`PeerAlive`).
* Time is an argument. ``next_deadline()`` is the earliest moment a path may go silent;
  ``handle_timer(now)`` acts on it. A call more than ``pause_after`` seconds late means this
  process was stopped, not that the paths were silent: it reports :class:`LocalPause`, gives
  every live path a fresh ``timeout`` and withholds the verdicts.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from pulse._core._checks import check_positive
from pulse.actions import LocalPause, PathAction, PathDown, PathUp, PeerAlive, PeerDead

__all__ = ["PathState", "PathView", "PeerVerdict", "RedundantPeer"]


class PathState(enum.Enum):
    """Where one path stands."""

    PENDING = "pending"
    UP = "up"
    DOWN = "down"


class PeerVerdict(enum.Enum):
    """Where the peer stands, judged over all of its paths."""

    PENDING = "pending"
    ALIVE = "alive"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class PathView:
    """A snapshot of one path: its name, state, and when it was last heard (None: never)."""

    path: str
    state: PathState
    last_heard: float | None
    since: float


class _Path:
    __slots__ = ("last_heard", "name", "since", "state")

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.state = PathState.PENDING
        self.last_heard: float | None = None
        self.since = now  # when the current state began (the grace start while pending)

    def silent_since(self) -> float:
        return self.since if self.last_heard is None else max(self.last_heard, self.since)


class RedundantPeer:
    """The liveness of one peer over several paths (see the module docstring)."""

    __slots__ = ("_index", "_paths", "_started", "pause_after", "timeout", "verdict")

    def __init__(
        self, paths: Sequence[str], timeout: float, now: float, *,
        pause_after: float | None = None,
    ) -> None:
        if isinstance(paths, str) or not paths:
            raise ValueError("paths must be a non-empty sequence of path names")
        if len(set(paths)) != len(paths):
            raise ValueError(f"paths must be distinct, got {list(paths)!r}")
        check_positive("timeout", timeout)
        if pause_after is not None:
            check_positive("pause_after", pause_after)
        self.timeout = float(timeout)
        self.pause_after = pause_after
        self._paths = [_Path(str(name), now) for name in paths]
        self._index = {path.name: path for path in self._paths}
        self._started = now
        self.verdict = PeerVerdict.PENDING

    # -- queries ---------------------------------------------------------------------------

    @property
    def paths(self) -> tuple[PathView, ...]:
        """Every path, in the order given."""
        return tuple(PathView(p.name, p.state, p.last_heard, p.since) for p in self._paths)

    def state(self, path: str) -> PathState:
        """The state of ``path``."""
        return self._get(path).state

    def last_heard(self) -> float | None:
        """The latest heartbeat heard on any path (None: none yet)."""
        heard = [p.last_heard for p in self._paths if p.last_heard is not None]
        return max(heard) if heard else None

    def next_deadline(self) -> float | None:
        """The earliest moment a path still up (or pending) goes silent; None when all are
        down (nothing can happen until a path is heard)."""
        deadlines = [p.silent_since() + self.timeout for p in self._paths
                     if p.state is not PathState.DOWN]
        return min(deadlines) if deadlines else None

    # -- inputs ----------------------------------------------------------------------------

    def heard(self, path: str, now: float) -> list[PathAction]:
        """A heartbeat was answered (or any byte arrived) on ``path`` at ``now``."""
        entry = self._get(path)
        # Dead: every path is down, the last of them since the death.
        dead_since = (max(p.since for p in self._paths) if self.verdict is PeerVerdict.DEAD
                      else None)
        entry.last_heard = now if entry.last_heard is None else max(entry.last_heard, now)
        actions: list[PathAction] = []
        if entry.state is not PathState.UP:
            first = entry.state is PathState.PENDING
            actions.append(PathUp(entry.name, max(0.0, now - entry.since), first))
            entry.state = PathState.UP
            entry.since = now
        if dead_since is not None:
            actions.append(PeerAlive(after=max(0.0, now - dead_since)))
        self.verdict = PeerVerdict.ALIVE
        return actions

    def lost(self, path: str, now: float, reason: str) -> list[PathAction]:
        """The connection of ``path`` failed or closed at ``now`` (the driver reconnects it);
        the path is down at once."""
        entry = self._get(path)
        if entry.state is PathState.DOWN:
            return []
        return self._down(entry, now, reason)

    def handle_timer(self, now: float) -> list[PathAction]:
        """Mark down every path silent for ``timeout`` at ``now``; declare the peer dead when
        that leaves none up."""
        due = self.next_deadline()
        if due is None or now < due:
            return []
        late = now - due
        if self.pause_after is not None and late > self.pause_after:
            # This process did not run; the paths' silence is ours, not the peer's.
            for entry in self._paths:
                if entry.state is not PathState.DOWN:
                    entry.since = now  # silence is counted from here again
            return [LocalPause(late_by=late)]
        actions: list[PathAction] = []
        for entry in self._paths:
            if entry.state is PathState.DOWN:
                continue
            silent = now - entry.silent_since()
            if silent >= self.timeout:
                never = entry.last_heard is None
                reason = (f"never heard within {self.timeout:g}s" if never
                          else f"silent for {self.timeout:g}s")
                actions.extend(self._down(entry, now, reason))
        return actions

    # -- internals -------------------------------------------------------------------------

    def _get(self, path: str) -> _Path:
        entry = self._index.get(path)
        if entry is None:
            raise ValueError(f"unknown path {path!r} (known: {', '.join(self._index)})")
        return entry

    def _down(self, entry: _Path, now: float, reason: str) -> list[PathAction]:
        silent_for = max(0.0, now - entry.silent_since())
        entry.state = PathState.DOWN
        entry.since = now
        actions: list[PathAction] = [PathDown(entry.name, reason, silent_for)]
        if self.verdict is not PeerVerdict.DEAD and all(
            p.state is PathState.DOWN for p in self._paths
        ):
            heard = self.last_heard()
            silent = now - (self._started if heard is None else heard)
            count = len(self._paths)
            what = "the only path is" if count == 1 else f"all {count} paths are"
            actions.append(PeerDead(reason=f"{what} down ({reason} on {entry.name})",
                                    missed=0, silent_for=max(0.0, silent)))
            self.verdict = PeerVerdict.DEAD
        return actions

    def __repr__(self) -> str:
        states = ", ".join(f"{p.name}={p.state.value}" for p in self._paths)
        return f"RedundantPeer({self.verdict.value}; {states})"
