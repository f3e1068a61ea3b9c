"""Lease protocol parsing: keys that only make sense as prefixes."""

from __future__ import annotations

import pytest

from pulse.plugins.lease.protocol import BadRequest, ListChildren, Watch, parse_request


def test_root_cannot_be_registered() -> None:
    """register of '/' is a bad request with the xid (the root would be its own child)."""
    with pytest.raises(BadRequest, match="root") as caught:
        parse_request([0, 7, 0, "register", {"key": "/", "data": b""}])
    assert caught.value.xid == 7


def test_root_is_still_a_valid_prefix() -> None:
    """list and watch of '/' stay valid."""
    assert parse_request([0, 1, 0, "list", {"prefix": "/"}]).body == ListChildren("/")
    assert parse_request([0, 2, 0, "watch", {"prefix": "/", "watch_id": 3}]).body == Watch("/", 3)
