"""End to end through Dagster: real files in a temp store, real SQLite, exact .dat bytes."""

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from decimal import Decimal

import dagster as dg
import pytest
from sqlalchemy import select

from posfed_pipeline.core import central_db
from posfed_pipeline.core.intake.validation import BARCODE_RULE
from posfed_pipeline.core.state import quarantine
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.defs.receipts import ReceiptBatchConfig, receipt_op_config
from posfed_pipeline.names import RECEIPTS_JOB, SYNC_JOB
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc

DAY = date(2026, 11, 20)
PARTITION = "2026-11-20|bakery_1"
EXPECTED_DAT = (
    b"0010R0001       0018712345678906Volkorenbrood       000100000000295000000295201126\r\n"
    b"0010R0001       0024006381333931Croissant           000300000000115000000345201126\r\n"
)


def _run(config, instance, files: list[str]) -> dg.ExecuteInProcessResult:
    """A receipts run, then a central database sync run, as the launchers would start them."""
    defs = build_definitions(config)
    result = defs.resolve_job_def(RECEIPTS_JOB).execute_in_process(
        run_config=receipt_op_config(ReceiptBatchConfig(files=files)),
        partition_key=PARTITION,
        instance=instance,
    )
    assert defs.resolve_job_def(SYNC_JOB).execute_in_process(instance=instance).success
    return result


def _rows(engine):
    with engine.connect() as connection:
        headers = (
            connection.execute(select(central_db.ReceiptRow.__table__).order_by("receipt_id"))
            .mappings()
            .all()
        )
        lines = (
            connection.execute(
                select(central_db.ReceiptLineRow.__table__).order_by("receipt_id", "line_no")
            )
            .mappings()
            .all()
        )
    return headers, lines


@pytest.mark.slow
def test_terminal_day_materializes_rows_and_exact_dat_bytes(config, engine):
    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, receipt_doc("R0001", timestamp="2026-11-20T10:15:00+01:00"))

    with dg.instance_for_test() as instance:
        result = _run(config, instance, ["R0001.json"])
        assert result.success
        materialized = {
            (e.asset_key.to_user_string(), e.partition)
            for e in result.get_asset_materialization_events()
            for e in [e.event_specific_data.materialization]
        }

    assert materialized == {("validated_receipts", PARTITION), ("dat_files", PARTITION)}
    headers, lines = _rows(engine)
    assert [
        (h["terminal_id"], h["business_day"], h["receipt_id"], h["total"], h["tenant"])
        for h in headers
    ] == [("bakery_1", DAY, "R0001", Decimal("6.40"), "Bakkerij")]
    assert [
        (ln["line_no"], ln["barcode"], ln["price"], ln["quantity"], ln["amount"]) for ln in lines
    ] == [
        (1, "8712345678906", Decimal("2.95"), Decimal("1.000"), Decimal("2.95")),
        (2, "4006381333931", Decimal("1.15"), Decimal("3.000"), Decimal("3.45")),
    ]
    dat_file = config.dat_dir / "20261120" / "scon10R0001.dat"
    assert dat_file.read_bytes() == EXPECTED_DAT
    assert (terminal.archive_dir(DAY) / "R0001.json").is_file()
    assert list(terminal.inbox.iterdir()) == []


