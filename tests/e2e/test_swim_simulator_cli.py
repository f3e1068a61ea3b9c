"""benchmarks/swim_simulator.py runs end to end at a tiny size and prints its comparison."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
SIMULATOR = Path(__file__).resolve().parents[2] / "benchmarks" / "swim_simulator.py"


def test_slow_member_table_pools_seeds_and_lifeguard_has_fewer_false_positives() -> None:
    """N=12 with a member slow by 5 s, two seeds: a row per protocol variant, and plain SWIM
    declares healthy members failed more often than Lifeguard does."""
    done = subprocess.run(
        [sys.executable, str(SIMULATOR), "--n", "12", "--duration", "90", "--delays", "5",
         "--seeds", "1,2"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = {}
    for line in done.stdout.splitlines():
        if line.startswith("   5.0 "):
            label = line[7:33].strip()
            rows[label] = line[33:].split()
    assert set(rows) == {"SWIM", "Lifeguard", "Lifeguard, memberlist LHM", "Lifeguard, mult 3"}
    fp_healthy = {label: int(cells[0]) for label, cells in rows.items()}
    assert fp_healthy["SWIM"] > 0
    assert fp_healthy["Lifeguard"] < fp_healthy["SWIM"]
    assert fp_healthy["Lifeguard, memberlist LHM"] < fp_healthy["SWIM"]
    assert "seeds 1,2" in done.stdout
    assert "healthy-member false positives, SWIM / Lifeguard:" in done.stdout
