"""Durable lease state in SQLite (write-ahead-log mode), for ``pulse serve --data-dir``.

What is kept: the server secret (so session passwords stay valid), the highest session id
issued (so ids stay unique even if the wall clock steps back), every open session with its
negotiated timeout, and every registration with its owner and data. Heartbeats are *not*
written: on restart every restored session gets a fresh full timeout, as ZooKeeper does, so
clients have a whole timeout to re-attach. Watches and unacknowledged notifications are not
kept either; clients re-establish their watches on re-attach and compare the snapshot with
what they knew, so no spurious events result.

Every change is one small transaction (``synchronous=NORMAL`` in WAL mode: durable across a
process crash, the last transactions may be lost on a power cut).
"""

from __future__ import annotations

import functools
import os
import secrets
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pulse._log import get_logger

log = get_logger("pulse.lease")

F = TypeVar("F", bound=Callable[..., None])


def _best_effort(method: F) -> F:
    """A failed journal write (disk full, I/O error) is logged, never raised: the server
    keeps serving from memory and only durability is lost."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            log.error("journal_write_failed", reason=str(exc), operation=method.__name__)

    return wrapper  # type: ignore[return-value]

DATABASE_NAME = "lease.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (id INTEGER PRIMARY KEY, timeout REAL NOT NULL);
CREATE TABLE IF NOT EXISTS registrations (
    key TEXT PRIMARY KEY,
    session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    data BLOB NOT NULL,
    position INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS registrations_by_session ON registrations(session_id);
"""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a data directory held at start-up."""

    secret: bytes
    last_session_id: int
    sessions: list[tuple[int, float]]
    registrations: list[tuple[str, int, bytes]]  # in registration order
    last_sequence: int = 0  # the highest sequence number given to a sequential key


class Store:
    """A SQLite journal of sessions and registrations in ``data_dir``."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.path = Path(data_dir) / DATABASE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._position = 0

    def load(self) -> Snapshot:
        """Read the stored state, creating the server secret on first use."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'secret'").fetchone()
        if row is None:
            secret = secrets.token_bytes(32)
            self._db.execute("INSERT INTO meta VALUES ('secret', ?)", (secret,))
        else:
            secret = bytes(row[0])
        row = self._db.execute("SELECT value FROM meta WHERE name = 'last_session_id'").fetchone()
        last_id = int(row[0]) if row is not None else 0
        sessions = [(int(i), float(t)) for i, t in
                    self._db.execute("SELECT id, timeout FROM sessions ORDER BY id")]
        registrations = [
            (str(k), int(s), bytes(d)) for k, s, d in self._db.execute(
                "SELECT key, session_id, data FROM registrations ORDER BY position")
        ]
        row = self._db.execute("SELECT MAX(position) FROM registrations").fetchone()
        self._position = int(row[0] or 0)
        row = self._db.execute("SELECT value FROM meta WHERE name = 'last_sequence'").fetchone()
        last_sequence = int(row[0]) if row is not None else 0
        return Snapshot(secret, last_id, sessions, registrations, last_sequence)

    # -- the Journal protocol of .state --------------------------------------------------

    @_best_effort
    def session_opened(self, session_id: int, timeout: float, last_session_id: int) -> None:
        """Record a new session and the highest id issued."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?)", (session_id, timeout))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('last_session_id', ?)",
                             (last_session_id,))

    @_best_effort
    def session_ended(self, session_id: int) -> None:
        """Forget a session and its registrations."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM registrations WHERE session_id = ?", (session_id,))
            self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    @_best_effort
    def key_set(self, key: str, session_id: int, data: bytes) -> None:
        """Record a registration (or its new data, keeping its place in the order)."""
        self._position += 1
        self._db.execute(
            "INSERT INTO registrations VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET data = excluded.data, session_id = excluded.session_id",
            (key, session_id, data, self._position),
        )

    @_best_effort
    def sequence_issued(self, sequence: int) -> None:
        """Record the highest sequence number issued (a restart continues above it)."""
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('last_sequence', ?)", (sequence,))

    @_best_effort
    def key_deleted(self, key: str) -> None:
        """Forget a registration."""
        self._db.execute("DELETE FROM registrations WHERE key = ?", (key,))

    def close(self) -> None:
        """Close the database (a later :class:`Store` on the same directory resumes)."""
        self._db.close()
