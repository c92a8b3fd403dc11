"""A chain, not one store: ten stores with the same terminal ids load one PostgreSQL central
database."""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import replace
from datetime import date, datetime, time
from decimal import Decimal

import pytest
from posfed_dev.simulator import ReceiptSimulator

from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import ConfigError, config_from_dict
from posfed_pipeline.core.dat import load_spec
from posfed_pipeline.core.operations import audit
from posfed_pipeline.core.stages.processing import process_batch
from posfed_pipeline.core.stages.sync import sync_pending
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline_tests.support.stores import store_config_dict

STORES = 10
RECEIPTS_PER_TERMINAL = 4
# The demo's twenty terminals (ten tenants, two tills each): every store has the same ids.
KINDS = [
    ("bakery", "10", "Bakkerij De Korenschoof"),
    ("butcher", "20", "Slagerij Van Dijk"),
    ("deli", "30", "Delicatessen Mondo"),
    ("fishmonger", "40", "Visspecialist Noordzee"),
    ("greengrocer", "50", "Groentehal Verhoef"),
    ("cheese", "60", "Kaashandel Gouda"),
    ("patisserie", "70", "Patisserie Lune"),
    ("wine", "80", "Wijnhuis Rive Gauche"),
    ("flowers", "90", "Bloemenhuis Flora"),
    ("coffee", "95", "Koffiebar Bonen"),
]
TERMINALS = [
    {
        "id": f"{kind}_{n}",
        "department": department,
        "tenant": tenant,
        "receipt_id_prefix": str(n),
        "allow_returns": True,
    }
    for kind, department, tenant in KINDS
    for n in (1, 2)
]


def chain_store(tmp_path, number: int, db_url: str):
    raw = store_config_dict(tmp_path / f"store-{number:03d}", terminals=TERMINALS)
    raw["store"]["id"] = f"store-{number:03d}"
    raw["store"]["weighed_departments"] = ["20", "30", "40", "50", "60"]
    raw["sync"] = {"batch_size": 7}  # many small transactions, interleaved across stores
    config = config_from_dict(raw, base_dir=tmp_path)
    config = replace(config, db_url=db_url)
    config.ensure_folders()
    return config


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
    sold: dict[tuple[str, str], Decimal] = defaultdict(Decimal)  # (store, tenant) -> net
    counted: dict[tuple[str, str], int] = defaultdict(int)
    for config in stores:
        simulator = ReceiptSimulator(list(config.terminals), seed=int(config.store_id[-3:]))
        spec = load_spec(config.dat_spec)
        ledger = open_ledger(config.home)
        for terminal in config.terminals:
            paths = []
            for _ in range(RECEIPTS_PER_TERMINAL):
                receipt = simulator.make_receipt(terminal, noon)
                paths.append(simulator.drop(terminal, receipt))
                sold[(config.store_id, terminal.tenant)] += receipt.total
                counted[(config.store_id, terminal.tenant)] += 1
            result = process_batch(config, terminal, paths, ledger=ledger, spec=spec)
            assert len(result.acceptance.inserted) == RECEIPTS_PER_TERMINAL, [
                (r.file, [str(p) for p in r.problems]) for r in result.rejections()
            ]
        ledger.close()

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
        assert {(r["tenant"], r["receipts"], r["net"]) for r in rows} == {
            (tenant, counted[(config.store_id, tenant)], sold[(config.store_id, tenant)])
            for _, _, tenant in KINDS
        }
    chain = {row["tenant"]: row for row in audit.chain_settlements(engine, day)}
    for _, _, tenant in KINDS:
        row = chain[tenant]
        assert row["stores"] == STORES
        assert row["receipts"] == sum(counted[(s.store_id, tenant)] for s in stores)
        assert row["net"] == sum(sold[(s.store_id, tenant)] for s in stores)
    engine.dispose()


@pytest.mark.parametrize("store_id", ["", "store 1", "../x", "a" * 33])
def test_a_store_id_unfit_for_the_central_database_is_refused_at_load(tmp_path, store_id):
    raw = store_config_dict(tmp_path)
    raw["store"]["id"] = store_id
    with pytest.raises(ConfigError, match=r"\[store\] id"):
        config_from_dict(raw, base_dir=tmp_path)
