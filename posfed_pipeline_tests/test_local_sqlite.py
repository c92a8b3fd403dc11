"""The store server's local SQLite files: one helper, each file's own settings."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from posfed_pipeline.core.base.sqlite import SQLiteFile, add_missing_columns
from posfed_pipeline.core.operations.alerts import AlertOutbox
from posfed_pipeline.core.state.claims import ClaimTable
from posfed_pipeline.core.state.ledger import Ledger

SYNCHRONOUS = {1: "NORMAL", 2: "FULL"}


def _settings(connection: sqlite3.Connection) -> tuple[str, str, bool]:
    (journal,) = connection.execute("PRAGMA journal_mode").fetchone()
    (synchronous,) = connection.execute("PRAGMA synchronous").fetchone()
    (foreign_keys,) = connection.execute("PRAGMA foreign_keys").fetchone()
    return journal, SYNCHRONOUS[synchronous], bool(foreign_keys)


def test_each_store_keeps_its_durability_settings(tmp_path):
    assert _settings(Ledger(tmp_path / "ledger.db")._connect()) == ("wal", "FULL", True)
    assert _settings(ClaimTable(tmp_path / "claims.db")._connect()) == ("wal", "NORMAL", False)
    with AlertOutbox(tmp_path / "alerts.db")._db.session() as connection:
        assert _settings(connection) == ("delete", "FULL", False)


def test_a_write_commits_or_rolls_back_whole(tmp_path):
    db = SQLiteFile(tmp_path / "t.db", busy_timeout=1, synchronous="FULL", wal=True)
    db.prepare(["CREATE TABLE t (x INTEGER)"])
    with db.write() as connection:
        connection.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(KeyError), db.write() as connection:
        connection.execute("INSERT INTO t VALUES (2)")
        raise KeyError("stop")
    assert not db.connect().in_transaction
    assert db.connect().execute("SELECT x FROM t").fetchall() == [(1,)]


def test_per_thread_connections_and_per_use_ones(tmp_path):
    shared = SQLiteFile(tmp_path / "a.db", busy_timeout=1, synchronous="FULL", wal=True)
    assert shared.connect() is shared.connect()
    other = []
    thread = threading.Thread(target=lambda: other.append(shared.connect()))
    thread.start()
    thread.join()
    assert other[0] is not shared.connect()
    shared.close()
    shared.connect().execute("SELECT 1")  # the next use opens another

    per_use = SQLiteFile(
        tmp_path / "b.db", busy_timeout=1, synchronous="FULL", wal=False, per_thread=False
    )
    with per_use.session() as connection:
        connection.execute("SELECT 1")
    with pytest.raises(sqlite3.ProgrammingError):  # closed once the session ends
        connection.execute("SELECT 1")


def test_a_second_writer_waits_for_the_busy_timeout(tmp_path):
    db = SQLiteFile(tmp_path / "t.db", busy_timeout=0.3, synchronous="NORMAL", wal=True)
    db.prepare(["CREATE TABLE t (x INTEGER)"])
    held = threading.Event()
    release = threading.Event()

    def hold_the_write_lock():
        with db.write():
            held.set()
            release.wait(5)

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    held.wait(5)
    started = time.monotonic()
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"), db.write():
            pass
        assert time.monotonic() - started >= 0.25
    finally:
        release.set()
        holder.join()
    assert not db.connect().in_transaction


def test_an_older_table_gets_its_later_columns_once(tmp_path):
    path = tmp_path / "t.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE t (x INTEGER)")
    old.commit()
    old.close()
    for atomic in (True, False, True):
        db = SQLiteFile(path, busy_timeout=1, synchronous="FULL", wal=True)
        db.prepare(
            ["CREATE TABLE IF NOT EXISTS t (x INTEGER)"],
            lambda c: add_missing_columns(c, "t", {"y": "TEXT", "z": "REAL"}),
            atomic=atomic,
        )
        columns = [row[1] for row in db.connect().execute("PRAGMA table_info(t)")]
        assert columns == ["x", "y", "z"]
        db.close()
