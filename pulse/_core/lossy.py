"""The lossy-link profile: over TCP a lost heartbeat is late, not lost.

On a link that drops packets the kernel retransmits, with a backoff that doubles each time
the same segment is lost again (200 ms, 400 ms, 800 ms, 1.6 s, 3.2 s …). A heartbeat answer
can then arrive seconds after it was sent, and a fixed timeout of a few seconds declares a
healthy peer dead: with 30 % random loss both ways, interval 1 s and timeout 5 s, ``tcp://``
and ``ws://`` had false deaths within three minutes (``benchmarks/lossy_link.py``).

The kernel knows what the application cannot see: whether the peer's TCP stack is still
sending segments (``tcpi_last_ack_recv``: every segment it sends carries an acknowledgement)
and whether this connection has had to retransmit (``tcpi_total_retrans``). A lossy link
still delivers some of the peer's segments; a cut link delivers none. So, when the failure
detector would declare the peer dead, :class:`LossyLinkJudge` withholds the verdict while

* the kernel heard from the peer within ``ack_window`` seconds, **and**
* this connection retransmitted within the last ``max_silence`` seconds (the path loses
  packets: without that, a peer whose kernel acknowledges but whose process does not answer
  is a stalled process, and the ordinary timeout applies), **and**
* the silence is still shorter than ``max_silence`` (a hard ceiling: a peer that acknowledges
  and never answers dies there, however lossy the path).

Guarantees: a cut (no packet from the peer any more) is declared dead at most
``max(timeout, ack_window)`` after the last packet from the peer arrived, and no peer stays
alive after ``max_silence`` of silence.

This module is pure: the driver samples the kernel (``TCP_INFO``) and passes the facts in,
with ``now``. It never reads a clock or a socket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pulse._core._checks import check_positive

#: ``max_silence`` as a multiple of the timeout when the profile does not say.
DEFAULT_SILENCE_FACTOR = 6.0

#: Re-checks while a verdict is withheld are at least this far apart (seconds): a floor
#: against zero-length steps, far below the engine's 20 ms coalescing.
MIN_RECHECK = 0.001


@dataclass(frozen=True, slots=True)
class LossyLink:
    """Settings of the lossy-link profile (``HeartbeatPolicy(lossy=LossyLink())``).

    ``ack_window``: how recently the peer's TCP stack must have sent a segment for a late
    answer to be treated as retransmission delay (default: the policy's timeout).
    ``max_silence``: the hard ceiling on silence (default: 6 x the policy's timeout).
    Only TCP-based transports (``tcp://``, ``tls://``, ``ws://``, ``wss://``) on Linux can
    ask the kernel; elsewhere the profile changes nothing.
    """

    ack_window: float | None = None
    max_silence: float | None = None

    def __post_init__(self) -> None:
        if self.ack_window is not None:
            check_positive("ack_window", self.ack_window)
        if self.max_silence is not None:
            check_positive("max_silence", self.max_silence)

    def resolved(self, timeout: float) -> tuple[float, float]:
        """``(ack_window, max_silence)`` for a policy whose timeout is ``timeout``."""
        ack_window = timeout if self.ack_window is None else self.ack_window
        ceiling = DEFAULT_SILENCE_FACTOR * timeout if self.max_silence is None else self.max_silence
        return ack_window, max(ceiling, timeout)


@dataclass(frozen=True, slots=True)
class TcpProgress:
    """What the kernel says about one TCP connection at one moment (Linux ``TCP_INFO``).

    Times are seconds *before* the moment of sampling, counters are as the kernel keeps
    them for the connection's whole life.
    """

    last_ack_recv: float
    """Since the kernel last processed a segment from the peer (``tcpi_last_ack_recv``)."""
    last_data_recv: float
    """Since the kernel last received data from the peer (``tcpi_last_data_recv``)."""
    total_retrans: int
    """Segments retransmitted on this connection so far (``tcpi_total_retrans``)."""
    retransmits: int = 0
    """Timeouts in a row for the oldest unacknowledged segment (``tcpi_retransmits``)."""
    backoff: int = 0
    """Exponential backoff of the retransmission timer (``tcpi_backoff``)."""
    unacked: int = 0
    """Segments sent and not yet acknowledged (``tcpi_unacked``)."""
    rto: float = 0.0
    """The current retransmission timeout in seconds (``tcpi_rto``)."""


class LossyLinkJudge:
    """Decides whether a due verdict waits for retransmission (see the module docstring).

    ``observe(now, facts)`` records one kernel sample (the driver takes one at every timer
    wake-up, about once per heartbeat interval); ``withhold_until(now, last_received)`` is
    asked when the detector would declare the peer dead and returns when to look again, or
    None to let the verdict stand.
    """

    __slots__ = ("_facts", "_loss_seen_at", "_retrans", "_sampled_at", "ack_window",
                 "longest_silence", "max_silence", "withheld", "worst_ack_gap")

    def __init__(self, settings: LossyLink, timeout: float) -> None:
        check_positive("timeout", timeout)
        self.ack_window, self.max_silence = settings.resolved(timeout)
        self._facts: TcpProgress | None = None
        self._sampled_at = -math.inf
        self._retrans: int | None = None
        self._loss_seen_at = -math.inf
        #: How many times a verdict was withheld (one count per deferral episode).
        self.withheld = 0
        #: The longest gap between the peer's segments seen while a verdict was withheld.
        self.worst_ack_gap = 0.0
        #: The longest silence (no data from the peer) a verdict was withheld through.
        self.longest_silence = 0.0

    @property
    def facts(self) -> TcpProgress | None:
        """The latest sample (None before the first)."""
        return self._facts

    def observe(self, now: float, facts: TcpProgress | None) -> None:
        """Record the kernel's facts as sampled at ``now`` (None: nothing could be read)."""
        if facts is None:
            return
        if self._retrans is not None and facts.total_retrans > self._retrans:
            self._loss_seen_at = now
        elif self._retrans is None and (facts.total_retrans > 0 or facts.retransmits > 0):
            # The first sample already shows losses: they happened since the connection
            # opened, which is as recent as anything this judge can know of.
            self._loss_seen_at = now
        if facts.retransmits > 0:
            self._loss_seen_at = now
        self._retrans = facts.total_retrans
        self._facts = facts
        self._sampled_at = now

    def explain(self, now: float) -> str:
        """What the kernel last said, for a verdict given after the profile had waited."""
        facts = self._facts
        if facts is None:
            return "lossy-link profile: no kernel facts"
        ack_age = facts.last_ack_recv + max(0.0, now - self._sampled_at)
        return (f"lossy-link profile: peer's last segment {ack_age:.3f}s ago "
                f"(window {self.ack_window:g}s, ceiling {self.max_silence:g}s)")

    def withhold_until(self, now: float, last_received: float, *, deferring: bool) -> float | None:
        """When to decide again if the verdict due at ``now`` must wait, else None.

        ``last_received`` is when the peer's last data arrived; ``deferring`` says whether
        the previous verdict was already withheld (only a new deferral is counted).
        """
        facts = self._facts
        if facts is None:
            return None
        ceiling = last_received + self.max_silence
        if now >= ceiling:
            return None
        if now - self._loss_seen_at > self.max_silence:
            return None  # a clean path: the silence is the peer's, not the network's
        # How long ago the peer's kernel last sent a segment, as of now.
        ack_age = facts.last_ack_recv + max(0.0, now - self._sampled_at)
        if ack_age >= self.ack_window:
            return None
        if not deferring:
            self.withheld += 1
        self.worst_ack_gap = max(self.worst_ack_gap, ack_age)
        self.longest_silence = max(self.longest_silence, now - last_received)
        # Look again when the peer's last segment leaves the window (the earliest moment a
        # cut could be confirmed), never past the ceiling.
        return min(ceiling, now + max(self.ack_window - ack_age, MIN_RECHECK))
