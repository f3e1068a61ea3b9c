"""Coverage-guided fuzzing of the lease protocol (``pulse://``) with atheris.

Usage (atheris is not a pulse dependency; install it yourself)::

    pip install atheris
    python fuzz/fuzz_lease.py [corpus_dir] [-max_total_time=30]

Without atheris the script replays the files named on the command line (or the built-in
seeds). ``tests/codec/test_fuzz_harnesses.py`` runs the same check under hypothesis.

The property checked, for any input split into chunks of a size chosen by its first byte:
the message decoder (:class:`pulse.codec.MessageDecoder`) returns objects or raises
:class:`~pulse.errors.RemoteProtocolError` and never buffers more than its limit + 4 bytes;
every decoded object parses as a request (or raises :class:`~.protocol.BadRequest`) and as a
server message (or raises :class:`~pulse.errors.RemoteProtocolError`); and every request the
server would serve, applied to a live session of the pure server state, either succeeds or is
refused with :class:`~.state.RequestFailed` — nothing else escapes.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fuzzing import instrumented, run

with instrumented():
    from pulse._core.sessions import ID_EPOCH, SessionTracker
    from pulse.codec import MessageDecoder, encode_message
    from pulse.errors import RemoteProtocolError
    from pulse.plugins.lease.protocol import (
        BadRequest,
        Connect,
        Request,
        parse_request,
        parse_server_message,
    )
    from pulse.plugins.lease.state import LeaseState, Limits, RequestFailed

MAX_MESSAGE_SIZE = 4096

SEEDS = [
    b"\x00" + encode_message([0, 1, 0, "connect", {"timeout": 5.0}]),
    b"\x03" + encode_message([0, 2, 0, "register", {"key": "/p/a", "data": b"x"}])
    + encode_message([0, 3, 0, "watch", {"prefix": "/p", "watch_id": 1}]),
    b"\x05" + encode_message([1, 1, "ok", {"session_id": 1}])
    + encode_message([2, 1, "watch", {"w": 1, "e": "online", "id": "a", "d": b"", "i": True}]),
    b"\x01\xff\xff\xff\xff",
    b"",
]


def _state() -> tuple[LeaseState, int]:
    tracker = SessionTracker(secret=b"f" * 32, tick=1.0)
    state = LeaseState(tracker, Limits(max_keys_per_session=8, max_watches_per_session=8,
                                       max_data_size=256, max_bytes_per_session=2048))
    session, _, _ = state.connect(Connect(5.0), "fuzz", 0.0, ID_EPOCH + 1.0)
    return state, session.id


def test_one_input(data: bytes) -> None:
    """Feed ``data[1:]`` in chunks of ``data[0] % 17 + 1`` bytes and check the invariants."""
    if not data:
        return
    step = data[0] % 17 + 1
    stream = data[1:]
    decoder = MessageDecoder(MAX_MESSAGE_SIZE)
    state, session_id = _state()
    now = 0.0
    try:
        for start in range(0, len(stream), step):
            for obj in decoder.feed(stream[start : start + step]):
                try:
                    parse_server_message(obj)
                except RemoteProtocolError:
                    pass
                try:
                    request = parse_request(obj)
                except BadRequest:
                    continue
                if isinstance(request.body, Connect):
                    continue
                now += 0.001
                try:
                    state.handle(session_id, Request(request.xid, request.body, 0), now)
                except RequestFailed:
                    pass
                if session_id not in state.sessions:  # closed by a fuzzed close request
                    state, session_id = _state()
            assert decoder.buffered <= MAX_MESSAGE_SIZE + 4, decoder.buffered
        decoder.feed_eof()
    except RemoteProtocolError:
        pass


def main(argv: list[str]) -> None:
    """Run atheris if it is installed, else replay the given files or the built-in seeds."""
    run(argv, test_one_input, SEEDS)


if __name__ == "__main__":
    main(sys.argv)
