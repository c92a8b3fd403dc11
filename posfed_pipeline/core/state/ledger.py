"""The local ledger: the store server's own record of every receipt accepted and emitted.

The checkout must never wait for the central database. So whether a receipt is new, a
re-delivery or a conflict is decided here, on the store server's local disk, and the .dat file
is written as soon as the ledger says "accepted". The central database is fed from this ledger
afterwards (``core.sync``): every delivery is an outbox entry until the central side holds it.

A SQLite file (``<home>/ledger.db``) in WAL mode with ``synchronous=FULL``: a commit is on disk
before it returns, so after a power cut the ledger still knows every receipt whose .dat was
written (the .dat is fsynced after the ledger's commit), and nothing is emitted twice or left
out of the sync.

Tables: ``receipt`` (one row per accepted receipt key, with the receipt as the central database
will get it), ``delivery`` (one row per file a terminal delivered, whatever became of it: the
outbox), ``sync_state`` (who is syncing, and the back-off after failures).
"""

from __future__ import annotations

import functools
import sqlite3
import time
import uuid
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from posfed_pipeline.core.base.errors import PosfedError
from posfed_pipeline.core.base.sqlite import SQLiteFile, add_missing_columns
from posfed_pipeline.core.model.outbox import OutboxRow, Outcome
from posfed_pipeline.core.model.receipt import Receipt, from_payload, to_payload

