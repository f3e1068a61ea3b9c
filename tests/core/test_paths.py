"""Redundant paths to one peer: per-path states and the all-paths-silent verdict, on explicit times."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse._core.paths import PathState, PeerVerdict, RedundantPeer
from pulse.actions import LocalPause, PathDown, PathUp, PeerAlive, PeerDead

A = "tcp://10.0.1.2:7000"
B = "tcp://10.0.2.2:7000"


def both_up(now: float = 0.0) -> RedundantPeer:
    peer = RedundantPeer([A, B], timeout=3.0, now=now)
    peer.heard(A, now + 0.25)
    peer.heard(B, now + 0.25)
    return peer


def test_first_heartbeat_on_each_path_reports_it_up() -> None:
    """A path heard for the first time yields PathUp(first=True); the peer becomes alive."""
    peer = RedundantPeer([A, B], timeout=3.0, now=10.0)
    assert peer.verdict is PeerVerdict.PENDING
    assert peer.heard(A, 10.5) == [PathUp(A, 0.5, True)]
    assert peer.verdict is PeerVerdict.ALIVE
    assert peer.heard(A, 11.0) == []
    assert peer.heard(B, 11.25) == [PathUp(B, 1.25, True)]


def test_one_path_silent_is_a_warning_not_a_death() -> None:
    """One path silent for the timeout goes down while the other keeps the peer alive."""
    peer = both_up()
    for t in (1.0, 2.0, 3.0, 4.0):
        peer.heard(B, t)
    assert peer.next_deadline() == 3.25   # A, last heard at 0.25
    assert peer.handle_timer(3.0) == []
    assert peer.handle_timer(3.25) == [PathDown(A, "silent for 3s", 3.0)]
    assert peer.state(A) is PathState.DOWN
    assert peer.verdict is PeerVerdict.ALIVE
    assert peer.next_deadline() == 7.0                  # only B's deadline is left


def test_dead_only_when_every_path_is_down() -> None:
    """The peer is declared dead once, when the last path goes silent: timeout after the
    last heartbeat heard on any path."""
    peer = both_up()
    peer.heard(B, 2.0)
    assert [type(a) for a in peer.handle_timer(3.25)] == [PathDown]
    actions = peer.handle_timer(5.0)
    assert actions[0] == PathDown(B, "silent for 3s", 3.0)
    dead = actions[1]
    assert isinstance(dead, PeerDead)
    assert dead.silent_for == 3.0
    assert "all 2 paths are down" in dead.reason
    assert peer.verdict is PeerVerdict.DEAD
    assert peer.next_deadline() is None
    assert peer.handle_timer(100.0) == []               # declared once


def test_both_silent_together_go_down_in_one_call() -> None:
    """Two paths silent since the same moment both go down, then the peer dies, in order."""
    peer = both_up()
    actions = peer.handle_timer(3.25)
    assert [type(a) for a in actions] == [PathDown, PathDown, PeerDead]
    assert [a.path for a in actions[:2] if isinstance(a, PathDown)] == [A, B]


def test_a_lost_connection_takes_its_path_down_at_once() -> None:
    """The driver reporting a path's connection lost downs it before any timeout."""
    peer = both_up()
    assert peer.lost(A, 1.0, "connection reset") == [PathDown(A, "connection reset", 0.75)]
    assert peer.lost(A, 1.5, "refused") == []           # already down
    actions = peer.lost(B, 1.75, "refused")
    assert actions[0] == PathDown(B, "refused", 1.5)
    assert isinstance(actions[1], PeerDead)
    assert actions[1].silent_for == 1.5


def test_a_path_back_reports_up_and_revives_a_dead_peer() -> None:
    """After the death, a path heard again yields PathUp(first=False) and PeerAlive."""
    peer = both_up()
    peer.handle_timer(3.25)
    actions = peer.heard(B, 8.25)
    assert actions == [PathUp(B, 5.0, False), PeerAlive(after=5.0)]
    assert peer.verdict is PeerVerdict.ALIVE
    assert peer.state(A) is PathState.DOWN
    assert peer.next_deadline() == 11.25


def test_a_path_back_while_the_peer_lives_reports_only_the_path() -> None:
    """A path recovering while another is up is a PathUp, never a PeerAlive."""
    peer = both_up()
    peer.lost(A, 1.0, "reset")
    assert peer.heard(A, 2.0) == [PathUp(A, 1.0, False)]


