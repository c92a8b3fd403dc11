"""The central store, live on SQLite and PostgreSQL: one suite, both dialects.

PostgreSQL runs against the server on 127.0.0.1:5432 (user postgres), in a database created for
this module and dropped after it. Without a server the PostgreSQL cases skip, except in CI
(``CI=true``), where they fail: the live PostgreSQL check must never silently disappear.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from posfed_pipeline.core import central_db
from posfed_pipeline.core.central_db import loads as store_loads
from posfed_pipeline.core.dat import load_spec
from posfed_pipeline.core.model.outbox import OutboxRow, Outcome
from posfed_pipeline.core.model.receipt import Receipt, ReceiptItem, round_cents
from posfed_pipeline.core.stages.processing import process_batch
from posfed_pipeline.core.stages.sync import sync_pending
from posfed_pipeline.core.state.ledger import Ledger
from posfed_pipeline_tests.support.databases import PG_SERVER
from posfed_pipeline_tests.support.receipts import drop_receipt, make_receipt, receipt_doc
from posfed_pipeline_tests.support.repo import DEFAULT_SPEC

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
DAY = date(2026, 3, 14)


# --- databases ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """An empty database of each dialect (no posfed schema yet)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'central.db'}"
        return
    url = request.getfixturevalue("pg_database_url")
    cleaner = create_engine(url)
    with cleaner.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    cleaner.dispose()
    yield url


