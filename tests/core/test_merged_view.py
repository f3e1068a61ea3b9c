"""The merged view of independent registries: explicit inputs, explicit times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse._core.merged_view import MemberChange, MergedView, RegistryChange, RegistryState

A, B, C = 0, 1, 2


def members(actions: list[MemberChange | RegistryChange]) -> list[tuple[str, str]]:
    return [(a.event, a.id) for a in actions if isinstance(a, MemberChange)]


def registries(actions: list[MemberChange | RegistryChange]) -> list[tuple[int, str]]:
    return [(a.registry, a.state.value) for a in actions if isinstance(a, RegistryChange)]


def synced(view: MergedView, registry: int, snapshot: dict[str, bytes], now: float
           ) -> list[MemberChange | RegistryChange]:
    """Start a watch on ``registry``, feed its snapshot, let the settle period end."""
    out = view.watch_started(registry, now)
    for name, data in snapshot.items():
        out += view.event(registry, "online", name, data, initial=True)
    out += view.handle_timer(now + view.settle)
    return out


def two_live(snapshot_a: dict[str, bytes], snapshot_b: dict[str, bytes]) -> MergedView:
    view = MergedView(["a", "b"])
    synced(view, A, snapshot_a, 0.0)
    synced(view, B, snapshot_b, 0.0)
    return view


def test_snapshot_is_counted_only_after_the_settle_period() -> None:
    """Initial events of a syncing registry are held until settle seconds after the watch
    started; then they are reported as initial onlines, sorted."""
    view = MergedView(["a", "b"], settle=0.5)
    assert view.watch_started(A, 10.0) == []
    assert view.event(A, "online", "y", b"2", initial=True) == []
    assert view.event(A, "online", "x", b"1", initial=True) == []
    assert view.next_deadline() == 10.5
    assert view.handle_timer(10.49) == []
    out = view.handle_timer(10.5)
    assert registries(out) == [(A, "live")]
    assert [a for a in out if isinstance(a, MemberChange)] == [
        MemberChange("online", "x", b"1", initial=True),
        MemberChange("online", "y", b"2", initial=True)]
    assert view.next_deadline() is None


def test_a_change_event_ends_the_sync_early() -> None:
    """The first non-initial event completes the snapshot at once (no wait for settle)."""
    view = MergedView(["a"], settle=5.0)
    view.watch_started(A, 0.0)
    view.event(A, "online", "x", b"1", initial=True)
    out = view.event(A, "online", "y", b"2")
    assert registries(out) == [(A, "live")]
    assert members(out) == [("online", "x"), ("online", "y")]
    assert view.next_deadline() is None


def test_online_while_any_live_registry_holds_it() -> None:
    """A name held by two registries stays online when one of them drops it, and goes
    offline when the second one drops it too."""
    view = two_live({"x": b"d"}, {"x": b"d"})
    assert view.online == {"x": b"d"}
    assert view.event(A, "offline", "x") == []
    out = view.event(B, "offline", "x")
    assert members(out) == [("offline", "x")]
    assert view.online == {}


def test_losing_a_registry_is_silent_for_names_the_others_hold() -> None:
    """A lost registry is reported, but a name every live registry still holds sees no
    member event at all."""
    view = two_live({"x": b"d"}, {"x": b"d"})
    out = view.lost(A, "connection lost")
    assert members(out) == []
    assert out == [RegistryChange(A, "a", RegistryState.LOST, "connection lost", 1)]
    assert view.online == {"x": b"d"}


def test_a_lost_registry_does_not_keep_a_name_online() -> None:
    """After registry a is lost, the surviving registry's offline takes the name offline
    (a lost registry's last word does not count)."""
    view = two_live({"x": b"d"}, {"x": b"d"})
    view.lost(A, "connection lost")
    assert members(view.event(B, "offline", "x")) == [("offline", "x")]


def test_names_only_the_lost_registry_held_go_offline() -> None:
    """Losing a registry takes offline exactly the names no live registry holds."""
    view = two_live({"x": b"d", "only-a": b"e"}, {"x": b"d"})
    out = view.lost(A, "gone")
    assert members(out) == [("offline", "only-a")]
    assert view.online == {"x": b"d"}


def test_all_registries_lost_freezes_the_view() -> None:
    """With no live registry nothing is reported: the view stays as it was (unknown, not
    offline)."""
    view = two_live({"x": b"d"}, {"x": b"d", "y": b"f"})
    assert members(view.lost(A, "gone")) == []
    out = view.lost(B, "gone")
    assert members(out) == []
    assert registries(out) == [(B, "lost")]
    assert out[-1].live == 0  # type: ignore[union-attr]
    assert view.online == {"x": b"d", "y": b"f"}


def test_thawing_reports_only_real_differences() -> None:
    """The first registry to sync after a freeze reports what changed meanwhile: members
    gone offline, new members online, the unchanged ones nothing."""
    view = two_live({"x": b"d"}, {"x": b"d", "y": b"f"})
    view.lost(A, "gone")
    view.lost(B, "gone")
    out = synced(view, B, {"x": b"d", "z": b"g"}, 100.0)
    assert members(out) == [("offline", "y"), ("online", "z")]
    assert view.online == {"x": b"d", "z": b"g"}


def test_a_recovering_registry_is_not_counted_while_syncing() -> None:
    """A registry that comes back cannot turn a name online before its snapshot is in, and
    its stale pre-loss view is gone."""
    view = two_live({"x": b"d"}, {"x": b"d"})
    view.lost(A, "gone")
    assert members(view.event(B, "offline", "x")) == [("offline", "x")]
    assert view.watch_started(A, 50.0) == []
    assert view.online == {}
    out = view.handle_timer(50.5)  # a's fresh snapshot is empty
    assert members(out) == []
    assert view.online == {}


def test_events_from_a_lost_registry_are_ignored() -> None:
    """An event from a watch already given up changes nothing."""
    view = two_live({}, {})
    view.lost(A, "gone")
    assert view.event(A, "online", "x", b"1") == []
    assert view.online == {}


def test_data_is_sticky_while_some_registry_holds_it() -> None:
    """Different data per registry: the first live one's is reported; losing the other
    reports nothing, losing the one whose data was reported reports the other's once."""
    view = two_live({"x": b"from-a"}, {"x": b"from-b"})
    assert view.online == {"x": b"from-a"}
    assert members(view.lost(B, "gone")) == []
    synced(view, B, {"x": b"from-b"}, 10.0)
    out = view.lost(A, "gone")
    assert [a for a in out if isinstance(a, MemberChange)] == [
        MemberChange("online", "x", b"from-b")]


def test_reregistration_with_new_data_is_reported() -> None:
    """An online with new data from the only registry that holds the name is reported."""
    view = two_live({"x": b"1"}, {})
    out = view.event(A, "online", "x", b"2")
    assert [a for a in out if isinstance(a, MemberChange)] == [MemberChange("online", "x", b"2")]


def test_initial_flag_until_every_registry_decided() -> None:
    """Events are initial until every registry synced or was lost once; later ones not."""
    view = MergedView(["a", "b"])
    out = synced(view, A, {"x": b"1"}, 0.0)
    assert [a.initial for a in out if isinstance(a, MemberChange)] == [True]
    assert view.initial
    view.lost(B, "connection refused")
    assert not view.initial
    out = view.event(A, "online", "y", b"2")
    assert [a.initial for a in out if isinstance(a, MemberChange)] == [False]


def test_repeated_failures_report_lost_once() -> None:
    """A registry that stays unreachable is reported lost once, not on every retry."""
    view = MergedView(["a", "b"])
    assert registries(view.lost(A, "refused")) == [(A, "lost")]
    assert view.lost(A, "refused") == []
    assert view.lost(A, "refused") == []


def test_lost_while_syncing_drops_the_partial_snapshot() -> None:
    """A registry lost in the middle of its sync counts for nothing."""
    view = two_live({}, {})
    view.watch_started(A, 0.0)
    view.lost(A, "cut")
    view.watch_started(A, 1.0)
    view.event(A, "online", "x", b"1", initial=True)
    view.lost(A, "cut again")
    assert view.handle_timer(100.0) == []
    assert view.online == {}


def test_zero_settle_syncs_at_once() -> None:
    """settle=0 makes a fresh watch live immediately (for backends with no snapshot)."""
    view = MergedView(["a"], settle=0.0)
    assert registries(view.watch_started(A, 0.0)) == [(A, "live")]


def test_bad_arguments_are_refused() -> None:
    """No registries, a negative or infinite settle, or an unknown event kind: ValueError."""
    with pytest.raises(ValueError):
        MergedView([])
    with pytest.raises(ValueError):
        MergedView(["a"], settle=-1.0)
    with pytest.raises(ValueError):
        MergedView(["a"], settle=float("inf"))
    view = MergedView(["a"])
    with pytest.raises(ValueError):
        view.event(A, "maybe", "x")


steps = st.lists(
    st.tuples(st.sampled_from(["on", "off", "lost", "sync"]), st.integers(0, 2),
              st.sampled_from(["x", "y"])),
    max_size=60)


@given(steps)
def test_merged_view_matches_the_rule(script: list[tuple[str, int, str]]) -> None:
    """After any sequence of inputs, the reported view is exactly the union of the live
    registries' views (or unchanged while none is live), and every report is a change."""
    view = MergedView(["a", "b", "c"], settle=0.0)
    model: dict[int, set[str] | None] = {0: None, 1: None, 2: None}  # None: not live
    shown: set[str] = set()
    now = 0.0
    for kind, registry, name in script:
        now += 1.0
        if kind == "on":
            out = view.event(registry, "online", name, b"d")
            if model[registry] is not None:
                model[registry].add(name)  # type: ignore[union-attr]
        elif kind == "off":
            out = view.event(registry, "offline", name)
            if model[registry] is not None:
                model[registry].discard(name)  # type: ignore[union-attr]
        elif kind == "lost":
            out = view.lost(registry, "gone")
            model[registry] = None
        else:
            out = view.watch_started(registry, now)
            model[registry] = set()
        for action in out:
            if isinstance(action, MemberChange):
                if action.event == "online":
                    assert action.id not in shown
                    shown.add(action.id)
                else:
                    assert action.id in shown
                    shown.discard(action.id)
        live = [names for names in model.values() if names is not None]
        if live:
            assert shown == set().union(*live)
        assert set(view.online) == shown


def test_restarting_a_counted_registry_drops_its_old_view() -> None:
    """A new watch on a live registry first gives the old view up: names only it held go
    offline, and its new snapshot decides again."""
    view = two_live({"x": b"d"}, {})
    out = view.watch_started(A, 5.0)
    assert registries(out) == [(A, "lost")]
    assert members(out) == [("offline", "x")]
    assert members(view.handle_timer(5.5)) == []


timed_steps = st.lists(
    st.tuples(st.sampled_from(["start", "init", "on", "off", "lost", "wait"]),
              st.integers(0, 1), st.sampled_from(["x", "y", "z"])),
    max_size=80)


@given(timed_steps)
def test_merged_view_with_settle_periods(script: list[tuple[str, int, str]]) -> None:
    """With settle periods, snapshots and lost registries in any order: while some registry
    is live the view is the union of the live ones (a syncing one counts only once its
    snapshot is complete); while none is, nothing is reported; no report repeats a state."""
    view = MergedView(["a", "b"], settle=1.0)
    live: dict[int, set[str]] = {}
    syncing: dict[int, tuple[float, set[str]]] = {}
    shown: set[str] = set()
    now = 0.0

    def complete(registry: int) -> None:
        live[registry] = syncing.pop(registry)[1]

    for kind, registry, name in script:
        if kind == "wait":
            now += 0.6
            for index, (deadline, _) in list(syncing.items()):
                if deadline <= now:
                    complete(index)
            out = view.handle_timer(now)
        elif kind == "start":
            live.pop(registry, None)
            syncing[registry] = (now + 1.0, set())
            out = view.watch_started(registry, now)
        elif kind == "init":
            out = view.event(registry, "online", name, b"d", initial=True)
            if registry in syncing:
                syncing[registry][1].add(name)
            elif registry in live:
                live[registry].add(name)
        elif kind in ("on", "off"):
            out = view.event(registry, "online" if kind == "on" else "offline", name, b"d")
            if registry in syncing:
                complete(registry)
            if registry in live:
                (live[registry].add if kind == "on" else live[registry].discard)(name)
        else:
            out = view.lost(registry, "gone")
            live.pop(registry, None)
            syncing.pop(registry, None)
        for action in out:
            if isinstance(action, MemberChange):
                assert (action.id in shown) == (action.event == "offline")
                (shown.add if action.event == "online" else shown.discard)(action.id)
        if live:
            assert shown == set().union(*live.values())
        assert set(view.online) == shown
        assert view.live == len(live)
