"""A lossy cable between two network namespaces, and pulse connections across it.

Shared by the end-to-end test (short) and ``benchmarks/lossy_link.py`` (the full scenario).
Servers listen in namespace ``b``, clients dial from namespace ``a``; everything runs in this
process (sockets are created inside the namespaces, then used by trio as usual). Random loss
is the iptables ``statistic`` match inside ``b`` on INPUT and OUTPUT, so each direction loses
the same share; a cut is :meth:`~tests.netns.NetnsPair.pull_cable` on ``b``.

Each connection is recorded on both sides (client and server) with when it opened and when
its side declared the peer dead. A death before the cut is a false death; after the cut, the
time from the cut to each side's verdict is the detection time.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from pulse._core.lossy import LossyLink, LossyLinkJudge
from pulse._core.policy import HeartbeatPolicy
from pulse._driver.connection import heartbeat
from pulse.actions import Action, PeerDead
from pulse.errors import PulseError
from pulse.plugins.websocket import ClientState, StateChange, reconnecting_websocket
from pulse.plugins.websocket.server import ServerConnection, ServerSettings, serve_stream
from tests.netns import NetnsPair

INTERVAL = 1.0
TIMEOUT = 5.0
RECONNECT_PAUSE = 0.5


def policy_for(lossy: bool, interval: float = INTERVAL, timeout: float = TIMEOUT) -> HeartbeatPolicy:
    """The issue's policy (interval 1 s, timeout 5 s), with or without the lossy profile."""
    return HeartbeatPolicy(interval, timeout, lossy=LossyLink() if lossy else None)


@dataclass(slots=True)
class Side:
    """One side (client or server) of one connection."""

    variant: str
    role: str
    opened_at: float
    died_at: float | None = None
    closed_at: float | None = None
    judge: LossyLinkJudge | None = None
    notify: Callable[[], None] = lambda: None

    def dead(self) -> None:
        """This side declared its peer dead (now)."""
        if self.died_at is None:
            self.died_at = trio.current_time()
            self.notify()

    def closed(self) -> None:
        """This side's connection ended for another reason (now)."""
        if self.died_at is None and self.closed_at is None:
            self.closed_at = trio.current_time()
            self.notify()


@dataclass(slots=True)
class Variant:
    """Connections of one transport under one policy."""

    transport: str  # "tcp" or "ws"
    lossy: bool
    connections: int
    sides: list[Side] = field(default_factory=list)
    port: int = 0

    @property
    def name(self) -> str:
        """``tcp:// lossy`` and the like."""
        return f"{self.transport}:// {'lossy' if self.lossy else 'default'}"

    @property
    def policy(self) -> HeartbeatPolicy:
        """The policy both sides use."""
        return policy_for(self.lossy)

    def deaths_before(self, moment: float) -> list[Side]:
        """Sides that declared their peer dead before ``moment`` (false deaths before a cut)."""
        return [s for s in self.sides if s.died_at is not None and s.died_at < moment]

    def open_at(self, moment: float) -> list[Side]:
        """Sides whose connection was open (not dead, not closed) at ``moment``."""
        return [s for s in self.sides if s.opened_at <= moment
                and (s.died_at is None or s.died_at >= moment)
                and (s.closed_at is None or s.closed_at >= moment)]

    def withheld(self) -> int:
        """Verdicts the lossy-link judges withheld, over every side."""
        return sum(s.judge.withheld for s in self.sides if s.judge is not None)

    def longest_silence(self) -> float:
        """The longest silence a lossy-link judge withheld a verdict through."""
        return max((s.judge.longest_silence for s in self.sides if s.judge is not None),
                   default=0.0)

    def worst_ack_gap(self) -> float:
        """The longest gap between the peer's segments seen while a verdict was withheld."""
        gaps = [s.judge.worst_ack_gap for s in self.sides if s.judge is not None]
        return max(gaps, default=0.0)


def _on_dead(side: Side) -> Callable[[Action], None]:
    def record(action: Action) -> None:
        if isinstance(action, PeerDead):
            side.dead()
    return record


