"""Addresses that broke a server's rules, kept out for a while.

A per-connection bound (the ping rate) closes a flooding connection, but a client that
reconnects at once floods again on every new connection, paying only a handshake. An
:class:`OffenderCooldown` remembers the addresses whose connections were closed for an
offence and refuses them for a cooldown that doubles with every repeat (up to a cap) and is
forgotten after a quiet spell. Pure: time is an argument; the table is bounded.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["OffenderCooldown"]


class OffenderCooldown:
    """Refuse an address for ``cooldown`` s after an offence, doubling per repeat offence
    within ``max_cooldown`` s of the last, up to ``max_cooldown``; at most ``max_entries``
    addresses are remembered (the oldest offence is forgotten first)."""

    __slots__ = ("_until", "cooldown", "max_cooldown", "max_entries")

    def __init__(self, cooldown: float = 1.0, max_cooldown: float = 60.0,
                 max_entries: int = 4096) -> None:
        if cooldown <= 0 or max_cooldown < cooldown or max_entries < 1:
            raise ValueError("need 0 < cooldown <= max_cooldown and max_entries >= 1")
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.max_entries = max_entries
        # address -> (refused until, the cooldown that was applied)
        self._until: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def offence(self, address: str, now: float) -> float:
        """Record an offence by ``address`` at ``now``; returns the cooldown applied."""
        previous = self._until.pop(address, None)
        cooldown = self.cooldown
        if previous is not None and now - previous[0] < self.max_cooldown:
            cooldown = min(self.max_cooldown, previous[1] * 2)
        self._until[address] = (now + cooldown, cooldown)
        while len(self._until) > self.max_entries:
            self._until.popitem(last=False)
        return cooldown

    def admits(self, address: str, now: float) -> bool:
        """False while ``address`` is cooling down."""
        entry = self._until.get(address)
        return entry is None or now >= entry[0]

    def __len__(self) -> int:
        return len(self._until)
