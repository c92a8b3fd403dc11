"""The whole posfed pipeline at a glance.

    POS terminal inbox ──(one sensor per terminal)──▶ receipts_job, partitioned terminal × day
        receipt_files ─▶ validated_receipts ─▶ dat_files        (local ledger, then the .dat)
    the store's ledger ──(central_db_sync_sensor)──▶ central_db_sync_job
        validated_receipts ─▶ central_db_receipts               (store-and-forward, lag check)
    nightly schedules, for the day that closed (and again when late receipts change it):
        dat_files ─▶ daily_reconciliation (terminal × day)
        central_db_receipts ─▶ tenant_settlements (day)
        dat_files ─▶ archive_retention
    alerts: a failed run, or a central database too far behind ─▶ e-mail / webhook
    terminal_inboxes: a check per terminal (quiet while open, files waiting, quarantine)

Everything is built from the store's configuration (``posfed.toml`` or ``POSFED_CONFIG``):
adding a terminal to it adds its sensor and its partitions.
"""

import functools

import dagster as dg

from posfed_pipeline.core.base.clock import SYSTEM_CLOCK, Clock
from posfed_pipeline.core.config import PosfedConfig, load_config
from posfed_pipeline.defs.alerts import build_alert_sensors
from posfed_pipeline.defs.assets import DAT_FILES, VALIDATED_RECEIPTS, build_receipt_assets
from posfed_pipeline.defs.audits import (
    build_audit_assets,
    build_audit_jobs_and_schedules,
    build_late_receipts_sensor,
)
from posfed_pipeline.defs.central_db import build_central_db_assets, build_sync_job_and_sensor
from posfed_pipeline.defs.partitions import terminal_day_partitions
from posfed_pipeline.defs.resources import central_db_resource
from posfed_pipeline.defs.sensors import build_inbox_sensor
from posfed_pipeline.defs.terminal_health import build_terminal_health
from posfed_pipeline.run_tags import RECEIPTS_JOB

__all__ = ["RECEIPTS_JOB", "build_definitions", "defs"]


def build_definitions(config: PosfedConfig, *, clock: Clock = SYSTEM_CLOCK) -> dg.Definitions:
    """``clock``: what the sensors and assets ask the time (tests set one instead of sleeping)."""
    partitions = terminal_day_partitions(config)
    assets = (
        build_receipt_assets(config, partitions, clock)
        + build_central_db_assets(config, clock)
        + build_audit_assets(config, partitions, clock)
    )
    health_defs, health_sensor = build_terminal_health(config, clock)
    audit_jobs, audit_schedules = build_audit_jobs_and_schedules(config)
    sync_job, sync_sensor = build_sync_job_and_sensor(config, clock)
    receipts_job = dg.define_asset_job(
        RECEIPTS_JOB,
        selection=dg.AssetSelection.assets(VALIDATED_RECEIPTS, DAT_FILES),
        # A run is a handful of milliseconds of work: a process per step would cost seconds.
        executor_def=dg.in_process_executor,
        description="Validate, accept and render one terminal's new receipts for one day.",
    )
    return dg.Definitions(
        assets=[*assets, health_defs[0]],
        asset_checks=[health_defs[1]],
        jobs=[receipts_job, sync_job, *audit_jobs],
        schedules=audit_schedules,
        sensors=[
            *(build_inbox_sensor(config, t, receipts_job, clock) for t in config.terminals),
            sync_sensor,
            build_late_receipts_sensor(config, audit_jobs),
            *build_alert_sensors(config, clock),
            health_sensor,
        ],
        # Credentials only ever come from the environment.
        resources={"central_db": central_db_resource(config)},
        # Also for the jobs the UI builds (materialize on an asset page, asset backfills): a
        # step per process would cost seconds, and warm run workers may not fork.
        executor=dg.in_process_executor,
    )


@functools.lru_cache(maxsize=1)
def _definitions_for(config: PosfedConfig) -> dg.Definitions:
    return build_definitions(config)


@dg.definitions
def defs() -> dg.Definitions:
    # Built once per process and configuration, whoever loads the location: the code server,
    # the fast path's trigger, each warm run worker. Dagster reconstructs a run's job from this
    # module and keeps one job process-wide, so a worker alternating receipts and sync runs
    # would otherwise rebuild every definition per switch. Reloading the location in the UI
    # starts a new code server process, which builds them afresh.
    return _definitions_for(load_config())
