"""The trio driver of one gossip member: the pure SWIM machine on the shared engine.

* **UDP** — one non-blocking socket in the engine's readiness set. Each wake-up reads up to
  :data:`MAX_PACKETS_PER_WAKEUP` datagrams (``recvfrom`` until ``BlockingIOError``), decodes
  them with the memberlist codec and hands every message to the machine; packets go out with a
  non-blocking ``sendto`` (a full socket buffer drops the packet, as UDP would).
* **Timers** — the member itself is the engine's timer client: ``next_deadline`` is the
  machine's, ``handle_timer(now)`` runs the machine and carries out its actions synchronously.
  There is no timing task and no deadline of the driver's own, except the bound on a stream's
  connect/IO (``stream_timeout``) and a TCP ping's deadline, which the machine chooses.
* **TCP** — a listener on the same port answers push-pull and TCP-fallback pings (one short
  task per stream: they are rare); outgoing push-pulls and TCP pings are short tasks too.

Use it through :func:`gossip_member`::

    async with gossip_member(bind=("127.0.0.1", 7946), name="a", tags={"role": "web"},
                             join=[("127.0.0.1", 7947)]) as member:
        print([m.name for m in member.members()])
        async for event in member.events():
            ...

Leaving the block leaves the group gracefully (a ``dead`` about ourselves, gossiped for
``leave_propagate`` seconds) before the sockets close.
"""

from __future__ import annotations

import errno
import random
import socket
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import trio

from pulse._core.bounded import BoundedDeque
from pulse._core.swim import (
    Member,
    MemberEvent,
    OpenPushPull,
    SendPacket,
    StreamReply,
    Swim,
    SwimAction,
    SwimConfig,
    TcpPing,
    UserMessage,
)
from pulse._core.swim_messages import (
    Ack,
    Addr,
    ErrResp,
    Message,
    NodeState,
    Ping,
    PushPull,
    UserMsg,
)
from pulse._driver.engine import Engine, current_engine
from pulse._driver.phase import Phase, bounded
from pulse._driver.streams import Listener, SocketStream, dial, listener_from_socket, serve_listeners
from pulse._driver.util import background_nursery
from pulse._log import get_logger
from pulse.errors import NoServerReachable, RemoteProtocolError

from .codec import (
    GossipProtocolError,
    StreamDecoder,
    decode_packet,
    decode_serf_tags_raw,
    encode_packet,
    encode_serf_leave,
    encode_serf_tags,
    encode_stream,
    is_compressed_packet,
    serf_lamport_time,
)

__all__ = [
    "MAX_PACKETS_PER_WAKEUP",
    "GossipJoinError",
    "GossipMember",
    "gossip_member",
    "member_state_name",
    "raw_tags_of",
    "tags_of",
]

_R = TypeVar("_R")
log = get_logger("pulse.gossip")

#: Datagrams read per engine wake-up at most (the rest wait for the next pass).
MAX_PACKETS_PER_WAKEUP = 64
#: Largest datagram accepted.
MAX_PACKET = 65536
#: Member events buffered per subscriber before the oldest are dropped.
EVENT_BUFFER = 4096
#: Peer addresses remembered as compressing (least recently heard from forgotten first).
MAX_COMPRESSING_PEERS = 4096


class GossipJoinError(NoServerReachable):
    """No seed answered the join (push-pull), within ``join_timeout`` when one is given."""


def tags_of(member: Member) -> dict[str, str]:
    """A member's Serf tags (an empty dict when its metadata is not Serf's encoding; bytes
    that are not UTF-8 are shown with replacement characters)."""
    return {k: v.decode("utf-8", "replace") for k, v in raw_tags_of(member).items()}


def raw_tags_of(member: Member) -> dict[str, bytes]:
    """A member's Serf tags with their values as bytes (empty when not Serf's encoding)."""
    if not member.meta:
        return {}
    try:
        return decode_serf_tags_raw(member.meta)
    except GossipProtocolError:
        return {}


