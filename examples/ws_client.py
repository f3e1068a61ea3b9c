"""A resilient WebSocket client: it survives server restarts and reports every change.

Run:  python examples/ws_client.py ws://127.0.0.1:8765/ [N]     (default N = 20)

It sends N numbered messages, one every 0.2 s, and prints each echo. While the server is
away, messages wait in the queue and go out in order after the reconnect; ``on_connect``
greets the server again on every connection, before the queue flows. Delivery is
at-least-once, so a message in flight when a connection dies is sent again and an echo may
arrive twice: the client ignores repeats. It exits 0 once every echo arrived (1 after 60 s).
"""

from __future__ import annotations

import sys

import trio

from pulse import Backoff, HeartbeatPolicy
from pulse.plugins.websocket import ConnectionHandle, Delivery, Dropped, reconnecting_websocket


async def greet(handle: ConnectionHandle) -> None:
    """Runs after each (re)connect, before queued messages: re-authenticate here."""
    await handle.send(f"hello from connection {handle.number}")
    print(f"greeted: {text(await handle.receive())}", flush=True)


def text(message: str | bytes) -> str:
    """A message as text (the echo server returns what it got: text here)."""
    return message if isinstance(message, str) else message.decode("utf-8", "replace")


def report_drop(dropped: Dropped) -> None:
    print(f"dropped: {dropped.message!r} ({dropped.reason})", flush=True)


async def main(url: str, count: int) -> int:
    policy = HeartbeatPolicy(interval=1.0, timeout=3.0)
    backoff = Backoff(initial=0.2, maximum=5.0)
    async with reconnecting_websocket(url, policy=policy, backoff=backoff, on_connect=greet,
                       delivery=Delivery.AT_LEAST_ONCE, on_drop=report_drop) as ws:

        async def report() -> None:
            async for change in ws.events():
                print(f"state: {change.state.value} ({change.reason})", flush=True)

        async def produce() -> None:
            for i in range(count):
                await ws.send(f"tick {i}")
                await trio.sleep(0.2)

        seen: set[str] = set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report)
            nursery.start_soon(produce)
            with trio.move_on_after(60):
                async for message in ws:
                    echo = text(message)
                    if echo in seen:
                        continue  # a resend after a crash: at-least-once
                    seen.add(echo)
                    print(f"echo: {echo}", flush=True)
                    if len(seen) == count:
                        break
            nursery.cancel_scope.cancel()
        print(f"done: {len(seen)} of {count} echoes over {ws.connects} connection(s)", flush=True)
    return 0 if len(seen) == count else 1


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8765/"
    try:
        status = trio.run(main, target, int(sys.argv[2]) if len(sys.argv) > 2 else 20)
    except* KeyboardInterrupt:  # Ctrl-C: stop quietly (trio may wrap it in a group)
        status = 130
    sys.exit(status)
