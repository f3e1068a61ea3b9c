"""One line saying what went wrong, for errors the ``pulse`` command reports to its user.

Commands fail for reasons a user can act on: a refused or unreachable address, a host that
drops packets, a TLS mismatch, a server speaking another protocol. trio and ssl wrap those
reasons (exception groups, ``BrokenResourceError`` caused by an ``SSLError``, "all attempts
to connect failed" caused by the per-address ``OSError``\\s); :func:`describe` digs the reason
out and words it in one line.
"""

from __future__ import annotations

import os
import socket
import ssl

import trio

from pulse.errors import PhaseTimeout, PulseError

# Errors a command reports in one line instead of a traceback.
REPORTABLE = (PulseError, OSError, ValueError, trio.TooSlowError, trio.BrokenResourceError)


def leaves(error: BaseException) -> list[BaseException]:
    """The leaf exceptions of a (possibly nested) exception group, in order."""
    if isinstance(error, BaseExceptionGroup):
        found: list[BaseException] = []
        for inner in error.exceptions:
            found.extend(leaves(inner))
        return found
    return [error]


def reportable(error: BaseException) -> BaseException | None:
    """The exception to report for ``error``: the first reportable leaf that is not a
    cancellation, or None when ``error`` holds something else (a bug: keep the traceback)."""
    found = [leaf for leaf in leaves(error) if not isinstance(leaf, trio.Cancelled)]
    if found and all(isinstance(leaf, REPORTABLE) for leaf in found):
        return found[0]
    return None


def _tls_reason(error: ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or error.reason or str(error)
        return (f"TLS certificate verification failed: {detail} "
                "(pass the server's CA with ?cafile=PATH in the URL)")
    reason = error.reason or error.strerror or str(error)
    text = f"TLS handshake failed: {reason}"
    if reason and any(word in reason for word in ("WRONG_VERSION", "RECORD_LAYER", "PACKET_LENGTH",
                                                  "UNEXPECTED_EOF", "record layer")):
        text += " (is the server speaking TLS on this port?)"
    return text


def _cause_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def describe(error: BaseException, *, timeout: float | None = None, scheme: str = "") -> str:
    """One line saying why ``error`` happened; ``timeout`` words a ``TooSlowError``;
    ``scheme`` (of the URL the command dialled) adds a hint when another protocol answered."""
    text = _describe(error, timeout)
    hint = _HINTS.get(scheme)
    if hint is not None and hint[0] in text:
        text += hint[1]
    return text


# What a peer speaking another protocol looks like from each client scheme, and the hint.
_HINTS = {
    "tcp": ("closed during the HELLO exchange",
            " (not a pulse tcp:// port? a TLS port needs tls://, a WebSocket one ws://)"),
    "ws": ("bad opening handshake", " (not a WebSocket server? a pulse TCP port needs tcp://)"),
}


def _describe(error: BaseException, timeout: float | None) -> str:
    lone = reportable(error) or error
    for link in _cause_chain(lone):
        if isinstance(link, ssl.SSLError):
            return _tls_reason(link)
    if isinstance(lone, PhaseTimeout) and lone.phase == "connect":
        where = f" from {lone.peer}" if lone.peer else ""
        return (f"no answer{where} within {lone.timeout:g}s while connecting: "
                "the host is down or a firewall drops the packets")
    if isinstance(lone, trio.TooSlowError):
        within = f" within {timeout:g}s" if timeout is not None else ""
        return f"no answer{within}: the host is down or a firewall drops the packets"
    if isinstance(lone, trio.BrokenResourceError):
        return "connection lost" + (f": {lone}" if str(lone) else "")
    if isinstance(lone, OSError):
        return _os_reason(lone)
    return str(lone) or type(lone).__name__


def _os_reason(error: OSError) -> str:
    if error.errno is None and isinstance(error.__cause__, BaseExceptionGroup | OSError):
        # trio's "all attempts to connect to HOST:PORT failed": the reasons are inside.
        reasons: list[str] = []
        for leaf in leaves(error.__cause__):
            if isinstance(leaf, OSError):
                text = os.strerror(leaf.errno) if leaf.errno else str(leaf)
                if text not in reasons:
                    reasons.append(text)
        if reasons:
            return f"{error}: {'; '.join(reasons)}"
    if error.strerror and error.filename:
        return f"{error.strerror}: {error.filename}"
    if isinstance(error, socket.gaierror) and error.strerror:
        return f"cannot resolve the host name: {error.strerror}"
    if error.errno is not None and error.strerror:
        return error.strerror   # without the "[Errno 98]" prefix
    return str(error) or type(error).__name__
