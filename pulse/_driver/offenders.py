"""A server's door for the clients it closed for a ping flood.

Both the ``tcp://`` and the ``ws://`` server keep one :class:`OffenderDoor`: it refuses a peer
whose address is cooling down (logging ``client_refused``) and starts the cooldown when the
server closes a connection for a flood (logging ``client_cooling_down``). The rule itself —
how long, doubling per repeat — is :class:`pulse._core.offenders.OffenderCooldown`.
"""

from __future__ import annotations

from pulse._core.offenders import OffenderCooldown
from pulse._driver.engine import current_engine
from pulse._log import QuietLogger

__all__ = ["OffenderDoor", "host_of"]


def host_of(peer: str) -> str:
    """The host part of ``host:port`` (``[v6]:port`` too)."""
    return peer.rpartition(":")[0]


class OffenderDoor:
    """Refuses peers that are cooling down and records offences, logging both on ``log``."""

    __slots__ = ("_log", "cooldowns")

    def __init__(self, log: QuietLogger, cooldowns: OffenderCooldown | None = None) -> None:
        self.cooldowns = cooldowns if cooldowns is not None else OffenderCooldown()
        self._log = log

    def refuses(self, peer: str, transport: str) -> bool:
        """True (and logged) while ``peer``'s address is cooling down: close it unserved."""
        if self.cooldowns.admits(host_of(peer), current_engine().now()):
            return False
        self._log.info("client_refused", peer=peer, transport=transport,
                       reason="cooling down after a ping flood")
        return True

    def offence(self, peer: str, transport: str) -> None:
        """The server closed ``peer`` for a ping flood: its address starts cooling down."""
        cooldown = self.cooldowns.offence(host_of(peer), current_engine().now())
        self._log.info("client_cooling_down", peer=peer, transport=transport, seconds=cooldown)
