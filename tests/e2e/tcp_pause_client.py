"""A ``reconnecting_tcp`` client as a separate process, for the pause end-to-end test.

Run as ``python tcp_pause_client.py PORT``. It prints one JSON object per line: every
client state change (``{"state": ...}``), every message reported lost (``{"dropped": ...}``)
and, for each ``stopsend WORD`` line read on stdin, ``{"stopping": WORD}``; then it stops
itself with SIGSTOP (so that the ``send`` below is the very first thing it does once
resumed), sends WORD and prints ``{"received": ...}`` or ``{"receive_timeout": WORD}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import trio


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def _client(port: int) -> None:
    from pulse._core.backoff import Backoff
    from pulse._core.policy import HeartbeatPolicy
    from pulse.delivery import Dropped
    from pulse.plugins.tcp import reconnecting_tcp

    def dropped(report: Dropped) -> None:
        _emit(dropped=report.message, possibly_delivered=report.possibly_delivered,
              reason=report.reason)

    async with reconnecting_tcp(
        "127.0.0.1", port, HeartbeatPolicy(0.1, 0.4), backoff=Backoff(0.05, 0.2),
        on_drop=dropped,
    ) as client, trio.open_nursery() as nursery:
        async def states() -> None:
            async for change in client.events():
                _emit(state=change.state.value, reason=change.reason)

        nursery.start_soon(states)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        while True:
            data = await stdin.receive_some(1024)
            if not data:
                break
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command, word = line.decode().split()
                assert command == "stopsend", command
                _emit(stopping=word)
                os.kill(os.getpid(), signal.SIGSTOP)
                await client.send(word)
                with trio.move_on_after(2) as scope:
                    _emit(received=await client.receive())
                if scope.cancelled_caught:
                    _emit(receive_timeout=word)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(_client, int(sys.argv[1]))
