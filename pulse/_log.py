"""Loggers for the library: silent unless the application configured structlog.

A library must not print. structlog's defaults (used until someone calls
``structlog.configure``) print every event on stdout, so every pulse module gets its logger
from :func:`get_logger` instead of ``structlog.get_logger``. While
``structlog.is_configured()`` is false, each logging call returns after that one check:
no event dict is built, no processor runs, nothing is printed. Once the application (or the
``pulse`` command, or ``structlog.testing.capture_logs()``) configures structlog, the same
loggers forward every event to structlog with their stable keys and honour the configured
processors, level filter and output.

Configuring only the standard library's ``logging`` does not switch pulse's events on; route
structlog into ``logging`` (``structlog.stdlib``) to have them there.
"""

from __future__ import annotations

from typing import Any

import structlog

_is_configured = structlog.is_configured

__all__ = ["QuietLogger", "get_logger"]


class QuietLogger:
    """A structlog logger that drops its events while structlog is unconfigured.

    Offers the subset of structlog's bound-logger API the library uses: ``bind`` and one
    method per level. ``bind`` is cheap and stores the context; the structlog logger is
    resolved through structlog's lazy proxy at each event, so configuration done after the
    logger was created (or bound) takes effect.
    """

    __slots__ = ("_context", "_name", "_proxy")

    def __init__(self, name: str, context: dict[str, Any] | None = None) -> None:
        self._name = name
        self._context = context or {}
        self._proxy: Any = None  # made at the first event: a bound logger per connection
        # costs a dict until it has something to say

    def _logger(self) -> Any:
        if self._proxy is None:
            self._proxy = structlog.get_logger(self._name, **self._context)
        return self._proxy

    @property
    def name(self) -> str:
        """The logger's name (``pulse.tcp``, ``pulse.lease`` …)."""
        return self._name

    def bind(self, **new_values: Any) -> QuietLogger:
        """A logger with ``new_values`` added to every event's context."""
        return QuietLogger(self._name, {**self._context, **new_values})

    def debug(self, event: str, **kw: Any) -> None:
        """Log ``event`` at debug level (dropped while structlog is unconfigured)."""
        if _is_configured():
            self._logger().debug(event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        """Log ``event`` at info level (dropped while structlog is unconfigured)."""
        if _is_configured():
            self._logger().info(event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        """Log ``event`` at warning level (dropped while structlog is unconfigured)."""
        if _is_configured():
            self._logger().warning(event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        """Log ``event`` at error level (dropped while structlog is unconfigured)."""
        if _is_configured():
            self._logger().error(event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        """Log ``event`` at error level with the current exception's traceback."""
        if _is_configured():
            self._logger().exception(event, **kw)


def get_logger(name: str) -> QuietLogger:
    """The logger every pulse module uses: silent until structlog is configured."""
    return QuietLogger(name)
