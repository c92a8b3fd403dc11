"""A batch straight through the core, without Dagster: the stages, then the sync."""

from __future__ import annotations

from posfed_pipeline.core.config import PosfedConfig


def process_and_sync(config: PosfedConfig, engine, terminal, paths, **options):
    """One batch through production's sequence of stages, then the ledger's outbox into the
    central database, as the receipts run and the sync run do."""
    from posfed_pipeline.core.dat import load_spec
    from posfed_pipeline.core.stages.processing import process_batch
    from posfed_pipeline.core.stages.sync import sync_pending
    from posfed_pipeline.core.state.ledger import open_ledger

    ledger = open_ledger(config.home)
    result = process_batch(
        config, terminal, paths, ledger=ledger, spec=load_spec(config.dat_spec), **options
    )
    sync_pending(ledger, engine, config.sync)
    return result