@pytest.mark.slow
def test_bad_receipt_is_quarantined_with_reasons_and_reported(config, engine):
    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, receipt_doc("GOOD", timestamp="2026-11-20T10:15:00+01:00"))
    bad = receipt_doc("BAD", timestamp="2026-11-20T10:16:00+01:00", total="99.99")
    bad["items"][0]["barcode"] = "8712345678900"  # wrong check digit
    drop_receipt(terminal.inbox, bad)
    # Last written a minute ago: no writer is still at it, so it is judged as it is.
    drop_receipt(terminal.inbox, b"{truncated", name="TRUNC.json", age=60)

    with dg.instance_for_test() as instance:
        result = _run(config, instance, ["GOOD.json", "BAD.json", "TRUNC.json"])
        assert result.success
        run_tags = instance.get_run_by_id(result.run_id).tags
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        validated = [
            e.event_specific_data.materialization
            for e in result.get_asset_materialization_events()
            if e.event_specific_data.materialization.asset_key.to_user_string()
            == "validated_receipts"
        ][0]

    assert validated.metadata["receipts_valid"].value == 1
    assert validated.metadata["receipts_rejected"].value == 2
    assert checks["validation_pass_rate"].passed is False
    assert checks["dat_files_reparse"].passed is True
    # What the operator reads without opening anything: the run's tag in the runs list, and
    # plain-text fields on the check naming the file, the rule, the value, where it went and
    # the command that re-queues it; the check's verdict belongs to this terminal-day.
    assert run_tags["posfed/rejected"] == "2"
    seen = checks["validation_pass_rate"]
    assert seen.partition == "2026-11-20|bakery_1"
    fields = {k: v.value for k, v in seen.metadata.items()}
    assert fields["file"] == "TRUNC.json"  # unreadable files are reported first
    assert fields["rule"].startswith("file: not valid JSON")
    assert fields["quarantined_to"] == str(terminal.quarantine / "TRUNC.json")
    # Every file of the day still waiting, in the order they were quarantined (the unreadable
    # one at intake, the invalid one at validation, just after).
    assert "posfed quarantine retry bakery_1 TRUNC.json BAD.json" in fields["requeue_command"]
    assert "| BAD\\.json | total='99\\.99" in fields["reasons"]  # every one, in the table

    report = json.loads((terminal.quarantine / "BAD.json.error.json").read_text())
    rules = {(p["field"], p["rule"]) for p in report["problems"]}
    assert (
        "items[1].barcode",
        BARCODE_RULE,
    ) in rules
    assert any(field == "total" for field, _ in rules)
    assert (terminal.quarantine / "TRUNC.json").read_bytes() == b"{truncated"
    assert "not valid JSON" in (terminal.quarantine / "TRUNC.json.error.json").read_text()
    headers, _ = _rows(engine)
    assert [h["receipt_id"] for h in headers] == ["GOOD"]
    assert list(terminal.inbox.iterdir()) == []


@pytest.mark.slow
def test_a_fresh_unreadable_file_is_left_to_its_writer_then_quarantined(config, engine):
    terminal = config.terminal("bakery_1")
    # Cut off mid-value and written a second ago: its writer may still be appending.
    path = drop_receipt(terminal.inbox, b'{"receiptId": "SLOW1", "ite', name="SLOW1.json")

    with dg.instance_for_test() as instance:
        result = _run(config, instance, ["SLOW1.json"])
    assert result.success
    [validated] = [
        e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
        if e.event_specific_data.materialization.asset_key.to_user_string() == "validated_receipts"
    ]
    assert validated.metadata["still_being_written"].value == 1
    assert path.exists()
    assert list(terminal.quarantine.iterdir()) == []

    # Nobody finished it: once older than the grace period it is quarantined, with its reason.
    past = time.time() - config.incomplete_grace_seconds - 1
    os.utime(path, (past, past))
    with dg.instance_for_test() as instance:
        assert _run(config, instance, ["SLOW1.json"]).success
    assert not path.exists()
    assert "not valid JSON" in (terminal.quarantine / "SLOW1.json.error.json").read_text()


@pytest.mark.slow
def test_redelivery_and_backfill_are_idempotent(config, engine):
    terminal = config.terminal("bakery_1")
    doc = receipt_doc("R0001", timestamp="2026-11-20T10:15:00+01:00")
    drop_receipt(terminal.inbox, doc)
    dat_file = config.dat_dir / "20261120" / "scon10R0001.dat"

    with dg.instance_for_test() as instance:
        assert _run(config, instance, ["R0001.json"]).success
        before = _rows(engine)

        # The billing software took the .dat away; the same receipt is delivered again under
        # another name: one row set, and the sale is not billed a second time.
        dat_file.unlink()
        drop_receipt(terminal.inbox, doc, name="R0001-again.json")
        again = _run(config, instance, ["R0001-again.json"])
        assert again.success
        assert _rows(engine) == before
        assert not dat_file.exists()
        [validated] = [
            e.event_specific_data.materialization
            for e in again.get_asset_materialization_events()
            if e.asset_key.to_user_string() == "validated_receipts"
        ]
        assert validated.metadata["redeliveries"].value == 1

        # A backfill of the partition re-processes the archive: the rows do not change, and a
        # .dat already delivered is not delivered again...
        assert _run(config, instance, []).success
        assert _rows(engine) == before
        assert not dat_file.exists()
        # ...unless the operator asks for exactly that: the day's .dat files, byte-identical.
        defs = build_definitions(config)
        assert (
            defs.resolve_job_def(RECEIPTS_JOB)
            .execute_in_process(
                run_config=receipt_op_config(ReceiptBatchConfig(files=[], redeliver_dat=True)),
                partition_key=PARTITION,
                instance=instance,
            )
            .success
        )
        assert dat_file.read_bytes() == EXPECTED_DAT

    archived = sorted(p.name for p in terminal.archive_dir(DAY).iterdir())
    assert archived == ["R0001-again.json", "R0001.json"]


