"""Coverage-guided fuzzing of the WebSocket opening handshake decoder with atheris.

Usage (atheris is not a pulse dependency; install it yourself)::

    pip install atheris
    python fuzz/fuzz_ws_handshake.py [corpus_dir] [-max_total_time=30]

Without atheris the script replays the files named on the command line (or the built-in
seeds). ``tests/codec/test_fuzz_harnesses.py`` runs the same check under hypothesis.

The input's first byte chooses the side (even: a server parsing an upgrade request; odd: a
client parsing the answer to its own request, where ``{ACCEPT}`` in the input stands for the
right ``Sec-WebSocket-Accept`` value) and the chunk size. The property checked:
:class:`~pulse.plugins.websocket.handshake.HandshakeDecoder` returns events or raises
:class:`~pulse.errors.RemoteProtocolError` (and keeps raising it once it has); it never hands
wsproto more than ``max_head_size`` bytes of an incomplete head; a request it returns can be
accepted with any subprotocol it offered.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fuzzing import instrumented, run

with instrumented():
    from wsproto import ConnectionType
    from wsproto.events import AcceptConnection, RejectConnection, Request
    from wsproto.utilities import generate_accept_token

    from pulse.errors import RemoteProtocolError
    from pulse.plugins.websocket.handshake import HandshakeDecoder

MAX_HEAD = 1024
PLACEHOLDER = b"{ACCEPT}"

_REQUEST = (
    b"GET /chat?x=1 HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: pulse, chat\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)
_ACCEPT = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: " + PLACEHOLDER + b"\r\nSec-WebSocket-Protocol: pulse\r\n\r\n"
    b"\x81\x02hi"
)
_REJECT = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 5\r\n\r\nnope!"

SEEDS = [
    b"\x00" + _REQUEST,
    b"\x06" + _REQUEST + b"\x81\x82abcd\x01\x02",
    b"\x01" + _ACCEPT,
    b"\x03" + _REJECT,
    b"\x02GET / HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Protocol: \xe9\r\n\r\n",
    b"\x00" + b"GET / HTTP/1.1\r\nX: " + b"a" * 2000,
    b"",
]


def test_one_input(data: bytes) -> None:
    """Feed ``data[1:]`` to a server or client decoder in chunks and check the invariants."""
    if not data:
        return
    client = bool(data[0] & 1)
    step = (data[0] >> 1) % 64 + 1
    stream = data[1:]
    decoder = HandshakeDecoder(ConnectionType.CLIENT if client else ConnectionType.SERVER,
                               max_head_size=MAX_HEAD)
    if client:
        request = decoder.send(Request(host="example", target="/chat", subprotocols=["pulse"]))
        key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        stream = stream.replace(PLACEHOLDER, generate_accept_token(key))
    done = False
    try:
        for start in range(0, len(stream), step):
            for event in decoder.feed(stream[start : start + step]):
                if isinstance(event, Request):
                    assert not client
                    chosen = event.subprotocols[0] if event.subprotocols else None
                    assert decoder.send(AcceptConnection(subprotocol=chosen))
                    done = True
                elif isinstance(event, AcceptConnection | RejectConnection):
                    assert client
                    done = True
            assert decoder.head_bytes <= MAX_HEAD, decoder.head_bytes
    except RemoteProtocolError:
        try:
            decoder.feed(b"x")
        except RemoteProtocolError:
            pass
        else:
            raise AssertionError("a failed decoder accepted more bytes") from None
        return
    if not done:
        assert decoder.head_bytes < MAX_HEAD


def main(argv: list[str]) -> None:
    """Run atheris if it is installed, else replay the given files or the built-in seeds."""
    run(argv, test_one_input, SEEDS)


if __name__ == "__main__":
    main(sys.argv)
