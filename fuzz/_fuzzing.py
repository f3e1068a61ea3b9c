"""What every harness in ``fuzz/`` shares: atheris when it is installed, a replay otherwise.

atheris is not a pulse dependency. A harness imports pulse inside :func:`instrumented` (so
that atheris sees pulse's branch coverage) and hands its check to :func:`run`.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType
from typing import Any

atheris: ModuleType | None
try:
    atheris = importlib.import_module("atheris")
except ImportError:
    atheris = None


def instrumented() -> AbstractContextManager[Any]:
    """Imports inside this block are instrumented for coverage when atheris is installed."""
    return atheris.instrument_imports() if atheris is not None else contextlib.nullcontext()


def run(argv: list[str], test_one_input: Callable[[bytes], None], seeds: Sequence[bytes]) -> None:
    """Run atheris if it is installed, else replay the files named in ``argv`` (or ``seeds``)."""
    if atheris is None:
        inputs = [Path(name).read_bytes() for name in argv[1:]] or list(seeds)
        for item in inputs:
            test_one_input(item)
        print(f"atheris not installed; replayed {len(inputs)} inputs without failure")
        return
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
