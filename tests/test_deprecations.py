"""The old spellings pulse keeps for one release (``pulse/_deprecation.py``, listed in
``docs/api/vocabulary.md``): each still does what its new spelling does, warns exactly once
with a DeprecationWarning naming the new spelling, and the warning points at the caller's
file. Every other test speaks the current vocabulary: pyproject's ``filterwarnings`` turns
these warnings into errors outside ``pytest.warns``, and the last test here checks that the
filter catches pulse's messages and leaves third-party ones alone."""

from __future__ import annotations

import importlib
import re
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from pulse import FailureDetector, FixedTimeout, FrameTooLarge, HeartbeatPolicy, heartbeat
from pulse.actions import Action, Close
from pulse.testing import stream_pair
from tests.drivers.ws_fakes import FakeServer

THIS_FILE = Path(__file__).resolve()
ROOT = THIS_FILE.parents[1]
POLICY = HeartbeatPolicy(1.0, 3.0)
URL = "ws://example.test/feed"


@contextmanager
def warns_once(*spellings: tuple[str, str], at_caller: bool = True) -> Iterator[None]:
    """The block raises, for each ``(old, new)``, exactly one DeprecationWarning saying
    "<old> is deprecated; use <new>", and nothing else deprecated; each points at this file
    unless ``at_caller`` is False."""
    pattern = "|".join(re.escape(f"{old} is deprecated; use {new}") for old, new in spellings)
    with pytest.warns(DeprecationWarning, match=pattern) as record:
        yield
    seen = [str(w.message) for w in record if issubclass(w.category, DeprecationWarning)]
    assert sorted(seen) == sorted(f"{old} is deprecated; use {new}" for old, new in spellings)
    if at_caller:
        places = [Path(w.filename).resolve() for w in record
                  if issubclass(w.category, DeprecationWarning)]
        assert places == [THIS_FILE] * len(spellings)


def fixed(policy: HeartbeatPolicy) -> FailureDetector:
    """A detector factory: a fixed timeout at the policy's verdict time."""
    return FixedTimeout(policy.dead_after)


# -- pulse.codec ----------------------------------------------------------------------------


def test_message_decoder_max_message_size_is_max_frame_size() -> None:
    """MessageDecoder(max_message_size=) warns and bounds a frame like max_frame_size=."""
    from pulse.codec import MessageDecoder, encode_message

    with warns_once(("MessageDecoder(max_message_size=...)", "max_frame_size=")):
        decoder = MessageDecoder(max_message_size=10)
    assert decoder.max_frame_size == 10
    assert decoder.feed(encode_message(b"x" * 8)) == [b"x" * 8]  # a 10-byte body
    with pytest.raises(FrameTooLarge, match="11-byte body"):
        decoder.feed((11).to_bytes(4, "big"))


def test_message_decoder_max_message_size_attribute() -> None:
    """MessageDecoder.max_message_size warns and reads max_frame_size."""
    from pulse.codec import MessageDecoder

    decoder = MessageDecoder(max_frame_size=123)
    with warns_once(("MessageDecoder.max_message_size", "max_frame_size")):
        assert decoder.max_message_size == 123


@pytest.mark.parametrize("limit", [0, 2**32])
def test_message_decoder_old_keyword_is_validated_like_the_new_one(limit: int) -> None:
    """An out-of-range max_message_size= is the same ValueError as max_frame_size=."""
    from pulse.codec import MessageDecoder

    with (warns_once(("MessageDecoder(max_message_size=...)", "max_frame_size=")),
          pytest.raises(ValueError, match="max_frame_size")):
        MessageDecoder(max_message_size=limit)


