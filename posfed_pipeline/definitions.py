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
from posfed_pipeline.defs import (
    alerts,
    audits,
    central_db,
    inbox_sensors,
    receipts,
    terminal_health,
)
from posfed_pipeline.defs.resources import central_db_resource

__all__ = ["AREAS", "build_definitions", "defs"]

# Each area of the pipeline: a module of ``defs/`` whose ``definitions(config, clock)`` returns
# its assets, checks, jobs, schedules and sensors. A job another area launches is shared by
# reference (the inbox sensors launch ``receipts.receipts_job``); every name is in
# ``posfed_pipeline.names``. Listed here rather than autoloaded (``dg``'s load_defs): each
# area is built from the store's configuration and a clock, which tests set.
AREAS = (receipts, inbox_sensors, central_db, audits, alerts, terminal_health)


def build_definitions(config: PosfedConfig, *, clock: Clock = SYSTEM_CLOCK) -> dg.Definitions:
    """``clock``: what the sensors and assets ask the time (tests set one instead of sleeping)."""
    return dg.Definitions.merge(
        *(area.definitions(config, clock) for area in AREAS),
        dg.Definitions(
            # Credentials only ever come from the environment.
            resources={"central_db": central_db_resource(config)},
            # Also for the jobs the UI builds (materialize on an asset page, asset backfills): a
            # step per process would cost seconds, and warm run workers may not fork.
            executor=dg.in_process_executor,
        ),
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
