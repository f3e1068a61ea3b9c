"""Network-namespace harness: two namespaces on a veth cable that a test can pull and restore.

A :class:`NetnsPair` creates namespaces ``a`` and ``b`` (names unique per process and pair),
joins them with a veth pair and puts ``10.213.7.1/30`` (in ``a``) and ``10.213.7.2/30`` (in
``b``) on it.  The addresses exist only inside the test's own namespaces: nothing touches the
host's interfaces, routes or firewall.  :meth:`NetnsPair.pull_cable` adds iptables DROP rules
for INPUT and OUTPUT inside one namespace (a peer that vanished without a FIN or RST);
:meth:`NetnsPair.restore_cable` removes exactly those rules.  :meth:`NetnsPair.lose` drops
a random share of the packets entering and leaving one namespace (the iptables ``statistic``
match: this kernel has no netem), :meth:`NetnsPair.stop_losing` takes those rules away.
``NetnsPair(links=2)`` joins the namespaces with a second veth pair on a second subnet
(``10.213.8.1`` / ``10.213.8.2``; link ``i`` uses ``10.213.(7+i).x``): one peer reachable
over two paths. :meth:`NetnsPair.cut_link` silently drops what crosses one link only (its
interface, inside one namespace), :meth:`NetnsPair.restore_link` takes that back.
Leaving the ``with`` block kills the subprocesses it started and deletes both namespaces,
whatever happened.

Code runs inside a namespace two ways:

* :meth:`NetnsPair.run` / :meth:`NetnsPair.popen`: a subprocess via ``ip netns exec``.
* :meth:`NetnsPair.call`: a Python function in a short-lived thread of *this* process whose
  network namespace was switched with ``setns(2)``.  Sockets it creates belong to that
  namespace for good, so the test can then use them from any thread (see
  :meth:`NetnsPair.socket`).  This keeps objects, timing and assertions in one process.

Tests that use it carry ``@pytest.mark.netns`` and call :func:`require_netns` first: without
root or ``ip netns`` they skip, except when ``CI=true``, where a missing facility fails.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import pytest

from tests.ci import in_ci

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
SUBNET_PREFIX = 30
ADDRESS_A = "10.213.7.1"
ADDRESS_B = "10.213.7.2"
COMMAND_TIMEOUT = 10.0

_pair_numbers = itertools.count()


def _ip(*args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args], check=True, capture_output=True, text=True, timeout=timeout
    )


def _setns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (``/run/netns/<name>``)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        native = getattr(os, "setns", None)  # Python >= 3.12
        if native is not None:
            native(fd, CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({name}): {os.strerror(code)}")
    finally:
        os.close(fd)


@functools.cache
def netns_unavailable_reason() -> str | None:
    """Why network-namespace tests cannot run here, or ``None`` when they can (cached)."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = f"pulse-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        subprocess.run(
            ["ip", "netns", "exec", probe, "iptables", "-w", "5", "-L", "-n"],
            check=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
        )
        outcome: list[BaseException] = []

        def enter() -> None:
            try:
                _setns(probe)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=enter, daemon=True)
        thread.start()
        thread.join(COMMAND_TIMEOUT)
        if outcome:
            return f"setns into a network namespace failed: {outcome[0]}"
    except subprocess.CalledProcessError as exc:
        return f"{' '.join(exc.cmd)} failed: {(exc.stderr or '').strip()}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ip netns does not work here: {exc}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=COMMAND_TIMEOUT)
    return None


def netns_available() -> bool:
    """True when this process can create network namespaces, veths and iptables rules."""
    return netns_unavailable_reason() is None


def require_netns() -> None:
    """Skip the calling test when namespaces are unavailable; under ``CI=true``, fail it."""
    reason = netns_unavailable_reason()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"network namespaces are required in CI: {reason}", pytrace=False)
    pytest.skip(reason)


