"""Daily audits: reconciliation per terminal-day, settlement per tenant-day, retention.

They run nightly for the day that just closed (schedules below) and can be materialized or
backfilled from the UI for any day; late receipts bring a settled or reconciled day up to date.
"""

from datetime import date, datetime, timedelta

import dagster as dg

from posfed_pipeline.core.base.clock import Clock
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.dat import load_spec
from posfed_pipeline.core.operations import audit
from posfed_pipeline.core.state import quarantine, retention
from posfed_pipeline.core.state.ledger import Ledger, open_ledger
from posfed_pipeline.defs.markdown import md_table
from posfed_pipeline.defs.partitions import (
    daily_partitions,
    lineage_only_dep,
    split_terminal_day_key,
    terminal_day_key,
    terminal_day_partitions,
)
from posfed_pipeline.defs.resources import CentralDbResource
from posfed_pipeline.names import (
    ARCHIVE_RETENTION,
    AUDITS_GROUP,
    CENTRAL_DB_RECEIPTS,
    DAILY_RECONCILIATION,
    DAT_FILES,
    DAT_FILES_CHECK,
    DB_ROWS_CHECK,
    LATE_RECEIPTS_SENSOR,
    LATE_RECEIPTS_TAG,
    PARTITION_TAG,
    RECEIPT_NUMBERS_CHECK,
    RECONCILIATION_JOB,
    RECONCILIATION_SCHEDULE,
    RETENTION_JOB,
    RETENTION_SCHEDULE,
    SETTLEMENT_JOB,
    SETTLEMENT_SCHEDULE,
    TENANT_SETTLEMENTS,
)

reconciliation_job = dg.define_asset_job(
    RECONCILIATION_JOB,
    selection=[DAILY_RECONCILIATION],
    executor_def=dg.in_process_executor,
    description="Reconcile one terminal's day: archive vs database vs .dat files.",
)
settlement_job = dg.define_asset_job(
    SETTLEMENT_JOB,
    selection=[TENANT_SETTLEMENTS],
    executor_def=dg.in_process_executor,
    description="Settle one day per tenant (CSV + database table).",
)
retention_job = dg.define_asset_job(
    RETENTION_JOB,
    selection=[ARCHIVE_RETENTION],
    executor_def=dg.in_process_executor,
    description="Compress day folders older than the retention period.",
)


def definitions(config: PosfedConfig, clock: Clock) -> dg.Definitions:
    """The three audit assets, their jobs and nightly schedules, and the late receipts sensor."""
    return dg.Definitions(
        assets=[
            _daily_reconciliation(config),
            _tenant_settlements(config),
            _archive_retention(config, clock),
        ],
        jobs=[reconciliation_job, settlement_job, retention_job],
        schedules=_schedules(config),
        sensors=[_late_receipts_sensor(config)],
    )


def _daily_reconciliation(config: PosfedConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=DAILY_RECONCILIATION,
        deps=[DAT_FILES],
        partitions_def=terminal_day_partitions(config),
        group_name=AUDITS_GROUP,
        kinds={"python"},
        description="Receipts in the archive vs rows in the central database vs .dat files on "
        "disk, for one terminal and day; mismatches are listed by receipt id.",
        check_specs=[
            dg.AssetCheckSpec(
                DB_ROWS_CHECK,
                asset=DAILY_RECONCILIATION,
                description="Every archived receipt has its rows in the central database, and "
                "every row its archived original.",
            ),
            dg.AssetCheckSpec(
                DAT_FILES_CHECK,
                asset=DAILY_RECONCILIATION,
                description="Every loaded receipt has its .dat file, byte-identical to a fresh "
                "render with the spec version in force that day.",
            ),
            dg.AssetCheckSpec(
                RECEIPT_NUMBERS_CHECK,
                asset=DAILY_RECONCILIATION,
                description="For a terminal numbering its receipts in sequence "
                "(receipt_number_pattern): no number between the day's first and last is "
                "missing. A gap is a receipt printed at the counter that never arrived.",
            ),
        ],
    )
    def daily_reconciliation(context: dg.AssetExecutionContext, central_db: CentralDbResource):
        yield from reconcile(context, central_db, config)

    return daily_reconciliation


