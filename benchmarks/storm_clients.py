"""Reconnecting WebSocket clients for bench_reconnect_storm, one library per process.

Run: ``python benchmarks/storm_clients.py --lib websockets|pulse --url ws://HOST:PORT/ --count N``

* ``websockets``: ``async for ws in websockets.asyncio.client.connect(url, ...)`` per client
  (the library's own reconnect loop and backoff; ``compression=None``, no proxy);
* ``pulse``: ``pulse.plugins.websocket.reconnecting_websocket(url)`` per client (its own reconnect
  supervisor and backoff, default settings; structlog filtered to warnings, as an
  application would configure it).

Every 100 ms the process prints one JSON line: ``{"t": wall clock, "attempts": connection
attempts so far, "successes": handshakes completed so far}``. Attempts are counted on the
client side (a refused TCP connect counts too): pulse through its ``opener`` hook (called
once per attempt), websockets as failed attempts (its ``process_exception`` hook, called once
per failed attempt) plus successful ones. Stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time


class Count:
    attempts = 0
    successes = 0


def report() -> None:
    sys.stdout.write(json.dumps({"t": time.time(), "attempts": Count.attempts,
                                 "successes": Count.successes}) + "\n")
    sys.stdout.flush()


def run_websockets(url: str, count: int) -> None:
    import asyncio

    from websockets.asyncio.client import connect, process_exception

    def counting(exc: Exception) -> Exception | None:
        Count.attempts += 1
        return process_exception(exc)

    async def one() -> None:
        async for ws in connect(url, compression=None, proxy=None, process_exception=counting):
            Count.attempts += 1
            Count.successes += 1
            await ws.wait_closed()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set_result, None)
        tasks = [asyncio.ensure_future(one()) for _ in range(count)]
        while not stop.done():
            await asyncio.wait([stop], timeout=0.1)
            report()
        for task in tasks:
            task.cancel()

    asyncio.run(main())


def run_pulse(url: str, count: int) -> None:
    import logging
    import ssl

    import structlog
    import trio

    from pulse.plugins.websocket import reconnecting_websocket

    # As an application would: keep warnings, drop the per-connection info/debug events
    # (websockets' events go to an unconfigured stdlib logger and cost nothing either).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    from pulse.plugins.websocket.client import ClientState, StateChange
    from pulse.plugins.websocket.transport import open_stream

    async def counting_opener(host: str, port: int, ssl_context: ssl.SSLContext | None,
                              server_hostname: str) -> trio.abc.Stream:
        Count.attempts += 1
        return await open_stream(host, port, ssl_context, server_hostname)

    def on_event(change: StateChange) -> None:
        if change.state is ClientState.OPEN:
            Count.successes += 1

    async def one() -> None:
        async with reconnecting_websocket(url, opener=counting_opener, on_event=on_event):
            await trio.sleep_forever()

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(one)

                async def ticker() -> None:
                    while True:
                        await trio.sleep(0.1)
                        report()

                nursery.start_soon(ticker)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--lib", choices=("websockets", "pulse"), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    (run_websockets if args.lib == "websockets" else run_pulse)(args.url, args.count)
