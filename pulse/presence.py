"""The session and presence API shared by every session backend.

Two backends implement it: the embedded lease server (``pulse://host:port``, plugin
``lease``) and Apache ZooKeeper (``zk://host1:2181,host2:2181/chroot``, plugin
``zookeeper``). Code written against :class:`PresenceSession` runs on either; the contract
test suite in ``tests/contract`` proves they behave the same.

Keys are slash-separated absolute paths (``/pulse/presence/device-7``). A *registration* is
an ephemeral key: it lives exactly as long as the session that created it. Watching a prefix
reports its direct children coming (``online``) and going (``offline``).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


class SessionState(enum.Enum):
    """Where a client session stands.

    ``DISCONNECTED`` means the connection is lost but the session may still be alive on the
    server (the client is re-attaching); ``EXPIRED`` means the server (or the client, after a
    whole session timeout without reaching any server) has given the session up and its
    registrations are gone.
    """

    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    EXPIRED = "expired"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """A session state transition, with the reason it happened."""

    state: SessionState
    session_id: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A member of a watched prefix came online or went offline.

    ``id`` is the child's name under the prefix; ``data`` its registration data (empty for
    ``offline``); ``initial`` is True for the members reported when the watch starts.
    """

    event: str  # "online" | "offline"
    id: str
    data: bytes = b""
    initial: bool = False


class PresenceSession(Protocol):
    """One client session on a session backend."""

    @property
    def session_id(self) -> int | None:
        """The server-assigned session id (None before the first connect)."""

    @property
    def state(self) -> SessionState:
        """The current state."""

    @property
    def session_timeout(self) -> float:
        """The negotiated session timeout in seconds."""

    async def register(self, key: str, data: bytes = b"") -> None:
        """Create the ephemeral key ``key`` (parents are created as needed)."""

    async def unregister(self, key: str) -> None:
        """Remove a key this session registered."""

    async def get(self, key: str) -> bytes | None:
        """The data of ``key``, or None if it does not exist."""

    async def list(self, prefix: str) -> dict[str, bytes]:
        """Direct children of ``prefix`` with their data."""

    def watch(self, prefix: str) -> AsyncIterator[PresenceEvent]:
        """Current children as ``initial`` online events, then every online/offline change,
        in order, exactly once, for as long as the iterator is consumed."""

    def state_changes(self) -> AsyncIterator[SessionEvent]:
        """Every state transition from now on."""

    async def aclose(self) -> None:
        """Close the session (its registrations vanish at once)."""