@pytest.mark.slow
def test_same_key_with_other_content_is_a_conflict_not_an_overwrite(config, engine):
    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, receipt_doc("R0001", timestamp="2026-11-20T10:15:00+01:00"))
    other = receipt_doc(
        "R0001",
        timestamp="2026-11-20T10:15:00+01:00",
        items=[
            {
                "barcode": "8712345678906",
                "description": "Volkorenbrood",
                "price": "2.95",
                "quantity": 2,
            },
        ],
    )
    with dg.instance_for_test() as instance:
        assert _run(config, instance, ["R0001.json"]).success
        drop_receipt(terminal.inbox, other, name="R0001-changed.json")
        assert _run(config, instance, ["R0001-changed.json"]).success

    headers, _ = _rows(engine)
    assert [(h["receipt_id"], h["total"]) for h in headers] == [("R0001", Decimal("6.40"))]
    report = json.loads((terminal.quarantine / "R0001-changed.json.error.json").read_text())
    assert "different content" in report["problems"][0]["rule"]
    assert (config.dat_dir / "20261120" / "scon10R0001.dat").read_bytes() == EXPECTED_DAT


def test_a_receipt_whose_file_vanished_before_its_dat_is_emitted_by_the_next_run(config):
    from posfed_pipeline.core.dat import load_spec
    from posfed_pipeline.core.stages import processing
    from posfed_pipeline.core.state.ledger import open_ledger

    terminal = config.terminal("bakery_1")
    ledger = open_ledger(config.home)
    spec = load_spec(config.dat_spec)
    # An attempt accepted R0001 and stopped before its .dat; then its file went away.
    path = drop_receipt(terminal.inbox, receipt_doc("R0001", timestamp="2026-11-20T10:15:00+01:00"))
    batch = processing.read_batch(terminal, [path])
    processing.accept(ledger, terminal, batch, batch.receipts)
    path.unlink()

    later = drop_receipt(
        terminal.inbox, receipt_doc("R0002", timestamp="2026-11-20T10:20:00+01:00")
    )
    result = processing.process_batch(config, terminal, [later], ledger=ledger, spec=spec)

    assert sorted(p.name for p in result.dat_files) == ["scon10R0001.dat", "scon10R0002.dat"]
    assert (config.dat_dir / "20261120" / "scon10R0001.dat").read_bytes() == EXPECTED_DAT
    assert ledger.owed_dat("bakery_1") == []
    assert [e.receipt_id for e in ledger.outbox()] == ["R0001", "R0002"]