def reconcile(context: dg.AssetExecutionContext, resource: CentralDbResource, config: PosfedConfig):
    """One terminal-day reconciled: its materialization and its three checks."""
    terminal_id, day = split_terminal_day_key(context.partition_key)
    terminal = config.terminal(terminal_id)
    result = audit.reconcile_terminal_day(
        config,
        terminal,
        day,
        resource.get_engine(),
        load_spec(config.dat_spec),
        ledger=open_ledger(config.home),
    )
    mismatches = result.mismatches()
    db_side = {k: v for k, v in mismatches.items() if "database" in k or "archive" in k}
    dat_side = {k: v for k, v in mismatches.items() if ".dat" in k}
    yield dg.MaterializeResult(
        metadata={
            "receipts_in_archive": len(result.archived),
            "rows_in_database": len(result.loaded),
            "dat_files_ok": len(result.dat_ok),
            "waiting_for_the_central_database": len(result.pending_sync),
            "receipt_numbers_missing": len(result.number_gaps),
            "mismatches": dg.MetadataValue.json(mismatches),
        }
    )
    yield dg.AssetCheckResult(
        check_name=DB_ROWS_CHECK,
        passed=not db_side,
        metadata={"mismatches": dg.MetadataValue.json(db_side)},
    )
    yield dg.AssetCheckResult(
        check_name=DAT_FILES_CHECK,
        passed=not dat_side,
        metadata={"mismatches": dg.MetadataValue.json(dat_side)},
    )
    sequential = terminal.receipt_number_pattern is not None
    yield dg.AssetCheckResult(
        check_name=RECEIPT_NUMBERS_CHECK,
        passed=not result.number_gaps,
        metadata={
            "numbered_in_sequence": sequential,
            "missing_count": len(result.number_gaps),
            "missing_numbers": dg.MetadataValue.text(
                audit.describe_gaps(result.number_gaps)
                if result.number_gaps
                else ("none" if sequential else "not checked: no receipt_number_pattern")
            ),
        },
    )


def _tenant_settlements(config: PosfedConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=TENANT_SETTLEMENTS,
        deps=[CENTRAL_DB_RECEIPTS],
        partitions_def=daily_partitions(config),
        group_name=AUDITS_GROUP,
        kinds={"csv", "sqlalchemy"},
        description="What the store owes each tenant for the day: receipts, gross sales, "
        "returns, net. Written as CSV under settlements/YYYYMMDD/ and to the central database.",
    )
    def tenant_settlements(context: dg.AssetExecutionContext, central_db: CentralDbResource):
        return settle(context, central_db, config)

    return tenant_settlements


def settle(
    context: dg.AssetExecutionContext, resource: CentralDbResource, config: PosfedConfig
) -> dg.MaterializeResult:
    """One day settled per tenant (CSV and database table); what changed, for a revision."""
    day = date.fromisoformat(context.partition_key)
    waiting = open_ledger(config.home).pending_receipts_of_day(day)
    if waiting:
        # Settling now would leave out sales whose .dat the customers already paid for.
        raise dg.Failure(
            description=f"{waiting} receipt(s) of {day} are not in the central database yet "
            "(it was out of reach; see `posfed db status`): the settlement is postponed. "
            "Materialize this partition again once the lag check passes.",
            metadata={"receipts_waiting": waiting},
            allow_retries=False,
        )
    engine = resource.get_engine()
    previous = {
        row["tenant"]: row for row in audit.stored_settlements(engine, day, config.store_id)
    }
    settlements = audit.settle_day(config, engine, day)
    path = audit.write_settlement_csv(config, settlements, day)
    stored = audit.store_settlements(engine, day, settlements, config.store_id)
    table = md_table(
        ["tenant", "receipts", "gross", "returns", "net"],
        [(s.tenant, s.receipts, s.gross_sales, s.returns, s.net) for s in settlements],
        align="lrrrr",
    )
    metadata = {
        "csv": dg.MetadataValue.path(str(path)),
        "tenants": len(settlements),
        "rows_stored": stored,
        "net_total": str(sum((s.net for s in settlements), audit.ZERO)),
        "settlement": dg.MetadataValue.md(table),
        "revision": bool(previous),
    }
    if previous:
        metadata |= _revision_metadata(settlements, previous)
    return dg.MaterializeResult(metadata=metadata)