@pytest.fixture
def db(db_url):
    """An engine on a database upgraded to the newest schema."""
    engine = central_db.make_engine(db_url)
    central_db.upgrade_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg(pg_database_url):
    engine = central_db.make_engine(pg_database_url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS lock_probe"))
        connection.execute(text("CREATE TABLE lock_probe (id int PRIMARY KEY, n int)"))
        connection.execute(text("INSERT INTO lock_probe VALUES (1, 0), (2, 0)"))
    yield engine
    engine.dispose()


# --- receipts ----------------------------------------------------------------------------------


def header_rows(engine) -> list[dict]:
    table = central_db.ReceiptRow.__table__
    with engine.connect() as connection:
        return [
            dict(row)
            for row in connection.execute(
                select(table).order_by(table.c.business_day, table.c.receipt_id)
            ).mappings()
        ]


def line_rows(engine) -> list[dict]:
    table = central_db.ReceiptLineRow.__table__
    with engine.connect() as connection:
        return [
            dict(row)
            for row in connection.execute(
                select(table).order_by(table.c.receipt_id, table.c.line_no)
            ).mappings()
        ]


# --- schema ------------------------------------------------------------------------------------


def test_upgrade_creates_the_schema_and_downgrade_removes_it(db_url):
    engine = central_db.make_engine(db_url)
    assert central_db.schema_revision(engine) is None

    central_db.upgrade_database(engine)
    central_db.upgrade_database(engine)  # a second upgrade is a no-op
    assert central_db.schema_revision(engine) == central_db.head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {"pos_receipt", "pos_receipt_line", "pos_ingest_ledger", "pos_settlement"} <= tables

    central_db.downgrade_database(engine, "0001")
    assert central_db.schema_revision(engine) == "0001"
    assert not central_db.has_ledger(engine)
    assert "pos_receipt" in inspect(engine).get_table_names()

    central_db.downgrade_database(engine, "base")
    assert central_db.schema_revision(engine) is None
    assert not {"pos_receipt", "pos_receipt_line"} & set(inspect(engine).get_table_names())

    central_db.upgrade_database(engine)
    assert central_db.schema_revision(engine) == central_db.head_revision()
    engine.dispose()


def test_scanned_labels_migration_keeps_existing_lines_and_stores_what_a_label_said(db_url):
    engine = central_db.make_engine(db_url)
    central_db.upgrade_database(engine, "0004")
    before = make_receipt("R0001")
    lines = [store_loads._line_rows(before)[0]]
    header = store_loads._header_row(before, "B", datetime.now(UTC))
    for row in [*lines, header]:
        for column in ("gtin", "net_weight_kg", "unit_count", "store_id"):
            row.pop(column, None)  # not in the 0004 schema
    with engine.begin() as connection:
        connection.execute(central_db.ReceiptRow.__table__.insert(), [header])
        # The columns of the 0004 schema only: SQLAlchemy inserts the keys it is given.
        connection.execute(central_db.ReceiptLineRow.__table__.insert(), lines)
    central_db.upgrade_database(engine)

    [old] = line_rows(engine)
    assert (old["barcode"], old["price"], old["amount"]) == (
        "8712345678906",
        Decimal("2.95"),
        Decimal("2.95"),
    )
    assert (old["gtin"], old["net_weight_kg"], old["unit_count"]) == (None, None, None)

    label = "(01)08712345678906(3103)000455(3922)541"
    weighed = replace(
        make_receipt("R0002", lines=[("11.90", "0.455")]),
        items=(
            ReceiptItem(
                label,
                "Rundergehakt",
                Decimal("11.90"),
                Decimal("0.455"),
                gtin="08712345678906",
                weight=Decimal("0.455"),
            ),
        ),
    )
    central_db.load_outbox_rows(engine, outbox(weighed))
    new = line_rows(engine)[1]
    assert new["barcode"] == label  # as scanned, 40 characters
    assert (new["gtin"], new["net_weight_kg"], new["unit_count"]) == (
        "08712345678906",
        Decimal("0.455"),
        None,
    )
    engine.dispose()


def test_the_stores_migration_gives_existing_rows_the_upgrading_store(db_url):
    engine = central_db.make_engine(db_url)
    central_db.upgrade_database(engine, "0005")
    before = make_receipt("R0001")
    header = store_loads._header_row(before, "Bakkerij", datetime.now(UTC))
    lines = store_loads._line_rows(before)
    for row in [header, *lines]:
        row.pop("store_id")
    with engine.begin() as connection:
        connection.execute(central_db.ReceiptRow.__table__.insert(), [header])
        connection.execute(central_db.ReceiptLineRow.__table__.insert(), lines)
    central_db.upgrade_database(engine, store_id="store-042")

    assert [(h["store_id"], h["receipt_id"]) for h in header_rows(engine)] == [
        ("store-042", "R0001")
    ]
    assert {line["store_id"] for line in line_rows(engine)} == {"store-042"}
    # Another store's terminal of the same name, same day, same receipt id: its own receipt.
    written = central_db.load_outbox_rows(engine, outbox(before), store_id="store-043")
    assert len(written.receipts_inserted) == 1
    assert sorted((h["store_id"], h["receipt_id"]) for h in header_rows(engine)) == [
        ("store-042", "R0001"),
        ("store-043", "R0001"),
    ]
    # And the same store again is the same receipt, not a second one.
    again = central_db.load_outbox_rows(engine, outbox(before), store_id="store-042")
    assert again.receipts_inserted == [] and again.refused == {}
    engine.dispose()


def test_the_receipt_key_is_unique_in_the_database_itself(db):
    # Even a writer that bypasses posfed cannot store a key twice.
    receipt = make_receipt()
    central_db.load_outbox_rows(db, outbox(receipt))
    row = store_loads._header_row(
        replace(receipt, content_hash="other"), "Bakkerij", datetime.now(UTC)
    )
    with pytest.raises(sa_exc.IntegrityError), db.begin() as connection:
        connection.execute(central_db.ReceiptRow.__table__.insert(), [row])


# --- storing the ledger's outbox ------------------------------------------------------------------

WRITTEN_AT = datetime(2026, 3, 14, 9, 0, 2, tzinfo=UTC).timestamp()
_seq = itertools.count(1)


def outbox(
    *receipts: Receipt,
    outcome: Outcome = Outcome.INSERTED,
    tenant: str = "Bakkerij",
    run_id: str | None = None,
    detected_at: float | None = None,
) -> list[OutboxRow]:
    """The ledger's outbox entries for these deliveries (each with its own delivery id)."""
    accepted = outcome is not Outcome.CONFLICT
    return [
        OutboxRow(
            seq=next(_seq),
            delivery_id=uuid.uuid4().hex,
            terminal_id=r.terminal_id,
            business_day=r.business_day,
            receipt_id=r.receipt_id,
            source_file=r.source_file,
            content_hash=r.content_hash,
            outcome=outcome,
            reason="refused locally" if not accepted else None,
            run_id=run_id,
            detected_at=detected_at,
            dat_written_at=WRITTEN_AT if accepted else None,
            tenant=tenant if accepted else None,
            receipt=r if accepted else None,
        )
        for r in receipts
    ]


def test_new_receipts_are_inserted_with_their_lines(db):
    receipts = [make_receipt(f"R{n:04d}") for n in range(1, 4)]
    entries = outbox(*receipts)

    result = central_db.load_outbox_rows(db, entries)

    assert [r.receipt_id for r in result.receipts_inserted] == ["R0001", "R0002", "R0003"]
    assert result.stored == [e.seq for e in entries]
    assert (result.refused, result.already_held) == ({}, 0)
    assert result.line_count == 6
    assert central_db.count_receipts(db, "bakery_1", DAY) == 3
    headers = header_rows(db)
    assert {h["tenant"] for h in headers} == {"Bakkerij"}
    assert headers[0]["sold_at"].replace(tzinfo=UTC) == datetime(2026, 3, 14, 9, 0, tzinfo=UTC)
    assert [(line["receipt_id"], line["line_no"]) for line in line_rows(db)][:2] == [
        ("R0001", 1),
        ("R0001", 2),
    ]
    assert line_rows(db)[0]["description"] == "Artikel 1 — brød"


def test_a_batch_sent_again_after_a_lost_acknowledgement_changes_nothing(db):
    entries = outbox(*(make_receipt(f"R{n:04d}") for n in range(1, 4)))
    central_db.load_outbox_rows(db, entries)
    before = (header_rows(db), line_rows(db), central_db.ledger_entries(db))

    again = central_db.load_outbox_rows(db, entries)

    assert again.receipts_inserted == [] and again.refused == {}
    assert again.already_held == 3 and again.stored == [e.seq for e in entries]
    assert (header_rows(db), line_rows(db), central_db.ledger_entries(db)) == before


def test_a_redelivery_adds_its_ledger_row_and_no_receipt_rows(db):
    receipt = make_receipt("R0001")
    central_db.load_outbox_rows(db, outbox(receipt))
    before = (header_rows(db), line_rows(db))

    result = central_db.load_outbox_rows(
        db, outbox(replace(receipt, source_file="R0001-again.json"), outcome=Outcome.DUPLICATE)
    )

    assert result.receipts_inserted == [] and len(result.stored) == 1
    assert (header_rows(db), line_rows(db)) == before
    assert [e.outcome for e in central_db.ledger_entries(db)] == ["inserted", "duplicate"]


def test_a_key_held_with_other_content_is_refused_not_overwritten(db):
    original = make_receipt("R0001", lines=[("2.95", "1")])
    central_db.load_outbox_rows(db, outbox(original))
    tampered = make_receipt("R0001", lines=[("9.95", "1")])
    entries = outbox(tampered, make_receipt("R0002"))

    result = central_db.load_outbox_rows(db, entries)

    assert list(result.refused) == [entries[0].seq]
    assert "not overwritten" in result.refused[entries[0].seq]
    assert result.stored == [entries[1].seq]
    assert [r.receipt_id for r in result.receipts_inserted] == ["R0002"]
    stored = [h for h in header_rows(db) if h["receipt_id"] == "R0001"]
    assert [(h["total"], h["content_hash"]) for h in stored] == [
        (Decimal("2.95"), original.content_hash)
    ]
    assert [line["price"] for line in line_rows(db) if line["receipt_id"] == "R0001"] == [
        Decimal("2.95")
    ]


def test_receipt_ids_restart_every_day_and_per_terminal(db):
    # Many POS reset their counter daily: R0001 exists once per terminal and day.
    receipts = [
        make_receipt("R0001", day=DAY),
        make_receipt("R0001", day=DAY + timedelta(days=1)),
        make_receipt("R0001", terminal_id="butcher_1"),
    ]

    result = central_db.load_outbox_rows(db, outbox(*receipts))

    assert len(result.receipts_inserted) == 3
    assert central_db.count_receipts(db, "bakery_1", DAY) == 1
    assert central_db.count_receipts(db, "bakery_1", DAY + timedelta(days=1)) == 1
    assert central_db.count_receipts(db, "butcher_1", DAY) == 1


def test_deliveries_of_one_key_within_one_batch_insert_it_once(db):
    first = make_receipt("R0001", lines=[("1.00", "1")], source_file="a.json")
    same_again = replace(first, source_file="a-copy.json")
    refused_locally = make_receipt("R0001", lines=[("2.00", "1")], source_file="b.json")
    entries = (
        outbox(first)
        + outbox(same_again, outcome=Outcome.DUPLICATE)
        + outbox(refused_locally, outcome=Outcome.CONFLICT)
    )

    result = central_db.load_outbox_rows(db, entries)

    assert result.receipts_inserted == [first]
    assert result.stored == [e.seq for e in entries]
    assert central_db.count_receipts(db, "bakery_1", DAY) == 1
    assert [(e.source_file, e.outcome) for e in central_db.ledger_entries(db)] == [
        ("a.json", "inserted"),
        ("a-copy.json", "duplicate"),
        ("b.json", "conflict"),
    ]


def test_money_and_weights_are_stored_exactly(db):
    receipts = [
        make_receipt("R0001", lines=[("0.29", "1"), ("4.35", "0.125"), ("12.99", "1.5")]),
        make_receipt("R0002", lines=[("0.10", "3"), ("0.20", "1")]),
        make_receipt("R0003", lines=[("9999999.99", "7")]),
    ]

    central_db.load_outbox_rows(db, outbox(*receipts))

    lines = [(line["price"], line["quantity"], line["amount"]) for line in line_rows(db)]
    assert lines == [
        (Decimal("0.29"), Decimal("1.000"), Decimal("0.29")),
        (Decimal("4.35"), Decimal("0.125"), Decimal("0.54")),
        (Decimal("12.99"), Decimal("1.500"), Decimal("19.49")),
        (Decimal("0.10"), Decimal("3.000"), Decimal("0.30")),
        (Decimal("0.20"), Decimal("1.000"), Decimal("0.20")),
        (Decimal("9999999.99"), Decimal("7.000"), Decimal("69999999.93")),
    ]
    assert all(isinstance(value, Decimal) for line in lines for value in line)
    assert [h["total"] for h in header_rows(db)] == [
        Decimal("20.32"),
        Decimal("0.50"),
        Decimal("69999999.93"),
    ]
    assert central_db.counts_by_terminal_day(db) == [("bakery_1", DAY, 3, Decimal("70000020.75"))]


def test_a_day_of_small_amounts_sums_to_the_cent(db):
    # 0.1 + 0.2 style amounts summed in floating point drift; the central database's total must not.
    receipts = [make_receipt(f"R{n:05d}", lines=[("0.29", "1"), ("0.10", "1")]) for n in range(999)]

    central_db.load_outbox_rows(db, outbox(*receipts))

    assert central_db.counts_by_terminal_day(db) == [("bakery_1", DAY, 999, Decimal("389.61"))]
    assert round_cents(Decimal("0.39") * 999) == Decimal("389.61")


def test_an_empty_batch_touches_nothing(db):
    result = central_db.load_outbox_rows(db, [])
    assert (result.stored, result.receipts_inserted, result.refused) == ([], [], {})
    assert central_db.ledger_entries(db) == []


# --- the ingest ledger -------------------------------------------------------------------------


def test_the_ingest_ledger_records_every_delivery_as_the_store_decided_it(db):
    detected = datetime(2026, 3, 14, 9, 0, 1, tzinfo=UTC)
    original = make_receipt("R0001", lines=[("1.00", "1")])
    central_db.load_outbox_rows(
        db, outbox(original, run_id="run-1", detected_at=detected.timestamp())
    )
    tampered = make_receipt("R0001", lines=[("2.00", "1")], source_file="R0001-b.json")
    central_db.load_outbox_rows(
        db,
        outbox(original, outcome=Outcome.DUPLICATE, run_id="run-2")
        + outbox(tampered, outcome=Outcome.CONFLICT, run_id="run-2"),
    )

    entries = central_db.ledger_entries(db, terminal_id="bakery_1", business_day=DAY)

    assert [(e.run_id, e.source_file, e.outcome) for e in entries] == [
        ("run-1", "R0001.json", "inserted"),
        ("run-2", "R0001.json", "duplicate"),
        ("run-2", "R0001-b.json", "conflict"),
    ]
    assert entries[0].detected_at == detected
    assert entries[0].dat_written_at == datetime.fromtimestamp(WRITTEN_AT, UTC)
    assert entries[2].dat_written_at is None  # a conflict never gets a .dat
    assert entries[0].content_hash == original.content_hash
    assert entries[2].content_hash == tampered.content_hash
    assert entries[2].reason == "refused locally"
    assert all(e.loaded_at.tzinfo is not None for e in entries)
    assert entries[0].loaded_at <= entries[1].loaded_at
    assert central_db.ledger_entries(db, outcome=Outcome.CONFLICT) == [entries[2]]
    summary = central_db.ledger_summary(db)[("bakery_1", DAY)]
    assert summary == central_db.LedgerSummary(
        deliveries=3, duplicates=1, conflicts=1, dat_pending=0
    )


def test_the_pipeline_and_the_sync_fill_the_ledger_from_detection_to_dat(config, db_url):
    engine = central_db.make_engine(db_url)
    central_db.upgrade_database(engine)
    terminal = config.terminal("bakery_1")
    path = drop_receipt(terminal.inbox, receipt_doc("R0001", timestamp="2026-03-14T10:00:00+01:00"))
    arrived = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    ledger = Ledger(config.home / "ledger.db")

    result = process_batch(config, terminal, [path], ledger=ledger, spec=load_spec(DEFAULT_SPEC))
    synced = sync_pending(ledger, engine)

    assert len(result.acceptance.inserted) == 1 and len(result.dat_files) == 1
    assert (synced.receipts_inserted, synced.deliveries) == (1, 1)
    [entry] = central_db.ledger_entries(engine)
    assert (entry.receipt_id, entry.outcome, entry.source_file) == ("R0001", "inserted", path.name)
    assert entry.business_day == DAY
    assert entry.detected_at == arrived
    assert entry.detected_at <= entry.dat_written_at <= entry.loaded_at
    engine.dispose()


# --- concurrent writers ------------------------------------------------------------------------


def test_concurrent_writers_store_each_receipt_and_delivery_exactly_once(db):
    entries = outbox(*(make_receipt(f"R{n:04d}") for n in range(200)))
    writers = 4
    start = threading.Barrier(writers)
    results: list[central_db.CentralWrite] = []
    errors: list[BaseException] = []

    def write() -> None:
        start.wait()
        try:
            results.append(central_db.load_outbox_rows(db, entries))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sum(len(r.receipts_inserted) for r in results) == 200
    assert all(sorted(r.stored) == sorted(e.seq for e in entries) for r in results)
    assert central_db.count_receipts(db, "bakery_1", DAY) == 200
    assert len(line_rows(db)) == 400
    assert len(central_db.ledger_entries(db)) == 200


@pytest.mark.slow
@pytest.mark.parametrize("same_content", [True, False], ids=["same", "different"])
def test_a_writer_that_loses_the_race_reclassifies(db, same_content):
    """Another writer inserts our key meanwhile: we end up stored or refused, never crash."""
    mine = make_receipt("R0001", lines=[("1.00", "1")])
    theirs = mine if same_content else make_receipt("R0001", lines=[("3.00", "1")])
    [entry] = outbox(mine)
    outcome: dict[str, object] = {}

    with db.connect() as rival:
        rival.execution_options(posfed_sqlite_begin="IMMEDIATE")
        transaction = rival.begin()
        rival.execute(
            central_db.ReceiptRow.__table__.insert(),
            [store_loads._header_row(theirs, "Bakkerij", datetime.now(UTC))],
        )

        def write() -> None:
            try:
                outcome["result"] = central_db.load_outbox_rows(db, [entry])
            except BaseException as exc:  # reported by the assertion below
                outcome["error"] = exc

        writer = threading.Thread(target=write)
        writer.start()
        _wait_until_blocked(db, writer)
        transaction.commit()
    writer.join()

    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.receipts_inserted == []
    if same_content:
        assert (result.stored, result.refused) == ([entry.seq], {})
    else:
        assert result.stored == [] and list(result.refused) == [entry.seq]
    if db.dialect.name == "postgresql":
        # PostgreSQL let the writer read before the rival committed: it had to retry.
        assert result.key_race_retries == 1
    assert central_db.count_receipts(db, "bakery_1", DAY) == 1


def _wait_until_blocked(engine, loader: threading.Thread) -> None:
    """Return once the writer waits on the rival's lock (so the race really happens)."""
    if engine.dialect.name == "postgresql":
        deadline = time.monotonic() + 30
        with engine.connect() as watcher:
            while time.monotonic() < deadline:
                waiting = watcher.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
                if waiting:
                    return
                watcher.rollback()
                time.sleep(0.02)
        raise AssertionError("the loader never waited for the rival's lock")
    # SQLite: the rival holds the write lock, so a live loader thread is a waiting one.
    loader.join(timeout=0.5)
    assert loader.is_alive(), "the loader did not wait for the rival's write lock"


# --- transient or permanent --------------------------------------------------------------------


def test_a_locked_sqlite_database_is_transient(tmp_path):
    url = f"sqlite:///{tmp_path / 'central.db'}"
    engine = central_db.make_engine(url)
    central_db.upgrade_database(engine)
    impatient = create_engine(url, connect_args={"timeout": 0})
    row = store_loads._header_row(make_receipt(), "Bakkerij", datetime.now(UTC))

    with engine.connect() as holder:
        holder.execution_options(posfed_sqlite_begin="IMMEDIATE")
        holder.begin()  # holds the write lock until the connection closes
        with pytest.raises(sa_exc.OperationalError) as locked, impatient.begin() as connection:
            connection.execute(central_db.ReceiptRow.__table__.insert(), [row])

    assert "database is locked" in str(locked.value)
    assert central_db.is_transient_error(locked.value)
    impatient.dispose()
    engine.dispose()


def test_constraint_violations_and_bad_sql_are_permanent(db):
    row = store_loads._header_row(make_receipt(), "Bakkerij", datetime.now(UTC))
    with db.begin() as connection:
        connection.execute(central_db.ReceiptRow.__table__.insert(), [row])
    with pytest.raises(sa_exc.IntegrityError) as duplicate_key, db.begin() as connection:
        connection.execute(central_db.ReceiptRow.__table__.insert(), [row])
    with pytest.raises(sa_exc.DBAPIError) as missing_table, db.connect() as connection:
        connection.execute(text("SELECT * FROM no_such_table"))

    assert not central_db.is_transient_error(duplicate_key.value)
    assert not central_db.is_transient_error(missing_table.value)
    assert not central_db.is_transient_error(ValueError("bad data"))


@pytest.mark.postgres
def test_postgres_out_of_range_money_is_permanent(pg):
    with pytest.raises(sa_exc.DataError) as overflow, pg.connect() as connection:
        connection.execute(text("SELECT CAST(:amount AS numeric(14, 2))"), {"amount": "1e20"})
    assert not central_db.is_transient_error(overflow.value)


@pytest.mark.postgres
def test_postgres_lock_and_statement_timeouts_are_transient(pg):
    with pg.connect() as holder, pg.connect() as waiter:
        holder.execute(text("SELECT * FROM lock_probe WHERE id = 1 FOR UPDATE"))
        waiter.execute(text("SET lock_timeout = '50ms'"))
        with pytest.raises(sa_exc.OperationalError) as lock_timeout:
            waiter.execute(text("UPDATE lock_probe SET n = n + 1 WHERE id = 1"))
        holder.rollback()
    with pg.connect() as connection:
        connection.execute(text("SET statement_timeout = '20ms'"))
        with pytest.raises(sa_exc.OperationalError) as statement_timeout:
            connection.execute(text("SELECT pg_sleep(5)"))

    assert lock_timeout.value.orig.sqlstate == "55P03"
    assert statement_timeout.value.orig.sqlstate == "57014"
    assert central_db.is_transient_error(lock_timeout.value)
    assert central_db.is_transient_error(statement_timeout.value)


@pytest.mark.postgres
def test_a_postgres_deadlock_is_transient(pg):
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def transfer(first: int, second: int) -> None:
        with pg.connect() as connection:
            connection.execute(text("SET deadlock_timeout = '100ms'"))
            try:
                connection.execute(text(f"UPDATE lock_probe SET n = n + 1 WHERE id = {first}"))
                barrier.wait()
                connection.execute(text(f"UPDATE lock_probe SET n = n + 1 WHERE id = {second}"))
                connection.commit()
            except sa_exc.DBAPIError as exc:
                errors.append(exc)
                connection.rollback()

    threads = [threading.Thread(target=transfer, args=pair) for pair in ((1, 2), (2, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(errors) == 1
    assert errors[0].orig.sqlstate == "40P01"
    assert central_db.is_transient_error(errors[0])


@pytest.mark.postgres
def test_a_postgres_serialization_failure_is_transient(pg):
    first, second = pg.connect(), pg.connect()
    try:
        for connection in (first, second):
            connection.execution_options(isolation_level="SERIALIZABLE")
        # Write skew: each reads what the other writes.
        first.execute(text("SELECT sum(n) FROM lock_probe WHERE id = 2"))
        second.execute(text("SELECT sum(n) FROM lock_probe WHERE id = 1"))
        first.execute(text("UPDATE lock_probe SET n = 1 WHERE id = 1"))
        first.commit()
        with pytest.raises(sa_exc.OperationalError) as serialization:
            second.execute(text("UPDATE lock_probe SET n = 1 WHERE id = 2"))
            second.commit()
    finally:
        first.close()
        second.close()

    assert serialization.value.orig.sqlstate == "40001"
    assert central_db.is_transient_error(serialization.value)


def test_connection_refused_fails_fast_and_is_transient():
    engine = central_db.make_engine("postgresql+psycopg://posfed:secret@127.0.0.1:1/posfed")

    with pytest.raises(central_db.DatabaseUnavailable) as refused:
        central_db.schema_revision(engine)

    message = str(refused.value)
    assert "127.0.0.1:1" in message and "Connection refused" in message
    assert "secret" not in message
    assert central_db.is_transient_error(refused.value)

    raw = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/posfed")
    with pytest.raises(sa_exc.OperationalError) as unwrapped:
        raw.connect()
    assert central_db.is_transient_error(unwrapped.value)


@pytest.mark.postgres
def test_a_missing_postgres_database_is_permanent(pg_database_url):
    engine = central_db.make_engine(f"{PG_SERVER}/posfed_no_such_database")
    with pytest.raises(central_db.DatabaseUnavailable) as missing:
        central_db.schema_revision(engine)
    assert "does not exist" in str(missing.value)
    assert not central_db.is_transient_error(missing.value)


# --- configuration -----------------------------------------------------------------------------


def test_urls_from_environment_parts(tmp_path):
    env = {
        "POSFED_DB_DIALECT": "postgresql",
        "POSFED_DB_HOST": "db.internal",
        "POSFED_DB_PORT": "6432",
        "POSFED_DB_NAME": "register",
        "POSFED_DB_USER": "posfed",
        "POSFED_DB_PASSWORD": "p@ss:w/rd%",
    }
    url = central_db.database_url_from_env(env, default="sqlite:///unused.db")
    parsed = make_url(url)
    assert (parsed.drivername, parsed.host, parsed.port, parsed.database) == (
        "postgresql+psycopg",
        "db.internal",
        6432,
        "register",
    )
    assert (parsed.username, parsed.password) == ("posfed", "p@ss:w/rd%")

    assert central_db.database_url_from_env({}, default="sqlite:///x.db") == "sqlite:///x.db"
    sqlite_env = {"POSFED_DB_DIALECT": "sqlite", "POSFED_DB_NAME": str(tmp_path / "c.db")}
    assert central_db.database_url_from_env(sqlite_env, default="-") == f"sqlite:///{tmp_path}/c.db"


def test_posfed_db_url_wins_and_takes_the_password_from_its_own_variable():
    env = {
        "POSFED_DB_URL": "postgresql+psycopg://posfed@db.internal/register",
        "POSFED_DB_PASSWORD": "from-secret-store",
        "POSFED_DB_DIALECT": "mssql",
        "POSFED_DB_HOST": "ignored",
    }
    parsed = make_url(central_db.database_url_from_env(env, default="-"))
    assert (parsed.host, parsed.password) == ("db.internal", "from-secret-store")


@pytest.mark.parametrize(
    "env, problem",
    [
        ({"POSFED_DB_DIALECT": "oracle", "POSFED_DB_HOST": "h", "POSFED_DB_NAME": "d"}, "oracle"),
        ({"POSFED_DB_DIALECT": "postgresql", "POSFED_DB_NAME": "d"}, "POSFED_DB_HOST"),
        ({"POSFED_DB_DIALECT": "mssql", "POSFED_DB_HOST": "h", "POSFED_DB_PORT": "x"}, "PORT"),
        (
            {
                "POSFED_DB_DIALECT": "mssql",
                "POSFED_DB_HOST": "h",
                "POSFED_DB_NAME": "d",
                "POSFED_DB_ENCRYPT": "maybe",
            },
            "POSFED_DB_ENCRYPT",
        ),
    ],
)
def test_unusable_database_settings_are_named(env, problem):
    with pytest.raises(central_db.DatabaseConfigError, match=problem):
        central_db.database_url_from_env(env, default="-")


def test_config_reads_the_database_from_the_environment(tmp_path, monkeypatch):
    from posfed_pipeline.core.config import config_from_dict
    from posfed_pipeline_tests.support.stores import store_config_dict

    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.setenv("POSFED_DB_DIALECT", "postgresql")
    monkeypatch.setenv("POSFED_DB_HOST", "db.internal")
    monkeypatch.setenv("POSFED_DB_NAME", "register")

    config = config_from_dict(store_config_dict(tmp_path / "home"), base_dir=tmp_path)

    assert config.db_url == "postgresql+psycopg://db.internal/register"


def test_sqlite_runs_in_wal_mode_with_durable_commits(tmp_path):
    engine = central_db.make_engine(f"sqlite:///{tmp_path / 'central.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        # FULL (2): the ledger marks a delivery stored only once it is on disk here.
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2
    engine.dispose()


def test_status_counts_per_terminal_and_day(db):
    central_db.load_outbox_rows(db, outbox(make_receipt("R1"), make_receipt("R2")))
    central_db.load_outbox_rows(db, outbox(make_receipt("R1", day=DAY + timedelta(days=1))))
    with db.connect() as connection:
        assert (
            connection.execute(select(func.count()).select_from(central_db.ReceiptRow)).scalar()
            == 3
        )
    assert [(t, d, n) for t, d, n, _total in central_db.counts_by_terminal_day(db)] == [
        ("bakery_1", DAY, 2),
        ("bakery_1", DAY + timedelta(days=1), 1),
    ]


# --- upgrades of a central database shared by many stores -------------------------------------


def test_a_store_newer_than_its_register_says_upgrade_the_register_first(config, tmp_path):
    from sqlalchemy import text

    from posfed_pipeline.core.stages import sync

    engine = central_db.make_engine(f"sqlite:///{tmp_path / 'central_db.db'}")
    central_db.upgrade_database(engine, "0003")
    with pytest.raises(sync.SchemaMissing, match="upgrade the central database first"):
        sync.check_central_schema(engine)
    central_db.upgrade_database(engine)
    sync.check_central_schema(engine)
    # Upgraded by a newer posfed (a revision this one does not know): still fine to load into.
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    sync.check_central_schema(engine)


def test_every_migration_only_adds_so_old_and_new_stores_share_a_register():
    """Expand only: new tables, new indexes, new nullable columns, wider columns. A store still
    on the last release keeps loading into a central database already upgraded for the next
    (docs/deployment.md)."""
    import ast

    allowed = {"create_table", "create_index", "add_column", "batch_alter_table", "alter_column"}
    # The one revision that changes keys, on purpose (a chain's stores in one central database): its
    # upgrade order is in docs/deployment.md, and the test below checks it keeps the data.
    contract_changes = {"0006_stores.py"}
    for path in sorted((central_db.MIGRATIONS_DIR / "versions").glob("0*.py")):
        if path.name in contract_changes:
            continue
        upgrade = next(
            node
            for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef) and node.name == "upgrade"
        )
        ops = [
            call
            for call in ast.walk(upgrade)
            if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and getattr(call.func.value, "id", "") in ("op", "batch")
        ]
        assert ops, f"{path.name}: no op.* call found in upgrade()"
        for call in ops:
            assert call.func.attr in allowed, f"{path.name}: op.{call.func.attr} in upgrade()"
            if call.func.attr == "add_column":
                column = call.args[-1]
                nullable = {k.arg: k.value for k in column.keywords}.get("nullable")
                assert isinstance(nullable, ast.Constant) and nullable.value is True, (
                    f"{path.name}: a new column must be nullable"
                )
            if call.func.attr == "alter_column":
                keywords = {k.arg: k.value for k in call.keywords}
                assert set(keywords) <= {"existing_type", "type_", "existing_nullable"}, (
                    f"{path.name}: a column may only change type"
                )
                old, new = (
                    ast.literal_eval(keywords[k].args[0]) if keywords[k].args else None
                    for k in ("existing_type", "type_")
                )
                widened = new is None or (old is not None and new >= old)  # None: unbounded
                assert widened, f"{path.name}: a column may only get wider"
