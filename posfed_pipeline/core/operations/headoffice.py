"""The head office's view of the chain, from the central database alone: is each store
sending, is its sync current, and which stores' business days are not settled.

*Sending*: a store's newest receipt in the central database (its time of sale). While the
store is open (``headoffice.toml``: its zone, opening hours and days), silence longer than its
``silent_after_minutes``, counted from the later of that receipt and the day's opening, needs
a look: the tills stopped, or the store's sync did (either way no receipt reaches the central
database). Outside its hours a store may be silent.

*Sync lag*: each of a store's sync transactions stores a batch of its ledger's outbox; the
batch's lag is how long its longest-waiting receipt took from its .dat file to the central
database (both times on the store server's clock). The newest batch's lag over the store's
``max_sync_lag_minutes`` means its sync is behind (catching up, or slow).

*Settled*: a store's business day is settled when its ``pos_settlement`` rows hold, per
tenant, as many receipts and the same net as its receipts in the central database. A day that
had receipts is judged once it has closed: ``settled_by`` (default 03:00) the day after, in the
store's zone. Not settled: *no settlement* (none was stored: the store's nightly settlement did
not run or failed, e.g. postponed while receipts waited in its outbox), or *receipts since*
(receipts reached the central database after the settlement and it was not revised yet), or
*differs* (any other mismatch).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy.engine import Engine

from posfed_pipeline.core.central_db import chain
from posfed_pipeline.core.central_db.chain import (
    READ_DEADLINE_SECONDS,
    StoreDay,
    SyncBatch,
    TenantKey,
    TenantTotals,
)
from posfed_pipeline.core.central_db.timeouts import call_deadline
from posfed_pipeline.core.config.headoffice import HeadOfficeConfig, WatchedStore
from posfed_pipeline.core.operations import audit
from posfed_pipeline.core.operations.terminal_health import duration_text

# How far back a store's newest receipt is looked for: today and yesterday in any zone.
ACTIVITY_DAYS = 2
# The sync transactions shown per store: those within this long before its newest one.
SYNC_WINDOW = timedelta(minutes=15)
ZERO = chain.money(0)


@dataclass(frozen=True)
class StoreActivity:
    store: WatchedStore
    checked_at: datetime  # the store's local time
    open_now: bool
    last_receipt_at: datetime | None  # the newest receipt's time of sale, the store's local time
    last_arrival_at: datetime | None  # when its sync last stored a receipt, the store's local time
    receipts_today: int  # of the store's business day now
    sync_lag: timedelta | None  # the newest sync transaction's
    max_sync_lag: timedelta | None  # the worst within SYNC_WINDOW before it
    sync_batches: int
    quiet_for: timedelta | None  # while open: since the later of its last receipt and opening
    not_sending: tuple[str, ...]  # why its silence needs a look (empty: fine)
    sync_behind: tuple[str, ...]  # why its sync needs a look (empty: fine)

    @property
    def sending(self) -> bool:
        return not self.not_sending

    @property
    def sync_current(self) -> bool:
        return not self.sync_behind


def judge_store(
    store: WatchedStore, days: Iterable[StoreDay], batches: list[SyncBatch], now: datetime
) -> StoreActivity:
    """A store's facts from the central database, judged by its entry. ``now``: aware."""
    local_now = store.local(now)
    days = list(days)
    last_sold = max((d.last_sold_at for d in days), default=None)
    last_loaded = max((d.last_loaded_at for d in days), default=None)
    today = local_now.date()
    open_now = store.is_open(now)
    last_receipt_at = last_sold.astimezone(store.timezone) if last_sold else None

    not_sending: list[str] = []
    quiet_for = None
    if open_now:
        since = store.hours.silent_since(local_now, last_receipt_at)
        quiet_for = max(timedelta(0), local_now - since)
        if quiet_for > store.silent_after:
            what = (
                f"no receipt since {last_receipt_at:%Y-%m-%d %H:%M}"
                if last_receipt_at
                else "no receipt yet"
            )
            not_sending.append(
                f"{what}: quiet for {duration(quiet_for)} while open "
                f"(limit {duration(store.silent_after)})"
            )

    newest = batches[-1] if batches else None
    sync_behind: list[str] = []
    if newest is not None and newest.lag > store.max_sync_lag:
        sync_behind.append(
            f"its newest receipts reached the central database {duration(newest.lag)} after "
            f"their .dat file (limit {duration(store.max_sync_lag)})"
        )
    return StoreActivity(
        store=store,
        checked_at=local_now,
        open_now=open_now,
        last_receipt_at=last_receipt_at,
        last_arrival_at=last_loaded.astimezone(store.timezone) if last_loaded else None,
        receipts_today=sum(d.receipts for d in days if d.business_day == today),
        sync_lag=newest.lag if newest else None,
        max_sync_lag=max((b.lag for b in batches), default=None),
        sync_batches=len(batches),
        quiet_for=quiet_for,
        not_sending=tuple(not_sending),
        sync_behind=tuple(sync_behind),
    )


