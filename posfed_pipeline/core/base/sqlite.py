"""The store server's local SQLite files (ledger, claim table, alert outbox), opened one way.

Each file states its settings where it is opened (``SQLiteFile(...)``): they differ on
purpose, and each store says why beside its own. What they share lives here:

- connections in autocommit mode (``isolation_level=None``): a transaction is only ever the one
  ``write()`` begins, never one Python's sqlite3 opens behind a statement;
- ``write()``: ``BEGIN IMMEDIATE`` takes the write lock before the first read, so two writers
  (two run workers, a sync, a sensor) queue up on the busy timeout instead of one failing
  half-way with "database is locked"; COMMIT on success, ROLLBACK on any exception;
- the schema and its migrations, run once when the store object is made (``prepare``).

Connections are per thread (SQLite's rule for a connection) or per use. No process-id check:
no posfed process forks with one open (the warm run workers are spawned, not forked; see
``fastpath/pool.py``), so a connection is never inherited across a fork.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal


class SQLiteFile:
    """One local SQLite file and how it is opened.

    ``busy_timeout``: seconds a statement waits for another connection's lock.
    ``synchronous``: FULL (a commit is on disk before it returns) or NORMAL (in WAL mode the
    last commits may be lost on a power cut, never corrupted).
    ``wal``: write-ahead log (readers never wait for the writer); False keeps SQLite's rollback
    journal. ``foreign_keys``: enforce FOREIGN KEY clauses.
    ``per_thread``: one connection per thread, kept open for the object's life (``connect()``
    returns it); False: a connection per ``session()`` / ``write()``, closed after it.
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout: float,
        synchronous: Literal["FULL", "NORMAL"],
        wal: bool,
        foreign_keys: bool = False,
        per_thread: bool = True,
    ):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self.wal = wal
        self.foreign_keys = foreign_keys
        self.per_thread = per_thread
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        connection.execute(f"PRAGMA synchronous={self.synchronous}")
        if self.foreign_keys:
            connection.execute("PRAGMA foreign_keys=ON")
        return connection

    def connect(self) -> sqlite3.Connection:
        """This thread's connection (per-thread files), or a new one the caller closes."""
        if not self.per_thread:
            return self._open()
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._open()
        return connection

    def close(self) -> None:
        """Close this thread's connection (per-thread files); the next use opens another."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    @contextmanager
    def session(self) -> Iterator[sqlite3.Connection]:
        """A connection for a few statements, each its own transaction (autocommit)."""
        connection = self.connect()
        try:
            yield connection
        finally:
            if not self.per_thread:
                connection.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One transaction holding the write lock from its start: committed if the block
        returns, rolled back if it raises (whatever it raises)."""
        with self.session() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                # Not if SQLite already rolled back (a full disk, an I/O error): that error is
                # the one to see, not "no transaction is active".
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    def prepare(
        self,
        schema: Iterable[str],
        migrate: Callable[[sqlite3.Connection], None] | None = None,
        *,
        atomic: bool = True,
    ) -> None:
        """Switch to WAL if asked, then run the schema statements, then ``migrate``.

        ``atomic``: in one ``write()`` (nobody sees a half-made schema; opening queues behind a
        running writer). False: each statement on its own (opening never waits for the write
        lock when the schema is already there); ``migrate`` must then allow for another process
        migrating at the same moment (``add_missing_columns`` does).
        """
        with self.session() as connection:
            if self.wal:
                # Outside any transaction (SQLite cannot change the journal inside one); the
                # mode is the file's, so every later connection has it too.
                connection.execute("PRAGMA journal_mode=WAL")
            if not atomic:
                for statement in schema:
                    connection.execute(statement)
                if migrate is not None:
                    migrate(connection)
                return
        with self.write() as connection:
            for statement in schema:
                connection.execute(statement)
            if migrate is not None:
                migrate(connection)


def add_missing_columns(
    connection: sqlite3.Connection, table: str, columns: Mapping[str, str]
) -> None:
    """Add the columns (name -> type) a table made by an older release lacks.

    Outside a transaction another process may add one between the look and the ALTER: its
    OperationalError is ignored (the column is there, which is all that is wanted).
    """
    present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
    for column, kind in columns.items():
        if column in present:
            continue
        if connection.in_transaction:
            connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        else:
            with contextlib.suppress(sqlite3.OperationalError):
                connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
