"""Runs are partitioned per terminal and per business day (the store's local date)."""

from datetime import date

import dagster as dg

from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.names import DAY_DIMENSION, TERMINAL_DIMENSION


def business_days(config: PosfedConfig, first: date) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(
        start_date=first.isoformat(),
        timezone=config.timezone.key,
        # Today's partition must exist while the store is open, not only tomorrow.
        end_offset=1,
    )


def daily_partitions(config: PosfedConfig) -> dg.DailyPartitionsDefinition:
    """The store-wide days (settlement, retention): every day since the first."""
    return business_days(config, config.first_partition_day)


def terminal_day_partitions(config: PosfedConfig) -> dg.MultiPartitionsDefinition:
    """Terminal x day, days within the rolling window (PosfedConfig.terminal_day_start)."""
    return dg.MultiPartitionsDefinition(
        {
            TERMINAL_DIMENSION: dg.StaticPartitionsDefinition(config.terminal_ids),
            DAY_DIMENSION: business_days(config, config.terminal_day_start),
        }
    )


def lineage_only_dep(asset_key: str) -> dg.AssetDep:
    """An unpartitioned asset's dependency on a terminal x day asset (the sync on the validated
    receipts, retention on the .dat files): the edge the UI's asset graph shows, on no
    partition in particular, as the asset reads the ledger or the folders, not partitions.

    Dagster's default (every partition) has each run list all terminal-day keys (74,000 at 200
    terminals) to hash their data versions, and drop them for being 100 or more: three
    quarters of a sync run's CPU. Mapped to none, nothing is listed. The UI's staleness is the
    same past 100 partitions (a 20-terminal store on its fifth day): Dagster skips those too."""
    return dg.AssetDep(asset_key, partition_mapping=dg.SpecificPartitionsPartitionMapping([]))


def terminal_day_key(terminal_id: str, business_day: date) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey(
        {TERMINAL_DIMENSION: terminal_id, DAY_DIMENSION: business_day.isoformat()}
    )


def split_terminal_day_key(partition_key: str | dg.MultiPartitionKey) -> tuple[str, date]:
    if not isinstance(partition_key, dg.MultiPartitionKey):
        day_part, terminal_part = str(partition_key).split("|")  # dimensions sort by name
        partition_key = dg.MultiPartitionKey(
            {DAY_DIMENSION: day_part, TERMINAL_DIMENSION: terminal_part}
        )
    keys = partition_key.keys_by_dimension
    return keys[TERMINAL_DIMENSION], date.fromisoformat(keys[DAY_DIMENSION])
