"""The head office's assets and their checks, each body a function of the configuration, the
central database and the clock; the verdicts are the core's (``core.operations.headoffice``).

Everything shown that came from the central database (store ids, tenants, which the stores'
receipts carry) is a cell of ``md_table`` or plain-text metadata: it reads as the text it is."""

from datetime import date, datetime

import dagster as dg

from posfed_pipeline.core.base.clock import Clock
from posfed_pipeline.core.config.headoffice import HeadOfficeConfig
from posfed_pipeline.core.operations import headoffice as watch
from posfed_pipeline.core.operations.headoffice import StoreActivity, UnsettledDay, duration
from posfed_pipeline.defs.markdown import md_table
from posfed_pipeline.defs.resources import CentralDbResource
from posfed_pipeline.names import (
    CENTRAL_DB_RECEIPTS,
    CHAIN_SETTLEMENTS,
    CLOSED_DAYS_SETTLED_CHECK,
    EVERY_STORE_LISTED_CHECK,
    EVERY_STORE_SETTLED_CHECK,
    HEADOFFICE_GROUP,
    STORE_ACTIVITY,
    TENANT_SETTLEMENTS,
    UNSETTLED_STORE_DAYS,
    store_sending_check_name,
    store_sync_check_name,
)

KINDS = {"sqlalchemy"}


def chain_days(config: HeadOfficeConfig) -> dg.DailyPartitionsDefinition:
    """The chain's business days, in its zone, since ``partitions_start``."""
    return dg.DailyPartitionsDefinition(
        start_date=config.partitions_start.isoformat(),
        timezone=config.timezone.key,
        end_offset=1,  # today's partition exists while the stores sell
    )


def central_database_tables() -> list[dg.AssetSpec]:
    """What the stores write, as the head office reads it: written by each store's posfed
    (its code location, not this one), so nothing here materializes them."""
    return [
        dg.AssetSpec(
            CENTRAL_DB_RECEIPTS,
            description="Every store's receipts in the central database (pos_receipt, "
            "pos_receipt_line, pos_ingest_ledger), written by each store's sync.",
            group_name=HEADOFFICE_GROUP,
            kinds=KINDS,
        ),
        dg.AssetSpec(
            TENANT_SETTLEMENTS,
            description="Every store's settlement per tenant and day (pos_settlement; "
            "pos_settlement_chain adds them up across stores), written by each store's nightly "
            "settlement and revised when late receipts arrive.",
            group_name=HEADOFFICE_GROUP,
            kinds=KINDS,
        ),
    ]


# --- store_activity ----------------------------------------------------------------------------


def store_activity_asset(config: HeadOfficeConfig, clock: Clock) -> dg.AssetsDefinition:
    checks = [
        spec
        for store in config.stores
        for spec in (
            dg.AssetCheckSpec(
                store_sending_check_name(store.id),
                asset=STORE_ACTIVITY,
                description=f"{store.name} ({store.id}) is sending: while it is open, a new "
                f"receipt reaches the central database at least every "
                f"{duration(store.silent_after)}.",
            ),
            dg.AssetCheckSpec(
                store_sync_check_name(store.id),
                asset=STORE_ACTIVITY,
                description=f"{store.name} ({store.id}) syncs on time: its newest receipts "
                f"reached the central database within {duration(store.max_sync_lag)} of their "
                ".dat file.",
            ),
        )
    ]
    checks.append(
        dg.AssetCheckSpec(
            EVERY_STORE_LISTED_CHECK,
            asset=STORE_ACTIVITY,
            description="Every store that sends receipts is listed in headoffice.toml (a "
            "store's own checks need its entry: its zone and opening hours).",
        )
    )

    @dg.asset(
        key=STORE_ACTIVITY,
        deps=[CENTRAL_DB_RECEIPTS],
        group_name=HEADOFFICE_GROUP,
        kinds=KINDS,
        check_specs=checks,
        description="Per store: its newest receipt in the central database, receipts today, "
        "when its sync last stored one and how far behind it was; whether it is open now.",
    )
    def store_activity(central_db: CentralDbResource) -> dg.MaterializeResult:
        return report_activity(config, central_db, clock.now())

    return store_activity


