"""OS-level TCP keepalive tuning: options set and read back, rounding, validation, worst-case
arithmetic, /proc parsing, unsupported options, and the ``pulse keepalive`` command."""

from __future__ import annotations

import errno
import json
import math
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from pulse.cli.main import main
from pulse.errors import PulseError
from pulse.plugins.tcp.keepalive import (
    MAX_RECOMMENDED_TIMEOUT,
    AppliedKeepalive,
    KeepaliveDefaults,
    KeepaliveRoundingWarning,
    KeepaliveUnsupported,
    KeepaliveWarning,
    TcpKeepalive,
    os_defaults,
    read_keepalive,
    recommended_for,
    retransmission_timeout,
    worst_case_detection,
)

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads Linux socket options and /proc"
)

DEFAULTS = KeepaliveDefaults(idle=7200, interval=75, count=9, tcp_retries2=15, source="test")


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    """A fresh, unconnected IPv4 TCP socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        yield s


def _kernel(s: Any) -> tuple[int, int, int, int, int]:
    """SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT as held."""
    tcp = socket.IPPROTO_TCP
    return (
        s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        s.getsockopt(tcp, socket.TCP_KEEPIDLE),
        s.getsockopt(tcp, socket.TCP_KEEPINTVL),
        s.getsockopt(tcp, socket.TCP_KEEPCNT),
        s.getsockopt(tcp, socket.TCP_USER_TIMEOUT),
    )


# --- setting and reading back -------------------------------------------------------------


@linux_only
def test_apply_sets_every_option_on_a_plain_socket(sock: socket.socket) -> None:
    """apply() turns SO_KEEPALIVE on and sets idle/interval/count/user timeout in the kernel."""
    applied = TcpKeepalive(idle=3, interval=2, count=4, user_timeout=5.5).apply(sock)
    assert _kernel(sock) == (1, 3, 2, 4, 5500)
    assert applied == AppliedKeepalive(
        enabled=True, idle=3.0, interval=2.0, count=4, user_timeout=5.5
    )


@linux_only
def test_applied_values_are_what_the_kernel_reports(sock: socket.socket) -> None:
    """The AppliedKeepalive returned equals an independent read of the same socket."""
    applied = TcpKeepalive(idle=11, interval=7, count=5, user_timeout=None).apply(sock)
    assert applied == read_keepalive(sock)
    assert _kernel(sock)[4] == 0  # no user timeout asked for: the kernel default (0) is kept


@linux_only
def test_apply_without_user_timeout_clears_an_earlier_one(sock: socket.socket) -> None:
    """Re-applying without user_timeout resets TCP_USER_TIMEOUT to the kernel default."""
    TcpKeepalive.fast().apply(sock)
    applied = TcpKeepalive(idle=5, interval=5, count=3).apply(sock)
    assert applied.user_timeout is None
    assert _kernel(sock)[4] == 0


@linux_only
def test_fresh_socket_reads_keepalive_off_with_system_defaults(sock: socket.socket) -> None:
    """A socket nobody tuned has SO_KEEPALIVE off and the /proc idle/interval/count."""
    held = read_keepalive(sock)
    defaults = os_defaults()
    assert held.enabled is False
    assert (held.idle, held.interval, held.count) == (
        defaults.idle, defaults.interval, defaults.count)
    assert worst_case_detection(held, defaults=defaults) == math.inf


@linux_only
async def test_apply_works_on_a_trio_socket() -> None:
    """A trio.socket.SocketType is tuned the same way as a stdlib socket."""
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM) as tsock:
        applied = TcpKeepalive(idle=4, interval=3, count=2, user_timeout=6).apply(tsock)
        assert _kernel(tsock) == (1, 4, 3, 2, 6000)
        assert applied.count == 2


@linux_only
async def test_apply_works_on_a_connected_trio_socket_stream() -> None:
    """A trio.SocketStream is unwrapped to its .socket and tuned on a live loopback link."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
        async with stream, server:
            applied = TcpKeepalive.fast().apply(stream)
            assert _kernel(stream.socket) == (1, 1, 1, 2, 2000)
            assert applied.user_timeout == 2.0
            await stream.send_all(b"still works")
            assert await server.receive_some(64) == b"still works"
        nursery.cancel_scope.cancel()
    for listener in listeners:
        await listener.aclose()


