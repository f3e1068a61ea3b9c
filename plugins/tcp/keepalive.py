"""OS-level TCP keepalive tuning: set it, read back what the kernel holds, and bound detection.

TCP keepalive is the kernel's own dead-peer check.  Untuned it is nearly useless: Linux waits
7200 s of silence, then sends 9 probes 75 s apart, so an idle connection to a vanished peer is
noticed after 7875 s (2 h 11 min 15 s) -- and only if the application turned ``SO_KEEPALIVE``
on at all.  With unacknowledged data in flight keepalive does not run; the retransmission
timer gives up after ``tcp_retries2`` back-offs (about 924.6 s with the default 15) unless
``TCP_USER_TIMEOUT`` bounds it.  Set both.

Rules this module keeps:

* Every value is validated when a :class:`TcpKeepalive` is built (``ValueError``).
* :meth:`TcpKeepalive.apply` sets the options and then *reads them back* with ``getsockopt``;
  the returned :class:`AppliedKeepalive` is what the kernel holds, not what was asked for.
* The kernel takes whole seconds for the idle time and the probe interval and whole
  milliseconds for ``TCP_USER_TIMEOUT``.  A fractional value is rounded **up** (never below
  what was asked for) and a :class:`KeepaliveRoundingWarning` says so.
* An option the platform lacks is never skipped silently: a :class:`KeepaliveWarning` names it,
  or :class:`KeepaliveUnsupported` is raised when ``strict=True``.
* Linux nuance, modelled by :func:`worst_case_detection`: when ``TCP_USER_TIMEOUT`` is set it
  also governs keepalive probing -- the connection is dropped at the first probe tick (``idle
  + k * interval``, ``k >= 1``) at which ``user_timeout`` has passed since the peer was last
  heard, and ``TCP_KEEPCNT`` is ignored.  A large user timeout therefore *lengthens* idle
  detection; a small one shortens it.

This module touches sockets (it lives in a plugin, not in the pure core); it never sleeps.
"""

from __future__ import annotations

import errno
import math
import socket
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, TypeAlias

from pulse._driver import sockets
from pulse._driver.streams import SocketStream
from pulse.errors import PulseError

__all__ = [
    "LINUX_PROC_DIR",
    "MAX_COUNT",
    "MAX_RECOMMENDED_TIMEOUT",
    "MAX_SECONDS",
    "MAX_USER_TIMEOUT",
    "AppliedKeepalive",
    "KeepaliveDefaults",
    "KeepaliveRoundingWarning",
    "KeepaliveSetting",
    "KeepaliveTarget",
    "KeepaliveUnsupported",
    "KeepaliveWarning",
    "SocketOptions",
    "TcpKeepalive",
    "os_defaults",
    "read_keepalive",
    "recommended_for",
    "retransmission_timeout",
    "worst_case_detection",
]

MAX_SECONDS: Final = 32767
"""Largest idle time / probe interval in seconds (Linux ``MAX_TCP_KEEPIDLE``/``KEEPINTVL``)."""
MAX_COUNT: Final = 127
"""Largest probe count (Linux ``MAX_TCP_KEEPCNT``)."""
MAX_USER_TIMEOUT: Final = (2**31 - 1) / 1000
"""Largest ``TCP_USER_TIMEOUT`` in seconds (the kernel keeps a signed 32-bit millisecond count)."""

MAX_RECOMMENDED_TIMEOUT: Final = MAX_SECONDS * 4
"""Largest ``timeout`` :meth:`TcpKeepalive.recommended_for` can honour (about 36 h)."""

LINUX_PROC_DIR: Final = Path("/proc/sys/net/ipv4")
"""Where Linux publishes the system-wide keepalive and retransmission settings."""

RTO_MIN: Final = 0.2
"""Linux ``TCP_RTO_MIN`` in seconds: the base of the retransmission back-off."""
RTO_MAX: Final = 120.0
"""Linux ``TCP_RTO_MAX`` in seconds: where the doubling back-off stops growing."""

