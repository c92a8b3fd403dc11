"""ARTS POSLog: one file of many transactions, each its own receipt, a bad one set apart."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import select

from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import config_from_dict
from posfed_pipeline.core.intake import parsing
from posfed_pipeline.core.intake.validation import LABEL_AMOUNT_RULE, LABEL_WEIGHT_RULE
from posfed_pipeline.core.state import quarantine
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.defs.receipts import ReceiptBatchConfig, receipt_op_config
from posfed_pipeline.names import RECEIPTS_JOB, SYNC_JOB
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.stores import store_config_dict

EXAMPLE = REPO_ROOT / "examples" / "vendors" / "poslog.xml"
DAY = date(2026, 11, 20)
PARTITION = "2026-11-20|fish_7"
TERMINAL = {
    "id": "fish_7",
    "department": "40",
    "tenant": "Visspecialist Noordzee",
    "format": "arts-poslog",
    "workstation_id": "7",
}


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    raw = store_config_dict(tmp_path / "posfed", terminals=[TERMINAL])
    raw["store"]["weighed_departments"] = ["40"]
    cfg = config_from_dict(raw, base_dir=tmp_path)
    cfg.ensure_folders()
    return cfg


def transaction(sequence: str, lines: str, total: str, workstation: str = "7") -> str:
    return f"""
  <Transaction>
    <WorkstationID>{workstation}</WorkstationID>
    <SequenceNumber>{sequence}</SequenceNumber>
    <EndDateTime>2026-11-20T17:0{sequence[-1]}:00+01:00</EndDateTime>
    <RetailTransaction>{lines}
      <Total TotalType="TransactionGrandAmount">{total}</Total>
    </RetailTransaction>
  </Transaction>"""


def sale(item: str, price: str, quantity: str, extended: str, description="Haring") -> str:
    return f"""
      <LineItem><Sale>
        <ItemID>{item}</ItemID><Description>{description}</Description>
        <RegularSalesUnitPrice>{price}</RegularSalesUnitPrice>
        <ExtendedAmount>{extended}</ExtendedAmount><Quantity>{quantity}</Quantity>
      </Sale></LineItem>"""


def poslog(*transactions: str) -> bytes:
    body = "".join(transactions)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<POSLog xmlns="http://www.nrf-arts.org/IXRetail/namespace/">{body}\n</POSLog>\n'
    ).encode()


HERRING = "8712345600129"
SALMON_LABEL = "(01)08712345600112(3103)000455(3922)1133"


def test_the_example_file_reads_as_its_three_sales(config):
    readings = parsing.read_receipts(EXAMPLE, config.terminal("fish_7"))
    assert [r.error for r in readings] == [None, None, None]
    receipts = [r.receipt for r in readings]
    assert [(r.receipt_id, r.total, len(r.items)) for r in receipts] == [
        ("2041", Decimal("16.83"), 2),
        ("2042", Decimal("13.00"), 1),  # the voided line is not a sale
        ("2043", Decimal("5.55"), 1),
    ]
    salmon = receipts[0].items[0]
    assert (salmon.barcode, salmon.gtin, salmon.weight) == (
        SALMON_LABEL,
        "08712345600112",
        Decimal("0.455"),
    )
    # The sign-on (a ControlTransaction) is no receipt; the others are named by position.
    assert [r.part.name for r in readings] == [
        "transaction 2 (SequenceNumber 2041)",
        "transaction 3 (SequenceNumber 2042)",
        "transaction 4 (SequenceNumber 2043)",
    ]
    assert [r.source_file for r in receipts] == ["poslog.xml#2", "poslog.xml#3", "poslog.xml#4"]


def test_a_transaction_alone_reads_back_as_the_same_receipt(config, tmp_path):
    """What quarantine keeps of a transaction, read again, is the same sale with the same
    content hash: a retry and the original are one receipt to the ledger."""
    terminal = config.terminal("fish_7")
    first = parsing.read_receipts(EXAMPLE, terminal)[0]
    alone = tmp_path / first.part.quarantine_name
    alone.write_bytes(first.part.document)
    [again] = parsing.read_receipts(alone, terminal)
    assert again.part is None
    assert replace(again.receipt, source_file="") == replace(first.receipt, source_file="")
    assert again.receipt.content_hash == first.receipt.content_hash


@pytest.mark.parametrize(
    ("lines", "total", "workstation", "field", "rule"),
    [
        (
            sale(HERRING, "2.75", "2", "5.00"),
            "5.50",
            "7",
            "transaction 1 (SequenceNumber 2001): LineItem[1]/Sale/ExtendedAmount",
            "must equal RegularSalesUnitPrice x Quantity = 2.75 x 2 = 5.50",
        ),
        (
            sale(HERRING, "2.75", "2", "5.50")
            + "<LineItem><Discount><Amount>0.50</Amount></Discount></LineItem>",
            "5.00",
            "7",
            "transaction 1 (SequenceNumber 2001): LineItem[2]",
            "changes what was paid",
        ),
        (
            sale(HERRING, "2.75", "2", "5.50"),
            "5.50",
            "8",
            "transaction 1 (SequenceNumber 2001): terminalId (WorkstationID)",
            "file arrived from terminal fish_7 (workstation 7)",
        ),
        (
            "",
            "0.00",
            "7",
            "transaction 1 (SequenceNumber 2001): items",
            "a sale needs at least one item",
        ),
    ],
    ids=["extended-amount", "discount", "other-workstation", "no-lines"],
)
def test_a_bad_transaction_is_named_with_its_reason(config, lines, total, workstation, field, rule):
    data = poslog(
        transaction("2001", lines, total, workstation),
        transaction("2002", sale(HERRING, "2.75", "1", "2.75"), "2.75"),
    )
    readings = parsing.parse_receipts(data, config.terminal("fish_7"), source_file="x.xml")
    assert readings[1].receipt is not None  # the other one is read
    problems = readings[0].error.problems
    assert any(p.field == field and rule in p.rule for p in problems), problems


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b"<POSLog xmlns='http://www.nrf-arts.org/IXRetail/namespace/'><Transaction>", "XML"),
        (b"<Invoice xmlns='urn:other'/>", "not an ARTS POSLog document"),
        (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]><POSLog>&a;</POSLog>',
            "DTD or entities",
        ),
        (poslog(), "holds no sale"),
    ],
    ids=["cut-off", "other-document", "entities", "empty"],
)
def test_a_file_that_is_no_poslog_is_refused_as_a_whole(config, data, rule):
    with pytest.raises(parsing.IntakeError) as raised:
        parsing.parse_receipts(data, config.terminal("fish_7"), source_file="x.xml")
    assert rule in str(raised.value)


@pytest.mark.slow
def test_several_transactions_one_broken_through_the_pipeline(config, tmp_path):
    """The good sales are accepted, billed and loaded; the broken one alone goes to quarantine
    with a report naming it; nothing of it is loaded; the file is archived once; retried after
    the till's fix, the transaction is accepted on its own."""
    terminal = config.terminal("fish_7")
    salmon = sale(SALMON_LABEL, "24.90", "0.455", "11.33", "Zalmfilet")
    wrong_label = sale(
        "(01)08712345600112(3103)000455(3922)1133", "24.90", "0.500", "12.45", "Zalmfilet"
    )
    data = poslog(
        transaction("3001", salmon + sale(HERRING, "2.75", "2", "5.50"), "16.83"),
        transaction("3002", wrong_label, "12.45"),  # the label says 0.455 kg, the line 0.500
        transaction("3003", sale(HERRING, "2.75", "1", "2.75"), "2.75"),
    )
    (terminal.inbox / "eod.xml").write_bytes(data)

    engine = central_db.make_engine(config.db_url)
    central_db.upgrade_database(engine)
    defs = build_definitions(config)
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def(RECEIPTS_JOB).execute_in_process(
            run_config=receipt_op_config(ReceiptBatchConfig(files=["eod.xml"])),
            partition_key=PARTITION,
            instance=instance,
        )
        assert result.success
        assert defs.resolve_job_def(SYNC_JOB).execute_in_process(instance=instance).success

    dat_files = sorted(p.name for p in (config.dat_dir / "20261120").iterdir())
    assert dat_files == ["scon403001.dat", "scon403003.dat"]
    salmon_line = (config.dat_dir / "20261120" / "scon403001.dat").read_bytes().split(b"\r\n")[0]
    assert salmon_line[19:32] == b"8712345600112"  # the label's GTIN-13 in the EAN field
    with engine.connect() as connection:
        header = central_db.ReceiptRow.__table__
        lines = central_db.ReceiptLineRow.__table__
        loaded = connection.execute(select(header.c.receipt_id, header.c.source_file)).all()
        salmon_row = (
            connection.execute(select(lines).where(lines.c.receipt_id == "3001")).mappings().first()
        )
    assert sorted(loaded) == [("3001", "eod.xml#1"), ("3003", "eod.xml#3")]
    assert (salmon_row["barcode"], salmon_row["gtin"], salmon_row["net_weight_kg"]) == (
        SALMON_LABEL,
        "08712345600112",
        Decimal("0.455"),
    )

    # The file went to the archive once; its broken transaction sits in quarantine alone.
    assert list(terminal.inbox.iterdir()) == []
    assert [p.name for p in terminal.archive_dir(DAY).iterdir()] == ["eod.xml"]
    [entry] = quarantine.quarantined_files(terminal)
    assert entry.name == "eod.t2.xml"
    assert entry.report["part_of"] == "eod.xml"
    assert entry.report["transaction"] == "transaction 2 (SequenceNumber 3002)"
    assert entry.report["receipt_id"] == "3002"
    rules = [problem["rule"] for problem in entry.report["problems"]]
    assert rules == [LABEL_AMOUNT_RULE, LABEL_WEIGHT_RULE]
    assert b"<SequenceNumber>3001</SequenceNumber>" not in entry.path.read_bytes()
    metadata = next(
        e.event_specific_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "validated_receipts"
    )
    assert metadata["receipts_rejected"].value == 1

    # The till's fix: the line weighed what the label says. Retried, it is taken on its own.
    fixed = entry.path.read_text().replace("<Quantity>0.500", "<Quantity>0.455")
    fixed = fixed.replace("<ExtendedAmount>12.45", "<ExtendedAmount>11.33")
    fixed = re.sub(r'(TransactionGrandAmount">)12.45', r"\g<1>11.33", fixed)
    entry.path.write_text(fixed)
    back = quarantine.retry(terminal, entry.name)
    assert back.name == "eod.t2.xml"
    defs = build_definitions(config)
    with dg.instance_for_test() as instance:
        assert (
            defs.resolve_job_def(RECEIPTS_JOB)
            .execute_in_process(
                run_config=receipt_op_config(ReceiptBatchConfig(files=[back.name])),
                partition_key=PARTITION,
                instance=instance,
            )
            .success
        )
    assert (config.dat_dir / "20261120" / "scon403002.dat").is_file()
    assert quarantine.quarantined_files(terminal) == []
    engine.dispose()


