"""One vocabulary across plugins: the new names work, events() subscriptions are
independent, and every documented name is importable from a public module (the old
spellings and their warnings are tested in tests/test_deprecations.py)."""

from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from pulse import (
    EventFeed,
    HeartbeatPolicy,
    ReconnectMachine,
    StartAttempt,
)
from pulse._driver.feed import EventHub
from pulse.actions import Action, Close, LocalPause
from pulse.rpc import ChannelTiming
from pulse.testing import heartbeat_pair

ROOT = Path(__file__).resolve().parents[2]
POLICY = HeartbeatPolicy(1.0, 3.0)


# -- events(): one shape --------------------------------------------------------------------


async def drain(feed: EventFeed[Any]) -> list[Any]:
    """Everything queued in ``feed`` now (it must be closed)."""
    with trio.fail_after(1):
        return [item async for item in feed]


async def test_every_subscription_sees_every_later_event() -> None:
    """Two subscriptions taken at the same time each receive every event published after."""
    hub: EventHub[int] = EventHub()
    first, second = hub.subscribe(), hub.subscribe()
    for item in (1, 2, 3):
        hub.publish(item)
    hub.close()
    assert await drain(first) == [1, 2, 3]
    assert await drain(second) == [1, 2, 3]


async def test_the_first_subscription_gets_the_backlog_and_later_ones_do_not() -> None:
    """Events published before anyone subscribed go to the first subscription only."""
    hub: EventHub[str] = EventHub(maxlen=2)
    for item in ("a", "b", "c"):
        hub.publish(item)
    first = hub.subscribe()
    second = hub.subscribe()
    hub.publish("d")
    hub.close()
    assert first.dropped == 1  # the backlog kept the latest two; "d" pushed out "b"
    assert await drain(first) == ["c", "d"]
    assert await drain(second) == ["d"]
    late = hub.subscribe()
    assert await drain(late) == []  # subscribing after the end gives an ended feed


async def test_a_connection_gives_each_caller_its_own_feed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """conn.events() twice: both feeds see the local pause and the final Close."""
    async with heartbeat_pair(POLICY, POLICY) as (left, _right):
        one, two = left.events(), left.events()
        await trio.sleep(2)
        autojump_clock.jump(60)
        await trio.sleep(2)
    seen_one, seen_two = await drain(one), await drain(two)
    for seen in (seen_one, seen_two):
        assert any(isinstance(event, LocalPause) for event in seen)
        assert isinstance(seen[-1], Close)
    assert seen_one == seen_two


# -- on_liveness ----------------------------------------------------------------------------


async def test_on_liveness_gets_the_connections_actions() -> None:
    """heartbeat(on_liveness=) is called with each liveness action, Close last."""
    seen: list[Action] = []
    async with heartbeat_pair(POLICY, POLICY, on_liveness=seen.append):
        pass
    assert seen and isinstance(seen[-1], Close)


# -- sessions -------------------------------------------------------------------------------


def test_lease_connect_takes_a_url_an_endpoint_or_a_host_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """lease.connect: pulse:// URLs (7400 by default), endpoints and host strings all reach
    the client as (host, port) pairs with the session timeout."""
    from pulse.plugins import lease
    from pulse.plugins.lease import client
    from pulse.registry import parse_url

    calls: list[tuple[list[tuple[str, int]], float]] = []
    monkeypatch.setattr(client, "connect",
                        lambda servers, timeout, **options: calls.append((servers, timeout)))
    lease.connect("pulse://a:1,b", session_timeout=3)
    lease.connect(parse_url("pulse://c:2"), session_timeout=4)
    lease.connect("d:5,e:6")
    assert calls == [([("a", 1), ("b", 7400)], 3), ([("c", 2)], 4),
                     ([("d", 5), ("e", 6)], 10.0)]
    with pytest.raises(ValueError, match="pulse://"):
        lease.connect("zk://127.0.0.1:2181")
    assert len(calls) == 3


def test_gossip_connect_refuses_another_scheme() -> None:
    """gossip.connect names the scheme it expects instead of joining whatever a URL says."""
    from pulse.plugins import gossip

    with pytest.raises(ValueError, match="gossip://"):
        gossip.connect("pulse://127.0.0.1:7400")


# -- policy and channel timing --------------------------------------------------------------


def test_channel_timing_reads_like_a_policy() -> None:
    """ChannelTiming has a policy's names (interval, timeout) and converts both ways."""
    timing = ChannelTiming.from_policy(HeartbeatPolicy(2.0, 6.0))
    assert (timing.heartbeat, timing.heartbeat_timeout) == (2.0, 6.0)
    assert (timing.interval, timing.timeout) == (2.0, 6.0)
    assert (timing.policy().interval, timing.policy().timeout) == (2.0, 6.0)
    with pytest.raises(ValueError, match="2 x heartbeat"):
        ChannelTiming.from_policy(HeartbeatPolicy(2.0, 3.0))


def test_the_reconnect_machine_is_public() -> None:
    """pulse exports the reconnect machine and its StartAttempt action (docs/reconnect.md)."""
    from pulse import Backoff, Jitter

    machine = ReconnectMachine(Backoff(1.0, 2.0, 1.0, Jitter.NONE))
    assert machine.start(0.0) == [StartAttempt(attempt=0, total=1)]


# -- exports --------------------------------------------------------------------------------

PUBLIC_MODULES = [
    "pulse", "pulse.rpc", "pulse.registry", "pulse.plugins.tcp", "pulse.plugins.websocket",
    "pulse.plugins.lease", "pulse.plugins.zookeeper", "pulse.plugins.dubbo",
    "pulse.plugins.gossip", "pulse.paths",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_exported_name_resolves_without_a_warning(name: str) -> None:
    """Every name in a public module's __all__ exists and none of them is deprecated."""
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        pytest.fail(f"{name} has no __all__")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for attribute in exported:
            assert getattr(module, attribute) is not None, f"{name}.{attribute}"


def test_names_users_need_are_exported_where_they_look() -> None:
    """The names the issue found only in submodules are in their plugin's package."""
    wanted = {
        "pulse.plugins.websocket": {"serve_stream", "ServerSettings", "serve_websocket",
                                    "reconnecting_websocket", "echo"},
        "pulse.plugins.zookeeper": {"NotEmptyError", "BadVersionError", "connect"},
        "pulse.plugins.tcp": {"serve_tcp", "connect_tcp", "reconnecting_tcp", "echo"},
        "pulse.plugins.lease": {"connect", "LeaseServer", "LeaseSession"},
        "pulse.plugins.dubbo": {"DubboProvider", "open_consumer", "ChannelTiming"},
        "pulse.plugins.gossip": {"gossip_member", "connect", "tags_of"},
        "pulse.rpc": {"ChannelTiming", "Role"},
        "pulse": {"Backoff", "PhiAccrualFailureDetector", "AdaptiveDetector", "EventFeed",
                  "ReconnectMachine", "StartAttempt", "default_backoff"},
    }
    for name, names in wanted.items():
        missing = names - set(importlib.import_module(name).__all__)
        assert not missing, f"{name} does not export {sorted(missing)}"


PRIVATE_IMPORT = re.compile(r"^\s*(from|import)\s+pulse\._(core|trio)\b", re.MULTILINE)


def test_docs_and_examples_import_only_public_modules() -> None:
    """No docs page, README or example imports from pulse._core / pulse._driver."""
    sources = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "examples").glob("*.py")]
    offenders = [str(path.relative_to(ROOT)) for path in sources
                 if PRIVATE_IMPORT.search(path.read_text())]
    assert offenders == []
