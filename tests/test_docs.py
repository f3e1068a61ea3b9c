"""Every ```python block in README.md and docs/ compiles, and the self-contained ones run.

A block that needs something outside the block (a server on a fixed port, ZooKeeper, names
defined in the surrounding prose) is preceded by an HTML comment ``<!-- no-run: why -->``;
it is only compiled. Every other block runs in a fresh interpreter and must exit 0 within a
minute. Top-level ``await`` / ``async with`` is allowed in compiled-only blocks.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NO_RUN = re.compile(r"<!--\s*no-run\b")


def blocks() -> list[tuple[str, str, bool]]:
    """(id, code, runnable) for every python block; the id is file:line of the fence."""
    found = []
    for path in SOURCES:
        lines = path.read_text().splitlines()
        index = 0
        while index < len(lines):
            if lines[index].strip() != "```python":
                index += 1
                continue
            start = index
            previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
            index += 1
            while index < len(lines) and lines[index].strip() != "```":
                index += 1
            code = "\n".join(lines[start + 1:index]) + "\n"
            name = f"{path.relative_to(ROOT)}:{start + 1}"
            found.append((name, code, not NO_RUN.search(previous)))
            index += 1
    return found


BLOCKS = blocks()


def test_blocks_found() -> None:
    """The extraction sees the README's blocks and the guides' runnable ones."""
    names = [name for name, _, _ in BLOCKS]
    assert any(name.startswith("README.md") for name in names)
    runnable = [name for name, _, run in BLOCKS if run]
    assert len(runnable) >= 6


@pytest.mark.parametrize(("name", "code"), [(n, c) for n, c, _ in BLOCKS],
                         ids=[n for n, _, _ in BLOCKS])
def test_block_compiles(name: str, code: str) -> None:
    """The block is valid Python (top-level await allowed)."""
    compile(code, name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.e2e
@pytest.mark.parametrize(("name", "code"), [(n, c) for n, c, run in BLOCKS if run],
                         ids=[n for n, _, run in BLOCKS if run])
def test_block_runs(name: str, code: str, tmp_path: Path) -> None:
    """A self-contained block runs to completion in a fresh interpreter."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path, check=False)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
