"""A pulled cable between two network namespaces: tuned TCP keepalive notices, plain TCP does not.

Runs as root with ``ip netns`` and iptables (skipped otherwise, failed under ``CI=true``).
The client lives in namespace ``a``, the server in ``b``; the cable is pulled inside ``b`` so
the client sees pure silence -- no FIN, no RST, no ICMP -- as when a peer's host dies.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from pulse.plugins.tcp.keepalive import TcpKeepalive, worst_case_detection
from tests import netns
from tests.netns import NetnsPair, require_netns

WINDOW = 4.0
"""Seconds the sockets are watched after the cable is pulled (the whole test stays < 6 s)."""

POLL_EVENTS = select.POLLIN | select.POLLERR | select.POLLHUP


@pytest.fixture
def net() -> Iterator[NetnsPair]:
    """A fresh namespace pair (skips, or fails under CI=true, when namespaces are unavailable)."""
    require_netns()
    with NetnsPair() as pair:
        yield pair


def _connect(net: NetnsPair, listener: socket.socket, tuning: TcpKeepalive | None) -> tuple[
        socket.socket, socket.socket]:
    """A client socket in ``a`` (tuned or not) connected to ``listener`` in ``b``, verified."""
    client = net.socket(net.a)
    if tuning is not None:
        tuning.apply(client)
    client.settimeout(2.0)
    client.connect(listener.getsockname())
    server, _ = listener.accept()
    server.settimeout(2.0)
    client.sendall(b"?")
    assert server.recv(1) == b"?"
    server.sendall(b"!")
    assert client.recv(1) == b"!"
    return client, server


def _watch(sockets: dict[str, socket.socket], start: float, deadline: float) -> dict[
        str, tuple[float, int]]:
    """Poll until ``deadline``; for each socket that signals, (seconds since start, SO_ERROR)."""
    poller = select.poll()
    names = {}
    for name, sock in sockets.items():
        poller.register(sock, POLL_EVENTS)
        names[sock.fileno()] = name
    seen: dict[str, tuple[float, int]] = {}
    for _ in range(1000):  # bounded; each poll either reports an event or runs to the deadline
        remaining = deadline - time.monotonic()
        if remaining <= 0 or len(seen) == len(sockets):
            break
        for fd, _events in poller.poll(remaining * 1000):
            sock = sockets[names[fd]]
            seen[names[fd]] = (time.monotonic() - start,
                               sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
            poller.unregister(fd)
    return seen


@pytest.mark.netns
@pytest.mark.e2e
def test_pulled_cable_tuned_socket_times_out_and_plain_socket_does_not(
    net: NetnsPair, record_property: Callable[[str, object], None]
) -> None:
    """With keepalive 1/1/2 and a 2 s user timeout the client gets ETIMEDOUT in ~2-4 s, busy
    or idle; an untuned socket with data in flight shows nothing in the same window."""
    fast = TcpKeepalive(idle=1, interval=1, count=2, user_timeout=2)
    listener = net.socket(net.b)
    listener.bind((net.address(net.b), 0))
    listener.listen(4)
    listener.settimeout(2.0)
    pairs = {
        "tuned_busy": _connect(net, listener, fast),
        "tuned_idle": _connect(net, listener, fast),
        "plain_busy": _connect(net, listener, None),
    }
    clients = {name: client for name, (client, _server) in pairs.items()}
    try:
        net.pull_cable(net.b)
        start = time.monotonic()
        clients["tuned_busy"].send(b"x" * 1000)  # unacknowledged from now on
        clients["plain_busy"].send(b"x" * 1000)
        seen = _watch(clients, start, start + WINDOW)
        plain_error = clients["plain_busy"].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    finally:
        for client, server in pairs.values():
            client.close()
            server.close()
        listener.close()

    for name in ("tuned_busy", "tuned_idle"):
        record_property(f"{name}_detection_s", round(seen[name][0], 3) if name in seen else None)
    assert "tuned_busy" in seen, f"tuned busy socket showed no error within {WINDOW} s"
    busy_after, busy_errno = seen["tuned_busy"]
    assert busy_errno == errno.ETIMEDOUT
    # Linux counts the user timeout from the first retransmission, so it cannot fire sooner.
    assert worst_case_detection(fast, idle_socket=False) <= busy_after < WINDOW

    assert "tuned_idle" in seen, f"tuned idle socket showed no error within {WINDOW} s"
    idle_after, idle_errno = seen["tuned_idle"]
    assert idle_errno == errno.ETIMEDOUT
    # Counted from the last byte received, just before the cut: ~2 s (idle 1 + one probe).
    assert 1.5 <= idle_after <= worst_case_detection(fast) + 0.5

    assert "plain_busy" not in seen and plain_error == 0


@pytest.mark.netns
@pytest.mark.e2e
def test_cable_pull_blocks_traffic_and_restore_brings_it_back(net: NetnsPair) -> None:
    """pull_cable makes a connect time out silently; restore_cable makes it succeed again."""
    listener = net.socket(net.b)
    listener.bind((net.address(net.b), 0))
    listener.listen(4)
    target = listener.getsockname()
    try:
        with net.cable_pulled(net.b):
            blocked = net.socket(net.a)
            blocked.settimeout(0.3)
            with blocked, pytest.raises(TimeoutError):
                blocked.connect(target)
        reconnect = net.socket(net.a)
        reconnect.settimeout(2.0)
        with reconnect:
            reconnect.connect(target)
            assert reconnect.getpeername() == target
    finally:
        listener.close()


@pytest.mark.netns
@pytest.mark.e2e
def test_namespaces_are_removed_even_when_the_body_fails() -> None:
    """Leaving the with block by an exception deletes both namespaces."""
    require_netns()
    with pytest.raises(RuntimeError, match="boom"), NetnsPair() as pair:
        names = {pair.a, pair.b}
        assert names <= netns.namespaces()
        assert "10.213.7.2" in pair.run(pair.b, "ip", "-4", "addr").stdout
        raise RuntimeError("boom")
    assert not names & netns.namespaces()


def test_require_netns_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unavailable namespaces skip the test, but under CI=true they fail it."""
    monkeypatch.setattr(netns, "netns_unavailable_reason", lambda: "needs root")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        require_netns()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needs root"):
        require_netns()
