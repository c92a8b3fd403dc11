"""Store-and-forward: the local ledger's outbox, drained into the central database.

The .dat file never waits for this. Whatever the ledger accepted reaches the central database
when it can: in bulk (up to ``batch_size`` deliveries per transaction), idempotently (a batch
re-sent after a lost acknowledgement adds nothing), in delivery order per terminal. A failed
attempt is retried after 1 s, 2 s, 4 s … capped at ``backoff_cap_seconds``, forever: a receipt
is never given up on. One sync runs at a time per store (the ledger's sync slot).

How far behind the central database is (the *lag*) is the age of the oldest delivery it does
not hold yet: a warning past ``warn_after_seconds``, a failure past ``fail_after_seconds``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

from sqlalchemy.engine import Engine

from posfed_pipeline.core import central_db
from posfed_pipeline.core.central_db.errors import CentralDbError
from posfed_pipeline.core.central_db.timeouts import call_deadline
from posfed_pipeline.core.config.sync_policy import SyncPolicy
from posfed_pipeline.core.state.ledger import Ledger, SyncLag


class LagLevel(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


def lag_level(lag: SyncLag, policy: SyncPolicy, now: float | None = None) -> LagLevel:
    age = lag.age_seconds(now)
    if lag.parked or age > policy.fail_after_seconds:
        # A parked delivery never reaches the central database without an operator.
        return LagLevel.FAIL
    if age > policy.warn_after_seconds:
        return LagLevel.WARN
    return LagLevel.OK


def describe_lag(lag: SyncLag, now: float | None = None) -> str:
    if not lag.pending_deliveries:
        return "the central database holds every accepted receipt"
    text = (
        f"{lag.pending_receipts} receipt(s) and {lag.pending_deliveries} delivery record(s) not "
        f"yet in the central database, the oldest accepted {lag.age_seconds(now):.0f} s ago"
    )
    if lag.parked:
        text += f"; {lag.parked} refused by it (see `posfed db status`)"
    return text


@dataclass
class SyncPass:
    """What one sync pass did."""

    deliveries: int = 0  # stored by this pass (or found already stored)
    receipts_inserted: int = 0
    lines_inserted: int = 0
    already_held: int = 0
    batches: int = 0
    refused: dict[int, str] = field(default_factory=dict)
    by_terminal_day: Counter[tuple[str, date]] = field(default_factory=Counter)
    seconds: float = 0.0
    complete: bool = True  # False: stopped at max_pass_seconds with work left


def sync_pending(ledger: Ledger, engine: Engine, policy: SyncPolicy = SyncPolicy()) -> SyncPass:
    """Store the outbox in the central database, batch by batch, until it is empty.

    Raises the first database error (the caller backs off and tries again); batches stored
    before it stay stored and are marked so in the ledger.
    """
    result = SyncPass()
    started = time.monotonic()
    while True:
        entries = ledger.outbox(policy.batch_size)
        if not entries:
            break
        if time.monotonic() - started > policy.max_pass_seconds:
            result.complete = False
            break
        try:
            written = _store(engine, entries, policy)
        except Exception as exc:
            if len(entries) == 1 or central_db.is_transient_error(exc):
                raise
            # Something in this batch the central database will never take (a value it
            # rejects, a trigger, a constraint of its own): find it, set it aside, go on.
            written = _store_one_by_one(engine, entries, policy)
        # Marked only after the central commit: a crash in between re-sends the batch, and
        # the central side recognises every delivery by its id.
        ledger.mark_synced(written.stored)
        ledger.park(written.refused)
        result.batches += 1
        result.deliveries += len(written.stored)
        result.receipts_inserted += len(written.receipts_inserted)
        result.lines_inserted += written.line_count
        result.already_held += written.already_held
        result.refused.update(written.refused)
        for receipt in written.receipts_inserted:
            result.by_terminal_day[(receipt.terminal_id, receipt.business_day)] += 1
        if len(entries) < policy.batch_size:
            break
    result.seconds = time.monotonic() - started
    return result


def _store(engine: Engine, entries, policy: SyncPolicy) -> central_db.CentralWrite:
    with call_deadline(engine, policy.call_timeout_seconds, "storing receipts"):
        return central_db.load_outbox_rows(engine, entries, store_id=policy.store_id)


def _store_one_by_one(engine: Engine, entries, policy: SyncPolicy) -> central_db.CentralWrite:
    combined = central_db.CentralWrite()
    for entry in entries:
        try:
            written = _store(engine, [entry], policy)
        except Exception as exc:
            if central_db.is_transient_error(exc):
                raise
            combined.refused[entry.seq] = f"the central database refused it: {exc}"[:500]
            continue
        combined.stored += written.stored
        combined.receipts_inserted += written.receipts_inserted
        combined.already_held += written.already_held
        combined.refused.update(written.refused)
    return combined


def check_central_schema(engine: Engine, policy: SyncPolicy = SyncPolicy()) -> None:
    """Raise ``SchemaMissing`` when the central database has no posfed schema, or an older one
    than this posfed writes (permanent until upgraded). A newer one is fine: migrations only
    add, so a store not yet upgraded keeps loading into a central database that already is."""
    with call_deadline(engine, policy.call_timeout_seconds, "reading the schema version"):
        revision = central_db.schema_revision(engine)
    if revision is None:
        raise SchemaMissing("the central database has no posfed schema: run `posfed db upgrade`")
    if revision in central_db.revisions_behind_head():
        # Upgrade order for a shared central database: it first, then the stores.
        raise SchemaMissing(
            f"the central database's schema is at revision {revision}, this posfed needs "
            f"{central_db.head_revision()}: upgrade the central database first (`posfed db "
            "upgrade`, or `posfed db upgrade --sql` for a DBA); the receipts wait in the store's "
            "ledger"
        )


class SchemaMissing(CentralDbError, RuntimeError):
    """The central database is reachable but not set up for posfed."""
