"""Run a test body on every event loop pulse supports: trio, asyncio and uvloop.

pytest-trio runs every ``async def`` test on trio here (``trio_mode = true``), so a test that
must also run on asyncio is a plain function that starts the loop itself:

* :func:`run` runs ``body(*args)`` under ``anyio.run`` on the named loop, then checks that
  the body left no background work behind: once it returned (every ``async with`` it
  entered has been left) the engine drives no machine and reads no socket, and on asyncio
  and uvloop the only tasks are the body's own and the engine's (``pulse.engine``, which
  lives as long as the loop).
* :data:`LOOPS` and the ``loop`` fixture parametrise by loop name.
* :func:`on_every_loop` turns an ``async def test_…(fixtures…)`` into a test parametrised by
  loop that runs the body on each (sync fixtures only; the body's docstring is the test's).

uvloop is in the ``test`` extra; outside CI a missing uvloop skips its runs, in CI that skip
fails the run (``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
import pytest
import sniffio

from pulse._driver.engine import current_engine

T = TypeVar("T")

#: Every loop a test parametrised by loop runs on.
LOOPS = ("trio", "asyncio", "uvloop")
#: The loops other than trio's (for tests of asyncio semantics).
ASYNCIO_LOOPS = ("asyncio", "uvloop")

#: The name of the engine's task on asyncio loops (it lives as long as the loop).
ENGINE_TASK = "pulse.engine"


def backend_of(loop: str) -> tuple[str, dict[str, Any]]:
    """anyio's backend name and options for ``loop`` (skips uvloop when it is missing)."""
    if loop == "trio":
        return "trio", {}
    if loop == "asyncio":
        return "asyncio", {}
    if loop == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return "asyncio", {"loop_factory": uvloop.new_event_loop}
    raise ValueError(f"unknown loop {loop!r}; known: {', '.join(LOOPS)}")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose listener never accepts: connects succeed (the kernel's
    backlog), nothing is ever answered (import it into a test module to use it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def leftover_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of the running asyncio loop other than the current one and the engine's."""
    current = asyncio.current_task()
    return [task for task in asyncio.all_tasks()
            if task is not current and task.get_name() != ENGINE_TASK]


def run(loop: str, body: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``body(*args)`` on ``loop``; it must leave no machine in the engine, no socket in its
    readiness set and (asyncio loops) no task behind."""
    backend, options = backend_of(loop)

    async def checked() -> T:
        result = await body(*args)
        engine = current_engine()
        assert len(engine) == 0, f"machines left in the engine on {loop}: {len(engine)}"
        assert not engine._readers, f"sockets left in the engine on {loop}: {engine._readers}"
        if sniffio.current_async_library() == "asyncio":
            left = leftover_tasks()
            assert not left, f"tasks left behind on {loop}: {left}"
        return result

    return anyio.run(checked, backend=backend, backend_options=options)


@pytest.fixture(params=LOOPS)
def loop(request: pytest.FixtureRequest) -> str:
    """The name of the loop the test runs on."""
    name: str = request.param
    return name


def on_every_loop(body: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """An ``async def`` test body as a sync test run on every loop (parametrised ``loop``);
    its fixtures (sync ones only) are passed through by name."""
    signature = inspect.signature(body)
    parameters = [inspect.Parameter("loop", inspect.Parameter.POSITIONAL_OR_KEYWORD),
                  *signature.parameters.values()]

    @functools.wraps(body)
    def test(loop: str, **fixtures: Any) -> None:
        run(loop, functools.partial(body, **fixtures))

    test.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    parametrised: Callable[..., None] = pytest.mark.parametrize("loop", LOOPS)(test)
    return parametrised
