"""Sampling TCP_INFO: the struct offsets, real loopback sockets, and streams without TCP."""

from __future__ import annotations

import socket
import ssl
import struct
import sys

import pytest
import trio
import trio.testing

from pulse._driver.tcpinfo import TCP_INFO_SIZE, parse_tcp_info, read_tcp_progress, tcp_socket

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO is Linux's")


def test_fields_are_read_from_the_kernels_offsets() -> None:
    """Bytes laid out as struct tcp_info give the values at include/uapi/linux/tcp.h's offsets."""
    raw = bytearray(TCP_INFO_SIZE + 40)
    raw[2] = 3  # tcpi_retransmits
    raw[4] = 2  # tcpi_backoff
    struct.pack_into("=I", raw, 8, 1_600_000)  # tcpi_rto, microseconds
    struct.pack_into("=I", raw, 24, 4)  # tcpi_unacked
    struct.pack_into("=I", raw, 52, 2500)  # tcpi_last_data_recv, ms
    struct.pack_into("=I", raw, 56, 750)  # tcpi_last_ack_recv, ms
    struct.pack_into("=I", raw, 100, 17)  # tcpi_total_retrans
    facts = parse_tcp_info(bytes(raw))
    assert facts is not None
    assert (facts.retransmits, facts.backoff, facts.unacked, facts.total_retrans) == (3, 2, 4, 17)
    assert facts.rto == pytest.approx(1.6)
    assert facts.last_data_recv == pytest.approx(2.5)
    assert facts.last_ack_recv == pytest.approx(0.75)
    assert parse_tcp_info(bytes(TCP_INFO_SIZE - 1)) is None  # a truncated answer says nothing


@linux_only
def test_a_live_loopback_connection_reports_recent_acks_and_no_retransmissions() -> None:
    """After an exchange on loopback the kernel heard the peer just now and never retransmitted."""
    listener = socket.create_server(("127.0.0.1", 0))
    with listener, socket.create_connection(listener.getsockname()) as client:
        server, _ = listener.accept()
        with server:
            client.sendall(b"ping")
            assert server.recv(4) == b"ping"
            server.sendall(b"pong")
            assert client.recv(4) == b"pong"
            facts = read_tcp_progress(client)
    assert facts is not None
    assert facts.last_ack_recv < 1.0 and facts.last_data_recv < 1.0
    assert facts.total_retrans == 0 and facts.retransmits == 0 and facts.unacked == 0
    assert facts.rto >= 0.2  # Linux's minimum RTO


def test_unreadable_sockets_and_streams_without_tcp_give_none() -> None:
    """A closed socket, a UDP socket and a memory stream have no TCP_INFO: None, no error."""
    closed = socket.socket()
    closed.close()
    assert read_tcp_progress(closed) is None
    assert read_tcp_progress(None) is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert read_tcp_progress(udp) is None
    left, _right = trio.testing.memory_stream_pair()
    assert tcp_socket(left) is None


@linux_only
async def test_the_tcp_socket_is_found_under_tls_and_plain_streams() -> None:
    """tcp_socket unwraps an SSLStream down to the SocketStream's socket."""
    a, b = socket.socketpair()
    with a, b:
        plain = trio.SocketStream(trio.socket.from_stdlib_socket(a))
        assert tcp_socket(plain) is plain.socket
        tls = trio.SSLStream(plain, ssl.create_default_context(), server_hostname="x")
        assert tcp_socket(tls) is plain.socket
