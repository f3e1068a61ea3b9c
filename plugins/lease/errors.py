"""Errors specific to the lease protocol, and the mapping from server error codes."""

from __future__ import annotations

from pulse.errors import (
    AuthFailed,
    KeyExists,
    LimitExceeded,
    LocalProtocolError,
    NotOwner,
    PulseError,
    SessionError,
    SessionExpired,
)

from .protocol import ErrorCode

__all__ = ["AccessDenied", "KeyExists", "NotOwner", "QuotaExceeded", "WatchKeyUnsupported",
           "error_for"]


class QuotaExceeded(LimitExceeded):
    """The server refused a request that would take a byte or count quota past its limit
    (per session, per client address, server-wide, or the server's connection cap)."""


class AccessDenied(SessionError):
    """The server refused a request this client is not allowed to make (a key outside its
    own presence id and grants, or a reserved structural key)."""


class WatchKeyUnsupported(LocalProtocolError):
    """The server predates the ``watch_key`` request (it answered "unknown operation");
    watch the key's parent prefix instead."""


_ERRORS: dict[ErrorCode, type[PulseError]] = {
    ErrorCode.AUTH_FAILED: AuthFailed,
    ErrorCode.SESSION_EXPIRED: SessionExpired,
    ErrorCode.SESSION_CLOSING: SessionExpired,
    ErrorCode.KEY_EXISTS: KeyExists,
    ErrorCode.NOT_OWNER: NotOwner,
    ErrorCode.TOO_MANY_SESSIONS: LimitExceeded,
    ErrorCode.TOO_MANY_KEYS: LimitExceeded,
    ErrorCode.TOO_MANY_WATCHES: LimitExceeded,
    ErrorCode.DATA_TOO_LARGE: LimitExceeded,
    ErrorCode.RATE_LIMITED: LimitExceeded,
    ErrorCode.RESPONSE_TOO_LARGE: LimitExceeded,
    ErrorCode.BAD_REQUEST: LocalProtocolError,
    ErrorCode.NOT_CONNECTED: LocalProtocolError,
    ErrorCode.PROTOCOL_ERROR: LocalProtocolError,
    ErrorCode.QUOTA_EXCEEDED: QuotaExceeded,
    ErrorCode.FORBIDDEN: AccessDenied,
    ErrorCode.UNAUTHENTICATED: AuthFailed,
}


def error_for(code: ErrorCode, message: str) -> PulseError:
    """The exception a client raises for a server error response."""
    return _ERRORS[code](f"{code.value}: {message}")
