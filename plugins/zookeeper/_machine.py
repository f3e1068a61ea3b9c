"""The ZooKeeper client's session machine: pulse's one session client machine
(:mod:`pulse._core.session_client`) plus what only ZooKeeper has.

Every timing rule, state and transition lives in :class:`pulse._core.session_client.SessionClient`
(shared with the ``pulse://`` lease client). This module adds ZooKeeper's wire details:

* a connection attempt carries a jute ``ConnectRequest`` with the session id (0 for a new
  session), its password (16 zero bytes for a new session), the requested timeout in
  milliseconds and the last zxid seen, so a server never serves a view older than this
  client already saw;
* a ``ConnectResponse`` with timeout 0 means the server refuses the session (expired,
  unknown, or a wrong password — ZooKeeper does not say which): the session is EXPIRED;
* the highest zxid of any reply is remembered.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from pulse._core import session_client as core
from pulse._core.session_client import (
    Disconnect,
    GaveUp,
    Phase,
    SendPing,
    StateChanged,
    hex_id,
)

from .jute import PASSWORD_LENGTH, ConnectRequest, ConnectResponse

Host = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Connect(core.Connect):
    """Open a connection to ``host`` and send ``request`` as the handshake."""

    request: ConnectRequest


Action = core.Action


class SessionMachine(core.SessionClient):
    """The shared session client machine, speaking ZooKeeper's handshake."""

    def __init__(
        self,
        hosts: Sequence[Host],
        session_timeout: float,
        rng: random.Random | None = None,
        *,
        read_only: bool = False,
        session_id: int | None = None,
        password: bytes = b"",
    ) -> None:
        super().__init__(hosts, session_timeout, rng, session_id=session_id or None,
                         password=password)
        self.read_only = read_only
        self.last_zxid = 0

    def _connect_action(self, host: Host) -> Connect:
        request = ConnectRequest(
            timeout_ms=max(1, round(self.requested_timeout * 1000)),
            session_id=self.session_id or 0,
            password=self.password or bytes(PASSWORD_LENGTH),
            last_zxid_seen=self.last_zxid,
            read_only=self.read_only,
        )
        return Connect(host, request)

    def handshake_done(self, now: float, response: ConnectResponse) -> list[Action]:
        """The server answered the ConnectRequest of the current attempt."""
        if response.expired:
            self._check(core.Input.CONNECTED)  # only an attempt can be answered
            self.last_recv = now
            reason = f"server {self._peer()} reports session {hex_id(self.session_id)} expired"
            return self.refused(now, reason)
        return self.connected(now, response.session_id, response.password,
                              response.timeout_ms / 1000.0)

    def received(self, now: float, zxid: int | None = None) -> None:
        """Bytes arrived on the current connection; ``zxid`` of a reply, if any."""
        super().received(now)
        if zxid is not None and zxid > 0:
            self.last_zxid = max(self.last_zxid, zxid)


__all__ = [
    "Action",
    "Connect",
    "Disconnect",
    "GaveUp",
    "Host",
    "Phase",
    "SendPing",
    "SessionMachine",
    "StateChanged",
]
