"""The whole posfed pipeline at a glance.

    POS terminal inbox ──(one sensor per terminal)──▶ receipts_job, partitioned terminal × day
        receipt_files ─▶ validated_receipts ─▶ central_db_receipts ─▶ dat_files

Everything is built from the store's configuration (``posfed.toml`` or ``POSFED_CONFIG``):
adding a terminal to it adds its sensor and its partitions.
"""

import os

import dagster as dg

from posfed_pipeline.core.config import PosfedConfig, load_config
from posfed_pipeline.defs.assets import build_receipt_assets
from posfed_pipeline.defs.partitions import terminal_day_partitions
from posfed_pipeline.defs.resources import CentralDbResource
from posfed_pipeline.defs.sensors import build_inbox_sensor

RECEIPTS_JOB = "receipts_job"


def build_definitions(config: PosfedConfig) -> dg.Definitions:
    partitions = terminal_day_partitions(config)
    assets = build_receipt_assets(config, partitions)
    receipts_job = dg.define_asset_job(
        RECEIPTS_JOB,
        selection=dg.AssetSelection.groups("receipts"),
        # A run is a handful of milliseconds of work: a process per step would cost seconds.
        executor_def=dg.in_process_executor,
        description="Validate, load and render one terminal's new receipts for one day.",
    )
    return dg.Definitions(
        assets=assets,
        jobs=[receipts_job],
        sensors=[build_inbox_sensor(config, t, receipts_job) for t in config.terminals],
        resources={
            # Credentials only ever come from the environment.
            "central_db": CentralDbResource(
                url=dg.EnvVar("POSFED_DB_URL") if "POSFED_DB_URL" in os.environ else config.db_url
            )
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_config())