def test_encode_message_max_message_size_is_max_frame_size() -> None:
    """encode_message(max_message_size=) warns and refuses a larger body like max_frame_size=."""
    from pulse.codec import MessageDecoder, encode_message
    from pulse.errors import LocalProtocolError

    with warns_once(("encode_message(max_message_size=...)", "max_frame_size=")):
        wire = encode_message(b"x" * 5, max_message_size=7)  # bin8: a 7-byte body
    assert MessageDecoder(max_frame_size=7).feed(wire) == [b"x" * 5]
    with (warns_once(("encode_message(max_message_size=...)", "max_frame_size=")),
          pytest.raises(LocalProtocolError, match="8 bytes exceeds the limit of 7")):
        encode_message(b"x" * 6, max_message_size=7)


# -- heartbeat(on_event=) -------------------------------------------------------------------


async def test_heartbeat_on_event_is_on_liveness(autojump_clock: trio.testing.MockClock) -> None:
    """heartbeat(on_event=) warns and receives the liveness actions, Close last, exactly as
    on_liveness= does on the other end of the same pair."""
    old: list[Action] = []
    new: list[Action] = []
    left, right = stream_pair()
    async with trio.open_nursery() as nursery:
        async def other_side() -> None:
            async with heartbeat(right, POLICY, peer_id="right", on_liveness=new.append) as conn:
                async for _ in conn:
                    pass

        nursery.start_soon(other_side)
        with warns_once(("heartbeat(on_event=...)", "on_liveness=")):
            async with heartbeat(left, POLICY, peer_id="left", on_event=old.append) as conn:
                await trio.sleep(5)
                assert not conn.closed
    assert old and isinstance(old[-1], Close)
    assert new and isinstance(new[-1], Close)


async def test_heartbeat_refuses_both_callback_spellings() -> None:
    """heartbeat(on_event=, on_liveness=) is a TypeError rather than a silent choice."""
    left, _right = trio.testing.memory_stream_pair()
    with pytest.raises(TypeError, match="both"):
        async with heartbeat(left, POLICY, on_event=print, on_liveness=print):
            pass


# -- pulse.plugins.tcp ----------------------------------------------------------------------


def test_tcp_echo_handler_is_echo() -> None:
    """pulse.plugins.tcp.echo_handler warns and is the echo function itself."""
    from pulse.plugins import tcp

    with warns_once(("pulse.plugins.tcp.echo_handler", "pulse.plugins.tcp.echo")):
        old = tcp.echo_handler
    assert old is tcp.echo


@pytest.mark.e2e
async def test_serve_tcp_with_a_positional_port_binds_that_port() -> None:
    """serve_tcp(handler, port) warns and still serves: on a port chosen here, an echo
    round trip over loopback."""
    from pulse.plugins.tcp import connect_tcp, echo, serve_tcp

    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def run(*, task_status: Any) -> None:
        await serve_tcp(echo, port, host="127.0.0.1", policy=POLICY, task_status=task_status)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with warns_once(("serve_tcp(handler, port)", "serve_tcp(handler, port=port)")):
                listeners = await nursery.start(run)
            assert listeners[0].socket.getsockname()[1] == port
            async with connect_tcp("127.0.0.1", port, POLICY) as conn:
                await conn.send("old")
                assert await conn.receive() == "old"
            nursery.cancel_scope.cancel()


async def test_serve_tcp_takes_one_positional_port_at_most() -> None:
    """serve_tcp(handler, port, more) is a TypeError, not a guess."""
    from pulse.plugins.tcp import echo, serve_tcp

    with pytest.raises(TypeError, match="positional"):
        await serve_tcp(echo, 1, 2)


# -- pulse.plugins.websocket ----------------------------------------------------------------


