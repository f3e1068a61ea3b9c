"""Keeps fuzz/fuzz_frames.py (the atheris harness) importable and its property true."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

HARNESS = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_frames.py"


@functools.cache
def load_harness() -> tuple[Callable[[bytes], None], list[bytes]]:
    """Import the harness module from its path and return its check and seeds."""
    spec = importlib.util.spec_from_file_location("pulse_fuzz_frames", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.test_one_input, module.SEEDS


def test_harness_accepts_its_seeds() -> None:
    """Every built-in seed passes the harness's check."""
    check, seeds = load_harness()
    assert len(seeds) >= 3
    for seed in seeds:
        check(seed)


@given(st.binary(max_size=300))
def test_harness_property_holds_for_random_bytes(data: bytes) -> None:
    """The harness's check passes on arbitrary bytes (what atheris would feed it)."""
    check, seeds = load_harness()
    check(data)
    check(seeds[1][:1] + data)
