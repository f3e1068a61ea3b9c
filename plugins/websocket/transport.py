"""Opening the byte stream under a WebSocket: URL parsing, TCP, TLS."""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from pulse._driver.streams import dial

Opener = Callable[[str, int, ssl.SSLContext | None, str], Awaitable[trio.abc.Stream]]
"""``opener(host, port, ssl_context, server_hostname) -> stream``: how a client reaches the
server. The default dials TCP (and wraps TLS); tests pass one that returns memory streams."""


@dataclass(frozen=True, slots=True)
class WebSocketURL:
    """A parsed ``ws://`` or ``wss://`` URL."""

    secure: bool
    host: str
    port: int
    target: str

    @property
    def host_header(self) -> str:
        """The ``Host`` header value (the port is left out when it is the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def peer(self) -> str:
        """``host:port``, for logs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_ws_url(url: str) -> WebSocketURL:
    """Split ``ws[s]://host[:port]/path?query``; raises ``ValueError`` for anything else."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL (ws:// or wss://): {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    secure = scheme == "wss"
    if port is None:
        port = 443 if secure else 80
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return WebSocketURL(secure, parts.hostname, port, target)


async def open_stream(
    host: str, port: int, ssl_context: ssl.SSLContext | None, server_hostname: str
) -> trio.abc.Stream:
    """Dial TCP and, with an SSL context, complete the TLS handshake."""
    return await dial(host, port, ssl_context=ssl_context, server_hostname=server_hostname,
                      https_compatible=True)
