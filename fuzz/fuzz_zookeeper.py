"""Coverage-guided fuzzing of the ZooKeeper client protocol (jute records, frames) with atheris.

Usage (atheris is not a pulse dependency; install it yourself)::

    pip install atheris
    python fuzz/fuzz_zookeeper.py [corpus_dir] [-max_total_time=30]

Without atheris the script replays the files named on the command line (or the built-in
seeds). ``tests/codec/test_fuzz_harnesses.py`` runs the same check under hypothesis.

The property checked: bytes from a "server", split into chunks of a size chosen by the
first byte, fed to a :class:`ClientConnection` (first as the handshake answer, then as
replies to a fixed set of outstanding requests) yield events or raise
:class:`~pulse.errors.RemoteProtocolError` — nothing else; the frame decoder never holds
more than ``max_frame + 4`` bytes after a feed; and the jute record decoders
(``ConnectRequest``/``ConnectResponse``) fail only with ``RemoteProtocolError``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fuzzing import instrumented, run

with instrumented():
    from pulse.errors import RemoteProtocolError
    from pulse.plugins.zookeeper.jute import (
        ConnectRequest,
        ConnectResponse,
        ReplyHeader,
        frame,
    )
    from pulse.plugins.zookeeper.protocol import (
        ClientConnection,
        Connected,
        Create,
        Exists,
        GetChildren2,
        GetData,
        SetData,
    )

MAX_FRAME = 2048
REQUESTS = [Exists("/a", True), GetData("/a"), GetChildren2("/a", True), Create("/a/b", b"x"),
            SetData("/a", b"y", 1)]

SEEDS = [
    b"\x00" + frame(ConnectResponse(4000, 7, b"p" * 16).encode())
    + frame(ReplyHeader(1, 5, 0).encode()) + frame(ReplyHeader(-2, 5, 0).encode()),
    b"\x03" + frame(ConnectResponse(4000, 7, b"p" * 16).encode())
    + frame(ReplyHeader(1, 5, -101).encode()),
    b"\x01" + b"\x7f\xff\xff\xff",
    b"",
]


def test_one_input(data: bytes) -> None:
    """Feed ``data[1:]`` in chunks of ``data[0] % 17 + 1`` bytes and check the invariants."""
    if not data:
        return
    step = data[0] % 17 + 1
    stream = data[1:]
    for decode in (ConnectRequest.decode, ConnectResponse.decode):
        try:
            decode(stream)
        except RemoteProtocolError:
            pass
    connection = ClientConnection(MAX_FRAME)
    connection.connect(ConnectRequest(timeout_ms=4000))
    sent = False
    try:
        for start in range(0, len(stream), step):
            for event in connection.receive(stream[start : start + step]):
                if isinstance(event, Connected) and not sent:
                    sent = True
                    for xid, request in enumerate(REQUESTS, 1):
                        connection.send(xid, request)
            assert connection._decoder.buffered <= MAX_FRAME + 4, connection._decoder.buffered
    except RemoteProtocolError:
        pass


def main(argv: list[str]) -> None:
    """Run atheris if it is installed, else replay the given files or the built-in seeds."""
    run(argv, test_one_input, SEEDS)


if __name__ == "__main__":
    main(sys.argv)
