"""``pulse agent``: hold a session and a presence registration until stopped.

The agent registers ``<prefix>/<id>`` (default prefix ``/pulse/presence``) with its host,
pid, start time, measured round-trip time, negotiated timeout and ``--meta`` pairs, then
keeps the session alive. If the session expires (the agent was paused, or cut off for longer
than the timeout) it starts a new one and registers again. SIGTERM or Ctrl-C closes the
session, so watchers see the agent go offline at once. Only the backend-neutral presence API
is used: ``--server`` may be ``pulse://host:port`` or ``zk://host:port``.

Credentials (``--auth-file``, or the ``PULSE_AGENT_AUTH`` environment variable; never on the
command line) are ``name:secret``: on ``pulse://`` the client id and token the lease server
checks, on ``zk://`` ZooKeeper digest credentials that also protect the presence node with a
digest ACL. ``--cafile`` turns on TLS to a ``pulse://`` server.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys

import trio

from pulse._core.backoff import Backoff
from pulse._core.reconnect import ReconnectMachine
from pulse._driver.reconnect import AttemptHandle, ReconnectDriver
from pulse.actions import Reconnect
from pulse.cli._errors import describe
from pulse.cli._presence import (
    PRESENCE_PREFIX,
    child_key,
    encode_presence,
    parse_meta,
    wall_time,
)
from pulse.cli._run import cancel_on_signal
from pulse.errors import (
    ConnectionClosed,
    NoPlugin,
    PulseError,
    ReconnectGaveUp,
    SessionExpired,
)
from pulse.presence import PresenceSession, SessionState
from pulse.registry import connect_session

HELP = "hold a session and register this process as online until stopped"

#: Waits between sessions: full jitter below a ceiling that starts at RETRY_INITIAL and
#: doubles up to MAX_RETRY_PAUSE seconds; it starts over once a session held RESET_AFTER.
RETRY_INITIAL = 0.5
MAX_RETRY_PAUSE = 10.0
RESET_AFTER = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pulse agent``."""
    parser.add_argument("--server", required=True, metavar="URL", action="append",
                        help="session backend, e.g. pulse://127.0.0.1:7400 or zk://host:2181; "
                             "repeat it for independent registries (one session and one "
                             "registration in each), unlike pulse://a,b (one session that "
                             "fails over)")
    parser.add_argument("--id", required=True, dest="agent_id", metavar="NAME",
                        help="the name registered under the prefix")
    parser.add_argument("--session-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="proposed session timeout (the server clamps it; default 10)")
    parser.add_argument("--meta", action="append", default=[], metavar="K=V",
                        help="extra key=value published with the registration (repeatable)")
    parser.add_argument("--prefix", default=PRESENCE_PREFIX,
                        help=f"where to register (default {PRESENCE_PREFIX})")
    parser.add_argument("--auth-file", metavar="PATH",
                        help="file holding NAME:SECRET credentials (default: $PULSE_AGENT_AUTH)")
    parser.add_argument("--cafile", metavar="PATH",
                        help="trust these CA certificates and use TLS (pulse:// only)")


AUTH_ENV = "PULSE_AGENT_AUTH"


def servers(args: argparse.Namespace) -> list[str]:
    """The ``--server`` URLs (one string, or the list of a repeated option)."""
    return [args.server] if isinstance(args.server, str) else list(args.server)


def session_options(args: argparse.Namespace, url: str | None = None) -> dict[str, object]:
    """Backend options from ``--auth-file`` / ``$PULSE_AGENT_AUTH`` and ``--cafile`` (for
    ``url``, by default the one ``--server``)."""
    from pulse.registry import parse_url

    scheme = parse_url(args.server if url is None else url).scheme
    options: dict[str, object] = {}
    auth_file = getattr(args, "auth_file", None)
    cafile = getattr(args, "cafile", None)
    if auth_file:
        with open(auth_file, encoding="utf-8") as file:
            credentials = file.read().strip()
    else:
        credentials = os.environ.get(AUTH_ENV, "")
    if credentials:
        name, sep, secret = credentials.partition(":")
        if not sep or not name or not secret:
            raise ValueError("credentials must be NAME:SECRET")
        if scheme == "zk":
            options["digest"] = (name, secret)
        else:
            options["client_id"] = name
            options["token"] = secret.encode()
    if cafile:
        if scheme != "pulse":
            raise ValueError("--cafile applies to pulse:// servers only")
        import ssl

        options["ssl_context"] = ssl.create_default_context(cafile=cafile)
    return options


def _say(text: str) -> None:
    print(text, flush=True)


async def _register(session: PresenceSession, key: str, meta: dict[str, str],
                    started: float) -> None:
    """Measure one round trip, then register; retry while an old session still holds the
    key (it expires within one timeout)."""
    before = trio.current_time()
    await session.get(key)
    rtt = trio.current_time() - before
    data = encode_presence(host=socket.gethostname(), pid=os.getpid(), started=started,
                           rtt=rtt, timeout=session.session_timeout, meta=meta)
    give_up = trio.current_time() + 2 * session.session_timeout + 1.0
    while True:
        try:
            await session.register(key, data)
            return
        except SessionExpired:
            raise
        except _permanent_errors():
            raise
        except PulseError as exc:
            if trio.current_time() >= give_up:
                raise
            _say(f"register {key} refused ({exc}); retrying")
            await trio.sleep(0.25)


def _permanent_errors() -> tuple[type[BaseException], ...]:
    """Refusals that retrying cannot cure: bad credentials, a key this client may not hold."""
    from pulse.multiregistry import _permanent_errors as permanent

    return permanent()


async def _hold(args: argparse.Namespace, key: str, meta: dict[str, str]) -> int:
    """Hold the registration until cancelled; returns 1 after a refusal retrying cannot cure.

    Sessions come and go under the one reconnect supervisor (:mod:`pulse._core.reconnect`):
    one session at a time, a fully jittered wait before each new one (so agents that lost
    the same server do not come back together), growing to ``MAX_RETRY_PAUSE``, reset after a
    session held ``RESET_AFTER`` seconds."""

    async def one_session(handle: AttemptHandle) -> str:
        started = wall_time()
        entered = False
        try:
            async with connect_session(args.server, session_timeout=args.session_timeout,
                                       **session_options(args)) as session:
                entered = True
                changes = session.state_changes()
                await _register(session, key, meta, started)
                handle.connected()
                sid = session.session_id
                _say(f"registered {key} session={sid:#x} "
                     f"timeout={session.session_timeout:g}s" if sid is not None
                     else f"registered {key}")
                async for change in changes:
                    _say(f"session {change.state.value}: {change.reason}")
                    if change.state in (SessionState.EXPIRED, SessionState.CLOSED):
                        break
        except (SessionExpired, ConnectionClosed, OSError) as exc:
            _say(f"session lost: {describe(exc)}")
            if isinstance(exc, OSError) and not entered:  # the server could not be reached
                return handle.unreachable(f"session lost: {describe(exc)}")
            return f"session lost: {describe(exc)}"
        except _permanent_errors() as exc:
            _say(f"refused: {exc}")
            raise ReconnectGaveUp(f"refused: {exc}") from exc
        except PulseError as exc:
            _say(f"error: {exc}")
            return f"error: {exc}"
        return "session ended"

    def waiting(wait: Reconnect, reason: str) -> None:
        _say(f"starting a new session in {wait.delay:.1f}s")

    backoff = Backoff(RETRY_INITIAL, MAX_RETRY_PAUSE, reset_after=RESET_AFTER)
    driver = ReconnectDriver(ReconnectMachine(backoff), one_session, retry_on=(),
                             on_wait=waiting, destination=("agent", args.server))
    await driver.run()
    return 1 if driver.error is not None else 0


async def _main(args: argparse.Namespace) -> int:
    meta = parse_meta(args.meta)
    key = child_key(args.prefix, args.agent_id)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_signal, signals, nursery.cancel_scope,
                               lambda signum: _say(f"stopping on {signal.Signals(signum).name}"))
            hold = _hold if isinstance(args.server, str) else _hold_multi
            status = await hold(args, key, meta)
            nursery.cancel_scope.cancel()
            return status
    return 0  # stopped by a signal


