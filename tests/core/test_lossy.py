"""The lossy-link profile on explicit times: kernel facts passed in, verdicts withheld or not."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulse._core.liveness import Liveness, LivenessState
from pulse._core.lossy import MIN_RECHECK, LossyLink, LossyLinkJudge, TcpProgress
from pulse._core.policy import PROFILES, HeartbeatPolicy, negotiate, with_profile
from pulse.actions import PeerDead

Facts = Callable[[float], TcpProgress | None]

LOSSY = HeartbeatPolicy(interval=1.0, timeout=5.0, lossy=LossyLink())


def kernel(last_segment: Callable[[float], float], retrans: Callable[[float], int]) -> Facts:
    """Facts as TCP_INFO would give them: the peer's last segment and the retransmit count."""
    def sample(now: float) -> TcpProgress:
        return TcpProgress(last_ack_recv=max(0.0, now - last_segment(now)),
                           last_data_recv=now, total_retrans=retrans(now))
    return sample


def every_second_until(end: float) -> Callable[[float], float]:
    """The peer's segments arrive on every whole second up to ``end``, then never again."""
    return lambda now: math.floor(min(now, end))


def growing(now: float) -> int:
    """A path that retransmits: one more retransmission each second."""
    return int(now)


def run(machine: Liveness, facts: Facts, until: float,
        data_at: Iterable[float] = ()) -> float | None:
    """Drive the machine as a driver would (sample, then handle_timer, at each deadline;
    data at the given times); return when the peer was declared dead, or None."""
    arrivals = sorted(data_at)
    for _ in range(10_000):
        deadline = machine.next_deadline()
        quiet = deadline is None or deadline > until
        if quiet and (not arrivals or arrivals[0] > until):
            return None
        if arrivals and (deadline is None or arrivals[0] <= deadline):
            machine.data_received(arrivals.pop(0))
            continue
        assert deadline is not None
        machine.transport_progress(deadline, facts(deadline))
        if any(isinstance(a, PeerDead) for a in machine.handle_timer(deadline)):
            return deadline
    raise AssertionError("the machine never settled")


def test_silence_on_a_lossy_path_that_still_delivers_segments_is_not_a_death() -> None:
    """12 s without data while the peer's segments arrive every second over a path that
    retransmits: no verdict, and the data that finally arrives finds the peer alive."""
    machine = Liveness(LOSSY, now=0.0)
    facts = kernel(every_second_until(math.inf), growing)
    assert run(machine, facts, until=12.5, data_at=[12.0]) is None
    assert machine.state is LivenessState.ALIVE
    assert machine.lossy is not None and machine.lossy.withheld == 1


def test_a_cut_is_declared_when_the_peers_last_segment_leaves_the_ack_window() -> None:
    """Last data at 0, last segment at 3, then nothing: dead at 3 + 5 = 8 exactly."""
    machine = Liveness(LOSSY, now=0.0)
    assert run(machine, kernel(every_second_until(3.0), growing), until=60.0) == 8.0


def test_a_cut_long_after_the_timeout_is_declared_within_the_ack_window() -> None:
    """Silent since 0, segments until 14 (verdict withheld all along): dead at 19."""
    machine = Liveness(LOSSY, now=0.0)
    assert run(machine, kernel(every_second_until(14.0), growing), until=60.0) == 19.0


def test_a_peer_that_acknowledges_but_never_answers_dies_at_the_ceiling() -> None:
    """Segments keep coming over a lossy path, data never does: dead at 6 x timeout = 30."""
    machine = Liveness(LOSSY, now=0.0)
    assert run(machine, kernel(every_second_until(math.inf), growing), until=100.0) == 30.0


def test_a_clean_path_gets_the_ordinary_timeout() -> None:
    """The peer's kernel acknowledges but the connection never retransmitted: the silence is
    the peer process's, so the verdict comes at the timeout as without the profile."""
    machine = Liveness(LOSSY, now=0.0)
    assert run(machine, kernel(every_second_until(math.inf), lambda _now: 0), until=60.0) == 5.0


def test_losses_long_ago_do_not_extend_a_verdict() -> None:
    """Retransmissions that stopped more than max_silence ago say nothing about now."""
    machine = Liveness(LOSSY, now=0.0)
    facts = kernel(every_second_until(math.inf), lambda now: min(int(now), 3))
    # A healthy peer until 39 (data every 1.5 s, so the timer samples in between), then
    # silence: the last retransmission was seen at 4, long before the verdict at 44.
    data = [1.5 * k for k in range(1, 27)]
    assert run(machine, facts, until=100.0, data_at=data) == 44.0


def test_losses_before_the_first_sample_count_as_recent() -> None:
    """A first sample that already shows retransmissions (a busy link never woke the timer)
    counts as a lossy path now: the verdict waits, bounded by the ceiling."""
    machine = Liveness(LOSSY, now=0.0)
    facts = kernel(every_second_until(math.inf), lambda _now: 3)
    data = [0.5 * k for k in range(1, 79)]  # busy until 39: the timer never fires before
    assert run(machine, facts, until=100.0, data_at=data) == 69.0