def test_receipt_validate_lists_each_transaction(config, tmp_path, capsys):
    from posfed_pipeline import cli

    config_file = tmp_path / "posfed.toml"
    config_file.write_text(
        f'[paths]\nhome = "{tmp_path / "home"}"\n[store]\ntimezone = "Europe/Amsterdam"\n'
        '[intake]\nmax_age_days = 36500\n[[terminals]]\nid = "fish_7"\ndepartment = "40"\n'
        'format = "arts-poslog"\nworkstation_id = "7"\n',
        encoding="utf-8",
    )
    broken = tmp_path / "broken.xml"
    shutil.copy(EXAMPLE, broken)
    broken.write_text(broken.read_text().replace(">13.00</Total>", ">13.50</Total>"))
    code = cli.main(
        ["--config", str(config_file), "receipt", "validate", "--terminal", "fish_7", "--json"]
        + [str(EXAMPLE), str(broken)]
    )
    listing = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [(Path(e["file"]).name, e["valid"]) for e in listing] == [
        ("poslog.xml#2", True),
        ("poslog.xml#3", True),
        ("poslog.xml#4", True),
        ("broken.xml#2", True),
        ("broken.xml#3", False),
        ("broken.xml#4", True),
    ]
    assert listing[4]["transaction"] == "transaction 3 (SequenceNumber 2042)"
    assert listing[4]["errors"][0]["field"] == "total"


def test_the_simulator_writes_what_a_poslog_till_writes(config):
    """The demo's POSLog till: each simulated sale, scale labels included, reads back whole."""
    from posfed_pipeline.demo.tills import ReceiptSimulator

    # The simulator's catalogue is chosen by the id: a fishmonger's weighed fish.
    terminal = replace(config.terminal("fish_7"), id="fishmonger_7")
    simulator = ReceiptSimulator([terminal], seed=3)
    labels = 0
    for _ in range(20):
        receipt = simulator.make_receipt(terminal)
        path = simulator.drop(terminal, receipt)
        assert path.suffix == ".xml"
        [reading] = parsing.read_receipts(path, terminal)
        assert reading.error is None
        read = reading.receipt
        assert (read.receipt_id, read.items, read.total) == (
            receipt.receipt_id,
            receipt.items,
            receipt.total,
        )
        labels += sum(item.weight is not None for item in read.items)
    assert labels > 0
