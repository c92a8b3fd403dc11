"""The head office's code location, at a glance (``posfed headoffice`` serves it; its
workspace is ``posfed_pipeline/profiles/workspace.headoffice.yaml``, location ``headoffice``).

    every 5 minutes    store_activity          per store: last receipt, sync lag, open or not
    daily, settled_by  chain_settlements       the last settlement_days business days, per
                                               tenant across stores (revisions included)
    hourly             unsettled_store_days    closed store-days with receipts, not settled

Built from ``headoffice.toml`` ($POSFED_HEADOFFICE_CONFIG) and the central database named by
POSFED_DB_URL (or POSFED_DB_*). Loading it reads no database: a central database out of reach
fails the runs, not the location.
"""

import functools
from datetime import timedelta

import dagster as dg

from posfed_pipeline.core.base.clock import SYSTEM_CLOCK, Clock
from posfed_pipeline.core.config.headoffice import (
    HeadOfficeConfig,
    headoffice_database_url,
    load_headoffice_config,
)
from posfed_pipeline.defs.resources import central_db_resource_for
from posfed_pipeline.headoffice.assets import (
    central_database_tables,
    chain_settlements_asset,
    store_activity_asset,
    unsettled_store_days_asset,
)
from posfed_pipeline.names import (
    CHAIN_SETTLEMENT_JOB,
    CHAIN_SETTLEMENT_SCHEDULE,
    CHAIN_SETTLEMENTS,
    STORE_ACTIVITY,
    STORE_ACTIVITY_JOB,
    STORE_ACTIVITY_SCHEDULE,
    UNSETTLED_DAYS_JOB,
    UNSETTLED_DAYS_SCHEDULE,
    UNSETTLED_STORE_DAYS,
)

__all__ = ["build_headoffice_definitions", "defs"]

store_activity_job = dg.define_asset_job(
    STORE_ACTIVITY_JOB,
    selection=[STORE_ACTIVITY],
    description="Each store's last receipt and sync lag, with its checks.",
)
chain_settlement_job = dg.define_asset_job(
    CHAIN_SETTLEMENT_JOB,
    selection=[CHAIN_SETTLEMENTS],
    description="The chain's settlement of one business day, per tenant across stores.",
)
unsettled_days_job = dg.define_asset_job(
    UNSETTLED_DAYS_JOB,
    selection=[UNSETTLED_STORE_DAYS],
    description="The store-days that closed with receipts and are not settled.",
)


def build_headoffice_definitions(
    config: HeadOfficeConfig, db_url: str, *, clock: Clock = SYSTEM_CLOCK
) -> dg.Definitions:
    """``clock``: what the assets ask the time (tests set one)."""
    return dg.Definitions(
        assets=[
            *central_database_tables(),
            store_activity_asset(config, clock),
            chain_settlements_asset(config, clock),
            unsettled_store_days_asset(config, clock),
        ],
        jobs=[store_activity_job, chain_settlement_job, unsettled_days_job],
        schedules=_schedules(config),
        # Credentials only ever come from the environment (the UI shows the variables' names).
        resources={"central_db": central_db_resource_for(db_url)},
        # A run is a few queries: a process per step would cost more than the work.
        executor=dg.in_process_executor,
    )


def _schedules(config: HeadOfficeConfig) -> list:
    zone = config.timezone.key
    activity = dg.ScheduleDefinition(
        name=STORE_ACTIVITY_SCHEDULE,
        job=store_activity_job,
        cron_schedule="*/5 * * * *",
        execution_timezone=zone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every 5 minutes: is each store sending, is its sync current?",
    )
    unsettled = dg.ScheduleDefinition(
        name=UNSETTLED_DAYS_SCHEDULE,
        job=unsettled_days_job,
        # Hourly: the stores' days close at their own hours, in their own zones.
        cron_schedule="10 * * * *",
        execution_timezone=zone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Hourly: the store-days that closed with receipts and are not settled.",
    )
    settled_by = config.settled_by

    @dg.schedule(
        name=CHAIN_SETTLEMENT_SCHEDULE,
        job=chain_settlement_job,
        cron_schedule=f"{settled_by.minute} {settled_by.hour} * * *",
        execution_timezone=zone,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Daily at {settled_by:%H:%M}: the chain's settlement of the last "
        f"{config.settlement_days} business days (a store's settlement revised by late "
        "receipts shows afresh).",
    )
    def chain_settlement_daily(context: dg.ScheduleEvaluationContext):
        return chain_settlement_requests(config, context.scheduled_execution_time)

    return [activity, unsettled, chain_settlement_daily]


def chain_settlement_requests(config: HeadOfficeConfig, scheduled_at) -> list[dg.RunRequest]:
    """The business days before ``scheduled_at``'s, back ``settlement_days``, oldest first."""
    today = scheduled_at.astimezone(config.timezone).date()
    days = [today - timedelta(days=n) for n in range(config.settlement_days, 0, -1)]
    return [
        dg.RunRequest(run_key=f"chain-settlement:{day}:{today}", partition_key=day.isoformat())
        for day in days
        if day >= config.partitions_start
    ]


@functools.lru_cache(maxsize=1)
def _definitions() -> dg.Definitions:
    return build_headoffice_definitions(load_headoffice_config(), headoffice_database_url())


@dg.definitions
def defs() -> dg.Definitions:
    # Once per process, whoever loads the location: the code servers, each run's process.
    return _definitions()
