"""``pulse agent`` / ``pulse watch`` with a repeated ``--server``, against in-memory lease
servers in virtual time."""

from __future__ import annotations

import argparse
import contextvars
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.testing

import pulse.multiregistry
from pulse.cli import cmd_agent, cmd_watch
from pulse.presence import PresenceSession
from pulse.registry import connect_session

from .test_multiregistry import S1, TICK, TIMEOUT, URLS, Client, two_servers, until

OPENER: contextvars.ContextVar[Any] = contextvars.ContextVar("opener")


def through_opener(url: str, **options: Any) -> AbstractAsyncContextManager[PresenceSession]:
    """connect_session over the in-memory network of the calling task's client."""
    return connect_session(url, open_stream=OPENER.get(), **options)


def agent_args() -> argparse.Namespace:
    return argparse.Namespace(server=list(URLS), agent_id="a", session_timeout=TIMEOUT,
                              meta=["room=lab"], prefix="/pulse/presence", auth_file=None,
                              cafile=None)


def watch_args() -> argparse.Namespace:
    return argparse.Namespace(server=list(URLS), prefix="/pulse/presence", json=False,
                              session_timeout=TIMEOUT, members=False)


async def test_cli_merged_watch_one_registry_down_then_agent_dies(
        autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The agent reports its registration on each server; the watcher prints one online,
    a warning line (stderr) when a registry is lost and none offline; after the agent's
    crash it prints offline within timeout + tick."""
    monkeypatch.setattr(pulse.multiregistry, "connect_session", through_opener)
    monkeypatch.setenv(cmd_agent.AUTH_ENV, "")
    async with two_servers() as net, trio.open_nursery() as nursery:
        agent, watcher = Client(net), Client(net)
        out: list[str] = []
        err: list[str] = []

        def drain() -> None:
            captured = capsys.readouterr()
            out.extend(captured.out.splitlines())
            err.extend(captured.err.splitlines())

        def printed(text: str) -> bool:
            drain()
            return any(text in line for line in out + err)

        OPENER.set(watcher.open_stream)
        nursery.start_soon(cmd_watch._watch_multi, watch_args())
        agent_scope = trio.CancelScope()

        async def run_agent() -> None:
            with agent_scope:
                await cmd_agent._hold_multi(agent_args(), "/pulse/presence/a", {"room": "lab"})

        OPENER.set(agent.open_stream)
        nursery.start_soon(run_agent)
        await until(lambda: printed("registered /pulse/presence/a on pulse://s1:1"))
        await until(lambda: printed("registered /pulse/presence/a on pulse://s2:2"))
        await until(lambda: printed("online  a"))
        await trio.sleep(2.0)
        net.stop(S1)
        await until(lambda: printed("pulse watch: registry pulse://s1:1 lost"))
        await trio.sleep(3 * TIMEOUT)
        drain()
        assert [line for line in out if line.startswith("offline")] == []
        assert any("1 of 2 live" in line for line in err)
        assert any(line.startswith("session disconnected on pulse://s1:1") for line in out)
        crashed = trio.current_time()
        agent.crash()
        await until(lambda: printed("offline a"), timeout=2 * TIMEOUT)
        assert trio.current_time() - crashed <= TIMEOUT + TICK + 0.1
        assert len([line for line in out if line.startswith("online")]) == 1
        nursery.cancel_scope.cancel()


def test_repeated_server_is_checked_before_any_network_use(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A URL given twice, or one scheme without sessions among several: exit 2 with a message."""
    from pulse.cli._standalone import standalone

    assert standalone(cmd_agent, "agent", ["--server", "pulse://127.0.0.1:1", "--server",
                                           "pulse://127.0.0.1:1", "--id", "x"]) == 2
    assert standalone(cmd_watch, "watch", ["--server", "pulse://127.0.0.1:1", "--server",
                                           "gopher://127.0.0.1:2"]) == 2
    assert standalone(cmd_watch, "watch", ["--server", "gossip://127.0.0.1:1", "--server",
                                           "gossip://127.0.0.1:2"]) == 2
    err = capsys.readouterr().err
    assert "given twice" in err and "gopher" in err and "gossip member table" in err
