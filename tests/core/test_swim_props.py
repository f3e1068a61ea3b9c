"""Property tests of the SWIM machine: any sequence of inputs keeps its invariants."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pulse._core.swim import DEFAULT_VSN, Swim, SwimConfig
from pulse._core.swim_messages import Ack, Alive, Dead, Nack, NodeState, Ping, Suspect

NAMES = [f"n{i}" for i in range(6)]


def addr(name: str) -> tuple[str, int]:
    return (f"10.0.0.{NAMES.index(name)}", 7946)


incs = st.integers(0, 6)
names = st.sampled_from(NAMES)
inputs = st.one_of(
    st.builds(lambda n, i, m: ("packet", Alive(i, n, addr(n), m, DEFAULT_VSN)), names, incs,
              st.sampled_from([b"", b"a", b"b"])),
    st.builds(lambda n, i, f: ("packet", Suspect(i, n, f)), names, incs, names),
    st.builds(lambda n, i, f: ("packet", Dead(i, n, f)), names, incs, names),
    st.builds(lambda s: ("packet", Ack(s)), st.integers(0, 20)),
    st.builds(lambda s: ("packet", Nack(s)), st.integers(0, 20)),
    st.builds(lambda s, n: ("packet", Ping(s, n, addr("n1"), "n1")), st.integers(0, 20), names),
    st.builds(lambda dt: ("timer", dt), st.floats(0.0, 5.0)),
    st.just(("meta", None)),
    st.just(("leave", None)),
)


@given(st.lists(inputs, max_size=60), st.integers(0, 1000))
@settings(max_examples=300, deadline=None)
def test_any_input_sequence_keeps_the_invariants(seq: list[tuple[str, object]], seed: int) -> None:
    """Incarnations never go down (while a member is remembered), we never see ourselves suspect
    or failed, leaving is final, and the timer can be called at any time without raising."""
    m = Swim(SwimConfig(name="n0", addr=addr("n0")), random.Random(seed), 0.0)
    now = 0.0
    last_inc: dict[str, int] = {}
    for kind, value in seq:
        if kind == "packet":
            m.packet_received(now, addr("n1"), value)  # type: ignore[arg-type]
        elif kind == "timer":
            now += float(value)  # type: ignore[arg-type]
            d = m.next_deadline()
            if d is not None and d <= now:
                m.handle_timer(now)
        elif kind == "meta" and not m.has_left:
            m.update_meta(now, b"x")
        elif kind == "leave":
            m.leave(now)
        me = m.member("n0")
        assert me is not None
        if m.has_left:
            assert me.state == NodeState.LEFT
        else:
            assert me.state == NodeState.ALIVE
        present = {member.name for member in m.members()}
        for gone in set(last_inc) - present:
            del last_inc[gone]  # reaped: it may come back with any incarnation
        for member in m.members():
            assert member.incarnation >= last_inc.get(member.name, 0)
            last_inc[member.name] = member.incarnation
        d = m.next_deadline()
        assert d is not None
        m.handle_timer(max(now, 0.0))  # calling early or on time never raises
