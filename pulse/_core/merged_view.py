"""The merged presence view of several independent registries (pure, time as an argument).

Several registries (lease servers, ZooKeeper ensembles…) that know nothing of each other each
hold a registration per member; a watcher follows every one of them and shows one view.
This machine decides what that view says. Rules it keeps:

* Per registry, per name: *online* (with its data) or *offline*. A registry's view is built
  from its own watch: the initial snapshot, then each change.
* A registry is ``SYNCING`` (its watch just started and its snapshot is coming in), ``LIVE``
  (its view is current) or ``LOST`` (the watcher cannot reach it). A ``SYNCING`` registry
  becomes ``LIVE`` at its first non-initial event or ``settle`` seconds after its watch
  started, whichever comes first; until then its snapshot is collected but not counted.
* **A lost registry's view is unknown, not "offline".** It neither keeps a name online nor
  takes one offline: it is left out of the vote until it has synced again (its old view is
  dropped; the next snapshot replaces it).
* **Merged:** a name is online while *any* ``LIVE`` registry holds it, and offline when no
  ``LIVE`` registry does — so losing a registry takes offline exactly the names that only
  that registry held, and a name every live registry still holds sees no event at all.
* **No live registry at all:** the view is *frozen*, nothing is reported (the watcher knows
  nothing, and a storm of offline events caused by the watcher's own trouble would be
  false); the first registry to sync again brings the view up to date, reporting only real
  differences.
* Data is sticky: while a name stays online, its reported data changes only when no live
  registry holds that data any more (so registries that hold equal data cause no repeats).
* Events reported before every registry has synced or been lost once carry ``initial``.

Inputs: :meth:`watch_started`, :meth:`event`, :meth:`lost`, :meth:`handle_timer`. Outputs:
:class:`MemberChange` and :class:`RegistryChange` actions.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from pulse._core._checks import check_non_negative

__all__ = ["MemberChange", "MergedView", "RegistryChange", "RegistryState"]


class RegistryState(enum.Enum):
    """Where one registry's view stands for the watcher."""

    SYNCING = "syncing"
    LIVE = "live"
    LOST = "lost"


@dataclass(frozen=True, slots=True)
class MemberChange:
    """Report: ``id`` came online (with ``data``) or went offline in the merged view."""

    event: str  # "online" | "offline"
    id: str
    data: bytes = b""
    initial: bool = False


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """Report: registry ``registry`` (its index) became ``live`` or ``lost``; ``live`` counts
    the registries live afterwards (0: the merged view is frozen)."""

    registry: int
    name: str
    state: RegistryState
    reason: str
    live: int


Action = MemberChange | RegistryChange


class _Registry:
    __slots__ = ("name", "pending", "state", "sync_deadline", "view")

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = RegistryState.LOST
        self.view: dict[str, bytes] = {}
        self.pending: dict[str, bytes] = {}
        self.sync_deadline: float | None = None


