"""Reading the central database: its ingest ledger, summaries and counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import (
    case,
    func,
    select,
    true,
)
from sqlalchemy.engine import Engine

from posfed_pipeline.core.central_db.models import IngestLedgerRow, ReceiptRow
from posfed_pipeline.core.model.outbox import Outcome


@dataclass(frozen=True)
class LedgerEntry:
    terminal_id: str
    business_day: date
    receipt_id: str
    source_file: str
    content_hash: str
    run_id: str | None
    outcome: str
    reason: str | None
    detected_at: datetime | None
    loaded_at: datetime
    dat_written_at: datetime | None


def ledger_entries(
    engine: Engine,
    *,
    terminal_id: str | None = None,
    business_day: date | None = None,
    run_id: str | None = None,
    outcome: Outcome | str | None = None,
    store_id: str | None = None,
) -> list[LedgerEntry]:
    """Ledger rows, oldest first; timestamps come back timezone-aware (UTC)."""
    ledger = IngestLedgerRow.__table__
    query = select(*(ledger.c[name] for name in LedgerEntry.__dataclass_fields__)).order_by(
        ledger.c.id
    )
    for column, value in (
        (ledger.c.store_id, store_id),
        (ledger.c.terminal_id, terminal_id),
        (ledger.c.business_day, business_day),
        (ledger.c.run_id, run_id),
        (ledger.c.outcome, str(outcome) if outcome is not None else None),
    ):
        if value is not None:
            query = query.where(column == value)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [
        LedgerEntry(
            **{
                **row,
                "detected_at": as_utc(row["detected_at"]),
                "loaded_at": as_utc(row["loaded_at"]),
                "dat_written_at": as_utc(row["dat_written_at"]),
            }
        )
        for row in rows
    ]


def as_utc(value: datetime | None) -> datetime | None:
    """A time read back from the central database, timezone-aware."""
    # SQLite keeps no offset: posfed writes UTC, so a naive value read back is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class LedgerSummary:
    deliveries: int
    duplicates: int
    conflicts: int
    dat_pending: int  # loaded (or re-delivered) but no .dat recorded yet


def ledger_summary(
    engine: Engine, store_id: str | None = None
) -> dict[tuple[str, date], LedgerSummary]:
    """Deliveries per terminal-day of one store (None: of every store)."""
    ledger = IngestLedgerRow.__table__

    def count_where(condition):
        return func.sum(case((condition, 1), else_=0))

    query = select(
        ledger.c.terminal_id,
        ledger.c.business_day,
        func.count(),
        count_where(ledger.c.outcome == Outcome.DUPLICATE.value),
        count_where(ledger.c.outcome == Outcome.CONFLICT.value),
        count_where(
            (ledger.c.outcome != Outcome.CONFLICT.value) & ledger.c.dat_written_at.is_(None)
        ),
    )
    if store_id is not None:
        query = query.where(ledger.c.store_id == store_id)
    query = query.group_by(ledger.c.terminal_id, ledger.c.business_day)
    with engine.connect() as connection:
        return {
            (terminal_id, day): LedgerSummary(int(total), int(dups), int(conflicts), int(pending))
            for terminal_id, day, total, dups, conflicts, pending in connection.execute(query)
        }


def count_receipts(
    engine: Engine, terminal_id: str, business_day: date, store_id: str | None = None
) -> int:
    """Receipts of a terminal-day in one store (None: in any store)."""
    header = ReceiptRow.__table__
    query = select(func.count()).where(
        header.c.terminal_id == terminal_id, header.c.business_day == business_day
    )
    if store_id is not None:
        query = query.where(header.c.store_id == store_id)
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


def counts_by_terminal_day(
    engine: Engine, store_id: str | None = None
) -> list[tuple[str, date, int, Decimal]]:
    """Receipts and their total per terminal-day of one store (None: of every store)."""
    header = ReceiptRow.__table__
    mine = header.c.store_id == store_id if store_id is not None else true()
    with engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                select(
                    header.c.terminal_id,
                    header.c.business_day,
                    func.count(),
                    func.sum(header.c.total),
                )
                .where(mine)
                .group_by(header.c.terminal_id, header.c.business_day)
                .order_by(header.c.business_day, header.c.terminal_id)
            )
        ]
