"""The side-by-side benchmarks still run end to end (tiny sizes; numbers are not checked)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def table_rows(output: str) -> dict[str, list[str]]:
    """Rows of the printed Markdown table, keyed by their server column."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) > 2 and cells[0] == "20":
            rows[cells[1]] = cells
    return rows


def test_bench_hold_runs_every_server_and_loses_nothing() -> None:
    """bench_hold at 20 connections prints a row per server (pulse on trio, on asyncio, and on
    uvloop when installed) with all held and none lost."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_hold.py"), "--counts", "20", "--window", "2",
         "--settle", "1", "--connect-timeout", "20"],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = table_rows(done.stdout)
    loops = ["", " (asyncio)"] + ([" (uvloop)"] if importlib.util.find_spec("uvloop") else [])
    pulse_rows = {f"pulse {scheme}{loop}" for scheme in ("ws://", "tcp://") for loop in loops}
    assert set(rows) == {"websockets", *pulse_rows}, done.stdout
    for server, cells in rows.items():
        held, heartbeats, lost = cells[2], cells[4], cells[7]
        assert held == "20", f"{server}: {done.stdout}"
        assert lost == "0", f"{server}: {done.stdout}"
        # 20 connections at 1 Hz for 2 s; too little CPU to compare, but heartbeats flowed.
        assert int(heartbeats.replace(",", "")) >= 20, f"{server}: {done.stdout}"
    # Ratio columns are filled for pulse's rows: a ratio, or "-" when the anchor's CPU or
    # memory at 20 connections was below what /proc can resolve in 2 s.
    for server in pulse_rows:
        for cell in rows[server][11:13]:
            assert re.fullmatch(r"\d+\.\d+×|-", cell), f"{server}: {done.stdout}"


def test_attacks_benchmark_reports_each_row_with_its_outcome() -> None:
    """attacks.py --quick on the WebSocket 4 GiB header, the presence squat and the tcp ping
    flood prints one row each, and each attacker got the refusal the fixes promise."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "attacks.py"), "--quick", "--rows", "4,6,8"],
        capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = {}
    for line in done.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in {"4", "6", "8"}:
            rows[cells[0]] = cells
    assert set(rows) == {"4", "6", "8"}, done.stdout
    assert "1009" in rows["4"][6], done.stdout
    assert "forbidden" in rows["6"][6], done.stdout
    assert "ping flood" in rows["8"][6], done.stdout
    for cells in rows.values():
        before = cells[3].split(" / ")[0]
        assert before != "–", f"the neighbour measured nothing before the attack: {cells}"