_UNSUPPORTED_ERRNOS: Final = frozenset(
    code
    for code in (
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
        getattr(errno, "ENOTSUP", errno.EOPNOTSUPP),
        getattr(errno, "WSAENOPROTOOPT", errno.ENOPROTOOPT),
    )
)


class KeepaliveWarning(UserWarning):
    """A keepalive option could not be applied as asked (it is named in the message)."""


class KeepaliveRoundingWarning(KeepaliveWarning):
    """A fractional value was rounded up to the kernel's unit (whole seconds or milliseconds)."""


class KeepaliveUnsupported(PulseError):
    """With ``strict=True``: the platform or socket lacks a keepalive option that was asked for."""

    def __init__(self, option: str, detail: str) -> None:
        super().__init__(f"{option} is not supported here: {detail}")
        self.option = option
        self.detail = detail


class SocketOptions(Protocol):
    """What :meth:`TcpKeepalive.apply` needs: ``socket.socket`` and ``trio.socket.SocketType``."""

    def setsockopt(self, level: int, optname: int, value: int, /) -> None:
        """Set an integer socket option."""

    def getsockopt(self, level: int, optname: int, /) -> int:
        """Read an integer socket option."""


KeepaliveTarget: TypeAlias = SocketOptions | SocketStream | sockets.SocketStream
"""A socket whose options can be tuned (a ``SocketStream`` is unwrapped to ``.socket``)."""


class KeepaliveSetting(Protocol):
    """Anything :func:`worst_case_detection` can judge: requested, applied or OS defaults.

    ``None`` in ``idle``/``interval``/``count`` means "not known here; the OS default applies".
    """

    @property
    def enabled(self) -> bool:
        """Whether ``SO_KEEPALIVE`` is (or would be) on."""

    @property
    def idle(self) -> float | None:
        """Seconds of silence before the first probe."""

    @property
    def interval(self) -> float | None:
        """Seconds between probes."""

    @property
    def count(self) -> int | None:
        """Unanswered probes before the connection is dropped."""

    @property
    def user_timeout(self) -> float | None:
        """``TCP_USER_TIMEOUT`` in seconds, or ``None`` when not set."""


