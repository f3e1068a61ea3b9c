"""``pulse run --leader`` options for gossip://: --expect required there and refused on the
server backends, --bind checked, and the candidate's own address dropped from its seeds."""

from __future__ import annotations

import argparse

import pytest

from pulse.cli.cmd_run import _check_gossip_options, _seeds_without


def _args(server: str, expect: int | None = None, bind: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(server=server, expect=expect, bind=bind)


def test_expect_is_required_on_gossip_and_refused_elsewhere() -> None:
    """gossip:// without --expect, --expect 0, --expect or --bind on pulse:// or zk://: ValueError."""
    _check_gossip_options(_args("gossip://a:7946", 3, "127.0.0.1:7946"))
    _check_gossip_options(_args("pulse://a:7070"))
    for bad in (_args("gossip://a:7946"), _args("gossip://a:7946", 0),
                _args("GOSSIP://a:7946"), _args("pulse://a:7070", 3),
                _args("zk://a:2181", None, "127.0.0.1:1"),
                _args("gossip://a:7946", 3, "nohost"), _args("gossip://a:7946", 3, "h:99999")):
        with pytest.raises(ValueError):
            _check_gossip_options(bad)


def test_own_address_is_dropped_from_the_seeds() -> None:
    """One seed list for every candidate: each drops its own --bind address from it, unless
    it is the only seed."""
    url = "gossip://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
    assert _seeds_without(url, ("127.0.0.1", 7002)) == "gossip://127.0.0.1:7001,127.0.0.1:7003"
    assert _seeds_without(url, ("127.0.0.1", 7009)) == url
    assert _seeds_without("gossip://127.0.0.1:7001", ("127.0.0.1", 7001)) == "gossip://127.0.0.1:7001"
    assert _seeds_without("gossip://[::1]:7001,[::1]:7002", ("::1", 7001)) == "gossip://[::1]:7002"
