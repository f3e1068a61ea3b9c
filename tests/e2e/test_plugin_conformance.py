"""Every registered plugin passes pulse.testing.check_plugin (real loopback servers), on
every loop (trio, asyncio, uvloop)."""

from __future__ import annotations

import pytest

from pulse.registry import available_schemes, get_plugin
from pulse.testing import check_plugin
from tests.loops import on_every_loop

pytestmark = pytest.mark.e2e

# tls:// and wss:// need certificates; their plugins are the tcp:// and ws:// ones.
SCHEMES = sorted(set(available_schemes()) - {"tls", "wss"})


@pytest.mark.parametrize("scheme", SCHEMES)
@on_every_loop
async def test_plugin_conforms(scheme: str) -> None:
    """The plugin loads through the registry and, if it serves and pings, answers its own pings."""
    plugin = get_plugin(scheme)
    replies = await check_plugin(scheme)
    if plugin.serve is not None and plugin.ping is not None:
        assert len(replies) == 3


def test_unknown_scheme_is_a_clear_error() -> None:
    """Asking for a scheme nobody registered raises NoPlugin naming the known ones."""
    from pulse.errors import NoPlugin

    with pytest.raises(NoPlugin, match=r"registered: .*tcp"):
        get_plugin("gopher")
