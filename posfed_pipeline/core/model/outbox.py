"""What the store's ledger hands the central database: a delivery's outcome and the outbox row
that carries it (written by ``state.ledger``, loaded by ``central_db.loads``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from posfed_pipeline.core.model.receipt import Receipt


class Outcome(StrEnum):
    INSERTED = "inserted"  # the first delivery of a receipt key: accepted
    DUPLICATE = "duplicate"  # same key, same content: a re-delivery, nothing new
    CONFLICT = "conflict"  # same key, other content: refused and quarantined


@dataclass(frozen=True)
class OutboxRow:
    """A row of the store ledger's outbox: one delivery the central database does not hold yet,
    with what it needs to load it."""

    seq: int
    delivery_id: str
    terminal_id: str
    business_day: date
    receipt_id: str
    source_file: str
    content_hash: str
    outcome: Outcome
    reason: str | None
    run_id: str | None
    detected_at: float | None
    dat_written_at: float | None
    tenant: str | None
    receipt: Receipt | None  # the accepted receipt (None for a conflict: it was refused)