def test_never_heard_paths_die_after_the_grace() -> None:
    """Paths never heard go down timeout after the watch began; the peer is then dead."""
    peer = RedundantPeer([A, B], timeout=2.0, now=5.0)
    assert peer.next_deadline() == 7.0
    actions = peer.handle_timer(7.0)
    assert actions[:2] == [PathDown(A, "never heard within 2s", 2.0),
                           PathDown(B, "never heard within 2s", 2.0)]
    assert isinstance(actions[2], PeerDead)
    assert actions[2].silent_for == 2.0


def test_a_pending_path_keeps_the_peer_undecided() -> None:
    """One path refused at once does not kill a peer whose other path is still connecting."""
    peer = RedundantPeer([A, B], timeout=2.0, now=0.0)
    assert peer.lost(A, 0.25, "refused") == [PathDown(A, "refused", 0.25)]
    assert peer.verdict is PeerVerdict.PENDING
    assert peer.heard(B, 0.5) == [PathUp(B, 0.5, True)]


def test_a_late_wakeup_is_a_local_pause_not_a_death() -> None:
    """Woken far past the deadline (process stopped) it reports LocalPause and restarts the
    silence count instead of declaring paths down."""
    peer = RedundantPeer([A, B], timeout=3.0, now=0.0, pause_after=1.0)
    peer.heard(A, 0.0)
    peer.heard(B, 0.0)
    assert peer.handle_timer(10.0) == [LocalPause(late_by=7.0)]
    assert peer.verdict is PeerVerdict.ALIVE
    assert peer.next_deadline() == 13.0
    actions = peer.handle_timer(13.0)
    assert actions[:2] == [PathDown(A, "silent for 3s", 3.0), PathDown(B, "silent for 3s", 3.0)]
    assert isinstance(actions[2], PeerDead)


def test_single_path_behaves_like_one_heartbeat() -> None:
    """With one path, its silence is the peer's death."""
    peer = RedundantPeer([A], timeout=1.0, now=0.0)
    peer.heard(A, 0.5)
    actions = peer.handle_timer(1.5)
    assert actions[0] == PathDown(A, "silent for 1s", 1.0)
    assert isinstance(actions[1], PeerDead)
    assert "the only path is down" in actions[1].reason


def test_views_report_every_path() -> None:
    """paths gives a snapshot per path in the given order."""
    peer = both_up()
    peer.lost(B, 1.0, "reset")
    views = peer.paths
    assert [(v.path, v.state, v.last_heard) for v in views] == [
        (A, PathState.UP, 0.25), (B, PathState.DOWN, 0.25)]


@pytest.mark.parametrize(
    ("paths", "timeout"),
    [([], 1.0), ("tcp://x:1", 1.0), ([A, A], 1.0), ([A], 0.0), ([A], float("inf"))],
)
def test_bad_arguments_are_refused(paths: list[str], timeout: float) -> None:
    """No paths, a bare string, duplicates, and a non-positive or infinite timeout raise."""
    with pytest.raises(ValueError):
        RedundantPeer(paths, timeout=timeout, now=0.0)


def test_unknown_path_is_refused() -> None:
    """Reporting a path the machine does not know raises ValueError naming it."""
    peer = both_up()
    with pytest.raises(ValueError, match="unknown path"):
        peer.heard("tcp://elsewhere:1", 1.0)


@given(st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.floats(0.01, 2.0)), max_size=40))
def test_dead_exactly_when_all_paths_are_down(steps: list[tuple[int, float]]) -> None:
    """Under any schedule of heartbeats and timer calls, the peer is dead iff every path is
    down, and never dead while a path was heard within the timeout."""
    names = ["p0", "p1", "p2"]
    peer = RedundantPeer(names, timeout=1.0, now=0.0)
    now = 0.0
    for which, step in steps:
        now += step
        peer.handle_timer(now)
        if which < 2:
            peer.heard(names[which], now)        # p2 is never heard
        all_down = all(peer.state(n) is PathState.DOWN for n in names)
        assert (peer.verdict is PeerVerdict.DEAD) == all_down
        heard = peer.last_heard()
        if heard is not None and now - heard < 1.0:
            assert peer.verdict is PeerVerdict.ALIVE