@dataclass(slots=True)
class _Counters:
    packets_in: int = 0
    packets_out: int = 0
    packets_dropped: int = 0
    bad_packets: int = 0
    packets_compressed_in: int = 0
    packets_compressed_out: int = 0
    streams_in: int = 0
    streams_out: int = 0
    stream_errors: int = 0
    events_dropped: int = 0


class _Subscriber:
    __slots__ = ("closed", "queue", "wakeup")

    def __init__(self) -> None:
        # EVENT_BUFFER events at most: _publish drops the oldest (counted) to make room.
        self.queue: BoundedDeque[MemberEvent] = BoundedDeque(EVENT_BUFFER,
                                                             "a subscriber's member events")
        self.wakeup = anyio.Event()
        self.closed = False


class GossipMember:
    """One member: the SWIM machine, its UDP socket, TCP listener and subscribers.

    Built by :func:`gossip_member`; the engine calls :meth:`handle_timer` and
    :meth:`on_readable`, the application the other public methods.
    """

    def __init__(self, swim: Swim, udp: socket.socket, engine: Engine, nursery: anyio.abc.TaskGroup,
                 *, stream_timeout: float) -> None:
        self.swim = swim
        self._udp = udp
        self._engine = engine
        self._nursery = nursery
        self._stream_timeout = stream_timeout
        self._subscribers: list[_Subscriber] = []
        #: Events before the first subscriber (our own join, the members the join found).
        self._backlog: deque[MemberEvent] | None = deque(maxlen=EVENT_BUFFER)
        self._leave_until: float | None = None
        self._left = anyio.Event()
        self._failed: BaseException | None = None
        self.counters = _Counters()
        #: The highest Serf Lamport time seen (in Serf's gossip and push-pull state).
        self.serf_clock = 0
        #: The TCP listener (set by :func:`gossip_member`).
        self.listener: Listener | None = None
        #: Peers that send us LZW-compressed packets or streams; we compress towards them.
        self._compressing: OrderedDict[Addr, None] = OrderedDict()

    # ------------------------------------------------------------------ queries

    @property
    def name(self) -> str:
        """This member's name."""
        return self.swim.name

    @property
    def addr(self) -> Addr:
        """The address this member announces (UDP and TCP)."""
        return self.swim.config.addr

    def members(self) -> list[Member]:
        """Every member in the group as we see it, alive or suspect (ourselves included)."""
        return self.swim.alive_members()

    def all_members(self) -> list[Member]:
        """Every member we know, failed and left ones included (until they are reaped)."""
        return self.swim.members()

    def compresses(self, addr: Addr) -> bool:
        """True when the peer at ``addr`` was seen compressing, so we compress towards it."""
        return addr in self._compressing

    def _peer_compresses(self, addr: Addr) -> None:
        self._compressing[addr] = None
        self._compressing.move_to_end(addr)
        if len(self._compressing) > MAX_COMPRESSING_PEERS:
            self._compressing.popitem(last=False)

    async def events(self) -> AsyncIterator[MemberEvent]:
        """Membership changes from now on (join, alive, suspect, failed, left, update).

        The first iterator also gets the events from before it: our own join and those of
        the members the join found.
        """
        sub = _Subscriber()
        if self._backlog is not None:
            sub.queue.extend(self._backlog)
            self._backlog = None
        self._subscribers.append(sub)
        try:
            while True:
                while sub.queue:
                    yield sub.queue.popleft()
                if sub.closed:
                    return
                await sub.wakeup.wait()
                sub.wakeup = anyio.Event()
        finally:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    # ------------------------------------------------------------------ application actions

    async def update_tags(self, tags: Mapping[str, str | bytes]) -> None:
        """Replace our Serf tags; the change is gossiped to the group (a bytes value travels
        as a raw string)."""
        meta = encode_serf_tags(tags)
        now = self._engine.now()
        self._run_actions(now, self.swim.update_meta(now, meta))
        await anyio.lowlevel.checkpoint()

    async def join(self, seeds: Iterable[Addr]) -> int:
        """Push-pull with every seed at once; the number that answered."""
        seeds = list(seeds)
        if not seeds:
            return 0
        answered = 0
        actions = self.swim.join(self._engine.now(), seeds)

        async def one(action: OpenPushPull) -> None:
            nonlocal answered
            if await self._push_pull(action):
                answered += 1

        async with anyio.create_task_group() as nursery:
            for action in actions:
                if isinstance(action, OpenPushPull):
                    nursery.start_soon(one, action)
        return answered

    async def leave(self, propagate: float) -> None:
        """Announce our graceful leave and keep gossiping it for ``propagate`` seconds."""
        if self.swim.has_left:
            return
        now = self._engine.now()
        self._send_serf_leave()
        self._run_actions(now, self.swim.leave(now))
        self._leave_until = now + propagate
        self._engine.watch(self)
        await self._left.wait()

    # ------------------------------------------------------------------ engine callbacks

    def next_deadline(self) -> float | None:
        """The machine's next deadline (or the end of the leave's gossip)."""
        if self._failed is not None:
            return None
        deadline = self.swim.next_deadline()
        if self._leave_until is not None:
            deadline = self._leave_until if deadline is None else min(deadline, self._leave_until)
        return deadline

    def handle_timer(self, now: float) -> None:
        """Run the machine's timers and carry out what they decided."""
        self._run_actions(now, self.swim.handle_timer(now))
        if self._leave_until is not None and now >= self._leave_until:
            self._leave_until = None
            self._left.set()

    def timer_failed(self, exc: BaseException) -> None:
        """The engine dropped us after ``exc``: stop, and wake everyone waiting."""
        self._failed = exc
        log.error("gossip_member_failed", name=self.name, error=repr(exc))
        self._left.set()
        self._close_subscribers()

    def on_readable(self, now: float) -> None:
        """Read the datagrams waiting on the UDP socket (a bounded number) and act on them."""
        swim = self.swim
        for _ in range(MAX_PACKETS_PER_WAKEUP):
            try:
                data, from_ = self._udp.recvfrom(MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # ICMP port unreachable from an earlier sendto surfaces here on Linux.
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                raise
            self.counters.packets_in += 1
            try:
                messages = decode_packet(data)
            except RemoteProtocolError as exc:
                self.counters.bad_packets += 1
                log.debug("gossip_bad_packet", name=self.name, peer=f"{from_[0]}:{from_[1]}",
                          error=str(exc))
                continue
            addr: Addr = (from_[0], from_[1])
            if is_compressed_packet(data):
                self.counters.packets_compressed_in += 1
                self._peer_compresses(addr)
            for msg in messages:
                self._run_actions(now, swim.packet_received(now, addr, msg))
        self._engine.watch(self)

    # ------------------------------------------------------------------ actions

    def _run_actions(self, now: float, actions: list[SwimAction]) -> None:
        for action in actions:
            if isinstance(action, SendPacket):
                self._send(action)
            elif isinstance(action, MemberEvent):
                self._publish(action)
            elif isinstance(action, OpenPushPull):
                self._nursery.start_soon(self._push_pull, action)
            elif isinstance(action, TcpPing):
                self._nursery.start_soon(self._tcp_ping, action)
            elif isinstance(action, UserMessage):
                # Serf's own intents, events and queries: only their Lamport time matters here.
                self._witness_serf(action.payload)
            # StreamReply is answered by the stream handler.
        self._engine.watch(self)

    def _send(self, action: SendPacket) -> None:
        try:
            # memberlist's rule: compress, keep it only when smaller; here only towards peers
            # that compress themselves (a pulse-only group stays uncompressed).
            compress = action.addr in self._compressing
            data = encode_packet(action.messages, crc=action.crc, compress=compress)
            self._udp.sendto(data, action.addr)
            self.counters.packets_out += 1
            if compress and is_compressed_packet(data):
                self.counters.packets_compressed_out += 1
        except (BlockingIOError, InterruptedError):
            self.counters.packets_dropped += 1
        except OSError as exc:
            self.counters.packets_dropped += 1
            log.debug("gossip_send_failed", name=self.name, peer=f"{action.addr[0]}:{action.addr[1]}",
                      error=str(exc))

    def _witness_serf(self, payload: bytes) -> None:
        ltime = serf_lamport_time(payload, self.name)
        if ltime > self.serf_clock:
            self.serf_clock = ltime

    def _send_serf_leave(self) -> None:
        """Tell every member (Serf agents among them) that we are leaving on purpose, so Serf
        records us as *left*, not *failed*, when memberlist's leave follows."""
        self.serf_clock += 1
        payload = encode_serf_leave(self.serf_clock, self.name)
        for m in self.swim.alive_members():
            if m.name != self.name:
                crc = len(m.vsn) > 1 and m.vsn[1] >= 5
                self._send(SendPacket(m.addr, (UserMsg(payload),), crc))

    def _publish(self, event: MemberEvent) -> None:
        log.info("gossip_member_event", name=self.name, kind=event.kind.value, member=event.member.name)
        if self._backlog is not None:
            self._backlog.append(event)
        for sub in self._subscribers:
            if len(sub.queue) >= EVENT_BUFFER:
                sub.queue.popleft()
                self.counters.events_dropped += 1
            sub.queue.append(event)
            sub.wakeup.set()

    def _close_subscribers(self) -> None:
        for sub in self._subscribers:
            sub.closed = True
            sub.wakeup.set()

    # ------------------------------------------------------------------ streams

    async def _stream(self, addr: Addr, timeout: float, work: Callable[[], Awaitable[_R]],
                      ) -> _R | None:
        """Run one stream exchange with ``addr`` (either direction) as an exchange phase of
        at most ``timeout`` seconds; None when it fails or runs out of time (counted in
        ``stream_errors``, logged at debug level: a peer may well be gone)."""
        error = "timed out"
        with bounded(Phase.EXCHANGE, timeout, move_on=True):
            try:
                return await work()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                    RemoteProtocolError) as exc:
                error = str(exc)
        self.counters.stream_errors += 1
        log.debug("gossip_stream_failed", name=self.name, peer=f"{addr[0]}:{addr[1]}",
                  error=error)
        return None

    async def _exchange(self, addr: Addr, message: Ping | PushPull,
                        deadline: float | None) -> Message | None:
        """Open a stream to ``addr``, send ``message``, read one reply (None on any failure)."""
        self.counters.streams_out += 1
        timeout = self._stream_timeout
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - self._engine.now()))

        async def ask() -> Message | None:
            async with await dial(addr[0], addr[1]) as stream:
                await stream.send_all(encode_stream(message, compress=addr in self._compressing))
                reply, compressed = await _read_message(stream)
                if compressed:
                    self._peer_compresses(addr)
                return reply

        return await self._stream(addr, timeout, ask)

    async def _push_pull(self, action: OpenPushPull) -> bool:
        reply = await self._exchange(action.addr, action.state, None)
        if not isinstance(reply, PushPull):
            return False
        self._witness_serf(reply.user_state)
        now = self._engine.now()
        self._run_actions(now, self.swim.stream_reply_received(now, action.addr, reply))
        return True

    async def _tcp_ping(self, action: TcpPing) -> None:
        reply = await self._exchange(action.addr, action.ping, action.deadline)
        if isinstance(reply, Ack | ErrResp):
            now = self._engine.now()
            self._run_actions(now, self.swim.stream_reply_received(now, action.addr, reply))

    async def serve_stream(self, stream: SocketStream) -> None:
        """Answer one stream a peer opened (push-pull, TCP ping or user message)."""
        self.counters.streams_in += 1
        try:
            peer = stream.socket.getpeername()
        except OSError:  # the peer is gone already
            await stream.aclose()
            return
        addr: Addr = (peer[0], peer[1])

        async def answer() -> None:
            msg, compressed = await _read_message(stream)
            if msg is None:
                return
            if isinstance(msg, PushPull):
                self._witness_serf(msg.user_state)
            now = self._engine.now()
            actions = self.swim.stream_received(now, addr, msg)
            if actions and isinstance(actions[0], StreamReply):
                # Answer in kind: compressed to a peer that compressed its request.
                await stream.send_all(encode_stream(actions[0].message, compress=compressed))
                actions = actions[1:]
            self._run_actions(self._engine.now(), actions)

        async with stream:
            await self._stream(addr, self._stream_timeout, answer)


