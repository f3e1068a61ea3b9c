"""Shared test configuration: the CI switch, the hypothesis profiles, structlog hygiene."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest
import structlog
from hypothesis import HealthCheck, settings

from tests.ci import in_ci

pytest_plugins = ["tests.zk_harness"]

# Hypothesis: locally the defaults (a 200 ms deadline catches accidental slowness); in CI,
# where machines are shared and a flaky failure helps nobody, no deadline and a fixed seed
# per test (derandomize), so a failure reproduces on the next run.
settings.register_profile("dev", print_blob=True)
settings.register_profile(
    "ci", deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if in_ci() else "dev")


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """The CLI configures structlog globally; undo it so tests never share a closed stderr."""
    yield
    structlog.reset_defaults()


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip into a failure that still says why it would have skipped."""
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped in CI, where every test must run: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None],
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """In CI a skipped test (marker, pytest.skip, importorskip) is reported as failed."""
    report = yield
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        _fail_skip(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """In CI a module that skips itself at import time fails instead."""
    report = yield
    if in_ci() and report.skipped:
        _fail_skip(report)
    return report