# --- rounding ------------------------------------------------------------------------------


@linux_only
def test_fractional_seconds_round_up_with_a_warning(sock: socket.socket) -> None:
    """1.2 s idle → 2 s, 0.5 s interval → 1 s, 1.0005 s user timeout → 1001 ms, each warned."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        applied = TcpKeepalive(idle=1.2, interval=0.5, count=3, user_timeout=1.0005).apply(sock)
    messages = [str(w.message) for w in caught if w.category is KeepaliveRoundingWarning]
    assert len(messages) == 3
    assert "TCP_KEEPIDLE" in messages[0] and "2 s" in messages[0]
    assert "TCP_KEEPINTVL" in messages[1] and "1 s" in messages[1]
    assert "TCP_USER_TIMEOUT" in messages[2] and "1001 ms" in messages[2]
    assert _kernel(sock) == (1, 2, 1, 3, 1001)
    assert (applied.idle, applied.interval, applied.user_timeout) == (2.0, 1.0, 1.001)


@linux_only
def test_whole_values_apply_without_any_warning(sock: socket.socket) -> None:
    """Whole seconds (and 1.1 s = 1100 ms despite binary noise) raise no warning at all."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        applied = TcpKeepalive(idle=2.0, interval=3, count=1, user_timeout=1.1).apply(sock)
    assert _kernel(sock)[4] == 1100
    assert applied.idle == 2.0


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"idle": 0}, "idle"),
        ({"idle": -1}, "idle"),
        ({"idle": math.nan}, "idle"),
        ({"idle": math.inf}, "idle"),
        ({"idle": 32768}, "idle"),
        ({"idle": True}, "idle"),
        ({"idle": "5"}, "idle"),
        ({"interval": 0}, "interval"),
        ({"interval": 40000}, "interval"),
        ({"count": 0}, "count"),
        ({"count": 128}, "count"),
        ({"count": 2.0}, "count"),
        ({"count": True}, "count"),
        ({"user_timeout": 0}, "user_timeout"),
        ({"user_timeout": -0.5}, "user_timeout"),
        ({"user_timeout": 3_000_000}, "user_timeout"),
    ],
)
def test_invalid_values_raise_value_error_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    """Each out-of-range or wrongly typed field raises ValueError that names it."""
    values: dict[str, Any] = {"idle": 1, "interval": 1, "count": 1, "user_timeout": None}
    values.update(kwargs)
    with pytest.raises(ValueError, match=field):
        TcpKeepalive(**values)


def test_boundary_values_are_accepted() -> None:
    """The Linux maxima themselves (32767 s, 127 probes) are valid."""
    setting = TcpKeepalive(idle=32767, interval=32767, count=127, user_timeout=2147483.647)
    assert setting.count == 127


# --- worst-case arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "idle_socket", "expected"),
    [
        (TcpKeepalive(10, 5, 3), True, 10 + 5 * 3),
        (TcpKeepalive(1, 1, 2), True, 1 + 1 * 2),
        # With TCP_USER_TIMEOUT Linux drops at the first probe tick >= U; count is ignored.
        (TcpKeepalive(1, 1, 2, user_timeout=2), True, 1 + 1),
        (TcpKeepalive(1, 1, 2, user_timeout=30), True, 1 + 29),
        (TcpKeepalive(10, 5, 3, user_timeout=12), True, 10 + 5),
        (TcpKeepalive(10, 5, 3, user_timeout=16), True, 10 + 5 * 2),
        (TcpKeepalive(10, 5, 9, user_timeout=4), True, 10 + 5),  # at least one probe
        (TcpKeepalive(1, 1, 2, user_timeout=2.5), True, 1 + 2),
        # Data in flight: the user timeout, else the retransmission limit.
        (TcpKeepalive(1, 1, 2, user_timeout=2), False, 2),
        (TcpKeepalive(1, 1, 2), False, 0.2 * (2**10 - 1) + (15 - 9) * 120),
        (DEFAULTS, True, 7200 + 75 * 9),
        (DEFAULTS, False, 924.6),
    ],
)
def test_worst_case_detection_matches_hand_arithmetic(
    setting: Any, idle_socket: bool, expected: float
) -> None:
    """worst_case_detection gives the sums worked out by hand (Linux semantics)."""
    got = worst_case_detection(setting, idle_socket=idle_socket, defaults=DEFAULTS)
    assert got == pytest.approx(expected)


