"""Heartbeat timing policy and its negotiation between two peers."""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass

from pulse._core.lossy import LossyLink
from pulse.errors import NegotiationError


class IdleMode(enum.Enum):
    """Which kind of silence makes a heartbeat due.

    ``READER``: nothing received for ``interval`` (the default: it proves the peer alive).
    ``WRITER``: nothing sent for ``interval`` (keeps the peer's read timeout satisfied, as
    ZooKeeper's client does). ``ALL``: nothing received *and* nothing sent (Netty
    ``ALL_IDLE``). ``EITHER``: nothing received *or* nothing sent (Dubbo's heartbeat test).
    """

    READER = "reader"
    WRITER = "writer"
    ALL = "all"
    EITHER = "either"


def _check_duration(name: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value!r}")


@dataclass(frozen=True, slots=True)
class HeartbeatPolicy:
    """How often to send heartbeats and how long to wait before declaring a peer dead.

    ``interval`` is the idle time after which a heartbeat is sent; ``timeout`` is how long
    the peer may stay silent before it is declared dead. ``interval=0`` disables heartbeats
    (as AMQP's 0), in which case ``timeout`` must be 0 too. When ``timeout`` is omitted it
    defaults to three intervals (Dubbo's rule); an explicit timeout must exceed ``interval``.

    ``max_local_pause`` bounds how late a driver may wake before the core treats the gap as
    a local stall (blocked loop, stopped process) rather than as evidence against the peer;
    it defaults to ``interval``.

    ``lossy`` switches on the lossy-link profile (:class:`~pulse._core.lossy.LossyLink`):
    on TCP transports a verdict the timeout would give waits while the kernel shows the
    peer's segments still arriving over a path that retransmits, up to a hard ceiling. It
    is a local choice, kept through negotiation.
    """

    interval: float = 10.0
    timeout: float | None = None
    idle_mode: IdleMode = IdleMode.READER
    max_local_pause: float | None = None
    lossy: LossyLink | None = None

    def __post_init__(self) -> None:
        _check_duration("interval", self.interval)
        if self.timeout is None:
            object.__setattr__(self, "timeout", 3 * self.interval)
        assert self.timeout is not None
        _check_duration("timeout", self.timeout)
        if self.interval == 0 or self.timeout == 0:
            if self.interval != self.timeout:
                raise ValueError(
                    "heartbeats are disabled only when interval and timeout are both 0, "
                    f"got interval={self.interval} timeout={self.timeout}"
                )
        elif self.timeout <= self.interval:
            raise ValueError(
                f"timeout ({self.timeout}) must exceed interval ({self.interval}): "
                "otherwise a healthy peer is declared dead before it is even pinged"
            )
        if not isinstance(self.idle_mode, IdleMode):
            raise ValueError(f"idle_mode must be an IdleMode, got {self.idle_mode!r}")
        if self.max_local_pause is None:
            object.__setattr__(self, "max_local_pause", self.interval)
        assert self.max_local_pause is not None
        _check_duration("max_local_pause", self.max_local_pause)
        if self.lossy is not None and not isinstance(self.lossy, LossyLink):
            raise ValueError(f"lossy must be a LossyLink or None, got {self.lossy!r}")

    @property
    def enabled(self) -> bool:
        """False when heartbeats are switched off (interval and timeout both 0)."""
        return self.interval > 0

    @property
    def dead_after(self) -> float:
        """``timeout`` as a float (never None after construction)."""
        assert self.timeout is not None
        return self.timeout


@dataclass(frozen=True, slots=True)
class NegotiationBounds:
    """Limits a side imposes on a negotiated interval (ZooKeeper's 2xtick .. 20xtick idea)."""

    min_interval: float = 0.05
    max_interval: float = 3600.0
    timeout_factor: float = 3.0

    def __post_init__(self) -> None:
        _check_duration("min_interval", self.min_interval)
        _check_duration("max_interval", self.max_interval)
        if self.max_interval == 0:
            # Clamping into [0, 0] would silently disable heartbeats both sides asked for.
            raise ValueError("max_interval must be greater than 0")
        if self.min_interval > self.max_interval:
            raise ValueError("min_interval must not exceed max_interval")
        _check_duration("timeout_factor", self.timeout_factor)
        if not self.timeout_factor > 1:
            raise ValueError(f"timeout_factor must be greater than 1, got {self.timeout_factor!r}")

    @classmethod
    def from_tick(cls, tick: float) -> NegotiationBounds:
        """Bounds of ``[2xtick, 20xtick]`` as ZooKeeper applies to session timeouts."""
        _check_duration("tick", tick)
        if tick == 0:
            raise ValueError("tick must be greater than 0")
        return cls(min_interval=2 * tick, max_interval=20 * tick)


def negotiate_interval(local: float, remote: float, bounds: NegotiationBounds) -> float:
    """Agree on one heartbeat interval from two proposals.

    The lower non-zero proposal wins; 0 on one side means "use the other side's value"; 0 on
    both sides disables heartbeats (returns 0). A non-zero result is clamped into
    ``[bounds.min_interval, bounds.max_interval]``.
    """
    _check_duration("local interval", local)
    _check_duration("remote interval", remote)
    if local == 0 and remote == 0:
        return 0.0
    if local == 0:
        chosen = remote
    elif remote == 0:
        chosen = local
    else:
        chosen = min(local, remote)
    return float(min(max(chosen, bounds.min_interval), bounds.max_interval))


def negotiate(
    local: HeartbeatPolicy, remote_interval: float, remote_timeout: float,
    bounds: NegotiationBounds | None = None,
) -> HeartbeatPolicy:
    """Return the policy both peers use after exchanging their proposals.

    The interval follows :func:`negotiate_interval`. The timeout is the lower non-zero of the
    two proposed timeouts (``bounds.timeout_factor x interval`` when neither proposes one),
    raised to ``2 x interval`` if needed so that at least two heartbeats fit in it.
    """
    bounds = bounds or NegotiationBounds()
    interval = negotiate_interval(local.interval, remote_interval, bounds)
    if interval == 0:
        return HeartbeatPolicy(0, 0, local.idle_mode, local.max_local_pause, local.lossy)
    _check_duration("remote timeout", remote_timeout)
    timeouts = [t for t in (local.dead_after, remote_timeout) if t > 0]
    timeout = min(timeouts) if timeouts else bounds.timeout_factor * interval
    timeout = max(timeout, 2 * interval)
    if not math.isfinite(timeout):
        raise NegotiationError(f"no finite timeout from {local.dead_after} and {remote_timeout}")
    return HeartbeatPolicy(interval, timeout, local.idle_mode, None, local.lossy)


#: Named profiles (``pulse serve --profile lossy``): the ``lossy`` setting each one stands for.
PROFILES: dict[str, LossyLink | None] = {"default": None, "lossy": LossyLink()}


def with_profile(policy: HeartbeatPolicy, profile: str) -> HeartbeatPolicy:
    """``policy`` under the named profile (``"default"`` or ``"lossy"``)."""
    try:
        lossy = PROFILES[profile]
    except KeyError:
        known = ", ".join(PROFILES)
        raise ValueError(f"unknown profile {profile!r} (known: {known})") from None
    return dataclasses.replace(policy, lossy=lossy)
