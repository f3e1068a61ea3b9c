"""A client that keeps its connection up across server restarts and reports every change.

Run:  python examples/tcp_client.py 7070 [N]   (sends N messages, one per second)
"""

from __future__ import annotations

import sys

import trio

from pulse import Backoff, HeartbeatPolicy
from pulse.plugins.tcp import reconnecting_tcp


async def main(port: int, count: int) -> None:
    policy = HeartbeatPolicy(interval=1.0, timeout=3.0)
    backoff = Backoff(initial=0.2, maximum=5.0)
    async with reconnecting_tcp("127.0.0.1", port, policy, backoff=backoff) as client:

        async def report() -> None:
            async for change in client.events():
                print(f"state: {change.state.value} ({change.reason})", flush=True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(report)
            for i in range(count):
                await client.send(i)
                print(f"reply: {await client.receive()}", flush=True)
                await trio.sleep(1)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    status = 0
    try:
        trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 7070,
                 int(sys.argv[2]) if len(sys.argv) > 2 else 5)
    except* KeyboardInterrupt:  # Ctrl-C: stop quietly (trio may wrap it in a group)
        status = 130
    sys.exit(status)
