"""Client sessions on pulse's embedded lease server (``pulse serve --listen pulse://…``).

::

    async with pulse.lease.connect("127.0.0.1:7400", session_timeout=6) as session:
        await session.register("/pulse/presence/device-7", b"...")
        async with session.watch("/pulse/presence") as events:
            async for event in events:
                print(event.event, event.id)

The session is a :class:`pulse.presence.PresenceSession` (the lease client adds a few
extras, such as ``last_rtt`` and ``watch()`` streams usable with ``async with``);
backend-neutral code should use :func:`pulse.registry.connect_session` with a ``pulse://`` or
``zk://`` URL instead. The plugin is imported only when this function is called.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

from pulse.presence import PresenceSession


def connect(
    servers: Sequence[tuple[str, int]] | str,
    session_timeout: float = 10.0,
    **options: Any,
) -> AbstractAsyncContextManager[PresenceSession]:
    """Open a lease session on ``servers`` (``"host:port,…"`` or ``[(host, port), …]``).

    Options: ``reregister=True`` starts a new session after an expiry and restores its
    registrations and watches. See :func:`pulse.plugins.lease.client.connect`.
    """
    client = importlib.import_module("pulse.plugins.lease.client")
    return cast(
        AbstractAsyncContextManager[PresenceSession],
        client.connect(servers, session_timeout, **options),
    )
