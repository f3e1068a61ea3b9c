"""The SQLite journal of the lease server."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import structlog

from pulse.plugins.lease.store import Store


def test_state_survives_reopening(tmp_path: Path) -> None:
    """Secret, last id, sessions and registrations (in order) come back after a reopen."""
    store = Store(tmp_path)
    first = store.load()
    store.session_opened(7, 4.0, last_session_id=7)
    store.session_opened(9, 6.0, last_session_id=9)
    store.key_set("/p/b", 7, b"1")
    store.key_set("/p/a", 9, b"2")
    store.key_set("/p/b", 7, b"3")  # an update keeps its place
    store.close()
    again = Store(tmp_path).load()
    assert again.secret == first.secret and len(again.secret) == 32
    assert again.last_session_id == 9
    assert again.sessions == [(7, 4.0), (9, 6.0)]
    assert again.registrations == [("/p/b", 7, b"3"), ("/p/a", 9, b"2")]


def test_ending_a_session_drops_its_registrations(tmp_path: Path) -> None:
    """session_ended removes the session and every key it owned, nothing else."""
    store = Store(tmp_path)
    store.load()
    store.session_opened(1, 4.0, 1)
    store.session_opened(2, 4.0, 2)
    store.key_set("/p/x", 1, b"")
    store.key_set("/p/y", 2, b"")
    store.session_ended(1)
    store.key_deleted("/p/y")
    snapshot = store.load()
    assert snapshot.sessions == [(2, 4.0)]
    assert snapshot.registrations == []


def test_wal_mode_is_on(tmp_path: Path) -> None:
    """The journal runs in write-ahead-log mode."""
    store = Store(tmp_path)
    store.close()
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_failed_writes_are_logged_not_raised(tmp_path: Path) -> None:
    """A broken database costs durability, never the server: the error is logged."""
    store = Store(tmp_path)
    store.load()
    store.close()
    with structlog.testing.capture_logs() as logs:
        store.key_set("/p/x", 1, b"")
        store.session_opened(1, 4.0, 1)
    assert [entry["event"] for entry in logs] == ["journal_write_failed"] * 2
