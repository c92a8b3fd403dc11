"""Reading the central database across a chain's stores, for the head office: each store's
receipts per day and their newest, how its latest syncs went, and the totals a settlement must
match. Only reads; every query names a window of business days, so none reads a chain's whole
history (docs/deployment.md: the indexes a large central database wants for these)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from posfed_pipeline.core.central_db.models import IngestLedgerRow, ReceiptRow, SettlementRow
from posfed_pipeline.core.central_db.queries import as_utc

CENT = Decimal("0.01")
# A unit of the head office's work (one query) may take this long before posfed cuts it off
# (core.central_db.timeouts.call_deadline); the server's statement_timeout is the engine's.
READ_DEADLINE_SECONDS = 60.0


@dataclass(frozen=True)
class StoreDay:
    """One store's receipts of one business day in the central database."""

    store_id: str
    business_day: date
    receipts: int
    last_sold_at: datetime  # the newest receipt's time of sale (the till's clock), UTC
    last_loaded_at: datetime  # when the store's sync last stored one of them (its clock), UTC


def receipts_per_store_day(engine: Engine, since: date) -> list[StoreDay]:
    """Every store's receipts per business day from ``since`` on."""
    header = ReceiptRow.__table__
    query = (
        select(
            header.c.store_id,
            header.c.business_day,
            func.count(),
            func.max(header.c.sold_at),
            func.max(header.c.loaded_at),
        )
        .where(header.c.business_day >= since)
        .group_by(header.c.store_id, header.c.business_day)
        .order_by(header.c.store_id, header.c.business_day)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [
        StoreDay(store, day, int(count), _utc(sold), _utc(loaded))
        for store, day, count, sold, loaded in rows
    ]


@dataclass(frozen=True)
class SyncBatch:
    """One transaction of a store's sync: the deliveries it stored and when (``loaded_at`` is
    one value per transaction, ``core.central_db.loads``)."""

    loaded_at: datetime
    oldest_dat_written_at: datetime  # the longest-waiting delivery in it
    deliveries: int

    @property
    def lag(self) -> timedelta:
        """How long its longest-waiting receipt took from its .dat to the central database
        (both on the store server's clock)."""
        return max(timedelta(0), self.loaded_at - self.oldest_dat_written_at)


def recent_sync_batches(
    engine: Engine, store_id: str, since: date, window: timedelta
) -> list[SyncBatch]:
    """The store's sync transactions within ``window`` before its newest one, oldest first.
    Measured back from the store's own newest, so a clock that differs between the store and
    the head office does not change the figure."""
    ledger = IngestLedgerRow.__table__
    mine = (ledger.c.store_id == store_id) & (ledger.c.business_day >= since)
    with engine.connect() as connection:
        newest = connection.execute(select(func.max(ledger.c.loaded_at)).where(mine)).scalar()
        if newest is None:
            return []
        rows = connection.execute(
            select(ledger.c.loaded_at, func.min(ledger.c.dat_written_at), func.count())
            .where(
                mine,
                ledger.c.loaded_at >= newest - window,
                # A conflict or an old row has no .dat time: no lag to measure.
                ledger.c.dat_written_at.is_not(None),
            )
            .group_by(ledger.c.loaded_at)
            .order_by(ledger.c.loaded_at)
        ).all()
    return [SyncBatch(_utc(loaded), _utc(oldest), int(n)) for loaded, oldest, n in rows]


@dataclass(frozen=True)
class TenantTotals:
    receipts: int
    net: Decimal


TenantKey = tuple[str, date, str]  # store, business day, tenant


def receipt_totals(engine: Engine, since: date, until: date) -> dict[TenantKey, TenantTotals]:
    """Receipts and their net per store, day and tenant, days ``since`` to ``until``.

    A receipt's total is the sum of its line amounts (validation refuses any other), so the
    sum of the totals is the settlement's net (gross minus returns) without reading a line."""
    header = ReceiptRow.__table__
    query = (
        select(
            header.c.store_id,
            header.c.business_day,
            header.c.tenant,
            func.count(),
            func.sum(header.c.total),
        )
        .where(header.c.business_day >= since, header.c.business_day <= until)
        .group_by(header.c.store_id, header.c.business_day, header.c.tenant)
    )
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return {(s, d, t): TenantTotals(int(n), money(total)) for s, d, t, n, total in rows}


def settled_totals(engine: Engine, since: date, until: date) -> dict[TenantKey, TenantTotals]:
    """What the stores' settlements (``pos_settlement``) say per store, day and tenant."""
    table = SettlementRow.__table__
    query = select(
        table.c.store_id, table.c.business_day, table.c.tenant, table.c.receipts, table.c.net
    ).where(table.c.business_day >= since, table.c.business_day <= until)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return {(s, d, t): TenantTotals(int(n), money(net)) for s, d, t, n, net in rows}


def money(value: object) -> Decimal:
    """An amount read back, as Decimal to the cent (SQLite's SUM comes back as a float)."""
    return Decimal(str(value if value is not None else 0)).quantize(CENT)


def _utc(value: datetime) -> datetime:
    aware = as_utc(value)
    assert aware is not None
    return aware