def run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM / Ctrl-C; the exit status is 0, or 2 for bad options."""
    urls = servers(args)
    try:
        parse_meta(args.meta)
        check_servers(urls)
        for url in urls:
            session_options(args, url)
    except (ValueError, NoPlugin, OSError) as exc:
        print(f"pulse agent: {exc}", file=sys.stderr)
        return 2
    args.server = urls[0] if len(urls) == 1 else urls
    return trio.run(_main, args)


async def _hold_multi(args: argparse.Namespace, key: str, meta: dict[str, str]) -> int:
    """Hold one independent session per ``--server`` (:mod:`pulse.multiregistry`) with the
    registration in each, until cancelled; returns 1 once every registry refused us."""
    from pulse.multiregistry import connect_registries

    urls = servers(args)
    data = encode_presence(host=socket.gethostname(), pid=os.getpid(), started=wall_time(),
                           rtt=None, timeout=args.session_timeout, meta=meta)
    url_options = {url: session_options(args, url) for url in urls}
    async with connect_registries(urls, session_timeout=args.session_timeout,
                                  retry_initial=RETRY_INITIAL, retry_max=MAX_RETRY_PAUSE,
                                  reset_after=RESET_AFTER, url_options=url_options) as regs, \
            trio.open_nursery() as nursery:
        statuses = regs.status_changes()
        refused: set[str] = set()

        async def report() -> None:
            """Say every status change; return once every registry refused us."""
            async for status in statuses:
                sid = f" session={status.session_id:#x}" if status.session_id is not None else ""
                if status.state == "up" and status.reason == "registered":
                    timeout = status.session_timeout or args.session_timeout
                    _say(f"registered {key} on {status.url}{sid} timeout={timeout:g}s")
                elif status.state == "up":
                    _say(f"session connected on {status.url}{sid}: {status.reason}")
                elif status.state == "disconnected":
                    _say(f"session disconnected on {status.url}: {status.reason}")
                elif status.state == "refused":
                    _say(f"refused by {status.url}: {status.reason}")
                    refused.add(status.url)
                    if refused == set(urls):
                        return
                else:
                    _say(f"session lost on {status.url}: {status.reason}; retrying")

        nursery.start_soon(report)
        try:
            await regs.register(key, data)
        except PulseError as exc:  # every registry refused this client
            _say(f"refused: {exc}")
            nursery.cancel_scope.cancel()
        # Otherwise held until cancelled, or until report() saw every registry refuse.
    return 1


def check_servers(urls: list[str]) -> None:
    """Fail early (ValueError / NoPlugin) on a repeated ``--server`` URL or one that names
    no session backend."""
    if len(set(urls)) != len(urls):
        raise ValueError("a --server URL is given twice")
    for url in urls:
        connect_check(url)


def connect_check(url: str) -> None:
    """Fail early (ValueError / NoPlugin) if ``url`` names no session backend."""
    from pulse.registry import get_plugin, parse_url

    plugin = get_plugin(parse_url(url).scheme)
    if plugin.connect_session is None:
        raise NoPlugin(f"the {plugin.name} plugin cannot hold sessions")


if __name__ == "__main__":  # pragma: no cover - `python -m pulse.cli.cmd_agent`
    from pulse.cli._standalone import standalone

    sys.exit(standalone(sys.modules[__name__], "agent"))