def test_no_kernel_facts_means_the_ordinary_timeout() -> None:
    """A transport that cannot say (None) leaves the verdict to the timeout."""
    machine = Liveness(LOSSY, now=0.0)
    assert run(machine, lambda _now: None, until=60.0) == 5.0


def test_without_the_profile_kernel_facts_change_nothing() -> None:
    """The default policy ignores facts and does not ask the driver for them."""
    machine = Liveness(HeartbeatPolicy(interval=1.0, timeout=5.0), now=0.0)
    assert not machine.wants_transport_progress and machine.lossy is None
    assert run(machine, kernel(every_second_until(math.inf), growing), until=60.0) == 5.0


def test_custom_window_and_ceiling_are_obeyed() -> None:
    """ack_window 2 s, max_silence 9 s: a cut at 6 is dead at 8; endless ACKs die at 9."""
    policy = HeartbeatPolicy(1.0, 5.0, lossy=LossyLink(ack_window=2.0, max_silence=9.0))
    assert run(Liveness(policy, 0.0), kernel(every_second_until(6.0), growing), 60.0) == 8.0
    assert run(Liveness(policy, 0.0), kernel(every_second_until(math.inf), growing), 60.0) == 9.0


def test_a_stale_sample_is_aged_by_the_time_since_it_was_taken() -> None:
    """A sample 4 s old that said "segment 0.5 s ago" counts as 4.5 s at the verdict."""
    judge = LossyLinkJudge(LossyLink(ack_window=4.0), timeout=5.0)
    judge.observe(1.0, TcpProgress(last_ack_recv=0.5, last_data_recv=0.5, total_retrans=1))
    assert judge.withhold_until(5.0, last_received=0.0, deferring=False) is None
    assert judge.withhold_until(4.0, last_received=0.0, deferring=False) == pytest.approx(4.5)


@given(
    cut=st.floats(min_value=0.0, max_value=40.0),
    last_data=st.floats(min_value=0.0, max_value=40.0),
)
def test_a_cut_is_never_declared_later_than_the_stated_bound(cut: float, last_data: float) -> None:
    """Whatever the timing, a cut is dead no later than cut + max(timeout, ack_window),
    never before last data + timeout, and never after last data + max_silence."""
    last_data = min(last_data, cut)
    machine = Liveness(LOSSY, now=0.0)
    machine.data_received(last_data)
    facts = kernel(lambda now: min(now, cut), lambda now: int(now * 10))
    dead = run(machine, facts, until=200.0)
    assert dead is not None
    # MIN_RECHECK: the one re-check a float rounding of "5 s since the segment" may cost.
    assert last_data + 5.0 <= dead <= min(cut + 5.0, last_data + 30.0) + MIN_RECHECK + 1e-9


def test_profile_settings_are_checked_and_kept_through_negotiation() -> None:
    """Bad windows raise; the profile survives negotiate(); names map to settings."""
    with pytest.raises(ValueError, match="ack_window"):
        LossyLink(ack_window=0)
    with pytest.raises(ValueError, match="max_silence"):
        LossyLink(max_silence=math.inf)
    with pytest.raises(ValueError, match="lossy"):
        HeartbeatPolicy(1.0, 5.0, lossy="yes")  # type: ignore[arg-type]
    assert LossyLink().resolved(5.0) == (5.0, 30.0)
    assert LossyLink(max_silence=2.0).resolved(5.0) == (5.0, 5.0)  # never below the timeout
    agreed = negotiate(LOSSY, remote_interval=2.0, remote_timeout=8.0)
    assert agreed.lossy == LossyLink() and agreed.interval == 1.0 and agreed.timeout == 5.0
    assert with_profile(HeartbeatPolicy(1.0, 5.0), "lossy").lossy == PROFILES["lossy"]
    assert with_profile(LOSSY, "default").lossy is None
    with pytest.raises(ValueError, match="unknown profile 'flaky'"):
        with_profile(LOSSY, "flaky")


def test_a_verdict_after_waiting_says_the_profile_waited() -> None:
    """The PeerDead reason names the profile and the peer's last segment when it had waited;
    an ordinary verdict does not mention it."""
    machine = Liveness(LOSSY, now=0.0)
    facts = kernel(every_second_until(3.0), growing)
    dead = []
    for now in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0):
        machine.transport_progress(now, facts(now))
        dead += [a for a in machine.handle_timer(now) if isinstance(a, PeerDead)]
    assert len(dead) == 1
    assert "lossy-link profile: peer's last segment 5.000s ago (window 5s, ceiling 30s)" in (
        dead[0].reason)
    plain = Liveness(LOSSY, now=0.0)
    verdicts = [a for now in (1.0, 2.0, 3.0, 4.0, 5.0) for a in plain.handle_timer(now)
                if isinstance(a, PeerDead)]
    assert verdicts and "lossy" not in verdicts[0].reason