async def _socket_in(net: NetnsPair, ns: str) -> trio.socket.SocketType:
    sock = await trio.to_thread.run_sync(net.socket, ns)
    return trio.socket.from_stdlib_socket(sock)


async def _dial(net: NetnsPair, port: int, timeout: float) -> trio.SocketStream:
    sock = await _socket_in(net, net.a)
    try:
        with trio.fail_after(timeout):
            await sock.connect((net.address(net.b), port))
    except BaseException:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return trio.SocketStream(sock)


async def _listen(net: NetnsPair) -> trio.SocketListener:
    sock = await _socket_in(net, net.b)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind((net.address(net.b), 0))
    sock.listen(64)
    return trio.SocketListener(sock)


class Fleet:
    """Servers and reconnecting clients for each variant, until :meth:`stop`."""

    def __init__(self, net: NetnsPair, variants: list[Variant]) -> None:
        self.net = net
        self.variants = variants
        self.redial = True  # cleared at the cut: no new connections afterwards
        self._scope = trio.CancelScope()
        self._changed = trio.Event()

    def _poke(self) -> None:
        self._changed.set()

    async def changed(self) -> None:
        """Wait until some side opened, died or closed."""
        await self._changed.wait()
        self._changed = trio.Event()

    def _side(self, variant: Variant, role: str) -> Side:
        return Side(variant.name, role, trio.current_time(), notify=self._poke)

    def _opened(self, variant: Variant, side: Side) -> None:
        side.opened_at = trio.current_time()
        variant.sides.append(side)
        self._poke()

    def stop(self) -> None:
        """Cancel every server and client."""
        self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start everything; ``task_status.started()`` once every connection is open."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                for variant in self.variants:
                    listener = await _listen(self.net)
                    variant.port = listener.socket.getsockname()[1]
                    serve = self._serve_tcp if variant.transport == "tcp" else self._serve_ws
                    nursery.start_soon(trio.serve_listeners, partial_serve(serve, variant),
                                       [listener])
                    for _ in range(variant.connections):
                        dial = self._client_tcp if variant.transport == "tcp" else self._client_ws
                        nursery.start_soon(dial, variant)
                with trio.fail_after(30):
                    while any(len(v.open_at(trio.current_time())) < 2 * v.connections
                              for v in self.variants):
                        await self.changed()
                task_status.started()

    # -- tcp -----------------------------------------------------------------------------

    async def _serve_tcp(self, variant: Variant, stream: trio.SocketStream) -> None:
        side = self._side(variant, "server")
        try:
            async with heartbeat(stream, variant.policy, peer_id="server",
                                 on_liveness=_on_dead(side)) as conn:
                side.judge = conn._liveness.lossy
                self._opened(variant, side)
                async for _ in conn:
                    pass
        except PulseError:
            pass
        finally:
            side.closed()

    async def _client_tcp(self, variant: Variant) -> None:
        while self.redial:
            try:
                stream = await _dial(self.net, variant.port, timeout=10)
            except (OSError, trio.TooSlowError):
                await trio.sleep(RECONNECT_PAUSE)
                continue
            side = self._side(variant, "client")
            try:
                async with heartbeat(stream, variant.policy, peer_id="client",
                                     handshake_timeout=10, on_liveness=_on_dead(side)) as conn:
                    side.judge = conn._liveness.lossy
                    self._opened(variant, side)
                    async for _ in conn:
                        pass
            except PulseError:
                pass
            finally:
                side.closed()
            await trio.sleep(RECONNECT_PAUSE)

    # -- ws ------------------------------------------------------------------------------

    async def _serve_ws(self, variant: Variant, stream: trio.SocketStream) -> None:
        async def handler(conn: ServerConnection) -> None:
            side = self._side(variant, "server")
            side.judge = conn._session.liveness.lossy
            self._opened(variant, side)
            async for _ in conn:
                pass
            if conn.close_reason is not None and conn.close_reason.startswith("peer timeout"):
                side.dead()
            else:
                side.closed()

        settings = ServerSettings(policy=variant.policy, handshake_timeout=10.0)
        await serve_stream(stream, handler, settings)

    async def _client_ws(self, variant: Variant) -> None:
        current: list[Side] = []

        async def opener(host: str, port: int, context: Any, server_hostname: str) -> trio.abc.Stream:
            if not self.redial:
                raise OSError("no new connections after the cut")
            return await _dial(self.net, port, timeout=10)

        async def on_connect(handle: Any) -> None:
            side = self._side(variant, "client")
            side.judge = handle._session.liveness.lossy
            self._opened(variant, side)
            current[:] = [side]

        def on_liveness(action: Action) -> None:
            if current:
                _on_dead(current[0])(action)

        def on_event(change: StateChange) -> None:
            # The connection ended (the server's verdict, a lost link): the side is closed.
            if current and change.state is not ClientState.OPEN:
                current.pop().closed()

        url = f"ws://{self.net.address(self.net.b)}:{variant.port}/"
        async with reconnecting_websocket(url, policy=variant.policy, on_connect=on_connect,
                                          on_liveness=on_liveness, on_event=on_event, opener=opener,
                                          handshake_timeout=10):
            await trio.sleep_forever()


