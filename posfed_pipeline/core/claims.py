"""Claims: which launcher took which inbox file, shared by every launcher on a store server.

Two launchers start runs for inbox files: the event-driven trigger (milliseconds) and the
per-terminal sensors (the catch-up path). Before a launcher creates a run it *claims* the file
versions the run will carry; a version can be claimed once, so whichever launcher is first owns
it and the other never launches a second run for it. A claim names its run key, so a launcher
can find out whether the run failed and the files are owed another attempt.

A small SQLite file on the store server's local disk (WAL, one short transaction per claim).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

from posfed_pipeline.core.config import Terminal
from posfed_pipeline.core.inbox import InboxFile, PlannedBatch, plan_batches

_SCHEMA = """
CREATE TABLE IF NOT EXISTS claim (
    terminal_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    run_key TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    claimed_at REAL NOT NULL,
    PRIMARY KEY (terminal_id, signature)
)
"""
_HEARTBEAT = """
CREATE TABLE IF NOT EXISTS heartbeat (name TEXT PRIMARY KEY, at REAL NOT NULL)
"""
TRIGGER_HEARTBEAT = "trigger"


@dataclass(frozen=True)
class Claim:
    signature: str
    run_key: str
    attempt: int
    claimed_at: float


class ClaimStore:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(_SCHEMA)
            connection.execute(_HEARTBEAT)

    def _connect(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
        return connection

    def claim(
        self, terminal_id: str, signatures: Iterable[str], run_key_for, *, attempt: int = 0
    ) -> list[str]:
        """Claim what is still free; returns the signatures won, in the order given.

        ``run_key_for(won)`` names the run key from the won signatures (known only after the
        claim, as the key depends on exactly which files the run carries).
        """
        wanted = list(dict.fromkeys(signatures))
        if not wanted:
            return []
        connection = self._connect()
        connection.execute("BEGIN IMMEDIATE")
        try:
            taken = self._taken(connection, terminal_id, wanted)
            won = [s for s in wanted if s not in taken]
            if won:
                run_key = run_key_for(won)
                now = time.time()
                connection.executemany(
                    "INSERT INTO claim VALUES (?, ?, ?, ?, ?)",
                    [(terminal_id, s, run_key, attempt, now) for s in won],
                )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return won

    def reclaim(self, terminal_id: str, claims: list[Claim], run_key: str, attempt: int) -> None:
        """Hand claims whose run failed to a new run (a retry)."""
        connection = self._connect()
        now = time.time()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(
                "UPDATE claim SET run_key = ?, attempt = ?, claimed_at = ? "
                "WHERE terminal_id = ? AND signature = ? AND run_key = ?",
                [(run_key, attempt, now, terminal_id, c.signature, c.run_key) for c in claims],
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def claims(self, terminal_id: str, signatures: Iterable[str]) -> dict[str, Claim]:
        return self._taken(self._connect(), terminal_id, list(signatures))

    def claims_of(self, terminal_id: str) -> dict[str, Claim]:
        """Every claim of a terminal (files in flight, and handled ones for ten minutes): one
        query, however many files wait in its inbox."""
        rows = self._connect().execute(
            "SELECT signature, run_key, attempt, claimed_at FROM claim WHERE terminal_id = ?",
            (terminal_id,),
        )
        return {sig: Claim(sig, key, attempt, at) for sig, key, attempt, at in rows}

    def release_absent(
        self, terminal_id: str, present: set[str], *, older_than: float = 600.0
    ) -> int:
        """Forget claims of files that left the inbox (handled) at least ``older_than`` ago."""
        connection = self._connect()
        cutoff = time.time() - older_than
        rows = connection.execute(
            "SELECT signature FROM claim WHERE terminal_id = ? AND claimed_at < ?",
            (terminal_id, cutoff),
        ).fetchall()
        gone = [(terminal_id, s) for (s,) in rows if s not in present]
        if gone:
            connection.executemany(
                "DELETE FROM claim WHERE terminal_id = ? AND signature = ?", gone
            )
        return len(gone)

    def beat(self, name: str = TRIGGER_HEARTBEAT) -> None:
        """A launcher says it is alive (the trigger, about once a second)."""
        self._connect().execute(
            "INSERT OR REPLACE INTO heartbeat VALUES (?, ?)", (name, time.time())
        )

    def alive(self, name: str = TRIGGER_HEARTBEAT, *, within: float = 5.0) -> bool:
        row = self._connect().execute("SELECT at FROM heartbeat WHERE name = ?", (name,)).fetchone()
        return row is not None and time.time() - row[0] < within

    @staticmethod
    def _taken(connection, terminal_id: str, signatures: list[str]) -> dict[str, Claim]:
        found: dict[str, Claim] = {}
        for start in range(0, len(signatures), 500):
            chunk = signatures[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for signature, run_key, attempt, claimed_at in connection.execute(
                "SELECT signature, run_key, attempt, claimed_at FROM claim "
                f"WHERE terminal_id = ? AND signature IN ({marks})",
                [terminal_id, *chunk],
            ):
                found[signature] = Claim(signature, run_key, attempt, claimed_at)
        return found


def claim_store_path(home: Path) -> Path:
    return home / "claims.db"


def claim_batches(
    store: ClaimStore,
    terminal: Terminal,
    files: list[InboxFile],
    day_of: Callable[[InboxFile], date],
    *,
    attempt: int = 0,
) -> list[PlannedBatch]:
    """Plan runs for ``files`` and claim them; returns only the batches (and files) won."""
    batches = []
    for planned in plan_batches(terminal, files, day_of, attempt=attempt):
        by_signature = {f.signature: f for f in planned.files}

        def batch_of(won: list[str], planned=planned, by_signature=by_signature) -> PlannedBatch:
            return replace(planned, files=tuple(by_signature[s] for s in won))

        won = store.claim(terminal.id, by_signature, lambda w: batch_of(w).run_key, attempt=attempt)
        if won:
            batches.append(batch_of(won))
    return batches
