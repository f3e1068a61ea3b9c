"""The ``gossip://HOST:PORT`` plugin: be a memberlist/Serf member, or ping one.

* ``serve`` joins the group as a member bound at ``HOST:PORT`` (``pulse serve --listen
  gossip://…``); ``options.extra`` may hold ``name``, ``tags`` (a mapping) and ``join`` (a
  list of ``(host, port)``); the member's name defaults to ``HOST:PORT``.
* ``connect_session`` is the presence API without a server (:mod:`.presence`): the session
  is a member, its registrations are its tags.
* ``ping`` sends memberlist pings over UDP (addressed to whoever listens there) and yields
  one reply per ack: any memberlist agent (Serf, Consul, Nomad) answers.
"""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from pulse._core.swim_messages import Ack, Ping
from pulse._driver.pinger import ping_series
from pulse.errors import RemoteProtocolError
from pulse.presence import PresenceSession
from pulse.registry import Endpoint, PingOptions, PingReply, Plugin, ServeOptions

from .codec import decode_packet, encode_packet
from .driver import gossip_member

DEFAULT_PORT = 7946


async def _serve(endpoint: Endpoint, options: ServeOptions, *,
                 task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED) -> None:
    extra = options.extra
    name = str(extra.get("name") or f"{endpoint.host}:{endpoint.port}")
    async with gossip_member((endpoint.host, endpoint.port), name, tags=extra.get("tags") or {},
                             join=list(extra.get("join") or ())) as member:
        task_status.started([member.listener])
        await anyio.sleep_forever()


async def _ping(endpoint: Endpoint, options: PingOptions) -> AsyncIterator[PingReply]:
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    # A plain non-blocking socket waited on through anyio: the same code on every loop.
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        address = await anyio.getaddrinfo(endpoint.host, endpoint.port, family=family,
                                          type=socket.SOCK_DGRAM)
        sock.connect(address[0][4])
        me = sock.getsockname()
        base = random.getrandbits(31)
        peer = f"{endpoint.host}:{endpoint.port}"
        if options.on_connected is not None:
            options.on_connected(peer)

        async def probe(seq: int) -> None:
            seq_no = (base + seq) & 0xFFFFFFFF
            await _send(sock, encode_packet([Ping(seq_no, "", (me[0], me[1]), "pulse-ping")]))
            while True:
                try:
                    messages = decode_packet(await _receive(sock))
                except (ConnectionRefusedError, RemoteProtocolError):
                    continue  # nobody there yet (ICMP), or not memberlist: keep waiting
                if any(isinstance(m, Ack) and m.seq_no == seq_no for m in messages):
                    return

        async for reply in ping_series(options, peer, probe):
            yield reply
    finally:
        sock.close()


async def _send(sock: socket.socket, packet: bytes) -> None:
    """Send one datagram on a connected non-blocking UDP socket (waits while it is full)."""
    while True:
        try:
            sock.send(packet)
        except BlockingIOError:
            await anyio.wait_writable(sock)
            continue
        await anyio.lowlevel.checkpoint()
        return


async def _receive(sock: socket.socket) -> bytes:
    """The next datagram on a non-blocking UDP socket (an ICMP refusal raises
    ``ConnectionRefusedError``, as a blocking ``recv`` would)."""
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            await anyio.wait_readable(sock)
            continue
        await anyio.lowlevel.checkpoint()
        return data


def _connect_session(endpoint: Endpoint, *, session_timeout: float = 10.0,
                     **options: Any) -> AbstractAsyncContextManager[PresenceSession]:
    from .presence import connect_gossip_session

    return connect_gossip_session(endpoint, session_timeout=session_timeout, **options)


plugin = Plugin(
    name="gossip",
    description="SWIM/Lifeguard membership, wire-compatible with HashiCorp memberlist and Serf",
    serve=_serve,
    ping=_ping,
    connect_session=_connect_session,
    default_ports={"gossip": DEFAULT_PORT},
)