def test_two_terminals_racing_for_one_dat_name_lose_no_sale_and_block_nothing(config):
    """The last line of defence behind the start-up check (core.dat_names), with a store built
    around it: the receipt whose .dat name is taken is withdrawn from the ledger and
    quarantined, never written over the other sale, and the terminal's later receipts go on."""
    from dataclasses import replace

    from posfed_pipeline.core.dat import load_spec
    from posfed_pipeline.core.model.terminal import Terminal
    from posfed_pipeline.core.stages import processing
    from posfed_pipeline.core.state.ledger import open_ledger

    bakery_2 = Terminal(
        id="bakery_2",
        department="10",
        tenant="Bakkerij",
        inbox=config.terminal("bakery_1").inbox.parent.parent / "bakery_2" / "inbox",
        timezone=config.timezone,
    )
    config = replace(config, terminals=(*config.terminals, bakery_2), _by_id={})
    config.ensure_folders()
    ledger = open_ledger(config.home)
    spec = load_spec(config.dat_spec)
    path = drop_receipt(
        bakery_2.inbox,
        receipt_doc("R0001", "bakery_2", timestamp="2026-11-20T11:00:00+01:00", total=None),
    )
    batch = processing.read_batch(bakery_2, [path])
    report = processing.validate(config, bakery_2, batch, spec=spec)
    acceptance = processing.accept(ledger, bakery_2, batch, report.valid)
    # bakery_1's R0001 (other lines) wins the .dat name meanwhile.
    first = config.terminal("bakery_1")
    drop_receipt(
        first.inbox,
        receipt_doc(
            "R0001",
            timestamp="2026-11-20T10:15:00+01:00",
            items=[
                {"barcode": "8712345678906", "description": "Brood", "price": "2.95", "quantity": 2}
            ],
        ),
    )
    processing.process_batch(config, first, list(first.inbox.iterdir()), ledger=ledger, spec=spec)

    emission = processing.emit(config, bakery_2, spec, acceptance.to_emit, ledger=ledger)

    assert emission.written == [] and len(emission.refused) == 1
    assert ledger.owed_dat("bakery_2") == []  # nothing stranded, nothing blocks the outbox
    assert [e.outcome.value for e in ledger.outbox() if e.terminal_id == "bakery_2"] == ["conflict"]


def test_an_attempt_stopped_between_recording_and_renaming_its_dat_bills_once(config, monkeypatch):
    """The .dat is recorded in the ledger before its rename: if the attempt dies in between,
    the next run renames the staged file; if it died after the rename and the billing
    software took the file, nothing writes it again."""
    from posfed_pipeline.core.dat import load_spec
    from posfed_pipeline.core.stages import processing
    from posfed_pipeline.core.state.ledger import open_ledger

    terminal = config.terminal("bakery_1")
    ledger = open_ledger(config.home)
    spec = load_spec(config.dat_spec)
    first = drop_receipt(
        terminal.inbox, receipt_doc("R0001", timestamp="2026-11-20T10:15:00+01:00")
    )
    second = drop_receipt(
        terminal.inbox, receipt_doc("R0002", timestamp="2026-11-20T10:16:00+01:00")
    )

    def killed(temp, target, **_):
        raise KeyboardInterrupt("power cut")  # what SIGKILL would leave: no rename

    monkeypatch.setattr(processing, "publish_dat", killed)
    with pytest.raises(KeyboardInterrupt):
        processing.process_batch(config, terminal, [first], ledger=ledger, spec=spec)
    monkeypatch.undo()
    day = config.dat_dir / "20261120"
    assert not (day / "scon10R0001.dat").exists()
    assert [p.name.endswith(".tmp") for p in day.iterdir()] == [True]  # staged, recorded

    processing.process_batch(config, terminal, [first], ledger=ledger, spec=spec)
    assert (day / "scon10R0001.dat").read_bytes() == EXPECTED_DAT
    assert sorted(p.name for p in day.iterdir()) == ["scon10R0001.dat"]

    # Renamed, then imported (moved away) before the ledger forgot the staging: never again.
    (day / "scon10R0001.dat").unlink()
    processing.process_batch(config, terminal, [second], ledger=ledger, spec=spec)
    assert sorted(p.name for p in day.iterdir()) == ["scon10R0002.dat"]
    assert ledger.staged_dat("bakery_1") == []


def _materializations(instance, asset_key: str) -> dict:
    """The asset's materialization records by partition key (one run per partition here)."""
    records = instance.fetch_materializations(dg.AssetKey(asset_key), limit=100).records
    return {record.partition_key: record for record in records}