def _check_seconds(name: str, value: float, upper: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    if value > upper:
        raise ValueError(f"{name} must be at most {upper:g} s, got {value!r}")


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    """Requested keepalive tuning for one TCP socket.

    ``idle``: seconds of silence before the first probe (``TCP_KEEPIDLE``; macOS
    ``TCP_KEEPALIVE``).  ``interval``: seconds between probes (``TCP_KEEPINTVL``).  ``count``:
    unanswered probes before the kernel drops the connection (``TCP_KEEPCNT``; ignored by Linux
    when ``user_timeout`` is set).  ``user_timeout``: seconds that transmitted data may stay
    unacknowledged before the connection is dropped with ``ETIMEDOUT`` (``TCP_USER_TIMEOUT``,
    Linux only); ``None`` leaves the kernel's retransmission limit in charge.

    Bounds (the strictest common platform, Linux): ``0 < idle, interval <= 32767``,
    ``1 <= count <= 127``, ``0 < user_timeout <= 2147483.647``.
    """

    idle: float
    interval: float
    count: int
    user_timeout: float | None = None

    def __post_init__(self) -> None:
        _check_seconds("idle", self.idle, MAX_SECONDS)
        _check_seconds("interval", self.interval, MAX_SECONDS)
        if isinstance(self.count, bool) or not isinstance(self.count, int):
            raise ValueError(f"count must be an int, got {self.count!r}")
        if not 1 <= self.count <= MAX_COUNT:
            raise ValueError(f"count must be in [1, {MAX_COUNT}], got {self.count}")
        if self.user_timeout is not None:
            _check_seconds("user_timeout", self.user_timeout, MAX_USER_TIMEOUT)

    @property
    def enabled(self) -> bool:
        """Always ``True``: applying a :class:`TcpKeepalive` turns ``SO_KEEPALIVE`` on."""
        return True

    @classmethod
    def fast(cls) -> TcpKeepalive:
        """The fastest whole-second tuning: idle 1 s, 1 probe per second, 2 probes, 2 s timeout.

        A dead peer is noticed within 2 s on Linux, idle or with data in flight (3 s where
        ``TCP_USER_TIMEOUT`` is unavailable and the probe count decides).  It costs one 40-100
        byte probe per second on an idle connection: fine for a few connections on a LAN, too
        chatty for thousands of mostly idle ones (use :meth:`recommended_for`).
        """
        return cls(idle=1, interval=1, count=2, user_timeout=2.0)

    @classmethod
    def recommended_for(cls, timeout: float) -> TcpKeepalive:
        """Tuning whose worst-case detection equals ``floor(timeout)`` seconds, idle or busy.

        ``timeout`` is the heartbeat timeout pulse itself uses to declare a peer dead; the TCP
        layer is set to give up no later, so a stuck ``send`` fails instead of hanging.  The
        derivation: ``T = floor(timeout)`` (the kernel counts whole seconds), up to 3 probes
        (``count = min(3, T - 1)``) spread over the second half of ``T`` (``interval =
        max(1, (T // 2) // count)``, raised if needed so that ``idle`` fits in 32767 s),
        ``idle = T - interval * count`` and ``user_timeout = T``.  Then ``idle + interval *
        count == T`` (the portable idle bound), the Linux rule ``idle + interval * ceil((T -
        idle) / interval) == T`` agrees, and data in flight is bounded by ``user_timeout ==
        T``.  Examples: 2 → (1, 1, 1, 2), 10 → (7, 1, 3, 10), 60 → (30, 10, 3, 60).

        ``timeout`` must lie in [2, 131068] s: one idle second plus one probe second is the
        fastest whole-second keepalive, and 32767 s idle + 3 × 32767 s probes the slowest.
        """
        _check_seconds("timeout", timeout, MAX_RECOMMENDED_TIMEOUT)
        if timeout < 2:
            raise ValueError(
                f"timeout must be at least 2 s for whole-second keepalive, got {timeout!r}"
            )
        whole = math.floor(timeout)
        count = min(3, whole - 1)
        interval = max(1, (whole // 2) // count, -(-(whole - MAX_SECONDS) // count))
        idle = whole - interval * count
        return cls(idle=idle, interval=interval, count=count, user_timeout=float(whole))

    def apply(self, sock: KeepaliveTarget, *, strict: bool = False) -> AppliedKeepalive:
        """Turn keepalive on for ``sock`` with these values and return what the kernel holds.

        ``sock`` may be a ``socket.socket``, a ``trio.socket.SocketType`` or a
        ``SocketStream``.  Options the platform lacks produce a :class:`KeepaliveWarning`
        naming them, or :class:`KeepaliveUnsupported` with ``strict=True`` (the socket may then
        be partly tuned: close it).  Other ``OSError``s (a closed socket, say) propagate.
        """
        target = _unwrap(sock)
        missing: list[str] = []
        unverified: list[str] = []

        def unsupported(option: str, detail: str, depth: int = 1) -> None:
            # ``depth``: frames between this helper and ``apply``, so the warning points
            # at the caller of ``apply``.
            if strict:
                raise KeepaliveUnsupported(option, detail)
            warnings.warn(
                f"{option} is not supported here ({detail}); the OS default stays in effect",
                KeepaliveWarning,
                stacklevel=2 + depth,
            )
            missing.append(option)

        def set_int(option: str, level: int, value: int) -> None:
            constant = getattr(socket, option, None)
            if constant is None:
                unsupported(option, f"socket.{option} does not exist on {sys.platform}", 2)
                return
            try:
                target.setsockopt(level, constant, value)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED_ERRNOS:
                    raise
                unsupported(option, f"setsockopt failed: {exc.strerror or exc}", 2)

        tcp = socket.IPPROTO_TCP
        target.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle_option = _idle_option()
        ioctl = getattr(target, "ioctl", None)
        keepalive_vals = getattr(socket, "SIO_KEEPALIVE_VALS", None)
        if idle_option is None and keepalive_vals is not None and ioctl is not None:
            # Older Windows: idle and interval go together, in milliseconds, write-only.
            idle_ms, interval_ms = _millis(self.idle), _millis(self.interval)
            ioctl(keepalive_vals, (1, idle_ms, interval_ms))
            unverified += ["SIO_KEEPALIVE_VALS idle", "SIO_KEEPALIVE_VALS interval"]
        else:
            if idle_option is None:
                unsupported("TCP_KEEPIDLE", f"no TCP_KEEPIDLE nor TCP_KEEPALIVE on {sys.platform}")
            else:
                set_int(idle_option, tcp, _whole_seconds(idle_option, self.idle))
            set_int("TCP_KEEPINTVL", tcp, _whole_seconds("TCP_KEEPINTVL", self.interval))
        set_int("TCP_KEEPCNT", tcp, self.count)
        if self.user_timeout is not None:
            set_int("TCP_USER_TIMEOUT", tcp, _millis(self.user_timeout, "TCP_USER_TIMEOUT"))
        elif hasattr(socket, "TCP_USER_TIMEOUT"):
            # Not asked for: make sure no earlier tuning lingers (0 = the kernel's default).
            set_int("TCP_USER_TIMEOUT", tcp, 0)

        held = read_keepalive(target)
        idle, interval = held.idle, held.interval
        if unverified:
            idle, interval = _millis(self.idle) / 1000, _millis(self.interval) / 1000
        return AppliedKeepalive(
            enabled=held.enabled,
            idle=idle,
            interval=interval,
            count=held.count,
            user_timeout=held.user_timeout,
            unsupported=tuple(missing),
            unverified=tuple(unverified),
        )


recommended_for: Callable[[float], TcpKeepalive] = TcpKeepalive.recommended_for
"""Module-level alias of :meth:`TcpKeepalive.recommended_for`."""


@dataclass(frozen=True, slots=True)
class AppliedKeepalive:
    """What the kernel holds for one socket, read back with ``getsockopt``.

    ``None`` means the value could not be read on this platform (see ``unsupported``); for
    ``user_timeout`` it also means "not set" (the kernel reports 0).  ``unsupported`` names
    options that were asked for but could not be set; ``unverified`` names values that were set
    but cannot be read back (Windows ``SIO_KEEPALIVE_VALS``) and are reported as requested.
    """

    enabled: bool
    idle: float | None
    interval: float | None
    count: int | None
    user_timeout: float | None
    unsupported: tuple[str, ...] = ()
    unverified: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeepaliveDefaults:
    """The system-wide keepalive values a socket gets once ``SO_KEEPALIVE`` is turned on.

    ``tcp_retries2`` bounds retransmission of unacknowledged data (Linux semantics; see
    :func:`retransmission_timeout`).  ``source`` says where the numbers came from.
    """

    idle: float
    interval: float
    count: int
    tcp_retries2: int
    source: str

    @property
    def enabled(self) -> bool:
        """``True``: these numbers describe a socket whose owner turned keepalive on.

        A plain socket has ``SO_KEEPALIVE`` off and never probes; read one with
        :func:`read_keepalive` to see that.
        """
        return True

    @property
    def user_timeout(self) -> float | None:
        """``None``: the system default is 0, "no user timeout"."""
        return None


# Documented defaults where nothing can be read (values in seconds).
_FALLBACKS: Final[dict[str, tuple[float, float, int, str]]] = {
    "linux": (7200, 75, 9, "Linux kernel defaults (tcp_keepalive_time/intvl/probes)"),
    "darwin": (7200, 75, 8, "macOS defaults net.inet.tcp.keepidle/keepintvl/keepcnt (not read)"),
    "win32": (7200, 1, 10, "Windows defaults KeepAliveTime 2 h, KeepAliveInterval 1 s, "
                           "10 probes (not read from the registry)"),
}
_GENERIC_FALLBACK: Final = (7200.0, 75.0, 9, "RFC 1122 idle time with BSD probe defaults (assumed)")
_LINUX_RETRIES2: Final = 15


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def os_defaults(
    *, proc_dir: Path = LINUX_PROC_DIR, platform: str = sys.platform
) -> KeepaliveDefaults:
    """The system-wide keepalive defaults, with ``source`` saying where they came from.

    On Linux the live values are read from ``proc_dir`` (``tcp_keepalive_time``,
    ``tcp_keepalive_intvl``, ``tcp_keepalive_probes``, ``tcp_retries2``); a file that cannot be
    read falls back to the kernel default and ``source`` names it.  Elsewhere documented
    defaults are returned (macOS 7200/75/8, Windows 7200/1/10) and the retransmission limit is
    estimated with Linux's ``tcp_retries2 = 15``.
    """
    key = "linux" if platform.startswith("linux") else platform
    idle, interval, count, fallback_source = _FALLBACKS.get(key, _GENERIC_FALLBACK)
    if key != "linux":
        return KeepaliveDefaults(
            idle=float(idle), interval=float(interval), count=count, tcp_retries2=_LINUX_RETRIES2,
            source=f"{fallback_source}; retransmission estimate assumes Linux tcp_retries2=15",
        )
    wanted = {
        "tcp_keepalive_time": idle,
        "tcp_keepalive_intvl": interval,
        "tcp_keepalive_probes": count,
        "tcp_retries2": _LINUX_RETRIES2,
    }
    values: dict[str, float] = {}
    unread: list[str] = []
    for name, fallback in wanted.items():
        value = _read_int(proc_dir / name)
        if value is None:
            unread.append(name)
            values[name] = fallback
        else:
            values[name] = value
    source = f"read from {proc_dir}"
    if unread:
        source += f"; kernel defaults assumed for unreadable {', '.join(unread)}"
    return KeepaliveDefaults(
        idle=float(values["tcp_keepalive_time"]),
        interval=float(values["tcp_keepalive_intvl"]),
        count=int(values["tcp_keepalive_probes"]),
        tcp_retries2=int(values["tcp_retries2"]),
        source=source,
    )


def read_keepalive(sock: KeepaliveTarget) -> AppliedKeepalive:
    """Read the keepalive state of ``sock`` as the kernel holds it (nothing is changed).

    On a fresh socket this shows ``enabled=False`` (``SO_KEEPALIVE`` is off by default) and the
    system-wide idle/interval/count.  Options that cannot be read are ``None`` and listed in
    ``unsupported``.
    """
    target = _unwrap(sock)
    unreadable: list[str] = []

    def get(option: str | None, fallback_name: str) -> int | None:
        constant = getattr(socket, option, None) if option is not None else None
        if constant is None:
            unreadable.append(option or fallback_name)
            return None
        try:
            return target.getsockopt(socket.IPPROTO_TCP, constant)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED_ERRNOS:
                raise
            unreadable.append(option or fallback_name)
            return None

    enabled = bool(target.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
    idle = get(_idle_option(), "TCP_KEEPIDLE")
    interval = get("TCP_KEEPINTVL", "TCP_KEEPINTVL")
    count = get("TCP_KEEPCNT", "TCP_KEEPCNT")
    user_ms = get("TCP_USER_TIMEOUT", "TCP_USER_TIMEOUT")
    return AppliedKeepalive(
        enabled=enabled,
        idle=None if idle is None else float(idle),
        interval=None if interval is None else float(interval),
        count=count,
        user_timeout=user_ms / 1000 if user_ms else None,
        unsupported=tuple(unreadable),
    )


def retransmission_timeout(
    tcp_retries2: int, *, rto_min: float = RTO_MIN, rto_max: float = RTO_MAX
) -> float:
    """Seconds until Linux gives up retransmitting unacknowledged data without a user timeout.

    The kernel's boundary: the first ``tcp_retries2 + 1`` retransmission timeouts, starting at
    ``rto_min`` (200 ms) and doubling up to ``rto_max`` (120 s).  With the default 15 that is
    0.2 * (2**10 - 1) + 6 * 120 = 924.6 s.  A path whose real RTO exceeds 200 ms takes longer.
    """
    if tcp_retries2 < 0:
        raise ValueError(f"tcp_retries2 must be >= 0, got {tcp_retries2}")
    total = 0.0
    rto = rto_min
    for _ in range(tcp_retries2 + 1):
        total += rto
        rto = min(rto * 2, rto_max)
    return round(total, 6)


def worst_case_detection(
    setting: KeepaliveSetting,
    *,
    idle_socket: bool = True,
    defaults: KeepaliveDefaults | None = None,
) -> float:
    """Worst-case seconds from the peer's last sign of life until the socket reports an error.

    ``idle_socket=True`` (nothing unacknowledged): ``inf`` when keepalive is off; else
    ``idle + interval * count``, except that with a user timeout ``U`` (Linux) the kernel drops
    the connection at the first probe tick at or after ``U``: ``idle + interval *
    max(1, ceil((U - idle) / interval))``, whatever ``count`` says.

    ``idle_socket=False`` (data in flight; keepalive is suspended): ``U`` when set, else
    :func:`retransmission_timeout` of ``tcp_retries2``.  Linux starts this clock at the first
    *retransmission* of the unacknowledged segment, one RTO (>= 200 ms) after the send, later
    still after a tail-loss probe: measured on a veth link, ``U + 0.42..0.59 s`` after the
    send (see ``docs/keepalive.md``).  The value returned is the kernel's bound, not that lag.

    ``None`` values in ``setting`` (unknown on this platform) and ``tcp_retries2`` come from
    ``defaults``, read with :func:`os_defaults` when not given.
    """
    user_timeout = setting.user_timeout
    if not idle_socket:
        if user_timeout:
            return float(user_timeout)
        return retransmission_timeout((defaults or os_defaults()).tcp_retries2)
    if not setting.enabled:
        return math.inf
    idle, interval, count = setting.idle, setting.interval, setting.count
    if idle is None or interval is None or count is None:
        base = defaults or os_defaults()
        idle = base.idle if idle is None else idle
        interval = base.interval if interval is None else interval
        count = base.count if count is None else count
    if user_timeout:
        probes = max(1, math.ceil(round((user_timeout - idle) / interval, 9)))
        return float(idle + interval * probes)
    return float(idle + interval * count)


def _unwrap(sock: KeepaliveTarget) -> SocketOptions:
    if isinstance(sock, (SocketStream, sockets.SocketStream)):
        return sock.socket
    return sock


def _idle_option() -> str | None:
    """The idle-time option's name here: ``TCP_KEEPIDLE`` (Linux, Windows) or macOS's."""
    for name in ("TCP_KEEPIDLE", "TCP_KEEPALIVE"):
        if hasattr(socket, name):
            return name
    return None


def _whole_seconds(option: str, seconds: float) -> int:
    exact = round(seconds, 9)  # forgive binary noise such as 2.0000000000000004
    whole = math.ceil(exact)
    if whole != exact:
        warnings.warn(
            f"{option} takes whole seconds: {seconds!r} s rounded up to {whole} s",
            KeepaliveRoundingWarning,
            stacklevel=3,  # _whole_seconds <- apply <- the caller of apply
        )
    return whole


def _millis(seconds: float, option: str | None = None) -> int:
    exact = round(seconds * 1000, 6)  # 1.1 * 1000 is 1100.0000000000002
    millis = math.ceil(exact)
    if option is not None and millis != exact:
        warnings.warn(
            f"{option} takes whole milliseconds: {seconds!r} s rounded up to {millis} ms",
            KeepaliveRoundingWarning,
            stacklevel=3,  # _millis <- apply <- the caller of apply
        )
    return millis