async def test_websocket_connect_is_reconnecting_websocket(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """pulse.plugins.websocket.connect warns and gives the reconnecting client: a round
    trip, with detector_factory= (also warned) building the connection's detector."""
    from pulse.plugins.websocket import connect

    built: list[HeartbeatPolicy] = []

    def factory(policy: HeartbeatPolicy) -> FailureDetector:
        built.append(policy)
        return fixed(policy)

    async with trio.open_nursery() as nursery:
        server = FakeServer(nursery)
        with warns_once(("pulse.plugins.websocket.connect",
                         "pulse.plugins.websocket.reconnecting_websocket")):
            client = connect(URL, policy=POLICY, opener=server.opener)
        async with client as ws:
            await ws.send("old name")
            assert await ws.receive() == "old name"
        with warns_once(("reconnecting_websocket(detector_factory=...)", "detector=")):
            from pulse.plugins.websocket import reconnecting_websocket

            async with reconnecting_websocket(URL, policy=POLICY, opener=server.opener,
                                              detector_factory=factory) as ws:
                await ws.wait_open()
        nursery.cancel_scope.cancel()
    assert [policy.interval for policy in built] == [POLICY.interval]


async def test_reconnecting_websocket_refuses_both_detector_spellings() -> None:
    """reconnecting_websocket(detector_factory=, detector=) is a TypeError."""
    from pulse.plugins.websocket import reconnecting_websocket

    with pytest.raises(TypeError, match="both"):
        async with reconnecting_websocket(URL, detector=fixed, detector_factory=fixed):
            pass


@pytest.mark.e2e
async def test_websocket_serve_is_serve_websocket() -> None:
    """serve(handler, host, port, detector_factory=) warns twice (the name and the keyword)
    and serves like serve_websocket(detector=): an echo over loopback, the detector built
    for the connection with the negotiated policy."""
    from pulse.plugins.websocket import WebSocketServer, echo, reconnecting_websocket, serve

    built: list[HeartbeatPolicy] = []

    def factory(policy: HeartbeatPolicy) -> FailureDetector:
        built.append(policy)
        return fixed(policy)

    async def run(*, task_status: Any) -> None:
        await serve(echo, "127.0.0.1", 0, policy=POLICY, detector_factory=factory,
                    task_status=task_status)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with warns_once(("pulse.plugins.websocket.serve(handler, host, port)",
                             "serve_websocket(handler, host=..., port=...)"),
                            ("serve(detector_factory=...)", "detector=")):
                server: WebSocketServer = await nursery.start(run)
            async with reconnecting_websocket(f"ws://127.0.0.1:{server.port}/",
                                              policy=POLICY) as ws:
                await ws.send("served")
                assert await ws.receive() == "served"
            nursery.cancel_scope.cancel()
    assert [policy.interval for policy in built] == [POLICY.interval]


async def test_websocket_serve_refuses_both_detector_spellings() -> None:
    """serve(detector_factory=, detector=) is a TypeError; no detector is built."""
    from pulse.plugins.websocket import echo, serve

    def never(policy: HeartbeatPolicy) -> FailureDetector:
        raise AssertionError("no detector is built when the call is refused")

    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="both"):
        await serve(echo, "127.0.0.1", 0, detector=never, detector_factory=never)


# -- pulse.plugins.dubbo --------------------------------------------------------------------


def test_dubbo_frame_decoder_max_body_size_is_max_frame_size() -> None:
    """dubbo FrameDecoder(max_body_size=) warns and refuses a larger announced body."""
    from pulse.plugins.dubbo import BodyTooLarge, FrameDecoder

    with warns_once(("FrameDecoder(max_body_size=...)", "max_frame_size=")):
        decoder = FrameDecoder(max_body_size=100)
    assert decoder.max_frame_size == 100
    with pytest.raises(BodyTooLarge):
        decoder.feed(bytes.fromhex("dabb c202 0000000000000001 00000065"))  # 101 bytes declared


