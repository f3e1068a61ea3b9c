"""``pulse agent`` between sessions: the one reconnect supervisor, jittered, in virtual time."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from pulse.cli import cmd_agent
from pulse.errors import AuthFailed


def agent_args() -> argparse.Namespace:
    return argparse.Namespace(server="pulse://127.0.0.1:1", agent_id="a", session_timeout=10.0,
                              meta=[], prefix="/pulse/presence", auth_file=None, cafile=None)


def refusing(times: list[float], error: Exception) -> Any:
    @asynccontextmanager
    async def connect_session(url: str, **options: Any) -> AsyncIterator[Any]:
        times.append(trio.current_time())
        raise error
        yield  # pragma: no cover

    return connect_session


async def test_agent_waits_are_jittered_and_capped(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unreachable server is retried one session at a time, each wait drawn below a
    ceiling that doubles from 0.5 s to 10 s (not the fixed 0.5, 1, 2, … of old)."""
    times: list[float] = []
    monkeypatch.setattr(cmd_agent, "connect_session",
                        refusing(times, OSError("connection refused")))
    monkeypatch.setenv(cmd_agent.AUTH_ENV, "")
    with trio.move_on_after(300):
        await cmd_agent._hold(agent_args(), "/pulse/presence/a", {})
    gaps = [b - a for a, b in itertools.pairwise(times)]
    ceilings = [min(cmd_agent.MAX_RETRY_PAUSE, cmd_agent.RETRY_INITIAL * 2**i)
                for i in range(len(gaps))]
    assert len(gaps) > 20
    assert all(gap <= ceiling + 0.02 for gap, ceiling in zip(gaps, ceilings, strict=True))
    assert max(gaps) <= cmd_agent.MAX_RETRY_PAUSE + 0.02
    assert len({round(gap, 6) for gap in gaps[6:]}) > 5  # jittered: not one repeated pause
    assert "session lost: connection refused" in capsys.readouterr().out


async def test_agent_stops_on_a_refusal(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bad credentials end the agent with status 1 after one attempt."""
    times: list[float] = []
    monkeypatch.setattr(cmd_agent, "connect_session", refusing(times, AuthFailed("bad token")))
    monkeypatch.setenv(cmd_agent.AUTH_ENV, "")
    with trio.fail_after(60):
        assert await cmd_agent._hold(agent_args(), "/pulse/presence/a", {}) == 1
    assert len(times) == 1
    assert "refused: bad token" in capsys.readouterr().out
