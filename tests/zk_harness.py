"""Real Apache ZooKeeper servers for tests: a standalone server and a 3-node ensemble.

Each server runs as a JVM child process in a temporary directory, bound to free loopback
ports, with a low ``tickTime`` (200 ms: session timeouts negotiate into [0.4 s, 4 s]) and
``maxClientCnxns=0``. "Serving" means the ``srvr`` four-letter word reports a mode
(``standalone``, ``leader`` or ``follower``). Members can be killed (SIGKILL) and started
again on the same ports and data.

Fixtures (import them into a test module, or list this module in ``pytest_plugins``):

* ``zookeeper_install``: the java binary and class path; SKIPS the test when java or
  ZooKeeper is missing, but FAILS it when the environment variable ``CI`` is ``true``.
* ``zookeeper_server``: one standalone server shared by the whole test session.
* ``zookeeper_url``: a ``zk://`` URL on that server with a fresh chroot per test.
* ``zookeeper_standalone``: a private standalone server (tests that kill it).
* ``zookeeper_ensemble``: a private 3-node ensemble.

``PULSE_ZK_CLASSPATH`` overrides the class path (for a ZooKeeper unpacked elsewhere).
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from tests.ci import in_ci

TICK_MS = 200
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
LOGGER_JAR = Path("/usr/share/java/slf4j-simple.jar")
START_TIMEOUT = 60.0
JVM_OPTIONS = (
    "-Xms16m",
    "-Xmx192m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.net.preferIPv4Stack=true",
    "-Dzookeeper.admin.enableServer=false",
    "-Dzookeeper.cnxTimeout=1000",
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
)


@dataclass(frozen=True, slots=True)
class ZooKeeperInstall:
    """Where java and the ZooKeeper classes are."""

    java: str
    classpath: str


def find_zookeeper() -> ZooKeeperInstall | None:
    """The local ZooKeeper installation, or None if java or the jar is missing."""
    java = shutil.which("java")
    if java is None:
        return None
    classpath = os.environ.get("PULSE_ZK_CLASSPATH")
    if not classpath:
        if not ZOOKEEPER_JAR.exists():
            return None
        # The Debian jar's manifest lists its dependencies; add a logger binding if present.
        parts = [str(ZOOKEEPER_JAR)]
        if LOGGER_JAR.exists():
            parts.append(str(LOGGER_JAR))
        classpath = os.pathsep.join(parts)
    return ZooKeeperInstall(java, classpath)


def require_zookeeper() -> ZooKeeperInstall:
    """The installation, or skip (fail under ``CI=true``) when there is none."""
    install = find_zookeeper()
    if install is None:
        message = "Apache ZooKeeper (java + /usr/share/java/zookeeper.jar) is not installed"
        if in_ci():
            pytest.fail(f"{message}, and CI requires the ZooKeeper tests to run")
        pytest.skip(message)
    return install


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held together while chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def four_letter_word(port: int, word: str, timeout: float = 1.0) -> str | None:
    """Send a four-letter command to 127.0.0.1:``port``; the reply, or None if unreachable."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(word.encode("ascii"))
            chunks = []
            while True:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks).decode("utf-8", "replace")
    except OSError:
        return None


def zk_url(ports: Sequence[int], chroot: str = "") -> str:
    """A ``zk://`` URL for loopback servers on ``ports``."""
    return "zk://" + ",".join(f"127.0.0.1:{port}" for port in ports) + chroot


