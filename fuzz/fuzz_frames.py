"""Coverage-guided fuzzing of pulse's frame decoder with atheris.

Usage (atheris is not a pulse dependency; install it yourself)::

    pip install atheris
    python fuzz/fuzz_frames.py [corpus_dir] [-max_total_time=60]

Without atheris the script replays the files named on the command line (or a few built-in
seeds) through the same check, which is how the test suite keeps the harness working.

The property checked: for any input, split into chunks of a size chosen by the first byte,
:class:`pulse.frames.FrameDecoder` either returns frames or raises
:class:`pulse.errors.RemoteProtocolError`; it never buffers more than ``max_frame_size + 4``
bytes; and every frame it returns re-encodes to bytes that decode to the same encoding.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fuzzing import instrumented, run

with instrumented():
    from pulse.codec import unpack_body  # noqa: F401  (instrumented through this import)
    from pulse.errors import RemoteProtocolError
    from pulse.frames import Close, Data, FrameDecoder, Hello, Ping, Pong, encode_frame

MAX_FRAME_SIZE = 512

SEEDS = [
    b"\x00" + encode_frame(Hello(1, 20.0, 60.0, "seed", token="t")),
    b"\x03" + encode_frame(Ping(1, 1.5)) + encode_frame(Pong(1, 1.5)),
    b"\x07" + encode_frame(Data({"k": [1, b"v", None]})) + encode_frame(Close("bye")),
    b"\x01\xff\xff\xff\xff",
    b"",
]


def test_one_input(data: bytes) -> None:
    """Feed ``data[1:]`` in chunks of ``data[0] % 17 + 1`` bytes and check the invariants."""
    if not data:
        return
    step = data[0] % 17 + 1
    stream = data[1:]
    decoder = FrameDecoder(max_frame_size=MAX_FRAME_SIZE)
    try:
        for start in range(0, len(stream), step):
            for frame in decoder.feed(stream[start : start + step]):
                encoded = encode_frame(frame)
                [again] = FrameDecoder().feed(encoded)
                assert encode_frame(again) == encoded, (frame, again)
            assert decoder.buffered <= MAX_FRAME_SIZE + 4, decoder.buffered
        decoder.feed_eof()
    except RemoteProtocolError:
        pass


def main(argv: list[str]) -> None:
    """Run atheris if it is installed, else replay the given files or the built-in seeds."""
    run(argv, test_one_input, SEEDS)


if __name__ == "__main__":
    main(sys.argv)
