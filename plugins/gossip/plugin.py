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
    infos = await anyio.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_DGRAM)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    with sock:
        sock.connect(address)  # a UDP connect only sets the default peer: it never blocks
        me = sock.getsockname()
        base = random.getrandbits(31)
        peer = f"{endpoint.host}:{endpoint.port}"
        if options.on_connected is not None:
            options.on_connected(peer)

        async def probe(seq: int) -> None:
            seq_no = (base + seq) & 0xFFFFFFFF
            try:
                sock.send(encode_packet([Ping(seq_no, "", (me[0], me[1]), "pulse-ping")]))
            except (BlockingIOError, ConnectionRefusedError):
                pass  # a full buffer or an earlier ICMP refusal: the probe's timeout decides
            while True:
                await anyio.wait_readable(sock)
                try:
                    messages = decode_packet(sock.recv(65536))
                except (BlockingIOError, ConnectionRefusedError, RemoteProtocolError):
                    continue  # nobody there yet (ICMP), or not memberlist: keep waiting
                if any(isinstance(m, Ack) and m.seq_no == seq_no for m in messages):
                    return

        async for reply in ping_series(options, peer, probe):
            yield reply


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
