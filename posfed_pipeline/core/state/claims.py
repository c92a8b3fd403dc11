"""Claims: which launcher took which inbox file, shared by every launcher on a store server.

Two launchers start runs for inbox files: the event-driven trigger (milliseconds) and the
per-terminal sensors (the catch-up path). Before a launcher creates a run it *claims* the file
versions the run will carry; a version can be claimed once, so whichever launcher is first owns
it and the other never launches a second run for it. A claim names its run key, so a launcher
can find out whether the run failed and the files are owed another attempt.

A run that leaves a file in the inbox for a later look (written to moments ago, or the file
system would not let it be read or moved) says when in the claim (``defer``): the trigger
relaunches it then, the sensor at its first tick after.

A small SQLite file on the store server's local disk (WAL, one short transaction per claim).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

from posfed_pipeline.core.base.sqlite import SQLiteFile, add_missing_columns
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.core.state.inbox import (
    MAX_FILES_PER_RUN,
    InboxFile,
    PlannedBatch,
    plan_batches,
)

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
# Added after the first release: a claim table made before gets them at open.
_LATER_COLUMNS = {"retry_at": "REAL", "note": "TEXT"}
TRIGGER_HEARTBEAT = "trigger"
TRIGGER_STARTED = "trigger_started"  # when the live trigger started: older claims are not its


def _migrate(connection: sqlite3.Connection) -> None:
    add_missing_columns(connection, "claim", _LATER_COLUMNS)


@dataclass(frozen=True)
class Claim:
    signature: str
    run_key: str
    attempt: int
    claimed_at: float
    retry_at: float | None = None  # its run left the file for a later look, due then
    note: str = ""  # why

    def due(self, now: float) -> bool:
        return self.retry_at is not None and now >= self.retry_at


class ClaimTable:
    def __init__(self, path: Path):
        self.path = path
        # NORMAL, not the ledger's FULL: a claim lost to a power cut only means its file is
        # claimed and run again, which the ledger makes harmless. The schema statements run one
        # by one, as they always have (not under the write lock: opening, on every sensor tick
        # and run, does not wait for a claim being written once the schema is there).
        self._db = SQLiteFile(path, busy_timeout=30, synchronous="NORMAL", wal=True)
        self._db.prepare((_SCHEMA, _HEARTBEAT), _migrate, atomic=False)

    def _connect(self) -> sqlite3.Connection:
        return self._db.connect()

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
        with self._db.write() as connection:
            taken = self._taken(connection, terminal_id, wanted)
            won = [s for s in wanted if s not in taken]
            if won:
                run_key = run_key_for(won)
                now = time.time()
                connection.executemany(
                    "INSERT INTO claim (terminal_id, signature, run_key, attempt, claimed_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(terminal_id, s, run_key, attempt, now) for s in won],
                )
        return won

    def reclaim(
        self, terminal_id: str, claims: list[Claim], run_key: str, attempt: int
    ) -> list[str]:
        """Hand claims whose run failed or left files behind to a new run (a retry). Returns
        the signatures handed over: a claim another launcher handed over first is not."""
        now = time.time()
        won = []
        with self._db.write() as connection:
            for claim in claims:
                updated = connection.execute(
                    "UPDATE claim SET run_key = ?, attempt = ?, claimed_at = ?, retry_at = NULL, "
                    "note = NULL WHERE terminal_id = ? AND signature = ? AND run_key = ?",
                    (run_key, attempt, now, terminal_id, claim.signature, claim.run_key),
                )
                if updated.rowcount:
                    won.append(claim.signature)
        return won

    def defer(
        self,
        terminal_id: str,
        deferrals: Iterable[tuple[str, float, str]],
        *,
        run_key: str | None = None,
    ) -> None:
        """(signature, retry at, why): the run that holds these claims left their files in the
        inbox to be looked at again at that time (wall clock). ``run_key``: that run's; a claim
        handed to another run since (a relaunch) is not touched. None: a run without a key (one
        launched by hand) defers whichever claim the files have."""
        rows = [(at, note, terminal_id, sig, run_key, run_key) for sig, at, note in deferrals]
        if rows:
            self._connect().executemany(
                "UPDATE claim SET retry_at = ?, note = ? WHERE terminal_id = ? AND signature = ? "
                "AND (? IS NULL OR run_key = ?)",
                rows,
            )

    def claims(self, terminal_id: str, signatures: Iterable[str]) -> dict[str, Claim]:
        return self._taken(self._connect(), terminal_id, list(signatures))

    def claims_of(self, terminal_id: str) -> dict[str, Claim]:
        """Every claim of a terminal (files in flight, and handled ones for ten minutes): one
        query, however many files wait in its inbox."""
        rows = self._connect().execute(
            f"SELECT {_COLUMNS} FROM claim WHERE terminal_id = ?", (terminal_id,)
        )
        return {row[0]: _claim(row) for row in rows}

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

    def beat_at(self, name: str) -> float | None:
        """When ``name`` last beat (wall clock), None if never."""
        row = self._connect().execute("SELECT at FROM heartbeat WHERE name = ?", (name,)).fetchone()
        return row[0] if row is not None else None

    def alive(self, name: str = TRIGGER_HEARTBEAT, *, within: float = 5.0) -> bool:
        row = self._connect().execute("SELECT at FROM heartbeat WHERE name = ?", (name,)).fetchone()
        return row is not None and time.time() - row[0] < within

    @staticmethod
    def _taken(connection, terminal_id: str, signatures: list[str]) -> dict[str, Claim]:
        found: dict[str, Claim] = {}
        for start in range(0, len(signatures), 500):
            chunk = signatures[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in connection.execute(
                f"SELECT {_COLUMNS} FROM claim WHERE terminal_id = ? AND signature IN ({marks})",
                [terminal_id, *chunk],
            ):
                found[row[0]] = _claim(row)
        return found


_COLUMNS = "signature, run_key, attempt, claimed_at, retry_at, note"


def _claim(row: tuple) -> Claim:
    signature, run_key, attempt, claimed_at, retry_at, note = row
    return Claim(signature, run_key, attempt, claimed_at, retry_at, note or "")


def claim_table_path(home: Path) -> Path:
    return home / "claims.db"


def claim_batches(
    claim_table: ClaimTable,
    terminal: Terminal,
    files: list[InboxFile],
    day_of: Callable[[InboxFile], date],
    *,
    attempt: int = 0,
    max_files: int = MAX_FILES_PER_RUN,
) -> list[PlannedBatch]:
    """Plan runs for ``files`` and claim them; returns only the batches (and files) won."""
    batches = []
    planned_batches = plan_batches(
        terminal, files, day_of, attempt=attempt, max_files_per_run=max_files
    )
    for planned in planned_batches:
        by_signature = {f.signature: f for f in planned.files}

        def batch_of(won: list[str], planned=planned, by_signature=by_signature) -> PlannedBatch:
            return replace(planned, files=tuple(by_signature[s] for s in won))

        won = claim_table.claim(
            terminal.id, by_signature, lambda w: batch_of(w).run_key, attempt=attempt
        )
        if won:
            batches.append(batch_of(won))
    return batches
