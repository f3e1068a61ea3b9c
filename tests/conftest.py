"""Shared test configuration."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

pytest_plugins = ["tests.zk_harness"]


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """The CLI configures structlog globally; undo it so tests never share a closed stderr."""
    yield
    structlog.reset_defaults()
