"""Round-trip figures as ``pulse ping`` prints them (one URL or redundant paths)."""

from __future__ import annotations

from pulse._core.stats import RttSummary


def ms(value: float | None) -> float:
    """Seconds (None: 0) as milliseconds, rounded to the microsecond."""
    return round((value or 0.0) * 1000, 3)


def rtt_fields(summary: RttSummary) -> dict[str, float]:
    """The summary's ``min_ms``/``avg_ms``/``max_ms``/``mdev_ms`` of a JSON record."""
    return {"min_ms": ms(summary.min), "avg_ms": ms(summary.avg), "max_ms": ms(summary.max),
            "mdev_ms": ms(summary.mdev)}


def rtt_line(summary: RttSummary) -> str:
    """The ``rtt min/avg/max/mdev = … ms`` line of a text summary."""
    return (f"rtt min/avg/max/mdev = {ms(summary.min)}/{ms(summary.avg)}/"
            f"{ms(summary.max)}/{ms(summary.mdev)} ms")