@pytest.mark.slow
def test_overlapping_terminal_runs_record_their_own_lineage_and_log_no_warning(config, monkeypatch):
    """At several receipts a second, terminals' runs overlap. Here bakery_1's run pauses between
    its two materializations while butcher_1's run goes through whole, in another thread. Neither
    run logs a warning (Dagster's "Data version mismatch", one per overlap, filled the demo's
    terminal), and dat_files of each partition names, if anything, its own partition's
    validated_receipts as what it was made from."""
    timestamp = "2026-11-20T10:15:00+01:00"
    bakery, butcher = config.terminal("bakery_1"), config.terminal("butcher_1")
    drop_receipt(bakery.inbox, receipt_doc("R0001", timestamp=timestamp))
    drop_receipt(butcher.inbox, receipt_doc("S0001", "butcher_1", "20", timestamp=timestamp))
    job = build_definitions(config).resolve_job_def(RECEIPTS_JOB)
    bakery_partition, butcher_partition = PARTITION, "2026-11-20|butcher_1"
    paused, resume = threading.Event(), threading.Event()
    waiting_for = quarantine.waiting_for

    def pausing_bakery(terminal, day):
        # The step asks after recording validated_receipts, before dat_files.
        if terminal.id == bakery.id:
            paused.set()
            resume.wait(60)
        return waiting_for(terminal, day)

    monkeypatch.setattr(quarantine, "waiting_for", pausing_bakery)

    def run(partition: str, files: list[str]) -> dg.ExecuteInProcessResult:
        return job.execute_in_process(
            run_config=receipt_op_config(ReceiptBatchConfig(files=files)),
            partition_key=partition,
            instance=instance,
        )

    with dg.instance_for_test() as instance, ThreadPoolExecutor(1) as other_thread:
        try:
            bakery_run = other_thread.submit(run, bakery_partition, ["R0001.json"])
            assert paused.wait(60), "bakery_1's run never reached its dat_files"
            # The overlap this test is about: bakery_1's validated_receipts on record, not yet
            # its dat_files, when butcher_1's run records both.
            assert set(_materializations(instance, "validated_receipts")) == {bakery_partition}
            assert _materializations(instance, "dat_files") == {}
            butcher_result = run(butcher_partition, ["S0001.json"])
        finally:
            resume.set()
        bakery_result = bakery_run.result(timeout=60)

        for result in (bakery_result, butcher_result):
            assert result.success
            warnings = [
                e.user_message
                for e in instance.all_logs(result.run_id)
                if e.level >= logging.WARNING
            ]
            assert warnings == []
        validated = _materializations(instance, "validated_receipts")
        dat = _materializations(instance, "dat_files")
        assert set(dat) == set(validated) == {bakery_partition, butcher_partition}
        for partition, record in dat.items():
            own = validated[partition]
            assert record.run_id == own.run_id
            # Dagster's provenance tags, if a materialization carries them, must name the
            # partition's own validated_receipts: its storage id and data version.
            provenance = {
                key: value
                for key, value in (record.asset_materialization.tags or {}).items()
                if key.startswith("dagster/input_") and key.endswith("/validated_receipts")
            }
            assert provenance in (
                {},
                {
                    "dagster/input_event_pointer/validated_receipts": str(own.storage_id),
                    "dagster/input_data_version/validated_receipts": (
                        own.asset_materialization.tags or {}
                    ).get("dagster/data_version"),
                },
            ), (partition, provenance, own.storage_id)
            # Found as before: by its run, its terminal and day (the UI's partition filters),
            # its .dat files.
            tags = record.asset_materialization.tags or {}
            day, terminal_id = partition.split("|")
            assert tags.get("dagster/partition/terminal") == terminal_id
            assert tags.get("dagster/partition/day") == day
            assert record.asset_materialization.metadata["dat_files"].value == 1


@pytest.mark.slow
def test_dat_files_and_its_reconciliation_selected_together_both_run(config, engine):
    """Selected together in the UI, dat_files and daily_reconciliation make one run, whose
    reconciliation step waits for the receipts' step: it runs, it is not skipped."""
    drop_receipt(
        config.terminal("bakery_1").inbox,
        receipt_doc("R0001", timestamp="2026-11-20T10:15:00+01:00"),
    )
    job = build_definitions(config).resolve_implicit_global_asset_job_def()
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            run_config=receipt_op_config(ReceiptBatchConfig(files=["R0001.json"])),
            partition_key=PARTITION,
            instance=instance,
            asset_selection=[
                dg.AssetKey(key)
                for key in ("validated_receipts", "dat_files", "daily_reconciliation")
            ],
        )
        assert result.success
        materialized = {
            e.event_specific_data.materialization.asset_key.to_user_string()
            for e in result.get_asset_materialization_events()
        }
    assert materialized == {"validated_receipts", "dat_files", "daily_reconciliation"}