async def _read_message(stream: trio.abc.ReceiveStream) -> tuple[Message | None, bool]:
    """One stream message (None at EOF first) and whether it came compressed."""
    decoder = StreamDecoder()
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return None, decoder.compressed
        msg = decoder.feed(bytes(chunk))
        if msg is not None:
            return msg, decoder.compressed


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP socket and a listening TCP socket on the same port (a free one when ``port`` is 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(20 if port == 0 else 1):
        tcp = socket.socket(family, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((host, port))
            chosen = tcp.getsockname()[1]
            udp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                udp.bind((host, chosen))
            except OSError:
                udp.close()
                if port != 0:
                    raise
                tcp.close()
                continue
        except BaseException:
            tcp.close()
            raise
        tcp.listen(128)
        tcp.setblocking(False)
        udp.setblocking(False)
        return udp, tcp
    raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {host}")


@asynccontextmanager
async def gossip_member(
    bind: Addr,
    name: str,
    *,
    tags: Mapping[str, str | bytes] | None = None,
    join: Iterable[Addr] = (),
    advertise: Addr | None = None,
    config: SwimConfig | None = None,
    stream_timeout: float = 10.0,
    leave_propagate: float = 1.0,
    join_timeout: float = 0.0,
    rng: random.Random | None = None,
) -> AsyncIterator[GossipMember]:
    """Be a member of a memberlist/Serf group while the block runs.

    ``bind`` is the UDP and TCP address (port 0 picks a free one); ``advertise`` the address
    announced to others (default: the bound one, which must then not be a wildcard). ``config``
    overrides the machine's tunables (its ``name``, ``addr`` and ``meta`` are set here). With
    ``join`` seeds, at least one must answer or :class:`GossipJoinError` is raised; the join
    is retried (every 0.2 s at most) until ``join_timeout`` seconds have passed.
    """
    udp, tcp = _bind_pair(bind[0], bind[1])
    try:
        port = udp.getsockname()[1]
        addr = advertise or (bind[0], port)
        if addr[0] in ("0.0.0.0", "::", ""):
            raise ValueError("binding a wildcard address needs an explicit advertise address")
        meta = encode_serf_tags(tags or {})
        base = config or SwimConfig(name=name, addr=addr)
        cfg = replace(base, name=name, addr=addr, meta=meta)
        engine = current_engine()
        if not engine.can_read:
            raise RuntimeError("the gossip driver needs the engine's readiness set (epoll)")
        now = engine.now()
        swim = Swim(cfg, rng or random.Random(), now)
        listener = listener_from_socket(tcp)
    except BaseException:
        udp.close()
        tcp.close()
        raise
    join_error: GossipJoinError | None = None
    async with background_nursery() as nursery:
        member = GossipMember(swim, udp, engine, nursery, stream_timeout=stream_timeout)
        member.listener = listener
        engine.add_reader(udp, member)
        engine.watch(member)
        try:
            nursery.start_soon(serve_listeners, member.serve_stream, [listener])
            seeds = list(join)
            give_up = engine.now() + join_timeout
            answered = await member.join(seeds) if seeds else 1
            while answered == 0 and engine.now() < give_up:
                await engine.sleep(min(0.2, give_up - engine.now()))
                answered = await member.join(seeds)
            if answered == 0:
                # Raised below, outside the nursery, so the caller gets it unwrapped.
                join_error = GossipJoinError(
                    "no seed answered the join: " + ", ".join(f"{h}:{p}" for h, p in seeds))
            else:
                yield member
                if member._failed is None:
                    with anyio.CancelScope(shield=True):
                        await member.leave(leave_propagate)
        finally:
            engine.forget(member)
            engine.remove_reader(udp)
            member._close_subscribers()
            udp.close()
            listener.socket.close()
            nursery.cancel_scope.cancel()
    if join_error is not None:
        raise join_error


def member_state_name(member: Member) -> str:
    """``alive``, ``suspect``, ``failed`` or ``left`` for a member snapshot."""
    return {NodeState.ALIVE: "alive", NodeState.SUSPECT: "suspect", NodeState.DEAD: "failed",
            NodeState.LEFT: "left"}[member.state]