def report_activity(
    config: HeadOfficeConfig, resource: CentralDbResource, now: datetime
) -> dg.MaterializeResult:
    stores = watch.watch_stores(config, resource.get_engine(), now)
    unlisted = [a.store.id for a in stores if not a.store.listed]
    results = []
    for activity in stores:
        if not activity.store.listed:
            continue
        metadata = _activity_metadata(activity)
        results.append(
            dg.AssetCheckResult(
                check_name=store_sending_check_name(activity.store.id),
                passed=activity.sending,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={**metadata, "problem": _problems(activity.not_sending)},
            )
        )
        results.append(
            dg.AssetCheckResult(
                check_name=store_sync_check_name(activity.store.id),
                passed=activity.sync_current,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={**metadata, "problem": _problems(activity.sync_behind)},
            )
        )
    results.append(
        dg.AssetCheckResult(
            check_name=EVERY_STORE_LISTED_CHECK,
            passed=not unlisted,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                # Plain text (never Markdown): the ids are what the stores wrote.
                "not_listed": dg.MetadataValue.text(", ".join(unlisted) or "none"),
                "config": dg.MetadataValue.path(str(config.config_path or "")),
            },
        )
    )
    return dg.MaterializeResult(
        metadata={
            "stores": len(stores),
            "open_now": sum(a.open_now for a in stores),
            "not_sending": sum(not a.sending for a in stores),
            "sync_behind": sum(not a.sync_current for a in stores),
            "receipts_today": sum(a.receipts_today for a in stores),
            "checked_at": dg.MetadataValue.timestamp(now),
            "activity": dg.MetadataValue.md(_activity_table(stores)),
        },
        check_results=results,
    )


def _activity_table(stores: list[StoreActivity]) -> str:
    rows = []
    for a in stores:
        verdict = "; ".join([*a.not_sending, *a.sync_behind]) or "ok"
        if not a.store.listed:
            verdict = f"not in headoffice.toml; {verdict}"
        rows.append(
            (
                a.store.id,
                a.store.name,
                f"{a.checked_at:%H:%M} {a.checked_at:%Z}",
                "open" if a.open_now else "closed",
                _when(a.last_receipt_at),
                a.receipts_today,
                _when(a.last_arrival_at),
                _lag(a.sync_lag),
                _lag(a.max_sync_lag),
                verdict,
            )
        )
    return md_table(
        [
            "store",
            "name",
            "local time",
            "now",
            "last receipt",
            "receipts today",
            "last sync",
            "sync lag",
            "worst lag, 15 min",
            "verdict",
        ],
        rows,
        align="lllllrllll",
    )


def _activity_metadata(activity: StoreActivity) -> dict:
    return {
        "store": dg.MetadataValue.text(activity.store.name),
        "open_now": activity.open_now,
        "local_time": dg.MetadataValue.text(f"{activity.checked_at:%Y-%m-%d %H:%M %Z}"),
        "last_receipt_at": dg.MetadataValue.text(_when(activity.last_receipt_at)),
        "quiet_minutes": dg.MetadataValue.float(
            round(activity.quiet_for.total_seconds() / 60, 1) if activity.quiet_for else 0.0
        ),
        "receipts_today": activity.receipts_today,
        "last_sync_at": dg.MetadataValue.text(_when(activity.last_arrival_at)),
        "sync_lag_seconds": dg.MetadataValue.float(
            activity.sync_lag.total_seconds() if activity.sync_lag is not None else 0.0
        ),
        "worst_sync_lag_seconds": dg.MetadataValue.float(
            activity.max_sync_lag.total_seconds() if activity.max_sync_lag is not None else 0.0
        ),
    }


def _problems(problems: tuple[str, ...]) -> dg.MetadataValue:
    # Plain text, never Markdown: a problem quotes times and limits, nothing to render.
    return dg.MetadataValue.text("; ".join(problems) or "none")


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}" if moment else f"none in {watch.ACTIVITY_DAYS} days"


def _lag(span) -> str:
    return duration(span) if span is not None else "-"


# --- chain_settlements -------------------------------------------------------------------------


def chain_settlements_asset(config: HeadOfficeConfig, clock: Clock) -> dg.AssetsDefinition:
    @dg.asset(
        key=CHAIN_SETTLEMENTS,
        deps=[TENANT_SETTLEMENTS],
        partitions_def=chain_days(config),
        group_name=HEADOFFICE_GROUP,
        kinds=KINDS,
        check_specs=[
            dg.AssetCheckSpec(
                EVERY_STORE_SETTLED_CHECK,
                asset=CHAIN_SETTLEMENTS,
                description="Every store that sold on this day and has closed it has a "
                "settlement matching its receipts in the central database.",
            )
        ],
        description="The chain's settlement of one business day: per tenant, across stores "
        "(pos_settlement_chain): stores, receipts, gross, returns, net; and per store.",
    )
    def chain_settlements(
        context: dg.AssetExecutionContext, central_db: CentralDbResource
    ) -> dg.MaterializeResult:
        day = date.fromisoformat(context.partition_key)
        return report_chain_day(config, central_db, day, clock.now())

    return chain_settlements


