"""Coverage-guided fuzzing of the Dubbo 2 frame decoder with atheris.

Usage (atheris is not a pulse dependency; install it yourself)::

    pip install atheris
    python fuzz/fuzz_dubbo.py [corpus_dir] [-max_total_time=30]

Without atheris the script replays the files named on the command line (or the built-in
seeds). ``tests/codec/test_fuzz_harnesses.py`` runs the same check under hypothesis.

The property checked, for any input split into chunks of a size chosen by its first byte:
:class:`FrameDecoder` returns frames or raises a
:class:`~pulse.plugins.dubbo.codec.DubboProtocolError` (a ``RemoteProtocolError``); it never
buffers more than one header plus ``max_body_size`` bytes; every frame re-encodes to bytes
that decode to the same frame, and a heartbeat request's reply is a well-formed heartbeat
response.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fuzzing import instrumented, run

with instrumented():
    from pulse.errors import RemoteProtocolError
    from pulse.plugins.dubbo import codec
    from pulse.plugins.dubbo.codec import FrameDecoder

MAX_BODY = 512
HEADER = 16

SEEDS = [
    b"\x00" + codec.heartbeat_request(1) + codec.heartbeat_response(1),
    b"\x04" + codec.request(7, b"N") + codec.response(7, b"N"),
    b"\x02" + codec.error_response(9, codec.Status.SERVICE_NOT_FOUND, "no"),
    b"\x01\xda\xbb\xc2\x00" + b"\x00" * 8 + b"\x7f\xff\xff\xff",
    b"",
]


def test_one_input(data: bytes) -> None:
    """Feed ``data[1:]`` in chunks of ``data[0] % 17 + 1`` bytes and check the invariants."""
    if not data:
        return
    step = data[0] % 17 + 1
    stream = data[1:]
    decoder = FrameDecoder(MAX_BODY)
    try:
        for start in range(0, len(stream), step):
            for frame in decoder.feed(stream[start : start + step]):
                encoded = codec.encode(frame)
                [again] = FrameDecoder(MAX_BODY).feed(encoded)
                assert again == frame, (frame, again)
                if frame.is_heartbeat_request and frame.two_way:
                    [reply] = FrameDecoder(MAX_BODY).feed(codec.reply_to_heartbeat(frame))
                    assert reply.is_heartbeat_response and reply.request_id == frame.request_id
            assert decoder.buffered <= HEADER + MAX_BODY + step, decoder.buffered
        decoder.feed_eof()
    except RemoteProtocolError:
        pass


def main(argv: list[str]) -> None:
    """Run atheris if it is installed, else replay the given files or the built-in seeds."""
    run(argv, test_one_input, SEEDS)


if __name__ == "__main__":
    main(sys.argv)
