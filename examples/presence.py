"""Presence in a few lines: register this process, list who is online, watch changes.

Run a lease server first (``pulse serve``), then:
    python examples/presence.py pulse://127.0.0.1:7070 my-name [seconds]
The same script works against ZooKeeper: pass zk://127.0.0.1:2181 instead.
"""

from __future__ import annotations

import sys

import trio

from pulse.registry import connect_session

PREFIX = "/pulse/presence"


async def main(url: str, name: str, seconds: float) -> None:
    async with connect_session(url, session_timeout=5) as session:
        await session.register(f"{PREFIX}/{name}", b"example")
        print(f"registered {name} (session {session.session_id:#x}, "
              f"timeout {session.session_timeout:g} s)", flush=True)
        print("online now:", sorted(await session.list(PREFIX)), flush=True)
        with trio.move_on_after(seconds):
            async for event in session.watch(PREFIX):
                print(f"{event.event}: {event.id}{' (already there)' if event.initial else ''}",
                      flush=True)


USAGE = "usage: python examples/presence.py URL NAME [SECONDS]   (e.g. pulse://127.0.0.1:7070 alpha)"

if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    status = 0
    try:
        trio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 30.0)
    except* KeyboardInterrupt:  # Ctrl-C: stop quietly (trio may wrap it in a group)
        status = 130
    sys.exit(status)