def test_os_defaults_take_two_hours_eleven_minutes() -> None:
    """7200 s idle + 9 probes × 75 s is 2 h 11 min 15 s."""
    assert worst_case_detection(DEFAULTS, defaults=DEFAULTS) == 2 * 3600 + 11 * 60 + 15


def test_keepalive_off_never_notices_an_idle_dead_peer() -> None:
    """With SO_KEEPALIVE off an idle socket never errors; data in flight still times out."""
    plain = AppliedKeepalive(enabled=False, idle=7200, interval=75, count=9, user_timeout=None)
    assert worst_case_detection(plain, defaults=DEFAULTS) == math.inf
    assert worst_case_detection(plain, idle_socket=False, defaults=DEFAULTS) == pytest.approx(
        924.6)


def test_unknown_applied_values_fall_back_to_the_defaults() -> None:
    """An option the platform could not read counts with the OS default value."""
    partial = AppliedKeepalive(enabled=True, idle=30, interval=None, count=None,
                               user_timeout=None, unsupported=("TCP_KEEPINTVL", "TCP_KEEPCNT"))
    assert worst_case_detection(partial, defaults=DEFAULTS) == 30 + 75 * 9


@pytest.mark.parametrize(
    ("retries2", "expected"),
    [
        (0, 0.2),
        (3, 0.2 + 0.4 + 0.8 + 1.6),
        (8, 0.2 * 511),
        (9, 0.2 * 1023),  # the tenth interval is 102.4 s, still under the 120 s cap
        (10, 0.2 * 1023 + 120),
        (15, 204.6 + 6 * 120),
    ],
)
def test_retransmission_timeout_doubles_from_200ms_capped_at_120s(
    retries2: int, expected: float
) -> None:
    """The retransmission limit is the sum of retries2+1 doubling RTOs, each capped at 120 s."""
    assert retransmission_timeout(retries2) == pytest.approx(expected)


def test_retransmission_timeout_rejects_negative_retries() -> None:
    """A negative tcp_retries2 is a ValueError."""
    with pytest.raises(ValueError, match="tcp_retries2"):
        retransmission_timeout(-1)


# --- presets -------------------------------------------------------------------------------


def test_fast_preset_notices_within_two_seconds() -> None:
    """fast() is 1/1/2 with a 2 s user timeout: 2 s idle or busy on Linux, 3 s without U."""
    fast = TcpKeepalive.fast()
    assert (fast.idle, fast.interval, fast.count, fast.user_timeout) == (1, 1, 2, 2.0)
    assert worst_case_detection(fast, defaults=DEFAULTS) == 2
    assert worst_case_detection(fast, idle_socket=False, defaults=DEFAULTS) == 2
    no_user_timeout = TcpKeepalive(fast.idle, fast.interval, fast.count)
    assert worst_case_detection(no_user_timeout, defaults=DEFAULTS) == 3


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [(2, (1, 1, 1, 2.0)), (3, (1, 1, 2, 3.0)), (10, (7, 1, 3, 10.0)), (60, (30, 10, 3, 60.0)),
     (2.9, (1, 1, 1, 2.0))],
)
def test_recommended_for_examples(timeout: float, expected: tuple[Any, ...]) -> None:
    """recommended_for gives the documented tuples."""
    got = recommended_for(timeout)
    assert (got.idle, got.interval, got.count, got.user_timeout) == expected
    assert TcpKeepalive.recommended_for(timeout) == got


@given(st.floats(min_value=2, max_value=MAX_RECOMMENDED_TIMEOUT, allow_nan=False))
def test_recommended_for_detects_within_the_whole_timeout(timeout: float) -> None:
    """Idle (with and without U) and busy worst cases all equal floor(timeout)."""
    setting = recommended_for(timeout)
    whole = math.floor(timeout)
    assert worst_case_detection(setting, defaults=DEFAULTS) == whole
    assert worst_case_detection(setting, idle_socket=False, defaults=DEFAULTS) == whole
    portable = TcpKeepalive(setting.idle, setting.interval, setting.count)
    assert worst_case_detection(portable, defaults=DEFAULTS) <= whole


