"""The engine: one timer for every pure machine in a process, on trio or asyncio.

Rules this module keeps:

* **One timer per process.** Every connection, session and channel registers a *timer
  client* (anything with ``next_deadline()`` and ``handle_timer(now)``, the contract of every
  machine in :mod:`pulse._core`). The engine keeps one heap of ``(deadline, client)``, sleeps
  in one task until the earliest, and calls the due clients with one ``now`` per wake-up.
  There is no task, cancel scope or deadline per connection.
* **Lazy rescheduling** (Netty's idle handler, ZooKeeper's expiry queue): a data event only
  stores a timestamp inside the machine and never touches the engine, because it can only
  move the machine's deadline *later*. When an entry falls due the engine asks the client for
  its deadline again; a deadline that moved on is re-queued without calling ``handle_timer``.
  :meth:`Engine.watch` is needed only when a deadline may have moved *earlier* (a new
  machine, an action from the application); it costs one comparison when nothing changed.
* **Coalesced wake-ups.** Deadlines are rounded up to the engine's ``resolution`` (20 ms by
  default): heartbeats of thousands of connections that fall due within one step share one
  wake-up, and their answers arrive together too. A verdict is at most one step late.
* **Synchronous dispatch.** ``handle_timer`` runs inside the engine's task and must not
  await: a driver writes a heartbeat straight to a non-blocking socket and falls back to its
  connection's own task only when the socket buffer is full.
* **A failing client costs only itself.** An exception from a client's ``handle_timer`` is
  reported to the client's ``timer_failed`` (when it has one) and the client is dropped; the
  engine and every other client go on.
* **One reader for many sockets** (where the platform has epoll). A connection over a plain
  socket registers it with :meth:`Engine.add_reader`; the engine waits on one level-triggered
  epoll set next to its timer and, when sockets are readable, calls each one's ``on_readable
  (now)`` in turn — one ``recv`` per socket per pass, so one busy peer cannot starve the
  others. No task wakes and nothing is re-registered per message. A reader that must stop
  (its application is behind) is paused and resumed, never blocked. Streams without a plain
  socket (TLS, memory streams) read in a task of their own instead.
* **Quiet.** Nothing is logged per wake-up or per client. A wake-up that comes later than
  ``stall_threshold`` after its deadline (a blocked loop, a stopped process) is counted in
  :attr:`Engine.stalls` and logged once (``local_pause``, with how late and how many
  machines it touched); the machines themselves decide what a stall means for their peers
  and report it as an action, not as a log line.

The engine of the running loop is :func:`current_engine`; it starts on first use and ends
with the run: under trio as a system task, under asyncio (or uvloop) as a task of the loop,
which ``asyncio.run`` cancels at its end. It is written once, on anyio: the same heap, the
same epoll set and the same passes on either loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import os
import select
import socket
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Protocol

import anyio
import anyio.lowlevel
import sniffio
import trio

from pulse._log import get_logger

log = get_logger("pulse.engine")


class TimerClient(Protocol):
    """What the engine drives: a machine (or a driver wrapping one) with the timer contract."""

    def next_deadline(self) -> float | None:
        """When ``handle_timer`` is due next (None: nothing is ever due)."""
        ...

    def handle_timer(self, now: float) -> object:
        """Do what is due at ``now``; the engine ignores the return value."""
        ...


class Reader(Protocol):
    """What the engine calls when a registered socket is readable."""

    def on_readable(self, now: float) -> None:
        """Read once from the socket (it will not block) and act on it, synchronously."""
        ...


#: Deadlines are rounded up to a multiple of this many seconds, so that many machines share
#: a wake-up (override with the environment variable ``PULSE_ENGINE_RESOLUTION``; 0: exact).
#: A verdict can come this much later than the machine asked for.
DEFAULT_RESOLUTION = 0.02

#: Sockets handled per wake-up at most; the rest wait for the next pass.
MAX_READY = 1024


class Engine:
    """One heap of deadlines, one readiness set and one task for any number of clients."""

    def __init__(self, *, resolution: float = 0.0, stall_threshold: float = 0.5) -> None:
        if resolution < 0:
            raise ValueError(f"resolution must be >= 0, got {resolution!r}")
        self.resolution = resolution
        self.stall_threshold = stall_threshold
        self._epoll: select.epoll | None = select.epoll() if hasattr(select, "epoll") else None
        self._readers: dict[int, Reader] = {}
        self._heap: list[tuple[float, int, TimerClient]] = []
        self._queued: dict[TimerClient, float] = {}  # client -> the deadline it is queued at
        self._order = itertools.count()
        self._scope: anyio.CancelScope | None = None
        self._sleep_until = math.inf
        #: The current time on the loop's clock: the one clock drivers and plugins use
        #: (virtual under trio's ``MockClock``). :func:`current_engine` binds the running
        #: loop's own clock (``trio.current_time``, ``loop.time``), which is what
        #: ``anyio.current_time`` reads, without its per-call look-up of the loop.
        self.now: Callable[[], float] = anyio.current_time
        #: Wake-ups of the engine so far.
        self.wakeups = 0
        #: Calls of ``handle_timer`` so far.
        self.timer_calls = 0
        #: Wake-ups that came more than ``stall_threshold`` after their deadline.
        self.stalls = 0
        #: The longest such delay seen, in seconds.
        self.worst_stall = 0.0

    # -- bounded waits --------------------------------------------------------------------
    # Handshakes, goodbyes and connects wait at most so long. Plugins take these from the
    # engine, never from the loop directly, so that another event loop can supply its own.

    @staticmethod
    def move_on_after(seconds: float) -> anyio.CancelScope:
        """A scope that gives up on its block after ``seconds`` (``cancelled_caught`` tells)."""
        return anyio.move_on_after(seconds)

    @staticmethod
    def move_on_at(deadline: float) -> anyio.CancelScope:
        """A scope that gives up on its block at ``deadline`` on the engine's clock."""
        return anyio.CancelScope(deadline=deadline)

    @staticmethod
    def fail_after(seconds: float) -> AbstractContextManager[anyio.CancelScope]:
        """A scope that raises ``TimeoutError`` when its block takes over ``seconds``."""
        return anyio.fail_after(seconds)

    @staticmethod
    def fail_at(deadline: float) -> AbstractContextManager[anyio.CancelScope]:
        """A scope that raises ``TimeoutError`` when its block runs past ``deadline``."""
        return anyio.fail_after(deadline - anyio.current_time())

    @staticmethod
    async def sleep(seconds: float) -> None:
        """Wait ``seconds`` (pacing a retry, not liveness)."""
        await anyio.sleep(seconds)

    @staticmethod
    async def sleep_until(deadline: float) -> None:
        """Wait until ``deadline`` on the engine's clock (pacing, not liveness: machines'
        deadlines go through :meth:`watch`)."""
        await anyio.sleep_until(deadline)

    # -- registering ----------------------------------------------------------------------

    def watch(self, client: TimerClient) -> None:
        """Schedule ``client`` at its current ``next_deadline()`` (call again whenever that
        deadline may have moved earlier; a later deadline is noticed by itself)."""
        deadline = client.next_deadline()
        if deadline is None:
            return  # a stale entry, if any, finds no deadline when it falls due
        queued = self._queued.get(client)
        if queued is not None and queued <= deadline:
            return  # lazy: the earlier entry will re-read the deadline when it falls due
        self._queued[client] = deadline
        heapq.heappush(self._heap, (deadline, next(self._order), client))
        if deadline < self._sleep_until and self._scope is not None:
            if self.resolution:
                deadline = self._coalesce(deadline)
            self._sleep_until = deadline
            self._scope.deadline = deadline

    def _coalesce(self, deadline: float) -> float:
        """``deadline`` moved up to the next multiple of the resolution (never earlier, even
        by a rounding error), so deadlines close together share one wake-up."""
        return max(deadline, math.ceil(deadline / self.resolution) * self.resolution)

    def forget(self, client: TimerClient) -> None:
        """Stop driving ``client`` (its heap entry is discarded when it falls due)."""
        self._queued.pop(client, None)

    def __len__(self) -> int:
        """How many clients are scheduled."""
        return len(self._queued)

    # -- readiness ------------------------------------------------------------------------

    @property
    def can_read(self) -> bool:
        """True when sockets can be handed to :meth:`add_reader` on this platform."""
        return self._epoll is not None

    def add_reader(self, sock: socket.socket, reader: Reader) -> None:
        """Call ``reader.on_readable(now)`` whenever ``sock`` has bytes (or an EOF) to read."""
        assert self._epoll is not None, "no readiness set on this platform (check can_read)"
        fd = sock.fileno()
        self._readers[fd] = reader
        self._epoll.register(fd, select.EPOLLIN)

    def pause_reader(self, sock: socket.socket) -> None:
        """Stop calling the reader of ``sock`` until :meth:`resume_reader`."""
        self._modify(sock, 0)

    def resume_reader(self, sock: socket.socket) -> None:
        """Call the reader of ``sock`` again when it is readable."""
        self._modify(sock, select.EPOLLIN)

    def remove_reader(self, sock: socket.socket) -> None:
        """Forget ``sock`` (before it is closed)."""
        fd = sock.fileno()
        if self._readers.pop(fd, None) is not None and self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # already closed: the kernel dropped it

    def _modify(self, sock: socket.socket, events: int) -> None:
        fd = sock.fileno()
        if fd in self._readers and self._epoll is not None:
            self._epoll.modify(fd, events)

    def run_ready(self, now: float) -> None:
        """Call the reader of every readable socket about once: in batches of ``MAX_READY``
        until a batch comes back short, or as many calls were made as there are readers
        (level-triggered, a busy socket may come back in a later batch, so this bounds the
        pass). Every reply already in a socket is read before any verdict of this pass."""
        epoll = self._epoll
        assert epoll is not None
        readers = self._readers
        budget = len(readers)
        while True:
            ready = epoll.poll(0, MAX_READY)
            for fd, _ in ready:
                reader = readers.get(fd)
                if reader is None:
                    continue
                try:
                    reader.on_readable(now)
                except Exception as exc:
                    readers.pop(fd, None)
                    try:
                        epoll.unregister(fd)
                    except OSError:
                        pass
                    self._client_failed(reader, exc)
            budget -= len(ready)
            if len(ready) < MAX_READY or budget <= 0:
                return

    # -- the one task ---------------------------------------------------------------------

    async def run_until_cancelled(self) -> None:
        """:meth:`run`, closing the readiness set when the loop cancels it at its end (an
        asyncio loop has no system tasks; ``asyncio.run`` cancels what is left)."""
        try:
            await self.run()
        finally:
            if self._epoll is not None:
                self._epoll.close()

    async def run(self) -> None:
        """Wait for the earliest deadline or a readable socket; act on both, forever."""
        epoll = self._epoll
        resolution = self.resolution
        readiness: _LoopReadiness | None = None
        wait: Callable[[], Awaitable[None]]
        if epoll is None:
            wait = anyio.sleep_forever
        elif sniffio.current_async_library() == "trio":
            def wait() -> Awaitable[None]:
                return anyio.wait_readable(epoll)
        else:
            readiness = _LoopReadiness(asyncio.get_running_loop(), epoll.fileno())
            wait = readiness.wait
        try:
            while True:
                deadline = self._heap[0][0] if self._heap else math.inf
                if resolution and deadline != math.inf:
                    deadline = self._coalesce(deadline)
                with anyio.CancelScope(deadline=deadline) as scope:
                    self._scope, self._sleep_until = scope, deadline
                    await wait()
                self._scope, self._sleep_until = None, math.inf
                now = self.now()
                if epoll is not None:
                    self.run_ready(now)  # fresh evidence first, then verdicts
                self.run_due(now)
        finally:
            if readiness is not None:
                readiness.close()

    def run_due(self, now: float) -> None:
        """Call ``handle_timer(now)`` on every client due at ``now`` (one ``now`` for all of
        them, so a long batch is not mistaken for a stall by the clients late in it)."""
        heap, queued = self._heap, self._queued
        if not heap or heap[0][0] > now:
            return
        self.wakeups += 1
        late = 0.0  # how late the earliest machine really called was (stale entries aside)
        calls = self.timer_calls
        while heap and heap[0][0] <= now:
            when, _, client = heapq.heappop(heap)
            if queued.get(client) != when:
                continue  # stale: forgotten, or queued again at another time
            del queued[client]
            try:
                deadline = client.next_deadline()
                if deadline is None:
                    continue
                if deadline > now:  # moved later since it was queued (lazy rescheduling)
                    queued[client] = deadline
                    heapq.heappush(heap, (deadline, next(self._order), client))
                    continue
                if self.timer_calls == calls:
                    late = now - deadline
                self.timer_calls += 1
                client.handle_timer(now)
                self.watch(client)
            except Exception as exc:
                self._client_failed(client, exc)
        if late > self.stall_threshold:
            # One event for the whole process, however many machines the stall touched
            # (each of them reports its own LocalPause action without logging it).
            self.stalls += 1
            self.worst_stall = max(self.worst_stall, late)
            log.warning("local_pause", late_by=round(late, 3), machines=self.timer_calls - calls)

    def _client_failed(self, client: TimerClient | Reader, exc: Exception) -> None:
        self._queued.pop(client, None)  # type: ignore[arg-type]  # a reader may be a client too
        report = getattr(client, "timer_failed", None)
        if report is None:
            log.error("timer_client_failed", client=type(client).__name__, error=repr(exc))
            return
        try:
            report(exc)
        except Exception as inner:
            log.error("timer_client_failed", client=type(client).__name__, error=repr(inner))