class ZooKeeperNode:
    """One ZooKeeper server process (standalone, or a member of an ensemble)."""

    def __init__(
        self,
        install: ZooKeeperInstall,
        directory: Path,
        client_port: int,
        *,
        myid: int = 0,
        quorum: Sequence[tuple[int, int]] = (),
    ) -> None:
        self.install = install
        self.directory = directory
        self.client_port = client_port
        self.myid = myid
        self.process: subprocess.Popen[bytes] | None = None
        self.data_dir = directory / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "zookeeper.log"
        lines = [
            f"tickTime={TICK_MS}",
            "initLimit=10",
            "syncLimit=5",
            f"dataDir={self.data_dir}",
            f"clientPort={client_port}",
            "clientPortAddress=127.0.0.1",
            "maxClientCnxns=0",
            "admin.enableServer=false",
            "4lw.commands.whitelist=srvr,ruok,stat,cons",
            "autopurge.purgeInterval=0",
        ]
        for number, (peer_port, election_port) in enumerate(quorum, start=1):
            lines.append(f"server.{number}=127.0.0.1:{peer_port}:{election_port}")
        if quorum:
            (self.data_dir / "myid").write_text(f"{myid}\n")
        self.config_path = directory / "zoo.cfg"
        self.config_path.write_text("\n".join(lines) + "\n")
        self._main = (
            "org.apache.zookeeper.server.quorum.QuorumPeerMain"
            if quorum
            else "org.apache.zookeeper.server.ZooKeeperServerMain"
        )

    @property
    def address(self) -> tuple[str, int]:
        """The client address (host, port)."""
        return ("127.0.0.1", self.client_port)

    @property
    def running(self) -> bool:
        """True while the JVM process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Launch the JVM (does not wait; see :meth:`wait_serving`)."""
        if self.running:
            return
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [self.install.java, *JVM_OPTIONS, "-cp", self.install.classpath, self._main,
                 str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        finally:
            log.close()
        _LIVE.add(self)

    def mode(self) -> str | None:
        """``standalone``, ``leader`` or ``follower`` once serving; None otherwise."""
        reply = four_letter_word(self.client_port, "srvr")
        if not reply:
            return None
        for line in reply.splitlines():
            if line.startswith("Mode:"):
                return line.partition(":")[2].strip()
        return None

    def wait_serving(self, timeout: float = START_TIMEOUT) -> str:
        """Block until the server serves clients; its mode. Raises if it dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mode = self.mode()
            if mode:
                return mode
            self._pause(0.05)
        raise RuntimeError(f"ZooKeeper on port {self.client_port} not serving after {timeout} s"
                           f"; log: {self.log_tail()}")

    def _pause(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the process to exit (it must not)."""
        if self.process is None:
            raise RuntimeError("not started")
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self.process.wait(timeout=seconds)
            raise RuntimeError(f"ZooKeeper exited with {code}; log: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the server (no clean shutdown) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        _LIVE.discard(self)

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL if it lingers."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        _LIVE.discard(self)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log (for failure messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class ZooKeeperServer(ZooKeeperNode):
    """A standalone server."""

    def __init__(self, install: ZooKeeperInstall, directory: Path) -> None:
        super().__init__(install, directory, free_ports(1)[0])

    @property
    def url(self) -> str:
        """``zk://127.0.0.1:PORT``."""
        return zk_url([self.client_port])


class ZooKeeperEnsemble:
    """Three (or ``size``) servers forming one ensemble on loopback."""

    def __init__(self, install: ZooKeeperInstall, directory: Path, size: int = 3) -> None:
        ports = free_ports(3 * size)
        client_ports, peer_ports, election_ports = ports[:size], ports[size:2 * size], ports[2 * size:]
        quorum = list(zip(peer_ports, election_ports, strict=True))
        self.nodes = [
            ZooKeeperNode(install, directory / f"node{i + 1}", client_ports[i], myid=i + 1,
                          quorum=quorum)
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        """A URL naming every member."""
        return zk_url([node.client_port for node in self.nodes])

    def start(self) -> None:
        """Start every member and wait until all serve."""
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_serving()

    def stop(self) -> None:
        """Stop every member."""
        for node in self.nodes:
            node.stop()

    def node_at(self, address: tuple[str, int] | None) -> ZooKeeperNode:
        """The member listening on ``address``."""
        for node in self.nodes:
            if address is not None and node.address == (address[0], address[1]):
                return node
        raise LookupError(f"no member at {address}")

    def wait_quorum(self, timeout: float = START_TIMEOUT) -> None:
        """Block until the running members serve again (a leader was elected)."""
        for node in self.nodes:
            if node.running:
                node.wait_serving(timeout)


_LIVE: set[ZooKeeperNode] = set()
_COUNTER = itertools.count()


@atexit.register
def _kill_leftovers() -> None:
    """Never leave a JVM behind, even if a test run is interrupted."""
    for node in list(_LIVE):
        node.kill()


@contextlib.contextmanager
def _cleanup(*nodes: ZooKeeperNode) -> Iterator[None]:
    try:
        yield
    finally:
        for node in nodes:
            node.stop()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def zookeeper_install() -> ZooKeeperInstall:
    """java + ZooKeeper class path (skip, or fail under CI=true, when missing)."""
    return require_zookeeper()


@pytest.fixture(scope="session")
def zookeeper_server(zookeeper_install: ZooKeeperInstall) -> Iterator[ZooKeeperServer]:
    """A standalone ZooKeeper shared by the test session."""
    with tempfile.TemporaryDirectory(prefix="pulse-zk-") as directory:
        server = ZooKeeperServer(zookeeper_install, Path(directory))
        with _cleanup(server):
            server.start()
            server.wait_serving()
            yield server


@pytest.fixture
def zookeeper_url(zookeeper_server: ZooKeeperServer) -> str:
    """A ``zk://`` URL on the shared server, with a chroot no other test uses."""
    return zk_url([zookeeper_server.client_port], f"/pulse-test-{next(_COUNTER)}-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def zookeeper_standalone(zookeeper_install: ZooKeeperInstall) -> Iterator[ZooKeeperServer]:
    """A private standalone server the test may kill and restart."""
    with tempfile.TemporaryDirectory(prefix="pulse-zk-") as directory:
        server = ZooKeeperServer(zookeeper_install, Path(directory))
        with _cleanup(server):
            server.start()
            server.wait_serving()
            yield server


@pytest.fixture
def zookeeper_ensemble(zookeeper_install: ZooKeeperInstall) -> Iterator[ZooKeeperEnsemble]:
    """A private 3-node ensemble the test may kill members of."""
    with tempfile.TemporaryDirectory(prefix="pulse-zk-ensemble-") as directory:
        ensemble = ZooKeeperEnsemble(zookeeper_install, Path(directory))
        with _cleanup(*ensemble.nodes):
            ensemble.start()
            yield ensemble


# --------------------------------------------------------------------------- a cuttable cable


class BlackholeProxy:
    """A loopback TCP proxy in front of one server whose "cable" can be cut.

    While cut, bytes in both directions are silently dropped and new connections are
    accepted but never forwarded: to both ends it looks like a pulled network cable (no
    reset, no FIN). Run :meth:`run` in a nursery (``port = await nursery.start(proxy.run)``).
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.connections = 0
        self._cut = False
        self._restored = trio.Event()

    @property
    def url(self) -> str:
        """``zk://127.0.0.1:PORT`` of the proxy."""
        return zk_url([self.port])

    def cut(self) -> None:
        """Pull the cable."""
        self._cut = True
        self._restored = trio.Event()

    def restore(self) -> None:
        """Plug it back in (connections made during the cut start forwarding)."""
        self._cut = False
        self._restored.set()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on a free loopback port and forward until cancelled."""
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        async with client:
            if self._cut:
                await self._restored.wait()
            try:
                upstream = await trio.open_tcp_stream(*self.target)
            except OSError:
                return
            async with upstream, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                data = await source.receive_some(65536)
                if not data:
                    break
                if not self._cut:
                    await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        if not self._cut:
            scope.cancel()  # one side closed: close the other (a cut cable would not tell)


async def poll_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Wait (bounded by ``timeout``) until ``predicate()`` is true, checking every
    ``interval``; an awaitable result is awaited. For conditions changed by other threads or
    processes (kazoo's callbacks, a server's state), where no trio event exists to wait on."""
    with trio.fail_after(timeout):
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await trio.sleep(interval)
