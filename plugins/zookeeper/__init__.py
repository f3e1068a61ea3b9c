"""ZooKeeper plugin: pulse's session and presence API on an Apache ZooKeeper ensemble.

URL: ``zk://host1:2181,host2:2181,host3:2181/optional/chroot[?reregister=1]``. The client
speaks ZooKeeper's own wire protocol (no JVM needed on the client side) with ZooKeeper's
client timing; see ``docs/zookeeper.md``.

    from pulse.registry import connect_session

    async with connect_session("zk://127.0.0.1:2181/pulse", session_timeout=4) as session:
        await session.register("/presence/device-7", b"rack 3")
        async for event in session.watch("/presence"):
            print(event.event, event.id)
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio

from pulse._deprecation import renamed
from pulse._driver.util import background_nursery
from pulse.registry import Endpoint, Plugin, parse_url

from .client import NotOwnedError, StreamOpener, ZooKeeperSession, open_tcp
from .jute import DEFAULT_MAX_FRAME
from .protocol import (
    BadArgumentsError,
    BadVersionError,
    ConnectionLoss,
    InvalidACLError,
    NoAuthError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NoServerAnswered,
    NotEmptyError,
    SessionClosedError,
    SessionMovedError,
    ZooKeeperAuthFailed,
    ZooKeeperError,
    ZooKeeperSessionExpired,
)

#: ZooKeeper's client port, used when a URL names a host without one.
DEFAULT_PORT = 2181

_TRUE = {"1", "true", "yes", "on"}


def connect(
    endpoint: Endpoint | str,
    *,
    session_timeout: float = 10.0,
    reregister: bool | None = None,
    start_timeout: float | None = None,
    rng: random.Random | None = None,
    max_frame_size: int = DEFAULT_MAX_FRAME,
    open_stream: StreamOpener = open_tcp,
    digest: tuple[str, str] | None = None,
    session_id: int | None = None,
    session_password: bytes = b"",
    max_frame: int | None = None,
) -> AbstractAsyncContextManager[ZooKeeperSession]:
    """Open a ZooKeeper session; the context manager yields it connected and closes it.

    ``session_timeout`` (seconds) is proposed to the servers, which clamp it into their
    [2, 20] × tickTime range; ``session.session_timeout`` is the negotiated value.
    ``reregister`` (default: the URL's ``?reregister=``, else False) starts a new session
    after expiry and re-creates every registration. Entering waits up to ``start_timeout``
    (default: the larger of 10 s and 2 × ``session_timeout``) for a first server to
    answer, then raises :class:`NoServerAnswered` (a :class:`ConnectionLoss` and a
    :class:`pulse.errors.NoServerReachable`). ``session_id`` and ``session_password`` resume
    an existing session; a server that refuses them (expired, unknown, wrong password)
    makes entering raise :class:`ZooKeeperSessionExpired`. ``digest`` (``(user, password)``) adds
    digest credentials to every connection (addAuth) and gives every presence node the ACL
    "all for this digest, read for everyone". ``max_frame_size`` bounds one reply frame in
    bytes (ZooKeeper's ``jute.maxbuffer``); ``max_frame=`` is its deprecated old name.
    """
    max_frame_size = renamed("connect", "max_frame", "max_frame_size", max_frame, max_frame_size)
    if isinstance(endpoint, str):
        endpoint = parse_url(endpoint, default_port=DEFAULT_PORT)
    if reregister is None:
        reregister = endpoint.query.get("reregister", "").lower() in _TRUE
    wait = start_timeout if start_timeout is not None else max(10.0, 2 * session_timeout)
    session = ZooKeeperSession(
        endpoint.hosts,
        session_timeout=session_timeout,
        chroot=endpoint.path,
        reregister=reregister,
        rng=rng,
        max_frame_size=max_frame_size,
        open_stream=open_stream,
        digest=digest,
        start_timeout=wait,
        session_id=session_id,
        session_password=session_password,
    )
    return _running(session)


@asynccontextmanager
async def _running(session: ZooKeeperSession) -> AsyncIterator[ZooKeeperSession]:
    # The session's background tasks must not turn the caller's own exception (or a start-up
    # failure) into an ExceptionGroup: background_nursery re-raises a lone one as itself.
    async with background_nursery() as nursery:
        try:
            # Inside the try: cancelled while the session starts, it is closed all the same
            # (else its machine would stay in the engine).
            await nursery.start(session.run)
            await session.wait_connected()
            yield session
        finally:
            # Cancelled from outside: the session's tasks are being cancelled too, so the
            # close must be written by this task (watchers then see it leave at once).
            direct = anyio.current_effective_deadline() == -math.inf
            with anyio.CancelScope(shield=True):
                await session.aclose(direct=direct)
            nursery.cancel_scope.cancel()


plugin = Plugin(
    name="zookeeper",
    description="sessions and presence on Apache ZooKeeper (zk://host:2181,host:2181/chroot)",
    connect_session=connect,
    default_ports={"zk": DEFAULT_PORT},
)

__all__ = [
    "DEFAULT_PORT",
    "BadArgumentsError",
    "BadVersionError",
    "ConnectionLoss",
    "InvalidACLError",
    "NoAuthError",
    "NoChildrenForEphemeralsError",
    "NoNodeError",
    "NoServerAnswered",
    "NodeExistsError",
    "NotEmptyError",
    "NotOwnedError",
    "SessionClosedError",
    "SessionMovedError",
    "ZooKeeperAuthFailed",
    "ZooKeeperError",
    "ZooKeeperSession",
    "ZooKeeperSessionExpired",
    "connect",
    "plugin",
]
