"""Lease server authentication and access control (issue 10, row 6): tokens, per-client
credentials, own-presence-id registration, reserved prefixes (memory streams, virtual time)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from pulse.errors import AuthFailed, PulseError
from pulse.plugins.lease.client import connect
from pulse.plugins.lease.errors import AccessDenied
from pulse.plugins.lease.protocol import ErrorCode
from pulse.plugins.lease.server import AccessPolicy, ServerConfig

from ._lease_harness import Network, Raw

S1 = ("s1", 1)


@asynccontextmanager
async def network(**config: Any) -> AsyncIterator[Network]:
    async with trio.open_nursery() as nursery:
        net = Network(nursery)
        await net.start(S1, config=ServerConfig(tick=1.0, **config))
        yield net
        nursery.cancel_scope.cancel()


async def raw_connect(net: Network, **args: Any) -> tuple[Raw, Any]:
    raw = Raw(await net.open_stream(*S1))
    reply = await raw.call("connect", {"timeout": 30.0, **args})
    return raw, reply


async def test_reserved_prefix_cannot_be_registered_on_an_open_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nobody may register /pulse/presence or /pulse; agents keep registering under it."""
    async with network() as net:
        squatter, reply = await raw_connect(net)
        assert reply.error is None
        for key in ("/pulse/presence", "/pulse"):
            refused = await squatter.call("register", {"key": key})
            assert refused.error is ErrorCode.FORBIDDEN, key
        async with connect([S1], 30.0, open_stream=net.open_stream) as agent:
            await agent.register("/pulse/presence/a", b"")
            with pytest.raises(AccessDenied):
                await agent.register("/pulse/presence", b"")


async def test_shared_token_is_required_and_checked(autojump_clock: trio.testing.MockClock) -> None:
    """With a shared token, a connect without it or with a wrong one is refused (unauthenticated)."""
    policy = AccessPolicy(token=b"fleet-secret")
    async with network(access=policy) as net:
        _, reply = await raw_connect(net, client_id="a")
        assert reply.error is ErrorCode.UNAUTHENTICATED
        _, reply = await raw_connect(net, client_id="a", token=b"fleet-secreT")
        assert reply.error is ErrorCode.UNAUTHENTICATED
        _, reply = await raw_connect(net, client_id="a", token=b"fleet-secret")
        assert reply.error is None
        with pytest.raises(AuthFailed):
            async with connect([S1], 30.0, open_stream=net.open_stream, client_id="a",
                               token=b"wrong"):
                pass


async def test_authenticated_client_registers_only_its_own_presence_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Client "a" may register /pulse/presence/a, not /pulse/presence/b nor /other/x."""
    policy = AccessPolicy(credentials={"a": b"secret-a", "b": b"secret-b"})
    async with network(access=policy) as net, connect(
        [S1], 30.0, open_stream=net.open_stream, client_id="a", token=b"secret-a"
    ) as a:
        await a.register("/pulse/presence/a", b"me")
        for key in ("/pulse/presence/b", "/other/x", "/pulse/presence/a2"):
            with pytest.raises(AccessDenied):
                await a.register(key, b"")
        assert await a.get("/pulse/presence/b") is None
        assert await a.get("/pulse/presence/a") == b"me"


async def test_per_client_credentials_do_not_cross(autojump_clock: trio.testing.MockClock) -> None:
    """Client a's secret does not authenticate client b; an unknown client id is refused."""
    policy = AccessPolicy(credentials={"a": b"secret-a", "b": b"secret-b"})
    async with network(access=policy) as net:
        _, reply = await raw_connect(net, client_id="b", token=b"secret-a")
        assert reply.error is ErrorCode.UNAUTHENTICATED
        _, reply = await raw_connect(net, client_id="c", token=b"secret-a")
        assert reply.error is ErrorCode.UNAUTHENTICATED
        _, reply = await raw_connect(net, client_id="b", token=b"secret-b")
        assert reply.error is None


async def test_grants_widen_what_a_client_may_register(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client granted /services may register under it besides its own presence id."""
    policy = AccessPolicy(credentials={"svc": b"s"}, grants={"svc": ("/services",)})
    async with network(access=policy) as net, connect(
        [S1], 30.0, open_stream=net.open_stream, client_id="svc", token=b"s"
    ) as svc:
        await svc.register("/services/db/leader", b"")
        await svc.register("/pulse/presence/svc", b"")
        with pytest.raises(AccessDenied):
            await svc.register("/servicesX/a", b"")


async def test_reattach_requires_the_same_client(autojump_clock: trio.testing.MockClock) -> None:
    """Another authenticated client cannot take over a session with its id and password."""
    policy = AccessPolicy(credentials={"a": b"secret-a", "b": b"secret-b"})
    async with network(access=policy) as net:
        _, reply = await raw_connect(net, client_id="a", token=b"secret-a")
        grant = reply.result
        _, stolen = await raw_connect(net, client_id="b", token=b"secret-b",
                                      session_id=grant["session_id"], password=grant["password"])
        assert stolen.error is ErrorCode.FORBIDDEN


def test_access_denied_is_a_pulse_error() -> None:
    """AccessDenied is catchable as PulseError."""
    assert issubclass(AccessDenied, PulseError)
