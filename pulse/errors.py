"""The pulse error hierarchy.

Every error pulse raises on purpose derives from :class:`PulseError`, so callers can catch
one class.  Bad input from a peer is only ever reported as :class:`RemoteProtocolError`;
:class:`LocalProtocolError` means *this* side tried to do something the protocol forbids.
"""

from __future__ import annotations


class PulseError(Exception):
    """Base class of every error raised by pulse."""


class ProtocolError(PulseError):
    """Bytes or frames that break a protocol's rules (malformed, oversized, out of order)."""


class LocalProtocolError(ProtocolError):
    """This side attempted something the protocol does not allow (a programming error)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed or forbidden; only its connection is affected."""


class FrameTooLarge(RemoteProtocolError):
    """A frame (or the bytes buffered for one) exceeded the configured size limit."""


class PingFlood(RemoteProtocolError):
    """The peer kept pinging faster than the connection answers pings (``max_ping_rate``),
    a second's worth past the bound: its connection is closed."""


class ConnectionClosed(PulseError):
    """The connection is closed; ``reason`` says why (as reported by the close action)."""

    def __init__(self, reason: str = "closed") -> None:
        super().__init__(reason)
        self.reason = reason


class PeerTimeout(ConnectionClosed):
    """The peer stopped answering heartbeats and was declared dead."""


class ReconnectGaveUp(PulseError):
    """A reconnecting client used up its attempts or was told not to come back."""


class QueueFull(PulseError):
    """A bounded outgoing queue is full and its overflow policy is ``raise``."""


class NegotiationError(PulseError):
    """The two peers' heartbeat proposals cannot be reconciled within the bounds."""


class SessionError(PulseError):
    """Base class of session-leasing errors."""


class SessionExpired(SessionError):
    """The session's lease ran out; its ephemeral registrations are gone."""


class LeaseExpired(SessionExpired):
    """Alias kept for readers who think in leases rather than sessions."""


class SessionClosed(ConnectionClosed, SessionError):
    """The session was closed by this client; no more requests are accepted (both session
    backends raise this for a request made after ``aclose()``)."""


class NoServerReachable(ConnectionClosed, SessionError):
    """No server of the list answered in time, so no session could be opened (both session
    backends raise this when entering ``connect`` fails for that reason)."""


class AuthFailed(SessionError):
    """A re-attach presented a wrong session password, or a bad auth token."""


class KeyExists(SessionError):
    """The key is registered by another session (both session backends raise this)."""


class NotOwner(SessionError):
    """The key belongs to another session, which alone may unregister it."""


class LimitExceeded(PulseError):
    """A configured server limit (sessions, keys, data size, request rate) was hit."""


class NoPlugin(PulseError):
    """No plugin is registered for a URL scheme, or it lacks the requested capability."""


class PhaseTimeout(PulseError, TimeoutError):
    """Connecting, a handshake or another bounded phase of a connection took longer than its
    timeout. Also a :class:`TimeoutError` (so an ``OSError``, like a refused connect)."""

    def __init__(self, phase: str, timeout: float, peer: str | None = None) -> None:
        where = f" with {peer}" if peer else ""
        super().__init__(f"{phase}{where} timed out after {timeout:g} s")
        self.phase = phase
        self.timeout = timeout
        self.peer = peer
