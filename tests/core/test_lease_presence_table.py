"""The presence table and data format used by `pulse agent`, `watch` and `demo`."""

from __future__ import annotations

import json

import pytest

from pulse.cli._presence import (
    PresenceTable,
    decode_presence,
    encode_presence,
    event_json,
    format_seconds,
    parse_meta,
)
from pulse.presence import PresenceEvent


def data(pid: int = 1) -> bytes:
    return encode_presence(host="h", pid=pid, started=100.0, rtt=0.002, timeout=3.0,
                           meta={"room": "lab"})


def test_presence_data_round_trips() -> None:
    """Agent data decodes to the fields it was built from."""
    assert decode_presence(data()) == {"host": "h", "pid": 1, "started": 100.0, "rtt": 0.002,
                                       "timeout": 3.0, "meta": {"room": "lab"}}


@pytest.mark.parametrize("raw", [b"\xc1", b"\x93\x01\x02\x03", b"\x81\x01\x02", b"\xa1"])
def test_foreign_data_is_shown_raw(raw: bytes) -> None:
    """Data that is not a msgpack map with string keys comes back as hex, never an error."""
    assert decode_presence(raw) == {"raw": raw.hex()}


def test_table_reports_only_real_changes() -> None:
    """Online twice with the same data, or offline for someone not online, changes nothing."""
    table = PresenceTable()
    assert table.apply(PresenceEvent("online", "a", data()), 1.0)
    assert not table.apply(PresenceEvent("online", "a", data()), 2.0)
    assert table.apply(PresenceEvent("online", "a", data(pid=2)), 3.0)
    assert table.online_ids() == {"a"}
    assert table.apply(PresenceEvent("offline", "a"), 4.0)
    assert not table.apply(PresenceEvent("offline", "a"), 5.0)
    assert not table.apply(PresenceEvent("offline", "ghost"), 5.0)
    assert table.members["a"].changed == 4.0
    assert table.members["a"].rtt == 0.002


def test_json_lines_have_event_and_id() -> None:
    """Each JSON line carries event, id, time, initial, and decoded data when online."""
    online = json.loads(event_json(PresenceEvent("online", "a", data(), initial=True), 9.5))
    assert online["event"] == "online" and online["id"] == "a" and online["initial"] is True
    assert online["data"]["meta"] == {"room": "lab"} and online["time"] == 9.5
    offline = json.loads(event_json(PresenceEvent("offline", "a"), 10.0))
    assert offline == {"event": "offline", "id": "a", "initial": False, "time": 10.0}


def test_meta_pairs() -> None:
    """k=v pairs parse; values may contain '='; a pair without '=' is refused."""
    assert parse_meta(["a=1", "b=x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ValueError):
        parse_meta(["novalue"])


def test_table_renders_every_member() -> None:
    """The rich table has one row per member, offline ones included."""
    table = PresenceTable()
    table.apply(PresenceEvent("online", "a", data()), 1.0)
    table.apply(PresenceEvent("online", "b", b""), 1.0)
    table.apply(PresenceEvent("offline", "b"), 2.0)
    rendered = table.render("t", 130.0, {"a": {"fault": "SIGKILL"}})
    assert rendered.row_count == 2
    assert [c.header for c in rendered.columns][:3] == ["ID", "STATE", "FAULT"]
    assert format_seconds(0.25) == "250 ms" and format_seconds(3.21) == "3.2 s"