def partial_serve(serve: Callable[[Variant, trio.SocketStream], Any],
                  variant: Variant) -> Callable[[trio.SocketStream], Any]:
    """``serve`` bound to ``variant``, as ``trio.serve_listeners`` wants a one-argument handler."""
    async def handler(stream: trio.SocketStream) -> None:
        await serve(variant, stream)
    return handler


@dataclass(slots=True)
class Outcome:
    """What one run measured, per variant."""

    false_deaths: dict[str, int]
    detection: dict[str, list[float | None]]  # seconds from the cut to each open side's verdict
    withheld: dict[str, int]  # verdicts the lossy-link judges withheld before the cut
    worst_ack_gap: dict[str, float]  # longest gap between the peer's segments, before the cut
    longest_silence: dict[str, float]  # longest silence a verdict was withheld through
    loss_seconds: float


async def run_scenario(
    net: NetnsPair, variants: list[Variant], *, loss: float, periods: list[float],
    pause: float, cut_window: float, progress: Callable[[str], None] | None = None,
) -> Outcome:
    """Open every variant's connections, apply ``loss`` for each of ``periods`` (seconds,
    ``pause`` of clean link between them), keep the loss on and pull the cable, then watch
    ``cut_window`` seconds for the verdicts."""
    say = progress or (lambda _text: None)
    fleet = Fleet(net, variants)
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        say("all connections open")
        for number, seconds in enumerate(periods, 1):
            net.lose(net.b, loss)
            say(f"loss period {number}: {loss:.0%} both ways for {seconds:g} s")
            await trio.sleep(seconds)
            if number < len(periods):
                net.stop_losing(net.b)
                await trio.sleep(pause)
        fleet.redial = False
        cut_at = trio.current_time()
        open_at_cut = {v.name: v.open_at(cut_at) for v in variants}
        withheld = {v.name: v.withheld() for v in variants}
        worst_gap = {v.name: v.worst_ack_gap() for v in variants}
        longest = {v.name: v.longest_silence() for v in variants}
        net.pull_cable(net.b)
        say(f"cable cut; watching {cut_window:g} s")
        with trio.move_on_after(cut_window):
            while any(s.died_at is None and s.closed_at is None
                      for sides in open_at_cut.values() for s in sides):
                await fleet.changed()
        fleet.stop()
    net.restore_cable(net.b)
    net.stop_losing(net.b)
    return Outcome(
        false_deaths={v.name: len(v.deaths_before(cut_at)) for v in variants},
        detection={name: [None if s.died_at is None else s.died_at - cut_at for s in sides]
                   for name, sides in open_at_cut.items()},
        withheld=withheld,
        worst_ack_gap=worst_gap,
        longest_silence=longest,
        loss_seconds=math.fsum(periods),
    )
