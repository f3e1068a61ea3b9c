"""The SWIM simulator at a small size: true failures are found, a clean network has no false ones."""

from __future__ import annotations

from pulse._core.lifeguard import suspicion_min_timeout
from pulse._core.swim_sim import SimConfig, run


def test_simulator_detects_a_killed_member_without_false_positives() -> None:
    """N=20 on a clean network: the killed member is failed everywhere, nobody else ever is."""
    r = run(SimConfig(n=20, duration=60.0, kills=((3, 20.0),), seed=4))
    assert r.false_positives == 0
    assert r.undetected == 0
    assert len(r.first_detection) == 1 and len(r.full_detection) == 1
    # At least the minimum suspicion timeout (4 * log10(20) s), at most a full probe pass
    # (19 periods) + the maximum timeout (6x) + one period.
    lo = suspicion_min_timeout(4, 20, 1.0)
    assert lo < r.first_detection[0] < 19 + 6 * lo + 1
    assert r.full_detection[0] >= r.first_detection[0]


def test_simulator_is_deterministic_for_a_seed() -> None:
    """The same seed gives the same measurements (randomness is injected, time is virtual)."""
    cfg = SimConfig(n=10, duration=30.0, kills=((2, 10.0),), loss=0.05, seed=11)
    a, b = run(cfg), run(cfg)
    assert (a.first_detection, a.packets_sent, a.suspicions) == (b.first_detection, b.packets_sent,
                                                                 b.suspicions)


def test_lossy_network_and_slow_member_still_detect_the_kill() -> None:
    """With 5 % loss and a slow member, the killed member is still detected by everyone."""
    r = run(SimConfig(n=20, duration=80.0, kills=((0, 20.0),), loss=0.05, slow=1, slow_delay=1.0, seed=5))
    assert r.undetected == 0
    assert r.full_detection