class MergedView:
    """The merged online/offline view of ``registries`` (their names, e.g. URLs).

    Every registry starts ``LOST`` (nothing known) until its watch starts.
    """

    def __init__(self, registries: Sequence[str], *, settle: float = 0.5) -> None:
        if not registries:
            raise ValueError("need at least one registry")
        check_non_negative("settle", settle)  # finite, too
        self.settle = float(settle)
        self._registries = [_Registry(name) for name in registries]
        self._reported: dict[str, bytes] = {}  # the merged view as reported: id -> data
        self._decided: set[int] = set()  # registries synced or lost at least once

    # -- queries ---------------------------------------------------------------------------

    @property
    def online(self) -> dict[str, bytes]:
        """The merged view as reported so far: online id -> data."""
        return dict(self._reported)

    def state(self, registry: int) -> RegistryState:
        """The state of registry ``registry``."""
        return self._registries[registry].state

    @property
    def live(self) -> int:
        """How many registries are live."""
        return sum(1 for r in self._registries if r.state is RegistryState.LIVE)

    @property
    def initial(self) -> bool:
        """True until every registry has synced or been lost once."""
        return len(self._decided) < len(self._registries)

    def next_deadline(self) -> float | None:
        """The earliest end of a settle period (None: nothing is due)."""
        return min((r.sync_deadline for r in self._registries if r.sync_deadline is not None),
                   default=None)

    # -- inputs ----------------------------------------------------------------------------

    def watch_started(self, registry: int, now: float) -> list[Action]:
        """A fresh watch on ``registry`` started at ``now``: its snapshot is coming. (A
        registry that was counted until now is first given up, as by :meth:`lost`.)"""
        entry = self._registries[registry]
        actions: list[Action] = []
        if entry.state is not RegistryState.LOST:
            actions += self.lost(registry, "watch restarted")
        entry.state = RegistryState.SYNCING
        entry.view = {}
        entry.pending = {}
        entry.sync_deadline = now + self.settle
        if self.settle == 0:
            actions += self._synced(registry)
        return actions

    def event(self, registry: int, event: str, name: str, data: bytes = b"",
              initial: bool = False) -> list[Action]:
        """An online/offline event from ``registry``'s current watch."""
        if event not in ("online", "offline"):
            raise ValueError(f"event must be 'online' or 'offline', got {event!r}")
        entry = self._registries[registry]
        if entry.state is RegistryState.LOST:
            return []  # from a watch already given up: its view is rebuilt on the next sync
        actions: list[Action] = []
        if entry.state is RegistryState.SYNCING:
            if initial:
                if event == "online":
                    entry.pending[name] = data
                else:
                    entry.pending.pop(name, None)
                return []
            actions += self._synced(registry)  # the snapshot is complete
        if event == "online":
            entry.view[name] = data
        else:
            entry.view.pop(name, None)
        actions += self._merge({name})
        return actions

    def lost(self, registry: int, reason: str) -> list[Action]:
        """The watcher cannot reach ``registry`` (connect failed, connection or session
        lost): its view is unknown from now on."""
        entry = self._registries[registry]
        was = entry.state
        entry.state = RegistryState.LOST
        entry.sync_deadline = None
        names = set(entry.view)
        entry.view = {}
        entry.pending = {}
        actions: list[Action] = []
        if was is not RegistryState.LOST or registry not in self._decided:
            actions.append(RegistryChange(registry, entry.name, RegistryState.LOST, reason,
                                          self.live))
        actions += self._merge(names)
        self._decided.add(registry)  # after the merge: the deciding events still are initial
        return actions

    def handle_timer(self, now: float) -> list[Action]:
        """End every settle period due at ``now``."""
        actions: list[Action] = []
        for index, entry in enumerate(self._registries):
            if entry.sync_deadline is not None and entry.sync_deadline <= now:
                actions += self._synced(index)
        return actions

    # -- internals -------------------------------------------------------------------------

    def _synced(self, registry: int) -> list[Action]:
        entry = self._registries[registry]
        if entry.state is not RegistryState.SYNCING:
            return []
        was_frozen = self.live == 0
        entry.state = RegistryState.LIVE
        entry.sync_deadline = None
        entry.view, entry.pending = entry.pending, {}
        actions: list[Action] = [RegistryChange(registry, entry.name, RegistryState.LIVE,
                                                "synced", self.live)]
        names = set(entry.view)
        if was_frozen:
            names |= set(self._reported)  # thawing: everything may have changed
        actions += self._merge(names)
        self._decided.add(registry)  # after the merge: the deciding events still are initial
        return actions

    def _merge(self, names: set[str]) -> list[Action]:
        """Report the merged change of each of ``names`` (sorted; offline first)."""
        live = [r for r in self._registries if r.state is RegistryState.LIVE]
        if not live:
            return []  # frozen: nothing is known
        initial = self.initial
        offline: list[MemberChange] = []
        online: list[MemberChange] = []
        for name in sorted(names):
            held = [r.view[name] for r in live if name in r.view]
            reported = self._reported.get(name)
            if not held:
                if reported is not None:
                    del self._reported[name]
                    offline.append(MemberChange("offline", name, initial=initial))
            elif reported is None or reported not in held:
                self._reported[name] = held[0]
                online.append(MemberChange("online", name, held[0], initial=initial))
        return [*offline, *online]
