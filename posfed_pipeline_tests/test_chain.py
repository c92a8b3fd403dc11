"""A chain, not one store: ten stores with the same terminal ids load one PostgreSQL central
database."""

from __future__ import annotations

import threading
from datetime import date, datetime, time

import pytest

from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import ConfigError, config_from_dict
from posfed_pipeline.core.operations import audit
from posfed_pipeline.core.stages.sync import sync_pending
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline_tests.support.chain import KINDS, TERMINALS, chain_store, sell
from posfed_pipeline_tests.support.stores import store_config_dict

STORES = 10
RECEIPTS_PER_TERMINAL = 4


@pytest.mark.slow
@pytest.mark.postgres
def test_ten_stores_load_one_central_database_concurrently_and_settle_exactly(
    tmp_path, pg_database_url
):
    engine = central_db.make_engine(pg_database_url)
    central_db.upgrade_database(engine)
    stores = [chain_store(tmp_path, n, pg_database_url) for n in range(1, STORES + 1)]
    day = date(2026, 11, 20)
    noon = datetime.combine(day, time(12), stores[0].timezone)

    # Each store's tills sell; each store accepts its own receipts into its own ledger.
    sold = {
        config.store_id: sell(config, [noon] * RECEIPTS_PER_TERMINAL, seed=n)
        for n, config in enumerate(stores, start=1)
    }

    # All ten feed the central database at once, each from its own process-like worker.
    start = threading.Barrier(STORES)
    outcomes: dict[str, object] = {}

    def feed(config) -> None:
        own_engine = central_db.make_engine(pg_database_url)
        ledger = open_ledger(config.home)
        try:
            start.wait(timeout=30)
            outcomes[config.store_id] = sync_pending(ledger, own_engine, config.sync)
        except Exception as exc:  # reported below, per store
            outcomes[config.store_id] = exc
        finally:
            ledger.close()
            own_engine.dispose()

    threads = [threading.Thread(target=feed, args=(config,)) for config in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    per_store = len(TERMINALS) * RECEIPTS_PER_TERMINAL
    for config in stores:
        done = outcomes[config.store_id]
        assert not isinstance(done, Exception), f"{config.store_id}: {done!r}"
        assert (done.receipts_inserted, done.refused) == (per_store, {}), config.store_id
        lag = open_ledger(config.home).lag()
        assert (lag.pending_deliveries, lag.parked) == (0, 0)

    assert central_db.counts_by_terminal_day(engine, "store-001")[0][2] == RECEIPTS_PER_TERMINAL
    assert sum(n for *_, n, _t in central_db.counts_by_terminal_day(engine)) == STORES * per_store

    # Each store settles its tenants; the chain's view adds them up across stores.
    for config in stores:
        settlements = audit.settle_day(config, engine, day)
        audit.store_settlements(engine, day, settlements, config.store_id)
    for config in stores:
        rows = audit.stored_settlements(engine, day, config.store_id)
        of_day = sold[config.store_id].of_day(day)
        assert {(r["tenant"], r["receipts"], r["net"]) for r in rows} == {
            (tenant, *of_day[tenant]) for _, _, tenant in KINDS
        }
    chain = {row["tenant"]: row for row in audit.chain_settlements(engine, day)}
    for _, _, tenant in KINDS:
        row = chain[tenant]
        assert row["stores"] == STORES
        assert row["receipts"] == sum(s.receipts[(tenant, day)] for s in sold.values())
        assert row["net"] == sum(s.net[(tenant, day)] for s in sold.values())
    engine.dispose()


@pytest.mark.parametrize("store_id", ["", "store 1", "../x", "a" * 33])
def test_a_store_id_unfit_for_the_central_database_is_refused_at_load(tmp_path, store_id):
    raw = store_config_dict(tmp_path)
    raw["store"]["id"] = store_id
    with pytest.raises(ConfigError, match=r"\[store\] id"):
        config_from_dict(raw, base_dir=tmp_path)