LEDGER_FILE = "ledger.db"
BUSY_TIMEOUT_SECONDS = 10.0
_CHUNK = 500

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS receipt (
        terminal_id TEXT NOT NULL,
        business_day TEXT NOT NULL,
        receipt_id TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        tenant TEXT NOT NULL,
        payload TEXT NOT NULL,
        accepted_at REAL NOT NULL,
        dat_file TEXT,
        dat_written_at REAL,
        dat_staged TEXT,
        PRIMARY KEY (terminal_id, business_day, receipt_id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS delivery (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id TEXT NOT NULL UNIQUE,
        terminal_id TEXT NOT NULL,
        file_signature TEXT NOT NULL,
        business_day TEXT NOT NULL,
        receipt_id TEXT NOT NULL,
        source_file TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT,
        run_id TEXT,
        detected_at REAL,
        recorded_at REAL NOT NULL,
        synced_at REAL,
        sync_error TEXT,
        UNIQUE (terminal_id, file_signature, content_hash)
    )
    """,
    "CREATE INDEX IF NOT EXISTS delivery_outbox ON delivery (seq) WHERE synced_at IS NULL",
    "CREATE INDEX IF NOT EXISTS delivery_key ON delivery (terminal_id, business_day, receipt_id)",
    "CREATE INDEX IF NOT EXISTS delivery_synced ON delivery (synced_at)",
    # A terminal's latest receipt (its health check, every minute): a lookup, not a scan.
    "CREATE INDEX IF NOT EXISTS receipt_accepted ON receipt (terminal_id, accepted_at)",
    """
    CREATE TABLE IF NOT EXISTS sync_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        run_key TEXT,
        taken_at REAL,
        failures INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_attempt_at REAL,
        last_success_at REAL,
        last_error TEXT
    )
    """,
    "INSERT OR IGNORE INTO sync_state (id) VALUES (1)",
)


@dataclass(frozen=True)
class DeliveredReceipt:
    """One file as a terminal delivered it: its name and the version (size, mtime) read."""

    receipt: Receipt
    file_signature: str
    detected_at: float | None = None  # when it arrived in the inbox (its mtime)


@dataclass
class Acceptance:
    """What the ledger decided for one batch."""

    inserted: list[Receipt] = field(default_factory=list)
    # Re-deliveries of receipts whose .dat is already written: archived, never re-emitted.
    redelivered: list[Receipt] = field(default_factory=list)
    # Accepted earlier but their .dat is not written yet (the earlier attempt stopped between
    # the ledger's commit and the .dat): emitted now.
    owed_dat: list[Receipt] = field(default_factory=list)
    # Whose own earlier attempt wrote the .dat and stopped before archiving the file.
    resumed: list[Receipt] = field(default_factory=list)
    conflicts: list[tuple[Receipt, str]] = field(default_factory=list)

    @property
    def to_emit(self) -> list[Receipt]:
        """One receipt per key (a batch may carry the same receipt twice)."""
        unique: dict[tuple, Receipt] = {}
        for receipt in self.inserted + self.owed_dat:
            unique.setdefault(_key(receipt), receipt)
        return list(unique.values())

    @property
    def accepted(self) -> list[Receipt]:
        """Every receipt whose file may go to the archive once its .dat exists."""
        return self.inserted + self.owed_dat + self.resumed + self.redelivered


@dataclass(frozen=True)
class SyncLag:
    """How far the central database is behind the ledger."""

    pending_deliveries: int
    pending_receipts: int  # receipts accepted here and not yet in the central database
    # When the oldest of them entered the outbox (accepted, or put back by a resync).
    oldest_pending_at: float | None
    parked: int  # refused by the central database (see ``parked_entries``); an operator acts

    def age_seconds(self, now: float | None = None) -> float:
        if self.oldest_pending_at is None:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self.oldest_pending_at)


@dataclass(frozen=True)
class SyncState:
    run_key: str | None
    taken_at: float | None
    failures: int
    next_attempt_at: float
    last_attempt_at: float | None
    last_success_at: float | None
    last_error: str | None


def _key(receipt: Receipt) -> tuple[str, str, str]:
    return (receipt.terminal_id, receipt.business_day.isoformat(), receipt.receipt_id)


def conflict_reason(stored_hash: str) -> str:
    """Why a receipt is refused as a conflict (the ledger's words, wherever it is said)."""
    return (
        "a receipt with this id was already accepted for this terminal and day with "
        f"different content (content hash {stored_hash[:12]}); not overwritten"
    )


def ledger_path(home: Path) -> Path:
    return home / LEDGER_FILE


@functools.cache
def open_ledger(home: Path) -> Ledger:
    """The store's ledger, one object per process (its connections are per thread)."""
    return Ledger(ledger_path(home))


_RECEIPT_OF_DELIVERY = (
    "LEFT JOIN receipt r ON r.terminal_id = d.terminal_id "
    "AND r.business_day = d.business_day AND r.receipt_id = d.receipt_id"
)
# Per terminal, the first unsent delivery whose receipt has no .dat yet: none of that
# terminal's deliveries from there on may be sent. One pass over the few receipts waiting for
# their .dat (a partial index), not a look back per delivery: that was quadratic in a
# terminal's unsent deliveries, and 60 % of a sync pass behind a 50,000-file backlog.
_WAITING_FOR_DAT = (
    "waiting AS (SELECT e.terminal_id, MIN(e.seq) AS first_seq FROM receipt q "
    "JOIN delivery e ON e.terminal_id = q.terminal_id AND e.business_day = q.business_day "
    "AND e.receipt_id = q.receipt_id WHERE q.dat_written_at IS NULL AND e.synced_at IS NULL "
    "AND e.sync_error IS NULL AND e.outcome != 'conflict' GROUP BY e.terminal_id)"
)
_NOT_BEHIND_A_WAITING_ONE = (
    "LEFT JOIN waiting w ON w.terminal_id = d.terminal_id "
    "WHERE (w.first_seq IS NULL OR d.seq < w.first_seq)"
)


def _migrate(connection: sqlite3.Connection) -> None:
    """A ledger made before the staged .dat gets its column (under the write lock)."""
    add_missing_columns(connection, "receipt", {"dat_staged": "TEXT"})
    connection.execute(
        "CREATE INDEX IF NOT EXISTS receipt_staged ON receipt (terminal_id) "
        "WHERE dat_staged IS NOT NULL"
    )
    # clear_staged finds a staged .dat by its path: without this, every .dat written scanned
    # the whole receipt table (a ledger of 50,000 receipts: ~10 ms per .dat).
    connection.execute(
        "CREATE INDEX IF NOT EXISTS receipt_staged_file ON receipt (dat_file) "
        "WHERE dat_staged IS NOT NULL"
    )
    # owed_dat, on every batch: the few receipts without a .dat, not all of the terminal's.
    connection.execute(
        "CREATE INDEX IF NOT EXISTS receipt_owed_dat ON receipt (terminal_id, accepted_at) "
        "WHERE dat_written_at IS NULL"
    )


class Ledger:
    """The ledger file, one SQLite connection per thread (SQLite's own rule)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # FULL: a commit is durable before it returns; the .dat written after it may rely on
        # it. (NORMAL would lose the last commits on a power cut in WAL mode.) Foreign keys on,
        # as it always had them (it declares none yet). Its schema is made under the write
        # lock (``prepare``'s default): a run worker never sees a half-made ledger.
        self._db = SQLiteFile(
            self.path,
            busy_timeout=BUSY_TIMEOUT_SECONDS,
            synchronous="FULL",
            wal=True,
            foreign_keys=True,
        )
        self._db.prepare(_SCHEMA, _migrate)

    def _connect(self) -> sqlite3.Connection:
        return self._db.connect()

    def close(self) -> None:
        self._db.close()

    def _write(self) -> AbstractContextManager[sqlite3.Connection]:
        return self._db.write()

    # --- accepting ------------------------------------------------------------------------------

    def accept(
        self,
        deliveries: Iterable[DeliveredReceipt],
        *,
        tenant: str,
        run_id: str | None = None,
        now: float | None = None,
    ) -> Acceptance:
        """Classify and record a batch of one terminal's deliveries, in one transaction.

        A delivery already recorded (same terminal and file version: an attempt retried after a
        failure or a crash) keeps the outcome it was given the first time.
        """
        result = Acceptance()
        now = time.time() if now is None else now
        with self._write() as connection:
            for delivery in deliveries:
                self._accept_one(connection, delivery, tenant, run_id, now, result)
        return result

    def _accept_one(
        self,
        connection: sqlite3.Connection,
        delivery: DeliveredReceipt,
        tenant: str,
        run_id: str | None,
        now: float,
        result: Acceptance,
    ) -> None:
        receipt = delivery.receipt
        key = (receipt.terminal_id, receipt.business_day.isoformat(), receipt.receipt_id)
        stored = connection.execute(
            "SELECT content_hash, dat_written_at FROM receipt "
            "WHERE terminal_id = ? AND business_day = ? AND receipt_id = ?",
            key,
        ).fetchone()
        # The same file version with the same content: an earlier attempt of this very delivery.
        earlier = connection.execute(
            "SELECT outcome, reason FROM delivery "
            "WHERE terminal_id = ? AND file_signature = ? AND content_hash = ?",
            (receipt.terminal_id, delivery.file_signature, receipt.content_hash),
        ).fetchone()
        if earlier is not None:
            outcome, reason = Outcome(earlier[0]), earlier[1]
        elif stored is None:
            outcome, reason = Outcome.INSERTED, None
        elif stored[0] == receipt.content_hash:
            outcome, reason = Outcome.DUPLICATE, None
        else:
            outcome = Outcome.CONFLICT
            reason = conflict_reason(stored[0])

        if outcome is Outcome.CONFLICT:
            result.conflicts.append((receipt, reason or "conflicts with an accepted receipt"))
        elif stored is None:
            # New here (or, on a retried attempt, its row was rolled back with the attempt).
            connection.execute(
                "INSERT INTO receipt (terminal_id, business_day, receipt_id, content_hash, "
                "tenant, payload, accepted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, receipt.content_hash, tenant, to_payload(receipt), now),
            )
            result.inserted.append(receipt)
        elif stored[1] is None:
            result.owed_dat.append(receipt)
        elif earlier is not None and outcome is Outcome.INSERTED:
            # Its own earlier attempt wrote the .dat and stopped before archiving the file.
            result.resumed.append(receipt)
        else:
            result.redelivered.append(receipt)
        if earlier is None:
            connection.execute(
                "INSERT INTO delivery (delivery_id, terminal_id, file_signature, business_day, "
                "receipt_id, source_file, content_hash, outcome, reason, run_id, detected_at, "
                "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    uuid.uuid4().hex,
                    receipt.terminal_id,
                    delivery.file_signature,
                    key[1],
                    receipt.receipt_id,
                    receipt.source_file,
                    receipt.content_hash,
                    outcome.value,
                    reason,
                    run_id,
                    delivery.detected_at,
                    now,
                ),
            )

    def adopt(self, receipts: Iterable[Receipt], *, tenant: str, now: float | None = None) -> int:
        """Record archived receipts the ledger does not know (a backfill after the ledger was
        lost or predates them); they go to the outbox like new deliveries. Returns how many."""
        now = time.time() if now is None else now
        added = 0
        with self._write() as connection:
            for receipt in receipts:
                key = (receipt.terminal_id, receipt.business_day.isoformat(), receipt.receipt_id)
                cursor = connection.execute(
                    "INSERT OR IGNORE INTO receipt (terminal_id, business_day, receipt_id, "
                    "content_hash, tenant, payload, accepted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (*key, receipt.content_hash, tenant, to_payload(receipt), now),
                )
                if cursor.rowcount:
                    added += 1
                    connection.execute(
                        "INSERT INTO delivery (delivery_id, terminal_id, file_signature, "
                        "business_day, receipt_id, source_file, content_hash, outcome, "
                        "recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            uuid.uuid4().hex,
                            receipt.terminal_id,
                            f"archive:{receipt.source_file}:{receipt.content_hash}",
                            key[1],
                            receipt.receipt_id,
                            receipt.source_file,
                            receipt.content_hash,
                            Outcome.INSERTED.value,
                            now,
                        ),
                    )
        return added

    def mark_emitted(
        self,
        written: Iterable[tuple[Receipt, str] | tuple[Receipt, str, str | None]],
        *,
        staged: str | None = None,
        now: float | None = None,
    ) -> None:
        """Record that these receipts' .dat files (path relative to the .dat folder) exist, or,
        with a staged name (``staged``, or each item's third element), are fully written under
        that temp name beside them and about to be renamed into place: whatever stops the
        rename, the .dat is never written twice. One transaction for all of them."""
        now = time.time() if now is None else now
        rows = [
            (
                item[1],
                now,
                item[2] if len(item) > 2 else staged,
                item[0].terminal_id,
                item[0].business_day.isoformat(),
                item[0].receipt_id,
            )
            for item in written
        ]
        if not rows:
            return
        with self._write() as connection:
            connection.executemany(
                "UPDATE receipt SET dat_file = ?, dat_written_at = ?, dat_staged = ? "
                "WHERE terminal_id = ? AND business_day = ? AND receipt_id = ? "
                "AND dat_written_at IS NULL",
                rows,
            )

    def staged_dat(self, terminal_id: str) -> list[tuple[str, str]]:
        """(.dat path, temp name) of a terminal's .dat files recorded as written whose rename
        into place may not have happened (the attempt stopped in between)."""
        rows = self._connect().execute(
            "SELECT dat_file, dat_staged FROM receipt "
            "WHERE terminal_id = ? AND dat_staged IS NOT NULL",
            (terminal_id,),
        )
        return list(rows)

    def clear_staged(self, dat_files: Iterable[str]) -> None:
        rows = [(path,) for path in dat_files]
        if rows:
            with self._write() as connection:
                connection.executemany(
                    "UPDATE receipt SET dat_staged = NULL "
                    "WHERE dat_file = ? AND dat_staged IS NOT NULL",
                    rows,
                )

    def owed_dat(self, terminal_id: str) -> list[Receipt]:
        """A terminal's accepted receipts whose .dat is not written (an attempt stopped between
        the ledger's commit and the .dat, and its file is gone): the ledger holds the receipt,
        so the next run of the terminal writes it."""
        rows = self._connect().execute(
            "SELECT payload FROM receipt WHERE terminal_id = ? AND dat_written_at IS NULL "
            "ORDER BY accepted_at, rowid",
            (terminal_id,),
        )
        return [from_payload(payload) for (payload,) in rows]

    def withdraw(self, receipt: Receipt, reason: str) -> None:
        """Undo the acceptance of a receipt whose .dat cannot be written (another terminal's
        receipt holds its file name): it was never billed, so it becomes a conflict."""
        with self._write() as connection:
            connection.execute(
                "DELETE FROM receipt WHERE terminal_id = ? AND business_day = ? AND receipt_id = ? "
                "AND content_hash = ? AND dat_written_at IS NULL",
                (*_key(receipt), receipt.content_hash),
            )
            connection.execute(
                "UPDATE delivery SET outcome = 'conflict', reason = ? WHERE terminal_id = ? "
                "AND business_day = ? AND receipt_id = ? AND content_hash = ? "
                "AND synced_at IS NULL",
                (reason[:500], *_key(receipt), receipt.content_hash),
            )

    # --- the outbox -----------------------------------------------------------------------------

    def outbox(self, limit: int = 500) -> list[OutboxRow]:
        """The oldest deliveries the central database does not hold yet, in delivery order.

        A terminal's deliveries stay in order: none is handed out while an earlier one of the
        same terminal still waits for its .dat file (the central side sees a receipt only once
        the customer could pay for it); other terminals' go on. Parked deliveries (refused by
        the central side) are left out.
        """
        rows = (
            self._connect()
            .execute(
                f"WITH {_WAITING_FOR_DAT} "
                "SELECT d.seq, d.delivery_id, d.terminal_id, d.business_day, d.receipt_id, "
                "d.source_file, d.content_hash, d.outcome, d.reason, d.run_id, d.detected_at, "
                "r.dat_written_at, r.tenant, r.payload, r.content_hash "
                f"FROM delivery d {_RECEIPT_OF_DELIVERY} {_NOT_BEHIND_A_WAITING_ONE} "
                "AND d.synced_at IS NULL AND d.sync_error IS NULL ORDER BY d.seq LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        entries: list[OutboxRow] = []
        for (
            seq,
            delivery_id,
            terminal_id,
            day,
            receipt_id,
            source_file,
            content_hash,
            outcome,
            reason,
            run_id,
            detected_at,
            dat_written_at,
            tenant,
            payload,
            stored_hash,
        ) in rows:
            outcome = Outcome(outcome)
            accepted = outcome is not Outcome.CONFLICT and stored_hash == content_hash
            entries.append(
                OutboxRow(
                    seq=seq,
                    delivery_id=delivery_id,
                    terminal_id=terminal_id,
                    business_day=date.fromisoformat(day),
                    receipt_id=receipt_id,
                    source_file=source_file,
                    content_hash=content_hash,
                    outcome=outcome,
                    reason=reason,
                    run_id=run_id,
                    detected_at=detected_at,
                    dat_written_at=dat_written_at if accepted else None,
                    tenant=tenant if accepted else None,
                    receipt=from_payload(payload) if accepted else None,
                )
            )
        return entries

    def mark_synced(self, seqs: Iterable[int], *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        rows = [(now, seq) for seq in seqs]
        if rows:
            with self._write() as connection:
                connection.executemany(
                    "UPDATE delivery SET synced_at = ?, sync_error = NULL WHERE seq = ?", rows
                )

    def park(self, reasons: dict[int, str]) -> None:
        """Set deliveries aside that the central database refuses (they would block the rest);
        ``posfed db resync`` puts them back once an operator has fixed the cause."""
        if reasons:
            with self._write() as connection:
                connection.executemany(
                    "UPDATE delivery SET sync_error = ? WHERE seq = ?",
                    [(reason[:500], seq) for seq, reason in reasons.items()],
                )

    def resync(
        self,
        *,
        terminal_id: str | None = None,
        business_day: date | None = None,
        now: float | None = None,
    ) -> int:
        """Put deliveries back in the outbox (all, or a terminal's and/or a day's): they are
        sent again, idempotently. Returns how many."""
        # The lag of a delivery sent again counts from now, not from when it was accepted.
        query = (
            "UPDATE delivery SET synced_at = NULL, sync_error = NULL, recorded_at = ? WHERE 1 = 1"
        )
        params: list = [time.time() if now is None else now]
        if terminal_id is not None:
            query += " AND terminal_id = ?"
            params.append(terminal_id)
        if business_day is not None:
            query += " AND business_day = ?"
            params.append(business_day.isoformat())
        with self._write() as connection:
            return connection.execute(query, params).rowcount

    def has_outbox(self) -> bool:
        """Is there anything the next sync could send?"""
        return bool(
            self._connect()
            .execute(
                f"WITH {_WAITING_FOR_DAT} SELECT 1 FROM delivery d {_NOT_BEHIND_A_WAITING_ONE} "
                "AND d.synced_at IS NULL AND d.sync_error IS NULL LIMIT 1"
            )
            .fetchone()
        )

    def lag(self) -> SyncLag:
        connection = self._connect()
        pending, receipts, oldest = connection.execute(
            "SELECT COUNT(*), COALESCE(SUM(outcome = 'inserted'), 0), MIN(recorded_at) "
            "FROM delivery WHERE synced_at IS NULL"
        ).fetchone()
        (parked,) = connection.execute(
            "SELECT COUNT(*) FROM delivery WHERE synced_at IS NULL AND sync_error IS NOT NULL"
        ).fetchone()
        return SyncLag(pending, receipts, oldest, parked)

    def pending_receipts_of_day(self, business_day: date) -> int:
        """How many receipts of a business day (any terminal) the central database lacks."""
        return (
            self._connect()
            .execute(
                "SELECT COUNT(*) FROM delivery WHERE business_day = ? AND outcome = 'inserted' "
                "AND synced_at IS NULL",
                (business_day.isoformat(),),
            )
            .fetchone()[0]
        )

    def synced_since(self, after: float) -> list[tuple[str, date, float]]:
        """(terminal, business day, latest stored-at) of receipts the central database took
        after ``after``: what may change a day that was already settled."""
        rows = self._connect().execute(
            "SELECT terminal_id, business_day, MAX(synced_at) FROM delivery "
            "WHERE synced_at > ? AND outcome = 'inserted' GROUP BY terminal_id, business_day",
            (after,),
        )
        return [(t, date.fromisoformat(d), at) for t, d, at in rows]

    def last_synced_at(self) -> float:
        row = self._connect().execute("SELECT MAX(synced_at) FROM delivery").fetchone()
        return row[0] or 0.0

    def pending_receipt_ids(self, terminal_id: str, business_day: date) -> set[str]:
        """Receipt ids of a terminal-day accepted here and not yet in the central database."""
        rows = self._connect().execute(
            "SELECT receipt_id FROM delivery WHERE terminal_id = ? AND business_day = ? "
            "AND outcome = 'inserted' AND synced_at IS NULL",
            (terminal_id, business_day.isoformat()),
        )
        return {receipt_id for (receipt_id,) in rows}

    def parked_entries(self, limit: int = 50) -> list[tuple[str, str, str, str]]:
        """(terminal, day, receipt id, why) of deliveries the central database refused."""
        return (
            self._connect()
            .execute(
                "SELECT terminal_id, business_day, receipt_id, sync_error FROM delivery "
                "WHERE synced_at IS NULL AND sync_error IS NOT NULL ORDER BY seq LIMIT ?",
                (limit,),
            )
            .fetchall()
        )

    def prune(self, before: date) -> int:
        """Forget receipts of business days before ``before`` whose every delivery reached the
        central database (retention: the archive keeps the originals). Returns how many."""
        day = before.isoformat()
        with self._write() as connection:
            connection.execute(
                "DELETE FROM delivery WHERE business_day < ? AND synced_at IS NOT NULL", (day,)
            )
            return connection.execute(
                "DELETE FROM receipt WHERE business_day < ? AND NOT EXISTS (SELECT 1 FROM "
                "delivery d WHERE d.terminal_id = receipt.terminal_id AND d.business_day = "
                "receipt.business_day AND d.receipt_id = receipt.receipt_id)",
                (day,),
            ).rowcount

    # --- reading ----------------------------------------------------------------------------

    def receipts(
        self, *, terminal_id: str | None = None, business_day: date | None = None
    ) -> list[Receipt]:
        """Accepted receipts, in the order they were accepted."""
        query = "SELECT payload FROM receipt WHERE 1 = 1"
        params: list[str] = []
        if terminal_id is not None:
            query += " AND terminal_id = ?"
            params.append(terminal_id)
        if business_day is not None:
            query += " AND business_day = ?"
            params.append(business_day.isoformat())
        rows = self._connect().execute(query + " ORDER BY accepted_at, rowid", params)
        return [from_payload(payload) for (payload,) in rows]

    def last_accepted_at(self, terminal_id: str) -> float | None:
        """When the terminal's latest receipt was accepted (epoch seconds), if ever."""
        row = (
            self._connect()
            .execute("SELECT MAX(accepted_at) FROM receipt WHERE terminal_id = ?", (terminal_id,))
            .fetchone()
        )
        return row[0] if row else None

    def conflicts(self, receipts: Iterable[Receipt]) -> list[tuple[Receipt, str]]:
        """The receipts ``accept`` would refuse as conflicts, without recording anything: the
        ledger holds their id for that terminal and day with other content."""
        found = []
        connection = self._connect()
        for receipt in receipts:
            stored = connection.execute(
                "SELECT content_hash FROM receipt "
                "WHERE terminal_id = ? AND business_day = ? AND receipt_id = ?",
                _key(receipt),
            ).fetchone()
            if stored is not None and stored[0] != receipt.content_hash:
                found.append((receipt, conflict_reason(stored[0])))
        return found

    def day_state(self, terminal_id: str, business_day: date) -> dict[str, tuple[str, bool]]:
        """receipt id -> (content hash, .dat written?) for one terminal-day."""
        rows = self._connect().execute(
            "SELECT receipt_id, content_hash, dat_written_at IS NOT NULL FROM receipt "
            "WHERE terminal_id = ? AND business_day = ?",
            (terminal_id, business_day.isoformat()),
        )
        return {receipt_id: (digest, bool(written)) for receipt_id, digest, written in rows}

    def delivery_ids(self) -> set[str]:
        return {d for (d,) in self._connect().execute("SELECT delivery_id FROM delivery")}

    def delivery_outcomes(self, terminal_id: str | None = None) -> list[tuple[str, str, str]]:
        """(source file, receipt id, outcome) of every delivery, in delivery order."""
        query = "SELECT source_file, receipt_id, outcome FROM delivery"
        params: tuple = ()
        if terminal_id is not None:
            query += " WHERE terminal_id = ?"
            params = (terminal_id,)
        return self._connect().execute(query + " ORDER BY seq", params).fetchall()

    def delivery_runs(self) -> list[tuple[str, str, str | None]]:
        """(source file, receipt id, run id) of every delivery, in delivery order: the run a
        receipt was accepted under (the checkout's: the terminal-day's run recording it)."""
        return (
            self._connect()
            .execute("SELECT source_file, receipt_id, run_id FROM delivery ORDER BY seq")
            .fetchall()
        )

    # --- who syncs, and when next -----------------------------------------------------------------

    def sync_state(self) -> SyncState:
        row = (
            self._connect()
            .execute(
                "SELECT run_key, taken_at, failures, next_attempt_at, last_attempt_at, "
                "last_success_at, last_error FROM sync_state WHERE id = 1"
            )
            .fetchone()
        )
        return SyncState(*row)

    def take_sync_slot(self, run_key: str, *, holder_done, now: float | None = None) -> bool:
        """Become the one sync in flight, if the back-off allows it and no other sync holds the
        slot; ``holder_done(run_key)`` says whether a holder's run has ended (a run killed on
        the way never gives the slot back)."""
        now = time.time() if now is None else now
        state = self.sync_state()
        if now < state.next_attempt_at:
            return False
        if state.run_key is not None and not holder_done(state.run_key, state.taken_at or 0.0):
            return False
        with self._write() as connection:
            cursor = connection.execute(
                "UPDATE sync_state SET run_key = ?, taken_at = ? WHERE id = 1 "
                "AND run_key IS ? AND next_attempt_at <= ?",
                (run_key, now, state.run_key, now),
            )
            return cursor.rowcount == 1

    def finish_sync(
        self,
        run_key: str | None,
        *,
        error: str | None,
        backoff,
        now: float | None = None,
    ) -> SyncState:
        """Give the slot back and record the attempt; ``backoff(failures)``: seconds to wait
        after that many failures in a row."""
        now = time.time() if now is None else now
        with self._write() as connection:
            (failures,) = connection.execute(
                "SELECT failures FROM sync_state WHERE id = 1"
            ).fetchone()
            failures = failures + 1 if error else 0
            connection.execute(
                "UPDATE sync_state SET run_key = CASE WHEN run_key IS ? THEN NULL ELSE run_key "
                "END, taken_at = CASE WHEN run_key IS ? THEN NULL ELSE taken_at END, "
                "failures = ?, next_attempt_at = ?, last_attempt_at = ?, "
                "last_success_at = CASE WHEN ? IS NULL THEN ? ELSE last_success_at END, "
                "last_error = ? WHERE id = 1",
                (
                    run_key,
                    run_key,
                    failures,
                    now + backoff(failures) if error else 0.0,
                    now,
                    error,
                    now,
                    error[:1000] if error else None,
                ),
            )
        return self.sync_state()


class LedgerMissing(PosfedError, FileNotFoundError):
    """No ledger file yet (a store that has not taken a receipt)."""


class LedgerReader:
    """The ledger read and never written, by a watcher (``posfed metrics``): opened read-only
    (it never creates the file, takes no write lock and cannot change a row), one connection
    for the thread that uses it, every statement cut off after ``timeout`` seconds (a lock
    waited for included), so a watcher can never hold up a run."""

    def __init__(self, path: Path, *, timeout: float = 5.0):
        self.path = Path(path)
        self.timeout = timeout
        self._connection: sqlite3.Connection | None = None
        self._inode: int | None = None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> sqlite3.Connection:
        try:
            inode = self.path.stat().st_ino
        except FileNotFoundError:
            self.close()
            raise LedgerMissing(f"no ledger at {self.path} yet") from None
        if self._connection is not None and inode != self._inode:
            self.close()  # replaced (a restore from backup): read the new file
        if self._connection is None:
            self._connection = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=self.timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            self._inode = inode
        return self._connection

    def _query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        connection = self._connect()
        deadline = time.monotonic() + self.timeout
        # Called every few thousand virtual-machine steps: a nonzero answer interrupts the
        # statement (sqlite3.OperationalError "interrupted").
        connection.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
        try:
            return connection.execute(sql, tuple(params)).fetchall()
        except sqlite3.DatabaseError:
            self.close()  # opened again next time, whatever went wrong
            raise
        finally:
            if self._connection is not None:
                self._connection.set_progress_handler(None, 0)

    def identity(self) -> tuple[int, int]:
        """(inode, the highest delivery seq ever handed out): a watcher's cursor belongs to one
        ledger; a ledger replaced or restored has another inode or an older sequence."""
        ((last_seq,),) = self._query(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'delivery'), 0)"
        )
        return self._inode or 0, last_seq

    def delivery_totals(self, after: int, up_to: int) -> list[tuple[str, str, int]]:
        """(terminal, outcome, how many) of the deliveries with ``after < seq <= up_to``."""
        return self._query(
            "SELECT terminal_id, outcome, COUNT(*) FROM delivery WHERE seq > ? AND seq <= ? "
            "GROUP BY terminal_id, outcome",
            (after, up_to),
        )

    def new_receipts(
        self, after: int, up_to: int
    ) -> list[tuple[int, str, float | None, float, float | None]]:
        """(seq, terminal, arrived at, recorded at, .dat written at) of each receipt accepted
        in the deliveries with ``after < seq <= up_to``; .dat written at is None while its
        .dat is not written (or the receipt was withdrawn)."""
        return self._query(
            # This delivery's own receipt: a key accepted again with other content is another
            # receipt, with its own .dat (as in dat_written_at below).
            "SELECT d.seq, d.terminal_id, d.detected_at, d.recorded_at, r.dat_written_at "
            f"FROM delivery d {_RECEIPT_OF_DELIVERY} AND r.content_hash = d.content_hash "
            "WHERE d.seq > ? AND d.seq <= ? AND d.outcome = 'inserted' ORDER BY d.seq",
            (after, up_to),
        )

    def dat_written_at(self, seqs: Iterable[int]) -> dict[int, float | None]:
        """seq -> when its receipt's .dat was written (None: not yet) for those of ``seqs``
        still an accepted receipt's delivery; a seq withdrawn or pruned is left out."""
        found: dict[int, float | None] = {}
        seqs = list(seqs)
        for start in range(0, len(seqs), _CHUNK):
            chunk = seqs[start : start + _CHUNK]
            rows = self._query(
                "SELECT d.seq, r.dat_written_at FROM delivery d JOIN receipt r "
                "ON r.terminal_id = d.terminal_id AND r.business_day = d.business_day "
                "AND r.receipt_id = d.receipt_id AND r.content_hash = d.content_hash "
                f"WHERE d.outcome = 'inserted' AND d.seq IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.update(rows)
        return found

    def last_accepted(self, terminal_ids: Iterable[str]) -> dict[str, float]:
        """terminal -> when its latest receipt was accepted (each an index lookup)."""
        found = {}
        for terminal_id in terminal_ids:
            ((at,),) = self._query(
                "SELECT MAX(accepted_at) FROM receipt WHERE terminal_id = ?", (terminal_id,)
            )
            if at is not None:
                found[terminal_id] = at
        return found

    def outbox(self) -> tuple[int, float | None, int]:
        """(deliveries the central database does not hold yet, when the oldest of them entered
        the outbox, how many of them are parked): ``Ledger.lag``'s figures, in one statement."""
        ((pending, oldest, parked),) = self._query(
            "SELECT COUNT(*), MIN(recorded_at), COALESCE(SUM(sync_error IS NOT NULL), 0) "
            "FROM delivery WHERE synced_at IS NULL"
        )
        return pending, oldest, parked

    def sync_state(self) -> SyncState:
        rows = self._query(
            "SELECT run_key, taken_at, failures, next_attempt_at, last_attempt_at, "
            "last_success_at, last_error FROM sync_state WHERE id = 1"
        )
        return SyncState(*rows[0]) if rows else SyncState(None, None, 0, 0.0, None, None, None)
