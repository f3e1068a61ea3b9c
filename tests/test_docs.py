"""Every ```python block in README.md and docs/ compiles, and every block that can run, runs.

A block runs in a fresh interpreter and must exit 0 within a minute; a block written with
top-level ``await`` / ``async with`` runs inside ``trio.run``. HTML comments on the lines
right before a block say what it needs:

* ``<!-- run-with: SERVICE TEXT -->`` (one line per peer): the block talks to a real local
  peer, which the test starts first and stops afterwards; every occurrence of ``TEXT`` in the
  block is replaced by where that peer listens. SERVICE is ``tcp``, ``ws``, ``pulse`` (a
  lease server) or ``dubbo``: ``pulse serve --listen SCHEME://127.0.0.1:PORT`` on a free
  port, TEXT being the port the block names; or ``zookeeper``: a real ZooKeeper server, TEXT
  being the ``zk://`` URL the block names.
* ``<!-- run-serving: TEXT -->``: the block is a server that runs until cancelled. TEXT (the
  port it names) becomes a free port; the block passes once that port accepts a TCP
  connection while the block is still running (it is then stopped).
* ``<!-- no-run: why -->``: the block is only compiled (a fragment, or a need the test
  cannot meet; the reason says which).
"""

from __future__ import annotations

import ast
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e._wait import accepts_connections, wait_until

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NO_RUN = re.compile(r"<!--\s*no-run\b")
RUN_WITH = re.compile(r"<!--\s*run-with:\s*(\S+)\s+(\S+)\s*-->")
RUN_SERVING = re.compile(r"<!--\s*run-serving:\s*(\S+)\s*-->")
SERVED_SCHEMES = {"tcp": "tcp", "ws": "ws", "pulse": "pulse", "dubbo": "dubbo"}
PULSE = [sys.executable, "-m", "pulse.cli.main"]
BLOCK_TIMEOUT = 60.0

# Runs the block file given as argv[1]: plainly, or inside trio.run when it awaits at the
# top level (the code object is then a coroutine function body).
RUNNER = """
import ast, inspect, sys
import trio
path = sys.argv[1]
source = open(path).read()
code = compile(source, path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
namespace = {"__name__": "__main__"}
if code.co_flags & inspect.CO_COROUTINE:
    async def main():
        await eval(code, namespace)
    trio.run(main)
else:
    exec(code, namespace)
"""


@dataclass(frozen=True)
class Block:
    """One python block: where it is, its code and how it may run."""

    name: str
    code: str
    mode: str  # "run", "no-run", "with" or "serving"
    services: tuple[tuple[str, str], ...] = ()  # (SERVICE, TEXT) per run-with line
    text: str = ""  # run-serving's TEXT


def blocks() -> list[Block]:
    """Every python block; the name is file:line of the fence."""
    found = []
    for path in SOURCES:
        lines = path.read_text().splitlines()
        index = 0
        while index < len(lines):
            if lines[index].strip() != "```python":
                index += 1
                continue
            start = index
            comments = []  # the comment lines right before the fence (blank lines skipped)
            for line in reversed(lines[:start]):
                if not line.strip():
                    continue
                if not line.strip().startswith("<!--"):
                    break
                comments.append(line)
            previous = "\n".join(comments)
            index += 1
            while index < len(lines) and lines[index].strip() != "```":
                index += 1
            code = "\n".join(lines[start + 1:index]) + "\n"
            name = f"{path.relative_to(ROOT)}:{start + 1}"
            if NO_RUN.search(previous):
                found.append(Block(name, code, "no-run"))
            elif services := RUN_WITH.findall(previous):
                found.append(Block(name, code, "with", tuple(services)))
            elif match := RUN_SERVING.search(previous):
                found.append(Block(name, code, "serving", text=match[1]))
            else:
                found.append(Block(name, code, "run"))
            index += 1
    return found


BLOCKS = blocks()


def test_blocks_found() -> None:
    """The extraction sees the README's blocks, the runnable ones and every directive kind."""
    names = [block.name for block in BLOCKS]
    assert any(name.startswith("README.md") for name in names)
    modes = [block.mode for block in BLOCKS]
    assert modes.count("run") >= 6
    assert {"with", "serving"} <= set(modes)


def test_directives_are_well_formed() -> None:
    """Every run-with names a known service and a TEXT the block contains; every
    run-serving's TEXT is in the block."""
    for block in BLOCKS:
        for service, text in block.services:
            assert service in {*SERVED_SCHEMES, "zookeeper"}, block.name
            assert text in block.code, f"{block.name}: {text!r} not in the block"
        if block.mode == "serving":
            assert block.text in block.code, f"{block.name}: {block.text!r} not in the block"


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_block_compiles(block: Block) -> None:
    """The block is valid Python (top-level await allowed)."""
    compile(block.code, block.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_block(name: str, code: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (inside trio.run when it awaits at top level)."""
    path = directory / "block.py"
    path.write_text(code)
    return subprocess.run([sys.executable, "-c", RUNNER, str(path)], capture_output=True,
                          text=True, timeout=BLOCK_TIMEOUT, cwd=directory, check=False)


def stop(process: subprocess.Popen[str]) -> str:
    """Interrupt ``process`` (then kill it after 5 s); its output."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    out, err = process.communicate(timeout=5)
    return f"{out}\n{err}"


@contextmanager
def pulse_server(scheme: str, port: int) -> Iterator[None]:
    """``pulse serve --listen SCHEME://127.0.0.1:PORT`` until the block ends."""
    env = {**os.environ, "PULSE_LEASE_TOKEN": ""}
    process = subprocess.Popen(
        [*PULSE, "serve", "--listen", f"{scheme}://127.0.0.1:{port}", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        wait_until(lambda: accepts_connections(port), timeout=30, what=f"{scheme} server",
                   process=process)
        yield
    finally:
        stop(process)


def _params() -> list[object]:
    params: list[object] = []
    for block in BLOCKS:
        if block.mode == "no-run":
            continue
        needs_zookeeper = any(service == "zookeeper" for service, _ in block.services)
        marks = [pytest.mark.zookeeper] if needs_zookeeper else []
        params.append(pytest.param(block, marks=marks, id=block.name))
    return params


@pytest.mark.e2e
@pytest.mark.parametrize("block", _params())
def test_block_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The block runs to completion (against its real local peer, if it names one), or, for
    a server block, serves on its port until stopped."""
    if block.mode == "run":
        result = run_block(block.name, block.code, tmp_path)
        assert result.returncode == 0, f"{block.name} failed:\n{result.stdout}\n{result.stderr}"
        return
    if block.mode == "serving":
        port = free_port()
        path = tmp_path / "block.py"
        path.write_text(block.code.replace(block.text, str(port)))
        process = subprocess.Popen([sys.executable, "-c", RUNNER, str(path)], cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: accepts_connections(port), timeout=30,
                       what=f"{block.name} serving on its port", process=process)
            time.sleep(0.2)
            assert process.poll() is None, f"{block.name} stopped after it started serving"
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{block.name}: {exc}\n{stop(process)}") from None
        finally:
            stop(process)
        return
    code = block.code
    with ExitStack() as peers:
        for service, text in block.services:
            if service == "zookeeper":
                code = code.replace(text, request.getfixturevalue("zookeeper_url"))
            else:
                port = free_port()
                peers.enter_context(pulse_server(SERVED_SCHEMES[service], port))
                code = code.replace(text, str(port))
        result = run_block(block.name, code, tmp_path)
    assert result.returncode == 0, f"{block.name} failed:\n{result.stdout}\n{result.stderr}"
