"""Session clients' timing rules (ZooKeeper's), as pure arithmetic on seconds.

Both session backends follow them: the lease client and the ZooKeeper client.

* read timeout = 2/3 of the negotiated session timeout: a connection that delivered nothing
  for that long is taken for lost and the client moves to the next server;
* ping when nothing was sent for half the read timeout, and at least every 10 s (so a 30 s
  session still pings every 10 s, as ZooKeeper's ``MAX_SEND_PING_INTERVAL``);
* connect timeout = session timeout / number of servers, so one pass over the whole list
  fits in one session timeout;
* between connection attempts, a random pause of at most ``min(1 s, timeout / 10)``
  (ZooKeeper waits up to 1 s; scaling it keeps short sessions able to re-attach in time);
* closing waits at most ``min(connect timeout, 2 s)`` for the server to confirm.

A session lives on the server for at least its timeout after the last request, so a client
that loses its connection has ``timeout - read_timeout = timeout / 3`` plus whatever time
was left before the read timeout to reach another server and re-attach.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PING_INTERVAL = 10.0
MAX_RETRY_PAUSE = 1.0
MAX_CLOSE_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class ClientTiming:
    """Timing derived from a session timeout and the number of servers."""

    session_timeout: float
    servers: int = 1

    def __post_init__(self) -> None:
        if not self.session_timeout > 0:
            raise ValueError(f"session timeout must be > 0, got {self.session_timeout!r}")
        if self.servers < 1:
            raise ValueError(f"need at least one server, got {self.servers}")

    @property
    def read_timeout(self) -> float:
        """Silence after which the connection is taken for lost."""
        return self.session_timeout * 2.0 / 3.0

    @property
    def ping_interval(self) -> float:
        """Send a ping when nothing was sent for this long."""
        return min(self.read_timeout / 2.0, MAX_PING_INTERVAL)

    @property
    def connect_timeout(self) -> float:
        """Time allowed for one server to accept the connection and answer ``connect``."""
        return self.session_timeout / self.servers

    @property
    def max_retry_pause(self) -> float:
        """Upper bound of the random pause between connection attempts."""
        return min(MAX_RETRY_PAUSE, self.session_timeout / 10.0)

    @property
    def close_wait(self) -> float:
        """How long a close waits for the server to confirm it."""
        return min(self.connect_timeout, MAX_CLOSE_WAIT)

    def retry_pause(self, fraction: float) -> float:
        """The pause before the next attempt for a random ``fraction`` in [0, 1)."""
        return fraction * self.max_retry_pause