async def test_dubbo_provider_and_consumer_max_body_size_is_max_frame_size() -> None:
    """DubboProvider / DubboConsumer(max_body_size=) warn and set max_frame_size."""
    from pulse.plugins.dubbo import DubboConsumer, DubboProvider
    from pulse.rpc import HeartbeatTimer

    timer = HeartbeatTimer()
    with warns_once(("DubboProvider(max_body_size=...)", "max_frame_size=")):
        provider = DubboProvider(timer, max_body_size=5000)
    with warns_once(("DubboConsumer(max_body_size=...)", "max_frame_size=")):
        consumer = DubboConsumer("127.0.0.1", 1, timer, max_body_size=6000)
    assert (provider.max_frame_size, consumer.max_frame_size) == (5000, 6000)


async def test_dubbo_open_consumer_max_body_size_is_max_frame_size() -> None:
    """open_consumer(max_body_size=) warns and the consumer it yields has that frame limit."""
    from pulse.plugins.dubbo import open_consumer

    async def unreachable() -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    with warns_once(("open_consumer(max_body_size=...)", "max_frame_size=")):
        async with open_consumer("127.0.0.1", 1, max_body_size=4321,
                                 connect=unreachable) as consumer:
            assert consumer.max_frame_size == 4321


@pytest.mark.e2e
async def test_dubbo_serve_option_max_body_size_is_max_frame_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dubbo:// serve option max_body_size warns and reaches the provider as its
    max_frame_size."""
    dubbo = importlib.import_module("pulse.plugins.dubbo")
    from pulse.registry import ServeOptions, parse_url

    limits: list[int] = []

    class Recording(dubbo.DubboProvider):  # type: ignore[name-defined,misc]
        def __init__(self, *args: Any, **options: Any) -> None:
            super().__init__(*args, **options)
            limits.append(self.max_frame_size)

    monkeypatch.setattr(dubbo, "DubboProvider", Recording)

    async def run(*, task_status: Any) -> None:
        await dubbo.serve(parse_url("dubbo://127.0.0.1:0"),
                          ServeOptions(interval=1.0, extra={"max_body_size": 2048}),
                          task_status=task_status)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with warns_once(("the dubbo serve option max_body_size", "max_frame_size")):
                await nursery.start(run)
            nursery.cancel_scope.cancel()
    assert limits == [2048]


# -- sessions: zookeeper and lease ----------------------------------------------------------


def test_zookeeper_connect_max_frame_is_max_frame_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """zookeeper.connect(max_frame=) warns and hands the value on as max_frame_size."""
    zookeeper = importlib.import_module("pulse.plugins.zookeeper")
    captured: list[int] = []

    class Recorder:
        def __init__(self, hosts: Any, **options: Any) -> None:
            captured.append(options["max_frame_size"])

    monkeypatch.setattr(zookeeper, "ZooKeeperSession", Recorder)
    with warns_once(("connect(max_frame=...)", "max_frame_size=")):
        zookeeper.connect("zk://127.0.0.1:2181/x", max_frame=1234)
    zookeeper.connect("zk://127.0.0.1:2181/x", max_frame_size=4321)
    assert captured == [1234, 4321]


def test_lease_session_max_message_size_is_max_frame_size() -> None:
    """LeaseSession(max_message_size=) warns and becomes the session's frame limit."""
    from pulse.plugins.lease import LeaseSession

    with warns_once(("LeaseSession(max_message_size=...)", "max_frame_size=")):
        session = LeaseSession([("127.0.0.1", 1)], max_message_size=4096)
    assert session._max_message_size == 4096
    assert LeaseSession([("127.0.0.1", 1)], max_frame_size=4096)._max_message_size == 4096


async def enter_lease_connect(monkeypatch: pytest.MonkeyPatch, **options: Any) -> int:
    """Enter lease.connect with ``options``, the session's network run replaced by a stub
    that reports it connected; return the session's frame limit."""
    from pulse.plugins import lease
    from pulse.plugins.lease import LeaseSession

    async def connected(self: LeaseSession, *, task_status: Any) -> None:
        task_status.started()

    async def closed(self: LeaseSession) -> None:
        await trio.lowlevel.checkpoint()

    monkeypatch.setattr(LeaseSession, "run", connected)
    monkeypatch.setattr(LeaseSession, "aclose", closed)
    async with lease.connect("pulse://127.0.0.1:1", **options) as session:
        return session._max_message_size


