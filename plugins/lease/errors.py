"""Errors specific to the lease protocol, and the mapping from server error codes."""

from __future__ import annotations

from pulse.errors import (
    AuthFailed,
    KeyExists,
    LimitExceeded,
    LocalProtocolError,
    NotOwner,
    PulseError,
    SessionExpired,
)

from .protocol import ErrorCode

__all__ = ["KeyExists", "NotOwner", "error_for"]

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
}


def error_for(code: ErrorCode, message: str) -> PulseError:
    """The exception a client raises for a server error response."""
    return _ERRORS[code](f"{code.value}: {message}")