def _revision_metadata(settlements: list, previous: dict) -> dict:
    # Late receipts (an outage backlog, a terminal offline overnight): what they changed.
    changed = [
        (s.tenant, before.get("receipts", 0), s.receipts, before.get("net", "0.00"), s.net)
        for s in settlements
        if (before := previous.get(s.tenant, {})).get("receipts") != s.receipts
        or before.get("net") != s.net
    ]
    return {
        "receipts_added": sum(s.receipts for s in settlements)
        - sum(row["receipts"] for row in previous.values()),
        "changes": dg.MetadataValue.md(
            md_table(
                ["tenant", "receipts before", "receipts now", "net before", "net now"],
                changed,
                align="lrrrr",
            )
            if changed
            else "Nothing changed."
        ),
    }


def _archive_retention(config: PosfedConfig, clock: Clock) -> dg.AssetsDefinition:
    @dg.asset(
        key=ARCHIVE_RETENTION,
        deps=[lineage_only_dep(DAT_FILES)],
        group_name=AUDITS_GROUP,
        kinds={"file"},
        description=f"Archived originals and .dat folders older than {config.retention_days} "
        "days, compressed into per-day .tar.gz archives (verified before a folder is removed).",
    )
    def archive_retention(context: dg.AssetExecutionContext):
        return retain(context, config, clock)

    return archive_retention


def retain(
    context: dg.AssetExecutionContext, config: PosfedConfig, clock: Clock
) -> dg.MaterializeResult:
    """Old day folders compressed; the ledger and the quarantine history pruned alike."""
    today = clock.now(config.timezone).date()
    done = retention.compress_old_days(config, keep_days=config.retention_days, today=today)
    for item in done:
        context.log.info(f"compressed {item.folder} ({item.files} files) into {item.archive}")
    # The ledger keeps what it needs to recognise a re-delivery for as long as the archive.
    cutoff = today - timedelta(days=config.retention_days)
    pruned = open_ledger(config.home).prune(cutoff)
    # The quarantine's history is kept as long as the archive, and no longer.
    events = sum(quarantine.prune_history(t, cutoff) for t in config.terminals)
    return dg.MaterializeResult(
        metadata={
            "days_compressed": len(done),
            "files_compressed": sum(d.files for d in done),
            "archives": dg.MetadataValue.json([str(d.archive) for d in done]),
            "ledger_receipts_pruned": pruned,
            "quarantine_events_pruned": events,
        }
    )


