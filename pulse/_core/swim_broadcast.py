"""The transmit-limited gossip queue (what memberlist calls ``TransmitLimitedQueue``).

Rules:

* one pending message per member name: a newer alive/suspect/dead about ``node`` replaces
  the older one, whatever its transmit count;
* messages sent fewer times go first; among equals the larger one first (it is harder to
  fit), then the newest;
* a message is dropped once it has been handed out ``limit`` times, where ``limit`` is
  computed by the caller from the current cluster size (``retransmit_limit``);
* :meth:`take` fills a byte budget; each message costs its size plus a per-message overhead.
"""

from __future__ import annotations

from dataclasses import dataclass

from pulse._core.swim_messages import Alive, Dead, Suspect, wire_size

Gossip = Alive | Suspect | Dead


@dataclass(slots=True)
class _Item:
    msg: Gossip
    size: int
    transmits: int
    ident: int


class BroadcastQueue:
    """Pending gossip, keyed by the member it is about."""

    __slots__ = ("_by_node", "_ident")

    def __init__(self) -> None:
        self._by_node: dict[str, _Item] = {}
        self._ident = 0

    def __len__(self) -> int:
        return len(self._by_node)

    def push(self, msg: Gossip) -> None:
        """Queue ``msg``, replacing anything pending about the same member."""
        self._ident += 1
        self._by_node[msg.node] = _Item(msg, wire_size(msg), 0, self._ident)

    def pending(self) -> list[Gossip]:
        """The queued messages in sending order (for inspection)."""
        return [item.msg for item in sorted(self._by_node.values(), key=_order)]

    def transmits(self, node: str) -> int | None:
        """How many times the message about ``node`` was handed out (None: none queued)."""
        item = self._by_node.get(node)
        return None if item is None else item.transmits

    def take(self, overhead: int, budget: int, limit: int) -> list[Gossip]:
        """Messages that fit in ``budget`` bytes; each one taken counts one transmit."""
        if not self._by_node:
            return []
        out: list[Gossip] = []
        used = 0
        for item in sorted(self._by_node.values(), key=_order):
            free = budget - used - overhead
            if free <= 0:
                break
            if item.size > free:
                continue
            used += overhead + item.size
            out.append(item.msg)
            item.transmits += 1
            if item.transmits >= limit:
                del self._by_node[item.msg.node]
        return out


def _order(item: _Item) -> tuple[int, int, int]:
    return (item.transmits, -item.size, -item.ident)