async def test_lease_connect_max_message_size_is_max_frame_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """lease.connect(max_message_size=) warns once and the session gets that frame limit,
    as with max_frame_size=."""
    with warns_once(("LeaseSession(max_message_size=...)", "max_frame_size="), at_caller=False):
        assert await enter_lease_connect(monkeypatch, max_message_size=2048) == 2048
    assert await enter_lease_connect(monkeypatch, max_frame_size=2048) == 2048


async def test_lease_connect_max_message_size_warning_points_at_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """lease.connect(max_message_size=)'s warning names the caller's file."""
    with warns_once(("LeaseSession(max_message_size=...)", "max_frame_size=")):
        await enter_lease_connect(monkeypatch, max_message_size=2048)


def test_lease_connect_session_is_lease_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """pulse.plugins.lease.connect_session warns and opens the session lease.connect would."""
    from pulse.plugins import lease
    from pulse.plugins.lease import client
    from pulse.registry import parse_url

    calls: list[tuple[list[tuple[str, int]], float, dict[str, Any]]] = []
    monkeypatch.setattr(client, "connect", lambda servers, timeout, **options:
                        calls.append((servers, timeout, options)))
    with warns_once(("pulse.plugins.lease.connect_session",
                     "pulse.plugins.lease.connect (or pulse.registry.connect_session)")):
        old = lease.connect_session
    old(parse_url("pulse://a:1,b:2"), session_timeout=3, token="t")
    lease.connect(parse_url("pulse://a:1,b:2"), session_timeout=3, token="t")
    assert calls[0] == calls[1] == ([("a", 1), ("b", 2)], 3, {"token": "t"})


# -- the filter that keeps the rest of the suite on the new names ---------------------------


def shim_filter() -> re.Pattern[str]:
    """The message pattern of pyproject's filterwarnings entry for pulse's shims, compiled as
    the warnings module does (case-insensitive, matched at the start)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entries = config["tool"]["pytest"]["ini_options"]["filterwarnings"]
    ours = [entry for entry in entries
            if entry.startswith("error:") and entry.endswith(":DeprecationWarning")]
    assert len(ours) == 1, entries
    return re.compile(ours[0].removeprefix("error:").removesuffix(":DeprecationWarning"), re.I)


def test_the_filter_catches_every_pulse_shim_and_no_third_party_warning() -> None:
    """The filterwarnings pattern matches each message pulse's shims produce and none of the
    similar DeprecationWarnings of the libraries pulse and its tests use."""
    from pulse._deprecation import deprecated

    pattern = shim_filter()
    messages = []
    for old, new in [("pulse.plugins.websocket.connect",
                      "pulse.plugins.websocket.reconnecting_websocket"),
                     ("heartbeat(on_event=...)", "on_liveness="),
                     ("serve_tcp(handler, port)", "serve_tcp(handler, port=port)"),
                     ("pulse.plugins.lease.connect_session",
                      "pulse.plugins.lease.connect (or pulse.registry.connect_session)")]:
        with pytest.warns(DeprecationWarning) as record:
            deprecated(old, new)
        messages.append(str(record[0].message))
    assert all(pattern.match(message) for message in messages), messages
    third_party = [
        "This function is deprecated; use `wait_readable` instead",  # anyio
        "Request.exception is deprecated; use ServerProtocol.handshake_exc instead",  # websockets
        "`HealthCheck.all()` is deprecated; use `list(HealthCheck)` instead.",  # hypothesis
        "trio.MultiError is deprecated since Trio 0.22.0; use BaseExceptionGroup instead",
        "datetime.datetime.utcnow() is deprecated and scheduled for removal",
    ]
    assert [message for message in third_party if pattern.match(message)] == []