class _LoopReadiness:
    """The engine's epoll set, registered with an asyncio (or uvloop) loop once for the
    engine's life; :meth:`wait` returns when it is readable.

    ``anyio.wait_readable`` adds the descriptor to the loop's selector and removes it again
    on every call, and adding an epoll set to another epoll set is an expensive system call
    (the kernel checks the nesting each time): about a tenth of a busy server's CPU. Here the
    loop's reader stays registered and only wakes the engine's current waiter (a plain
    future: the engine's cancel scope still bounds the wait).
    """

    __slots__ = ("_fd", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self._loop = loop
        self._fd = fd
        self._waiter: asyncio.Future[None] | None = None
        loop.add_reader(fd, self._ready)

    def _ready(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Return when the epoll set is readable (at once if it is already)."""
        self._waiter = waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        """Take the epoll set out of the loop's selector (before it is closed)."""
        if not self._loop.is_closed():
            self._loop.remove_reader(self._fd)


_ENGINE: anyio.lowlevel.RunVar[Engine] = anyio.lowlevel.RunVar("pulse_engine")
_TASKS: set[asyncio.Task[None]] = set()  # the asyncio engines' tasks (the loop keeps weak refs)


def current_engine() -> Engine:
    """The engine of the running loop (trio, asyncio or uvloop), started on first use."""
    try:
        return _ENGINE.get()
    except LookupError:
        pass
    engine = Engine(resolution=float(os.environ.get("PULSE_ENGINE_RESOLUTION", DEFAULT_RESOLUTION)))
    _ENGINE.set(engine)
    if sniffio.current_async_library() == "trio":
        engine.now = trio.current_time
        trio.lowlevel.spawn_system_task(engine.run, name="pulse.engine")
    else:
        loop = asyncio.get_running_loop()
        engine.now = loop.time
        task = loop.create_task(engine.run_until_cancelled(), name="pulse.engine")
        _TASKS.add(task)
        task.add_done_callback(_TASKS.discard)
    return engine
