"""Errors specific to the WebSocket adapter (all derive from the pulse hierarchy)."""

from __future__ import annotations

from pulse.errors import ConnectionClosed, PulseError, RemoteProtocolError


class WebSocketClosed(ConnectionClosed):
    """A WebSocket connection is closed; ``code`` is the RFC 6455 close code (1006: no
    close frame, the transport was lost)."""

    def __init__(self, reason: str = "closed", code: int = 1006) -> None:
        super().__init__(reason)
        self.code = code


class HandshakeRejected(PulseError):
    """The server answered the opening handshake with an HTTP status other than 101."""

    def __init__(self, status_code: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        # One line: the status, never the page the server sent along (it is kept in .body).
        hint = " (not a WebSocket endpoint?)" if 200 <= status_code < 300 else ""
        super().__init__(
            f"handshake rejected: the server answered HTTP {status_code} instead of "
            f"101 Switching Protocols{hint}"
        )
        self.status_code = status_code
        self.headers = headers
        self.body = body


class WebSocketProtocolError(RemoteProtocolError):
    """The peer broke RFC 6455; ``code`` is the close code to answer with (1002, 1007, 1009)."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code