@pytest.mark.parametrize("timeout", [1.99, 0, -3, math.nan, MAX_RECOMMENDED_TIMEOUT + 1])
def test_recommended_for_rejects_timeouts_out_of_range(timeout: float) -> None:
    """Below 2 s (or beyond what 32767 s options can reach) recommended_for is a ValueError."""
    with pytest.raises(ValueError, match="timeout"):
        recommended_for(timeout)


# --- OS defaults ---------------------------------------------------------------------------


def _write_proc(directory: Path, **values: str) -> Path:
    for name, text in values.items():
        (directory / name).write_text(text)
    return directory


def test_os_defaults_parse_proc_files(tmp_path: Path) -> None:
    """The four /proc/sys/net/ipv4 files are read and the source names the directory."""
    proc = _write_proc(tmp_path, tcp_keepalive_time="600\n", tcp_keepalive_intvl="30\n",
                       tcp_keepalive_probes="4\n", tcp_retries2="8\n")
    got = os_defaults(proc_dir=proc, platform="linux")
    assert (got.idle, got.interval, got.count, got.tcp_retries2) == (600, 30, 4, 8)
    assert str(proc) in got.source
    assert "assumed" not in got.source


def test_os_defaults_name_unreadable_files(tmp_path: Path) -> None:
    """A missing or garbled file falls back to the kernel default and the source says which."""
    proc = _write_proc(tmp_path, tcp_keepalive_time="300\n", tcp_keepalive_intvl="junk\n",
                       tcp_keepalive_probes="5\n")
    got = os_defaults(proc_dir=proc, platform="linux")
    assert (got.idle, got.interval, got.count, got.tcp_retries2) == (300, 75, 5, 15)
    assert "tcp_keepalive_intvl" in got.source and "tcp_retries2" in got.source
    assert "tcp_keepalive_time" not in got.source.split("unreadable", 1)[1]


