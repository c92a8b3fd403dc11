"""The checkout journal: batches the fast path processed, waiting for their run to record them.

The fast path's checkout processes a terminal's new files at once in a warm worker (the .dat a
cashier waits for is written within milliseconds), under the id of the terminal-day's run that
will record them: the run is created when the terminal has been quiet a while or its window is
full, and reports every batch of the window from here, as one run (metadata, checks, lineage).
A window's entries are forgotten once its run has recorded them.

A small SQLite file on the store server's local disk (WAL; NORMAL: a power cut may lose the last
entries, never a receipt: the ledger holds every receipt with the run id it was accepted under,
and the run says how many batches it found).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from posfed_pipeline.core.base.sqlite import SQLiteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkout_batch (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    business_day TEXT NOT NULL,
    summary TEXT NOT NULL,
    files INTEGER NOT NULL,
    at REAL NOT NULL
)
"""
_INDEX = "CREATE INDEX IF NOT EXISTS checkout_batch_run ON checkout_batch (run_id, seq)"


@dataclass(frozen=True)
class Window:
    """A run id with batches waiting to be recorded."""

    run_id: str
    terminal_id: str
    business_day: date
    batches: int
    files: int
    first_at: float
    last_at: float


class CheckoutJournal:
    def __init__(self, path: Path):
        self.path = path
        self._db = SQLiteFile(path, busy_timeout=30, synchronous="NORMAL", wal=True)
        self._db.prepare((_SCHEMA, _INDEX), atomic=False)

    def add(
        self, run_id: str, terminal_id: str, business_day: date, summary: str, files: int
    ) -> None:
        """One processed batch (``summary``: its ``BatchSummary`` as JSON)."""
        self._db.connect().execute(
            "INSERT INTO checkout_batch (run_id, terminal_id, business_day, summary, files, at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, terminal_id, business_day.isoformat(), summary, files, time.time()),
        )

    def summaries(self, run_id: str) -> list[str]:
        rows = self._db.connect().execute(
            "SELECT summary FROM checkout_batch WHERE run_id = ? ORDER BY seq", (run_id,)
        )
        return [summary for (summary,) in rows]

    def windows(self) -> list[Window]:
        """Every run id with batches not yet recorded, oldest first."""
        rows = self._db.connect().execute(
            "SELECT run_id, terminal_id, business_day, COUNT(*), SUM(files), MIN(at), MAX(at) "
            "FROM checkout_batch GROUP BY run_id ORDER BY MIN(seq)"
        )
        return [
            Window(run_id, terminal, date.fromisoformat(day), n, files or 0, first, last)
            for run_id, terminal, day, n, files, first, last in rows
        ]

    def forget(self, run_id: str) -> int:
        """The run recorded its batches: drop them."""
        with self._db.write() as connection:
            return connection.execute(
                "DELETE FROM checkout_batch WHERE run_id = ?", (run_id,)
            ).rowcount


def checkout_journal_path(home: Path) -> Path:
    return home / "checkouts.db"
