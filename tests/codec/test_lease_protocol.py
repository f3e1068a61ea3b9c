"""The lease protocol: message round trips and hostile input on the decoder path."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.codec import MessageDecoder, encode_message
from pulse.errors import RemoteProtocolError
from pulse.plugins.lease.protocol import (
    MAX_KEY_LENGTH,
    BadRequest,
    CloseSession,
    Connect,
    ErrorCode,
    ErrorNotice,
    Get,
    ListChildren,
    Ping,
    Register,
    Request,
    Response,
    SessionNotice,
    Unregister,
    Unwatch,
    Watch,
    WatchEvent,
    check_key,
    name_of,
    notice_to_wire,
    parent_of,
    parse_request,
    parse_server_message,
    request_to_wire,
    response_to_wire,
    watch_event_to_wire,
)

segment = st.text(st.characters(exclude_characters="/\x00", exclude_categories=["Cs"]),
                  min_size=1, max_size=8).filter(lambda s: s not in (".", ".."))
keys = st.lists(segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
ids = st.integers(0, 2**63 - 1)

request_bodies = st.one_of(
    st.builds(Connect, timeout=st.floats(0.001, 1e6)),
    st.builds(Connect, timeout=st.floats(0.001, 1e6), session_id=ids,
              password=st.binary(max_size=16), last_seq=ids,
              max_message_size=st.integers(1024, 2**32 - 1)),
    st.builds(Connect, timeout=st.floats(0.001, 1e6),
              supersedes=st.tuples(ids, st.binary(max_size=16))),
    st.just(Ping()),
    st.builds(Register, key=keys, data=st.binary(max_size=64)),
    st.builds(Unregister, key=keys),
    st.builds(Get, key=keys),
    st.builds(ListChildren, prefix=keys | st.just("/")),
    st.builds(Watch, prefix=keys, watch_id=ids),
    st.builds(Unwatch, watch_id=ids),
    st.just(CloseSession()),
)

server_messages = st.one_of(
    st.builds(Response, xid=ids,
              result=st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1))),
    st.builds(Response, xid=ids, error=st.sampled_from(ErrorCode), message=st.text(max_size=20)),
    st.builds(WatchEvent, seq=st.integers(1, 2**63 - 1), watch_id=ids,
              event=st.sampled_from(["online", "offline", "synced"]), id=segment,
              data=st.binary(max_size=32), initial=st.booleans()),
    st.builds(SessionNotice, state=st.sampled_from(["expired", "closed", "moved"]),
              reason=st.text(max_size=20)),
    st.builds(ErrorNotice, code=st.sampled_from(ErrorCode), message=st.text(max_size=20)),
)

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=10) | st.binary(max_size=10),
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=20,
)


def server_wire(message: Any) -> list[Any]:
    if isinstance(message, Response):
        return response_to_wire(message)
    if isinstance(message, WatchEvent):
        return watch_event_to_wire(message)
    return notice_to_wire(message)


def through_the_wire(obj: object) -> object:
    decoder = MessageDecoder()
    [decoded] = decoder.feed(encode_message(obj))
    return decoded


@given(request_bodies, ids, ids)
def test_every_request_round_trips(body: Any, xid: int, ack: int) -> None:
    """Any request survives encoding, framing and parsing unchanged."""
    request = Request(xid, body, ack)
    assert parse_request(through_the_wire(request_to_wire(request))) == request


@given(server_messages)
def test_every_server_message_round_trips(message: Any) -> None:
    """Responses, watch events and notices survive encoding and parsing unchanged."""
    assert parse_server_message(through_the_wire(server_wire(message))) == message


@settings(max_examples=300)
@given(st.binary(max_size=200), st.integers(1, 64))
def test_random_bytes_never_escape_as_anything_but_remote_protocol_error(
    data: bytes, chunk: int
) -> None:
    """Garbage fed to the server's decode path raises only RemoteProtocolError."""
    decoder = MessageDecoder(4096)
    try:
        for start in range(0, len(data), chunk):
            for message in decoder.feed(data[start:start + chunk]):
                parse_request(message)
    except RemoteProtocolError:
        pass


@settings(max_examples=200)
@given(msgpack_values)
def test_any_decoded_object_is_a_request_or_a_bad_request(obj: object) -> None:
    """parse_request never raises anything but BadRequest, whatever msgpack decoded."""
    try:
        parse_request(through_the_wire(obj))
    except BadRequest:
        pass


@settings(max_examples=200)
@given(st.lists(msgpack_values, min_size=5, max_size=5))
def test_request_shaped_garbage_is_refused_cleanly(items: list[Any]) -> None:
    """Five-item arrays with random contents (closer to real requests) parse or fail cleanly."""
    items[0] = 0
    try:
        parse_request(through_the_wire(items))
    except BadRequest:
        pass


@settings(max_examples=200)
@given(st.lists(msgpack_values, min_size=4, max_size=4), st.sampled_from([1, 2]))
def test_server_message_parsing_fails_only_with_remote_protocol_error(
    items: list[Any], kind: int
) -> None:
    """The client's parse path refuses malformed server messages with RemoteProtocolError."""
    items[0] = kind
    try:
        parse_server_message(through_the_wire(items))
    except RemoteProtocolError:
        pass


@pytest.mark.parametrize(
    ("wire", "xid", "fragment"),
    [
        ({"op": "ping"}, None, "must be an array"),
        ([1, 5, 0, "ping", {}], None, "expected a request"),
        ([False, 5, 0, "ping", {}], None, "expected a request"),
        ([0, -1, 0, "ping", {}], None, "xid"),
        ([0, 7, 0, "fly", {}], 7, "unknown operation 'fly'"),
        ([0, 7, 0, "ping", []], 7, "arguments must be a map"),
        ([0, 7, 0, "register", {"key": "nope"}], 7, "must start with '/'"),
        ([0, 7, 0, "register", {"key": "/a//b"}], 7, "empty"),
        ([0, 7, 0, "register", {"key": "/a", "data": "text"}], 7, "must be bytes"),
        ([0, 7, 0, "connect", {"timeout": 0}], 7, "> 0"),
        ([0, 7, 0, "connect", {"timeout": float("inf")}], 7, "finite"),
        ([0, 7, 0, "connect", {"timeout": True}], 7, "number of seconds"),
        ([0, 7, 0, "connect", {"timeout": 1, "session_id": 5}], 7, "password"),
        ([0, 7, 0, "watch", {"prefix": "/a"}], 7, "watch_id"),
        ([0, 7, 0, "get", {"key": "/" + "a" * MAX_KEY_LENGTH}], 7, "limit"),
    ],
)
def test_bad_requests_say_what_is_wrong(wire: Any, xid: int | None, fragment: str) -> None:
    """Each defect gets a message naming it, and the xid when it was readable."""
    with pytest.raises(BadRequest, match=None) as caught:
        parse_request(wire)
    assert fragment in str(caught.value)
    assert caught.value.xid == xid


def test_key_helpers() -> None:
    """Parents, names and key validation follow slash-separated paths."""
    assert parent_of("/a/b/c") == "/a/b"
    assert parent_of("/a") == "/"
    assert name_of("/a/b") == "b"
    assert check_key("/") == "/"
    for bad in ("", "a", "/a/", "/a/./b", "/a/../b", "/a\x00b", 5):
        with pytest.raises(ValueError):
            check_key(bad)
