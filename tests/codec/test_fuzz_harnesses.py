"""Runs the atheris harnesses of fuzz/ (lease, Dubbo, ZooKeeper, WebSocket handshake) under
hypothesis: for any bytes, only typed protocol errors escape the decoders and their buffers
stay bounded."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
HARNESSES = ["fuzz_lease", "fuzz_dubbo", "fuzz_zookeeper", "fuzz_ws_handshake"]


@functools.cache
def load(name: str) -> tuple[Callable[[bytes], None], list[bytes]]:
    """Import a harness module from its path and return its check and seeds."""
    spec = importlib.util.spec_from_file_location(f"pulse_{name}", FUZZ / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.test_one_input, module.SEEDS


@pytest.mark.parametrize("name", HARNESSES)
def test_harness_accepts_its_seeds(name: str) -> None:
    """Every built-in seed passes its harness's check."""
    check, seeds = load(name)
    assert len(seeds) >= 3
    for seed in seeds:
        check(seed)


@pytest.mark.parametrize("name", HARNESSES)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), seed_index=st.integers(0, 2), cut=st.integers(0, 400))
def test_harness_property_holds_for_mutated_seeds(
    name: str, data: bytes, seed_index: int, cut: int
) -> None:
    """Random bytes, and valid seeds with random bytes spliced in, pass the harness's check."""
    check, seeds = load(name)
    check(data)
    seed = seeds[seed_index]
    check(seed[:cut] + data + seed[cut:])
    check(seed + data)
