"""The delivery contract of pulse's reconnecting clients (WebSocket and TCP).

A message handed to a socket that dies before the peer confirmed it may or may not have
arrived; nobody can tell which. Every reconnecting client keeps the messages written but not
yet confirmed (a pong to a heartbeat written after them confirms them: TCP keeps order and
the peer answers a heartbeat only after reading what came before it) and, when their
connection dies, either reports them or sends them again, as chosen by :class:`Delivery`.
Nothing is lost silently: every message a client gives up on is reported once, as a
:class:`Dropped`, to the client's ``on_drop`` handler.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class Delivery(enum.Enum):
    """What happens to the unconfirmed window when a connection dies.

    ``AT_MOST_ONCE``: each message is sent once; messages the peer had not confirmed are
    reported as :class:`Dropped` with ``possibly_delivered=True``. The window is bounded:
    beyond ``window`` unconfirmed messages the oldest is presumed delivered and no longer
    tracked (the writer never stalls).

    ``AT_LEAST_ONCE``: unconfirmed messages are sent again on the next connection, ahead of
    anything sent later, so nothing handed to pulse is lost while the client keeps
    reconnecting; the peer may see a message twice. The writer stalls when ``window``
    messages are unconfirmed.
    """

    AT_MOST_ONCE = "at-most-once"
    AT_LEAST_ONCE = "at-least-once"


@dataclass(frozen=True, slots=True)
class Dropped:
    """A message pulse gave up on, and why.

    ``possibly_delivered`` is False when the message never left this process (a queue
    overflowed, or it was still waiting when the client closed or gave up). It is True when
    the message was handed to a socket that died before the peer confirmed it: it may or may
    not have arrived.
    """

    message: Any
    """The message as the application handed it to ``send``."""
    reason: str
    possibly_delivered: bool = False
    peer: str = ""