def report_chain_day(
    config: HeadOfficeConfig, resource: CentralDbResource, day: date, now: datetime
) -> dg.MaterializeResult:
    result = watch.chain_day(config, resource.get_engine(), day, now)
    tenants = md_table(
        ["tenant", "stores", "receipts", "gross", "returns", "net"],
        [
            (r["tenant"], r["stores"], r["receipts"], r["gross_sales"], r["returns"], r["net"])
            for r in result.tenants
        ],
        align="lrrrrr",
    )
    per_store = md_table(
        ["store", "tenant", "receipts", "net"],
        [(r["store_id"], r["tenant"], r["receipts"], r["net"]) for r in result.per_store],
        align="llrr",
    )
    return dg.MaterializeResult(
        metadata={
            "tenants": len(result.tenants),
            "stores_settled": len({r["store_id"] for r in result.per_store}),
            "receipts": sum(r["receipts"] for r in result.tenants),
            "net_total": str(result.net),
            "settlement": dg.MetadataValue.md(tenants),
            "per_store": dg.MetadataValue.md(per_store),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=EVERY_STORE_SETTLED_CHECK,
                passed=not result.not_settled,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "not_settled": dg.MetadataValue.md(_unsettled_table(result.not_settled)),
                    "not_closed_yet": dg.MetadataValue.text(", ".join(result.not_closed) or "none"),
                },
            )
        ],
    )


# --- unsettled_store_days ----------------------------------------------------------------------


def unsettled_store_days_asset(config: HeadOfficeConfig, clock: Clock) -> dg.AssetsDefinition:
    @dg.asset(
        key=UNSETTLED_STORE_DAYS,
        deps=[CENTRAL_DB_RECEIPTS, TENANT_SETTLEMENTS],
        group_name=HEADOFFICE_GROUP,
        kinds=KINDS,
        check_specs=[
            dg.AssetCheckSpec(
                CLOSED_DAYS_SETTLED_CHECK,
                asset=UNSETTLED_STORE_DAYS,
                description=f"Every store's business day of the last {config.settlement_days} "
                f"that had receipts and closed ({config.settled_by:%H:%M} the day after, "
                "in the store's zone) is settled, matching its receipts.",
            )
        ],
        description="The store-days not settled: closed, with receipts in the central database "
        "and no settlement (or one that no longer matches them: receipts since).",
    )
    def unsettled_store_days(central_db: CentralDbResource) -> dg.MaterializeResult:
        return report_unsettled(config, central_db, clock.now())

    return unsettled_store_days


def report_unsettled(
    config: HeadOfficeConfig, resource: CentralDbResource, now: datetime
) -> dg.MaterializeResult:
    first, last = watch.settlement_window(config, now)
    unsettled, not_closed = watch.unsettled_days(
        config, resource.get_engine(), now, first=first, last=last
    )
    table = _unsettled_table(unsettled)
    return dg.MaterializeResult(
        metadata={
            "not_settled": len(unsettled),
            "stores": len({u.store_id for u in unsettled}),
            "first_day": first.isoformat(),
            "last_day": last.isoformat(),
            "open_days_not_judged": len(not_closed),
            "store_days": dg.MetadataValue.md(table),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CLOSED_DAYS_SETTLED_CHECK,
                passed=not unsettled,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"not_settled": len(unsettled), "store_days": dg.MetadataValue.md(table)},
            )
        ],
    )


def _unsettled_table(unsettled: list[UnsettledDay]) -> str:
    if not unsettled:
        return "Every closed store-day with receipts is settled."
    return md_table(
        ["store", "business day", "why", "receipts", "net", "settled receipts", "settled net"],
        [
            (
                u.store_id,
                u.business_day.isoformat(),
                f"{u.reason}: {', '.join(u.tenants)}" if u.tenants else u.reason,
                u.receipts,
                u.net,
                "-" if u.receipts_settled is None else u.receipts_settled,
                "-" if u.net_settled is None else u.net_settled,
            )
            for u in unsettled
        ],
        align="lllrrrr",
    )