@linux_only
def test_os_defaults_match_this_machine() -> None:
    """On this Linux machine os_defaults() equals the live /proc values."""
    proc = Path("/proc/sys/net/ipv4")
    got = os_defaults()
    live = [int((proc / name).read_text()) for name in
            ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes", "tcp_retries2")]
    assert [got.idle, got.interval, got.count, got.tcp_retries2] == live


@pytest.mark.parametrize(
    ("platform", "expected", "word"),
    [("darwin", (7200, 75, 8), "macOS"), ("win32", (7200, 1, 10), "Windows"),
     ("sunos5", (7200, 75, 9), "assumed")],
)
def test_os_defaults_elsewhere_are_documented_fallbacks(
    platform: str, expected: tuple[int, int, int], word: str
) -> None:
    """Off Linux the documented defaults come back with a source saying so."""
    got = os_defaults(platform=platform)
    assert (got.idle, got.interval, got.count) == expected
    assert word in got.source and "tcp_retries2=15" in got.source


# --- unsupported options -------------------------------------------------------------------


@linux_only
def test_missing_user_timeout_constant_warns_and_sets_the_rest(
    sock: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without socket.TCP_USER_TIMEOUT a KeepaliveWarning names it; the others are still set."""
    user_timeout_option = socket.TCP_USER_TIMEOUT
    monkeypatch.delattr(socket, "TCP_USER_TIMEOUT")
    with pytest.warns(KeepaliveWarning, match="TCP_USER_TIMEOUT") as record:
        applied = TcpKeepalive(idle=3, interval=2, count=4, user_timeout=5).apply(sock)
    assert not any(w.category is KeepaliveRoundingWarning for w in record)
    assert applied.unsupported == ("TCP_USER_TIMEOUT",)
    assert applied.user_timeout is None
    assert (applied.idle, applied.interval, applied.count) == (3, 2, 4)
    assert sock.getsockopt(socket.IPPROTO_TCP, user_timeout_option) == 0


@linux_only
def test_missing_user_timeout_constant_raises_when_strict(
    sock: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """strict=True turns the missing option into KeepaliveUnsupported (a PulseError)."""
    monkeypatch.delattr(socket, "TCP_USER_TIMEOUT")
    with pytest.raises(KeepaliveUnsupported, match="TCP_USER_TIMEOUT") as info:
        TcpKeepalive.fast().apply(sock, strict=True)
    assert isinstance(info.value, PulseError)
    assert info.value.option == "TCP_USER_TIMEOUT"


@linux_only
def test_missing_idle_constant_warns_naming_it(
    sock: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With neither TCP_KEEPIDLE nor macOS's TCP_KEEPALIVE the warning names TCP_KEEPIDLE."""
    monkeypatch.delattr(socket, "TCP_KEEPIDLE")
    monkeypatch.delattr(socket, "TCP_KEEPALIVE", raising=False)
    with pytest.warns(KeepaliveWarning, match="TCP_KEEPIDLE"):
        applied = TcpKeepalive(idle=3, interval=2, count=4).apply(sock)
    assert "TCP_KEEPIDLE" in applied.unsupported
    assert applied.idle is None and applied.count == 4


@linux_only
def test_macos_idle_option_name_is_used_when_present(
    sock: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where only TCP_KEEPALIVE exists (macOS) it carries the idle time."""
    monkeypatch.setattr(socket, "TCP_KEEPALIVE", socket.TCP_KEEPIDLE, raising=False)
    monkeypatch.delattr(socket, "TCP_KEEPIDLE")
    applied = TcpKeepalive(idle=9, interval=2, count=4).apply(sock)
    assert applied.idle == 9 and applied.unsupported == ()


class _RefusingSocket:
    """Delegates to a real socket but refuses one option with ENOPROTOOPT."""

    def __init__(self, real: socket.socket, refused: int) -> None:
        self.real = real
        self.refused = refused

    def setsockopt(self, level: int, optname: int, value: int, /) -> None:
        if level == socket.IPPROTO_TCP and optname == self.refused:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        self.real.setsockopt(level, optname, value)

    def getsockopt(self, level: int, optname: int, /) -> int:
        return self.real.getsockopt(level, optname)


@linux_only
def test_kernel_refusing_an_option_warns_naming_it(sock: socket.socket) -> None:
    """A setsockopt that fails with ENOPROTOOPT becomes a KeepaliveWarning, not a crash."""
    wrapper = _RefusingSocket(sock, socket.TCP_KEEPCNT)
    with pytest.warns(KeepaliveWarning, match="TCP_KEEPCNT"):
        applied = TcpKeepalive(idle=3, interval=2, count=4).apply(wrapper)
    assert applied.unsupported == ("TCP_KEEPCNT",)


def test_other_os_errors_propagate() -> None:
    """A closed socket is a real error (EBADF), not an unsupported option."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.close()
    with pytest.raises(OSError):
        TcpKeepalive.fast().apply(s)


class _OldWindowsSocket:
    """A socket as old Windows offers it: SO_KEEPALIVE and ioctl(SIO_KEEPALIVE_VALS) only."""

    def __init__(self) -> None:
        self.keepalive = 0
        self.ioctls: list[tuple[int, tuple[int, int, int]]] = []

    def setsockopt(self, level: int, optname: int, value: int, /) -> None:
        assert (level, optname) == (socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        self.keepalive = value

    def getsockopt(self, level: int, optname: int, /) -> int:
        assert (level, optname) == (socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        return self.keepalive

    def ioctl(self, control: int, option: tuple[int, int, int]) -> None:
        self.ioctls.append((control, option))


def test_windows_keepalive_vals_ioctl_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without per-option constants, idle/interval go through SIO_KEEPALIVE_VALS in ms."""
    for name in ("TCP_KEEPIDLE", "TCP_KEEPALIVE", "TCP_KEEPINTVL", "TCP_KEEPCNT",
                 "TCP_USER_TIMEOUT"):
        monkeypatch.delattr(socket, name, raising=False)
    monkeypatch.setattr(socket, "SIO_KEEPALIVE_VALS", 0x98000004, raising=False)
    fake = _OldWindowsSocket()
    with pytest.warns(KeepaliveWarning) as record:
        applied = TcpKeepalive(idle=1.5, interval=1, count=3, user_timeout=2).apply(fake)
    named = " ".join(str(w.message) for w in record)
    assert "TCP_KEEPCNT" in named and "TCP_USER_TIMEOUT" in named
    assert fake.ioctls == [(0x98000004, (1, 1500, 1000))]
    assert applied.enabled and (applied.idle, applied.interval) == (1.5, 1.0)
    assert applied.unsupported == ("TCP_KEEPCNT", "TCP_USER_TIMEOUT")
    assert len(applied.unverified) == 2


# --- the pulse keepalive command -----------------------------------------------------------


def _json_run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["keepalive", "--json", *argv]) == 0
    out = capsys.readouterr().out
    parsed: dict[str, Any] = json.loads(out)
    return parsed


@linux_only
def test_cli_json_compares_defaults_and_the_applied_preset(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--json reports the /proc defaults, the fast preset as applied, and each worst case."""
    report = _json_run(capsys)
    defaults = os_defaults()
    columns = report["columns"]
    assert report["os_defaults"]["idle"] == defaults.idle
    assert columns["plain"]["keepalive"] is False and columns["plain"]["detect_idle"] is None
    assert columns["os_keepalive"]["detect_idle"] == worst_case_detection(defaults)
    assert columns["os_keepalive"]["detect_in_flight"] == pytest.approx(
        retransmission_timeout(defaults.tcp_retries2))
    applied = columns["applied"]
    assert (applied["idle"], applied["interval"], applied["count"], applied["user_timeout"]) == (
        1, 1, 2, 2)
    assert applied["detect_idle"] == 2 and applied["detect_in_flight"] == 2
    assert report["warnings"] == []


@linux_only
def test_cli_options_override_the_preset_and_report_rounding(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--idle 1.5 --count 5 --user-timeout 0 is applied as 2 s / 5 probes / no user timeout."""
    report = _json_run(capsys, "--idle", "1.5", "--count", "5", "--user-timeout", "0")
    requested, applied = report["columns"]["requested"], report["columns"]["applied"]
    assert requested["idle"] == 1.5 and applied["idle"] == 2
    assert applied["count"] == 5 and applied["user_timeout"] is None
    assert applied["detect_idle"] == 2 + 1 * 5
    assert any("TCP_KEEPIDLE" in note for note in report["warnings"])


@linux_only
def test_cli_for_timeout_uses_the_recommendation(capsys: pytest.CaptureFixture[str]) -> None:
    """--for-timeout 60 applies recommended_for(60)."""
    applied = _json_run(capsys, "--for-timeout", "60")["columns"]["applied"]
    assert (applied["idle"], applied["interval"], applied["count"]) == (30, 10, 3)
    assert applied["detect_idle"] == 60 and applied["detect_in_flight"] == 60


@linux_only
def test_cli_text_table_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a tty the command prints a plain table with all four columns and a warning."""
    assert main(["keepalive", "--idle", "1.5"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    header = next(line for line in lines if "applied (kernel)" in line)
    for title in ("plain socket", "OS defaults + SO_KEEPALIVE", "requested"):
        assert title in header
    idle_row = next(line for line in lines if line.startswith("idle before first probe"))
    assert idle_row.split()[-2:] == ["2", "s"] and "1.5 s" in idle_row
    never_row = next(line for line in lines if "idle socket" in line)
    assert "never" in never_row
    assert "TCP_KEEPIDLE" in captured.err and "rounded up" in captured.err


@linux_only
def test_cli_tunes_a_real_connection(capsys: pytest.CaptureFixture[str]) -> None:
    """With HOST:PORT the tuning is applied to a connected socket and read back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        report = _json_run(capsys, f"127.0.0.1:{port}", "--idle", "4", "--count", "3")
    assert report["socket"] == f"a connection to 127.0.0.1:{port}"
    applied = report["columns"]["applied"]
    assert (applied["idle"], applied["count"], applied["user_timeout"]) == (4, 3, 2)


def test_cli_unreachable_target_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A refused connection is reported on stderr in words (no "[Errno 111]") with status 1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["keepalive", f"127.0.0.1:{port}", "--connect-timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert f"cannot connect to 127.0.0.1:{port}: Connection refused" in err and "[Errno" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--count", "0"], "count"), (["--idle", "-1"], "idle"), (["nonsense"], "HOST:PORT"),
     (["host:99999"], "HOST:PORT")],
)
def test_cli_bad_values_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Invalid tuning or a malformed HOST:PORT exits 2 with a message naming the problem."""
    assert main(["keepalive", *argv]) == 2
    assert message in capsys.readouterr().err