def watch_stores(config: HeadOfficeConfig, engine: Engine, now: datetime) -> list[StoreActivity]:
    """Every listed store, and every store found in the central database that is not listed
    (judged by ``[store_defaults]``), in that order."""
    since = now.date() - timedelta(days=ACTIVITY_DAYS)
    with call_deadline(engine, READ_DEADLINE_SECONDS, "reading each store's receipts"):
        per_day = chain.receipts_per_store_day(engine, since)
    by_store: dict[str, list[StoreDay]] = defaultdict(list)
    for day in per_day:
        by_store[day.store_id].append(day)
    found = sorted(set(by_store) - set(config.store_ids))
    stores = [*config.stores, *(config.store(store_id) for store_id in found)]
    judged = []
    for store in stores:
        batches: list[SyncBatch] = []
        if store.id in by_store:
            with call_deadline(engine, READ_DEADLINE_SECONDS, f"reading {store.id}'s syncs"):
                batches = chain.recent_sync_batches(engine, store.id, since, SYNC_WINDOW)
        judged.append(judge_store(store, by_store.get(store.id, []), batches, now))
    return judged


@dataclass(frozen=True)
class UnsettledDay:
    store_id: str
    business_day: date
    reason: str  # "no settlement", "receipts since", "differs"
    receipts: int  # in the central database
    net: Decimal
    receipts_settled: int | None  # None: no settlement
    net_settled: Decimal | None
    tenants: tuple[str, ...]  # whose figures differ

    def describe(self) -> str:
        if self.receipts_settled is None:
            return (
                f"no settlement for {self.receipts} receipt(s), net {self.net}, in the central "
                "database"
            )
        return (
            f"settled {self.receipts_settled} receipt(s), net {self.net_settled}; the central "
            f"database holds {self.receipts}, net {self.net} ({', '.join(self.tenants)})"
        )


def find_unsettled(
    config: HeadOfficeConfig,
    receipts: dict[TenantKey, TenantTotals],
    settled: dict[TenantKey, TenantTotals],
    now: datetime,
) -> tuple[list[UnsettledDay], list[tuple[str, date]]]:
    """The store-days with receipts whose day has closed and whose settlement is missing or
    does not match them; and the store-days with receipts not closed yet (not judged)."""
    store_days: dict[tuple[str, date], set[str]] = defaultdict(set)
    for store_id, day, tenant in [*receipts, *settled]:
        store_days[(store_id, day)].add(tenant)
    unsettled: list[UnsettledDay] = []
    not_closed: list[tuple[str, date]] = []
    for (store_id, day), tenants in sorted(store_days.items()):
        mine = {t: receipts.get((store_id, day, t), TenantTotals(0, ZERO)) for t in tenants}
        count = sum(t.receipts for t in mine.values())
        if count == 0:
            continue  # nothing sold: nothing owed
        if not config.day_closed(config.store(store_id), day, now):
            not_closed.append((store_id, day))
            continue
        net = sum((t.net for t in mine.values()), ZERO)
        stored = {t: settled[(store_id, day, t)] for t in tenants if (store_id, day, t) in settled}
        if not stored:
            unsettled.append(
                UnsettledDay(store_id, day, "no settlement", count, net, None, None, ())
            )
            continue
        differing = tuple(
            sorted(t for t in tenants if stored.get(t, TenantTotals(0, ZERO)) != mine[t])
        )
        if not differing:
            continue
        settled_count = sum(t.receipts for t in stored.values())
        reason = "receipts since" if settled_count < count else "differs"
        settled_net = sum((t.net for t in stored.values()), ZERO)
        unsettled.append(
            UnsettledDay(store_id, day, reason, count, net, settled_count, settled_net, differing)
        )
    return unsettled, not_closed


def unsettled_days(
    config: HeadOfficeConfig, engine: Engine, now: datetime, *, first: date, last: date
) -> tuple[list[UnsettledDay], list[tuple[str, date]]]:
    """``find_unsettled`` over the business days ``first`` to ``last``."""
    with call_deadline(engine, READ_DEADLINE_SECONDS, "reading the receipts' totals"):
        receipts = chain.receipt_totals(engine, first, last)
    with call_deadline(engine, READ_DEADLINE_SECONDS, "reading the settlements"):
        settled = chain.settled_totals(engine, first, last)
    return find_unsettled(config, receipts, settled, now)


def settlement_window(config: HeadOfficeConfig, now: datetime) -> tuple[date, date]:
    """The business days the not-settled list looks at: the last ``settlement_days`` before
    today in the chain's zone, and today (zones ahead of the chain's may have closed it)."""
    today = now.astimezone(config.timezone).date()
    first = max(config.partitions_start, today - timedelta(days=config.settlement_days))
    return first, today


@dataclass(frozen=True)
class ChainDay:
    """The chain's settlement of one business day, and what it is still missing."""

    business_day: date
    tenants: list[dict]  # per tenant across stores (pos_settlement_chain), money Decimal
    per_store: list[dict]  # per store and tenant (pos_settlement)
    not_settled: list[UnsettledDay]  # closed store-days not (or no longer) settled
    not_closed: list[str]  # stores that sold that day and have not closed it yet

    @property
    def net(self) -> Decimal:
        return sum((row["net"] for row in self.tenants), ZERO)


def chain_day(config: HeadOfficeConfig, engine: Engine, day: date, now: datetime) -> ChainDay:
    with call_deadline(engine, READ_DEADLINE_SECONDS, f"reading the settlements of {day}"):
        tenants = audit.chain_settlements(engine, day)
        per_store = audit.stored_settlements(engine, day, None)
    unsettled, not_closed = unsettled_days(config, engine, now, first=day, last=day)
    return ChainDay(
        business_day=day,
        tenants=tenants,
        per_store=[{**row, "net": chain.money(row["net"])} for row in per_store],
        not_settled=unsettled,
        not_closed=sorted(store_id for store_id, _ in not_closed),
    )


def duration(span: timedelta) -> str:
    return duration_text(span.total_seconds())