class NetnsPair:
    """Two network namespaces, ``a`` and ``b``, joined by a veth pair on a private /30
    (by ``links`` veth pairs, each on its own /30, when asked)."""

    def __init__(self, links: int = 1) -> None:
        if not 1 <= links <= 8:
            raise ValueError(f"links must be between 1 and 8, got {links!r}")
        pid, number = os.getpid(), next(_pair_numbers)
        self.a = f"pulse-{pid}-{number}-a"
        self.b = f"pulse-{pid}-{number}-b"
        # Interface names are limited to 15 characters.
        self._veth = {self.a: f"pv{pid:x}x{number:x}a", self.b: f"pv{pid:x}x{number:x}b"}
        self._address = {self.a: ADDRESS_A, self.b: ADDRESS_B}
        self.links = links
        # Link 0 is the cable above; link i > 0 has interfaces ``<veth><i>`` and the subnet
        # 10.213.(7+i).0/30.
        self._link_veth = [self._veth] + [
            {ns: f"{name}{i}" for ns, name in self._veth.items()} for i in range(1, links)]
        self._link_address = [self._address] + [
            {self.a: f"10.213.{7 + i}.1", self.b: f"10.213.{7 + i}.2"} for i in range(1, links)]
        self._cut_links: set[tuple[str, int]] = set()
        self._cut: set[str] = set()
        self._losing: dict[str, float] = {}
        self._children: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []

    def address(self, ns: str, link: int = 0) -> str:
        """The IPv4 address of namespace ``ns`` on the veth cable (on link ``link``)."""
        return self._link_address[link][ns]

    def __enter__(self) -> NetnsPair:
        try:
            for ns in (self.a, self.b):
                _ip("netns", "add", ns)
                self._created.append(ns)
            for veth, address in zip(self._link_veth, self._link_address, strict=True):
                _ip("link", "add", veth[self.a], "netns", self.a, "type", "veth",
                    "peer", "name", veth[self.b], "netns", self.b)
                for ns in (self.a, self.b):
                    _ip("-n", ns, "addr", "add", f"{address[ns]}/{SUBNET_PREFIX}",
                        "dev", veth[ns])
                    _ip("-n", ns, "link", "set", veth[ns], "up")
            for ns in (self.a, self.b):
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._teardown()

    def _teardown(self) -> None:
        for child in self._children:
            if child.poll() is None:
                child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=COMMAND_TIMEOUT)
        self._children.clear()
        # Deleting a namespace removes its veth end, addresses and iptables rules with it.
        for ns in reversed(self._created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True,
                           timeout=COMMAND_TIMEOUT)
        self._created.clear()
        self._cut.clear()
        self._cut_links.clear()
        self._losing.clear()

    def run(
        self, ns: str, *argv: str, timeout: float = COMMAND_TIMEOUT, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside ``ns`` and wait for it (``ip netns exec``)."""
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            check=check, capture_output=True, text=True, timeout=timeout,
        )

    def popen(self, ns: str, *argv: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a command inside ``ns``; it is killed when the pair is torn down."""
        child: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], **kwargs
        )
        self._children.append(child)
        return child

    def call(
        self, ns: str, func: Callable[..., T], *args: Any, timeout: float = COMMAND_TIMEOUT
    ) -> T:
        """Run ``func(*args)`` in a fresh thread switched into ``ns``; return or re-raise."""
        result: list[T] = []
        failure: list[BaseException] = []

        def body() -> None:
            try:
                _setns(ns)
                result.append(func(*args))
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"{func!r} did not return within {timeout} s inside {ns}")
        if failure:
            raise failure[0]
        return result[0]

    def socket(
        self, ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
    ) -> socket.socket:
        """A new socket that lives in namespace ``ns`` (usable from any thread)."""
        return self.call(ns, socket.socket, family, kind)

    def _iptables(self, ns: str, action: str) -> None:
        for chain in ("INPUT", "OUTPUT"):
            self.run(ns, "iptables", "-w", "5", action, chain, "-j", "DROP")

    def pull_cable(self, ns: str) -> None:
        """Silently drop every packet entering or leaving ``ns`` (no RST, no ICMP)."""
        if ns in self._cut:
            return
        self._iptables(ns, "-I")
        self._cut.add(ns)

    def restore_cable(self, ns: str) -> None:
        """Remove the DROP rules :meth:`pull_cable` added in ``ns``."""
        if ns not in self._cut:
            return
        self._iptables(ns, "-D")
        self._cut.discard(ns)

    def _link_rules(self, ns: str, link: int, action: str) -> None:
        device = self._link_veth[link][ns]
        self.run(ns, "iptables", "-w", "5", action, "INPUT", "-i", device, "-j", "DROP")
        self.run(ns, "iptables", "-w", "5", action, "OUTPUT", "-o", device, "-j", "DROP")

    def cut_link(self, link: int, ns: str | None = None) -> None:
        """Silently drop every packet crossing link ``link`` inside ``ns`` (default ``b``):
        that one path goes quiet, the others keep working."""
        ns = self.b if ns is None else ns
        if (ns, link) in self._cut_links:
            return
        self._link_rules(ns, link, "-I")
        self._cut_links.add((ns, link))

    def restore_link(self, link: int, ns: str | None = None) -> None:
        """Remove the DROP rules :meth:`cut_link` added for ``link`` in ``ns``."""
        ns = self.b if ns is None else ns
        if (ns, link) not in self._cut_links:
            return
        self._link_rules(ns, link, "-D")
        self._cut_links.discard((ns, link))

    def _loss_rules(self, ns: str, action: str, probability: float) -> None:
        for chain in ("INPUT", "OUTPUT"):
            self.run(ns, "iptables", "-w", "5", action, chain, "-m", "statistic",
                     "--mode", "random", "--probability", f"{probability:.4f}", "-j", "DROP")

    def lose(self, ns: str, probability: float) -> None:
        """Drop each packet entering or leaving ``ns`` with ``probability`` (independently),
        i.e. that loss rate in both directions of the cable."""
        if not 0 < probability < 1:
            raise ValueError(f"probability must be between 0 and 1, got {probability!r}")
        self.stop_losing(ns)
        self._loss_rules(ns, "-A", probability)
        self._losing[ns] = probability

    def stop_losing(self, ns: str) -> None:
        """Remove the rules :meth:`lose` added in ``ns``."""
        probability = self._losing.pop(ns, None)
        if probability is not None:
            self._loss_rules(ns, "-D", probability)

    @contextlib.contextmanager
    def cable_pulled(self, ns: str) -> Iterator[None]:
        """Pull the cable of ``ns`` for the duration of the ``with`` block."""
        self.pull_cable(ns)
        try:
            yield
        finally:
            self.restore_cable(ns)


def namespaces() -> set[str]:
    """Names of the network namespaces that currently exist (``ip netns list``)."""
    listing = _ip("netns", "list").stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}
