"""The ``dubbo://`` plugin: Apache Dubbo 2 heartbeats, wire-compatible with Dubbo itself.

* ``serve`` runs a provider (:class:`~.provider.DubboProvider`) that answers heartbeats,
  heartbeats idle consumers itself and closes channels silent for ``heartbeat_timeout``.
* ``ping`` measures a provider's heartbeat round trips (:func:`~.ping.ping`).

Library use: :mod:`.codec` (frames), :class:`DubboConsumer` / :func:`open_consumer` (a
self-healing consumer), :class:`DubboProvider`; ``max_frame_size`` bounds one frame's body;
all channels of a process can share one :class:`pulse.rpc.HeartbeatTimer`. See
``docs/dubbo.md``.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc

from pulse._deprecation import deprecated
from pulse._driver.streams import open_tcp_listeners, serve_listeners
from pulse.registry import Endpoint, Plugin, ServeOptions
from pulse.rpc import ChannelTiming, open_heartbeat_timer, tick_for

from .channel import DubboChannel
from .codec import (
    DEFAULT_MAX_BODY,
    BadMagic,
    BodyTooLarge,
    DubboProtocolError,
    FrameDecoder,
    TruncatedFrame,
)
from .consumer import DubboConsumer, open_consumer
from .ping import ping
from .provider import DubboProvider

#: Dubbo's default port.
DEFAULT_PORT = 20880


async def serve(
    endpoint: Endpoint,
    options: ServeOptions,
    *,
    task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve Dubbo 2 heartbeats on ``endpoint`` until cancelled; ``task_status.started``
    receives the listeners (as ``trio.serve_tcp`` gives them).

    ``options.interval`` is the heartbeat, ``options.timeout`` the heartbeat_timeout
    (default 3 x heartbeat); ``options.extra`` may set ``tick`` (wheel tick, seconds) and
    ``max_frame_size`` (bytes of one frame's body, default 8 MiB; ``max_body_size`` is its
    deprecated old name).
    """
    timing = ChannelTiming(options.interval, options.timeout)
    tick = float(options.extra.get("tick", tick_for(timing)))
    extra = dict(options.extra)
    if "max_body_size" in extra:
        deprecated("the dubbo serve option max_body_size", "max_frame_size")
        extra.setdefault("max_frame_size", extra.pop("max_body_size"))
    max_body = int(extra.get("max_frame_size", DEFAULT_MAX_BODY))
    listeners = await open_tcp_listeners(endpoint.port, host=endpoint.host)
    async with open_heartbeat_timer(tick=tick) as timer, anyio.create_task_group() as nursery:
        provider = DubboProvider(timer, timing=timing, max_frame_size=max_body)
        await nursery.start(serve_listeners, provider.handle_stream, listeners)
        task_status.started(listeners)


plugin = Plugin(
    name="dubbo",
    description="Apache Dubbo 2 protocol heartbeats (dubbo://host:port)",
    serve=serve,
    ping=ping,
)

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_PORT",
    "BadMagic",
    "BodyTooLarge",
    "ChannelTiming",
    "DubboChannel",
    "DubboConsumer",
    "DubboProtocolError",
    "DubboProvider",
    "FrameDecoder",
    "TruncatedFrame",
    "open_consumer",
    "ping",
    "plugin",
    "serve",
]
