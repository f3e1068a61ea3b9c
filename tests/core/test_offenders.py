"""Offender cooldown: addresses closed for an offence are refused for a while (explicit time)."""

from __future__ import annotations

import pytest

from pulse._core.offenders import OffenderCooldown


def test_an_offender_is_refused_for_the_cooldown_then_admitted() -> None:
    """After an offence at 10 the address is refused until 11, admitted from then on."""
    guard = OffenderCooldown(cooldown=1.0)
    assert guard.admits("10.0.0.1", 10.0)
    assert guard.offence("10.0.0.1", 10.0) == 1.0
    assert not guard.admits("10.0.0.1", 10.5)
    assert guard.admits("10.0.0.2", 10.5)  # others are not affected
    assert guard.admits("10.0.0.1", 11.0)


def test_repeat_offences_double_the_cooldown_up_to_the_cap() -> None:
    """Each offence soon after the last doubles the cooldown: 1, 2, 4, 8, then the cap."""
    guard = OffenderCooldown(cooldown=1.0, max_cooldown=8.0)
    now, applied = 0.0, []
    for _ in range(6):
        applied.append(guard.offence("a", now))
        now += applied[-1] + 0.1  # offends again right after being let back in
    assert applied == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_quiet_spell_forgives() -> None:
    """An offence long after the last cooldown ended starts from the base cooldown again."""
    guard = OffenderCooldown(cooldown=1.0, max_cooldown=8.0)
    guard.offence("a", 0.0)
    guard.offence("a", 1.5)  # 2 s
    assert guard.offence("a", 100.0) == 1.0


def test_the_table_is_bounded() -> None:
    """At most max_entries addresses are remembered; the oldest offence goes first."""
    guard = OffenderCooldown(max_entries=3)
    for index in range(5):
        guard.offence(f"h{index}", 0.0)
    assert len(guard) == 3
    assert guard.admits("h0", 0.5) and guard.admits("h1", 0.5)
    assert not guard.admits("h4", 0.5)


@pytest.mark.parametrize("kwargs", [{"cooldown": 0.0}, {"cooldown": 2.0, "max_cooldown": 1.0},
                                    {"max_entries": 0}])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    """Settings that cannot work are a ValueError at once."""
    with pytest.raises(ValueError):
        OffenderCooldown(**kwargs)  # type: ignore[arg-type]
