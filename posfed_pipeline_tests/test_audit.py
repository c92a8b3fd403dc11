"""Reconciliation, settlement and retention over a real temp store and SQLite database."""

import csv
import tarfile
from datetime import date
from decimal import Decimal

from posfed_pipeline.core.dat import load_spec
from posfed_pipeline.core.operations import audit
from posfed_pipeline.core.stages import processing
from posfed_pipeline.core.state import retention
from posfed_pipeline_tests.support.pipeline import process_and_sync
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc

DAY = date(2026, 11, 20)
TS = "2026-11-20T10:15:00+01:00"


def _process(config, engine, terminal_id, docs):
    terminal = config.terminal(terminal_id)
    paths = [drop_receipt(terminal.inbox, doc) for doc in docs]
    return process_and_sync(config, engine, terminal, paths)


def test_clean_day_reconciles(config, engine):
    _process(
        config,
        engine,
        "bakery_1",
        [receipt_doc("A1", timestamp=TS), receipt_doc("A2", timestamp=TS)],
    )
    result = audit.reconcile_terminal_day(
        config, config.terminal("bakery_1"), DAY, engine, load_spec(config.dat_spec)
    )
    assert result.matches
    assert result.archived == result.loaded == result.dat_ok == {"A1", "A2"}


def test_reconciliation_lists_the_receipts_that_do_not_match(config, engine):
    _process(config, engine, "bakery_1", [receipt_doc(f"A{n}", timestamp=TS) for n in range(4)])
    terminal = config.terminal("bakery_1")
    (config.dat_dir / "20261120" / "scon10A1.dat").unlink()
    (config.dat_dir / "20261120" / "scon10A2.dat").write_bytes(b"tampered\r\n")
    (terminal.archive_dir(DAY) / "A3.json").unlink()
    drop_receipt(terminal.archive_dir(DAY), receipt_doc("LATE", timestamp=TS))  # never loaded

    result = audit.reconcile_terminal_day(config, terminal, DAY, engine, load_spec(config.dat_spec))

    assert not result.matches
    assert result.mismatches() == {
        "in archive, not in database": ["LATE"],
        "in database, not in archive": ["A3"],
        ".dat file missing": ["A1"],
        ".dat file differs from its receipt": ["A2"],
    }


def test_settlement_per_tenant_with_returns(config, engine):
    _process(
        config,
        engine,
        "bakery_1",
        [
            receipt_doc("B1", timestamp=TS),  # 6.40
            receipt_doc("B2", timestamp=TS),
        ],
    )
    sale_and_return = [
        {
            "barcode": "8712345678906",
            "description": "Gehakt",
            "price": "11.90",
            "quantity": "0.500",
        },
        {"barcode": "4006381333931", "description": "Retour", "price": "3.29", "quantity": -1},
    ]
    _process(
        config,
        engine,
        "butcher_1",
        [
            receipt_doc("S1", "butcher_1", "20", timestamp=TS, items=sale_and_return),
        ],
    )

    settlements = {s.tenant: s for s in audit.settle_day(config, engine, DAY)}

    assert settlements["Bakkerij"].receipts == 2
    assert settlements["Bakkerij"].gross_sales == Decimal("12.80")
    assert settlements["Bakkerij"].net == Decimal("12.80")
    assert settlements["Slagerij"].gross_sales == Decimal("5.95")
    assert settlements["Slagerij"].returns == Decimal("3.29")
    assert settlements["Slagerij"].net == Decimal("2.66")

    path = audit.write_settlement_csv(config, list(settlements.values()), DAY)
    assert path == config.home / "settlements" / "20261120" / "settlement_20261120.csv"
    rows = list(csv.DictReader(path.open(newline="")))
    assert [(r["tenant"], r["receipts"], r["net"]) for r in rows] == [
        ("Bakkerij", "2", "12.80"),
        ("Slagerij", "1", "2.66"),
    ]


def test_a_day_without_sales_settles_to_zero_for_every_tenant(config, engine):
    settlements = audit.settle_day(config, engine, DAY)
    assert [(s.tenant, s.receipts, s.net) for s in settlements] == [
        ("Bakkerij", 0, Decimal("0.00")),
        ("Slagerij", 0, Decimal("0.00")),
    ]


def test_retention_compresses_old_days_and_a_backfill_restores_them(config, engine):
    _process(config, engine, "bakery_1", [receipt_doc("R1", timestamp=TS)])
    terminal = config.terminal("bakery_1")
    original = (terminal.archive_dir(DAY) / "R1.json").read_bytes()
    dat_bytes = (config.dat_dir / "20261120" / "scon10R1.dat").read_bytes()

    kept = retention.compress_old_days(config, keep_days=30, today=date(2026, 12, 1))
    assert kept == []  # 11 days old: within the retention period

    done = retention.compress_old_days(config, keep_days=7, today=date(2026, 12, 1))

    assert {d.archive.name for d in done} == {"20261120.tar.gz"}
    assert not terminal.archive_dir(DAY).exists()
    assert not (config.dat_dir / "20261120").exists()
    with tarfile.open(config.dat_dir / "20261120.tar.gz") as tar:
        assert tar.extractfile("20261120/scon10R1.dat").read() == dat_bytes

    assert retention.restore_day(terminal, DAY) == 1
    assert (terminal.archive_dir(DAY) / "R1.json").read_bytes() == original


def test_settlement_is_stored_and_replaced_on_rerun(config, engine):
    _process(config, engine, "bakery_1", [receipt_doc("B1", timestamp=TS)])
    first = audit.settle_day(config, engine, DAY)
    assert audit.store_settlements(engine, DAY, first, config.store_id) == 2
    _process(config, engine, "bakery_1", [receipt_doc("B2", timestamp=TS)])
    audit.store_settlements(engine, DAY, audit.settle_day(config, engine, DAY), config.store_id)

    rows = audit.stored_settlements(engine, DAY, config.store_id)
    assert [(r["tenant"], r["receipts"], r["net"]) for r in rows] == [
        ("Bakkerij", 2, Decimal("12.80")),
        ("Slagerij", 0, Decimal("0.00")),
    ]


def test_receipts_waiting_for_the_central_database_are_not_missing(config, engine):
    from posfed_pipeline.core.state.ledger import open_ledger

    terminal = config.terminal("bakery_1")
    paths = [drop_receipt(terminal.inbox, receipt_doc("W1", timestamp=TS))]
    ledger = open_ledger(config.home)
    # Accepted and emitted while the central database was away: not synced yet.
    processing.process_batch(
        config, terminal, paths, ledger=ledger, spec=load_spec(config.dat_spec)
    )

    waiting = audit.reconcile_terminal_day(
        config, terminal, DAY, engine, load_spec(config.dat_spec), ledger=ledger
    )
    blind = audit.reconcile_terminal_day(config, terminal, DAY, engine, load_spec(config.dat_spec))

    assert waiting.matches and waiting.pending_sync == {"W1"} and waiting.dat_ok == {"W1"}
    assert blind.mismatches() == {"in archive, not in database": ["W1"]}