def _schedules(config: PosfedConfig) -> list:
    @dg.schedule(
        name=RECONCILIATION_SCHEDULE,
        job=reconciliation_job,
        cron_schedule="30 0 * * *",
        execution_timezone=config.timezone.key,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="After midnight: reconcile every terminal's previous day.",
    )
    def nightly_reconciliation_schedule(context: dg.ScheduleEvaluationContext):
        return reconciliation_requests(config, context.scheduled_execution_time)

    settlement_schedule = dg.build_schedule_from_partitioned_job(
        settlement_job,
        name=SETTLEMENT_SCHEDULE,
        hour_of_day=0,
        minute_of_hour=45,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="After midnight: settle the previous day per tenant.",
    )
    retention_schedule = dg.ScheduleDefinition(
        name=RETENTION_SCHEDULE,
        job=retention_job,
        cron_schedule="0 3 * * *",
        execution_timezone=config.timezone.key,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    return [nightly_reconciliation_schedule, settlement_schedule, retention_schedule]


def reconciliation_requests(config: PosfedConfig, scheduled_at: datetime) -> list[dg.RunRequest]:
    """The nightly reconciliation: every terminal's day before ``scheduled_at``."""
    yesterday = (scheduled_at - timedelta(days=1)).date()
    return [
        dg.RunRequest(
            run_key=f"reconcile:{terminal.id}:{yesterday:%Y%m%d}",
            partition_key=terminal_day_key(terminal.id, yesterday),
        )
        for terminal in config.terminals
    ]


def _late_receipts_sensor(config: PosfedConfig) -> dg.SensorDefinition:
    """Receipts of a day that reach the central database after that day was settled or
    reconciled bring the day up to date: its settlement and the terminal's reconciliation run
    again, and the new materialization shows what changed."""

    @dg.sensor(
        name=LATE_RECEIPTS_SENSOR,
        jobs=[reconciliation_job, settlement_job],
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Settles and reconciles again the days that late receipts changed.",
    )
    def late_receipts_sensor(context: dg.SensorEvaluationContext):
        return late_receipts_tick(context, config)

    return late_receipts_sensor


def late_receipts_tick(
    context: dg.SensorEvaluationContext, config: PosfedConfig
) -> dg.SensorResult:
    ledger = open_ledger(config.home)
    if context.cursor is None:
        # From now on: days settled before posfed knew of this sensor are not revisited.
        return dg.SensorResult(cursor=str(ledger.last_synced_at()))
    synced = ledger.synced_since(float(context.cursor))
    if not synced:
        return dg.SensorResult(
            skip_reason="no receipt reached the central database since the last tick"
        )
    requests = _late_requests(context.instance, config, ledger, synced)
    cursor = str(max(at for _, _, at in synced))
    if not requests:
        return dg.SensorResult(
            cursor=cursor, skip_reason="receipts of days not settled or reconciled yet"
        )
    return dg.SensorResult(run_requests=requests, cursor=cursor)


def _late_requests(
    instance: dg.DagsterInstance,
    config: PosfedConfig,
    ledger: Ledger,
    synced: list[tuple[str, date, float]],
) -> list[dg.RunRequest]:
    """The reconciliations and settlements owed again for the days ``synced`` completed."""
    # A day with more receipts on their way waits: its last batch brings it here again.
    complete = {d for d in {day for _, day, _ in synced} if not ledger.pending_receipts_of_day(d)}
    requests: list[dg.RunRequest] = []
    days: dict[date, float] = {}
    for terminal_id, day, at in synced:
        if day not in complete:
            continue
        days[day] = max(days.get(day, 0.0), at)
        if day < config.terminal_day_start:
            continue  # before the terminal x day window: its store-wide settlement only
        key = terminal_day_key(terminal_id, day)
        if _audited(instance, DAILY_RECONCILIATION, RECONCILIATION_JOB, key):
            requests.append(
                dg.RunRequest(
                    job_name=RECONCILIATION_JOB,
                    partition_key=key,
                    run_key=f"late-reconcile:{key}:{at}",
                    tags={LATE_RECEIPTS_TAG: "true"},
                )
            )
    for day, at in sorted(days.items()):
        if _audited(instance, TENANT_SETTLEMENTS, SETTLEMENT_JOB, day.isoformat()):
            requests.append(
                dg.RunRequest(
                    job_name=SETTLEMENT_JOB,
                    partition_key=day.isoformat(),
                    run_key=f"late-settle:{day}:{at}",
                    tags={LATE_RECEIPTS_TAG: "true"},
                )
            )
    return requests


def _audited(
    instance: dg.DagsterInstance, asset_key: str, job_name: str, partition_key: str
) -> bool:
    """Whether the partition was materialized (by a schedule, the UI, a backfill) or its job
    tried to (a settlement postponed while receipts were on their way)."""
    materialized = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset_key), asset_partitions=[partition_key]),
        limit=1,
    ).records
    if materialized:
        return True
    runs = instance.get_run_records(
        dg.RunsFilter(job_name=job_name, tags={PARTITION_TAG: partition_key}), limit=1
    )
    return bool(runs)
