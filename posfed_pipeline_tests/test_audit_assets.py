"""The nightly audit assets through Dagster: reconciliation checks and the settlement."""

import csv
import re
from datetime import date
from decimal import Decimal

import dagster as dg
import pytest

from posfed_pipeline.core.operations import audit
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.defs.receipts import ReceiptBatchConfig, receipt_op_config
from posfed_pipeline.names import RECEIPTS_JOB, SYNC_JOB
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc

DAY = date(2026, 11, 20)
TS = "2026-11-20T10:15:00+01:00"


def _receive(config, instance, docs):
    terminal = config.terminal("bakery_1")
    names = [drop_receipt(terminal.inbox, doc).name for doc in docs]
    defs = build_definitions(config)
    assert (
        defs.resolve_job_def(RECEIPTS_JOB)
        .execute_in_process(
            run_config=receipt_op_config(ReceiptBatchConfig(files=names)),
            partition_key="2026-11-20|bakery_1",
            instance=instance,
        )
        .success
    )
    assert defs.resolve_job_def(SYNC_JOB).execute_in_process(instance=instance).success


def _checks(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.mark.slow
def test_reconciliation_checks_pass_then_name_the_missing_dat(config, engine):
    defs = build_definitions(config)
    with dg.instance_for_test() as instance:
        _receive(
            config, instance, [receipt_doc("A1", timestamp=TS), receipt_doc("A2", timestamp=TS)]
        )
        job = defs.resolve_job_def("reconciliation_job")

        clean = job.execute_in_process(partition_key="2026-11-20|bakery_1", instance=instance)
        assert {n: c.passed for n, c in _checks(clean).items()} == {
            "db_rows_match_archive": True,
            "dat_files_match_db": True,
            "receipt_numbers_complete": True,  # not numbered in sequence: nothing to check
        }

        (config.dat_dir / "20261120" / "scon10A2.dat").unlink()
        broken = job.execute_in_process(partition_key="2026-11-20|bakery_1", instance=instance)
        checks = _checks(broken)
        assert checks["db_rows_match_archive"].passed
        assert not checks["dat_files_match_db"].passed
        assert checks["dat_files_match_db"].metadata["mismatches"].value == {
            ".dat file missing": ["A2"]
        }


@pytest.mark.slow
def test_settlement_job_writes_csv_and_table(config, engine):
    defs = build_definitions(config)
    with dg.instance_for_test() as instance:
        _receive(config, instance, [receipt_doc("B1", timestamp=TS)])
        result = defs.resolve_job_def("settlement_job").execute_in_process(
            partition_key="2026-11-20", instance=instance
        )
        assert result.success

    rows = list(csv.DictReader(audit.settlement_csv_path(config, DAY).open(newline="")))
    assert [(r["tenant"], r["net"]) for r in rows] == [("Bakkerij", "6.40"), ("Slagerij", "0.00")]
    assert [r["tenant"] for r in audit.stored_settlements(engine, DAY, config.store_id)] == [
        "Bakkerij",
        "Slagerij",
    ]


def test_nightly_reconciliation_schedule_asks_for_every_terminal_yesterday(config):
    from datetime import datetime

    schedule = build_definitions(config).resolve_schedule_def("nightly_reconciliation_schedule")
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=datetime(2026, 11, 21, 0, 30, tzinfo=config.timezone),
        )
        requests = schedule(context)
    assert sorted(r.partition_key for r in requests) == [
        "2026-11-20|bakery_1",
        "2026-11-20|butcher_1",
    ]


@pytest.mark.slow
def test_a_day_with_receipts_still_on_their_way_is_not_settled_short(config, engine):
    defs = build_definitions(config)
    terminal = config.terminal("bakery_1")
    names = [drop_receipt(terminal.inbox, receipt_doc("C1", timestamp=TS)).name]
    with dg.instance_for_test() as instance:
        # Accepted and emitted while the central database was away: not synced yet.
        assert (
            defs.resolve_job_def(RECEIPTS_JOB)
            .execute_in_process(
                run_config=receipt_op_config(ReceiptBatchConfig(files=names)),
                partition_key="2026-11-20|bakery_1",
                instance=instance,
            )
            .success
        )
        settle = defs.resolve_job_def("settlement_job")
        postponed = settle.execute_in_process(
            partition_key="2026-11-20", instance=instance, raise_on_error=False
        )
        assert not postponed.success
        [failure] = [e for e in postponed.all_events if e.event_type_value == "STEP_FAILURE"]
        assert "1 receipt(s) of 2026-11-20 are not in the central database yet" in str(
            failure.event_specific_data.error
        )
        assert audit.stored_settlements(engine, DAY, config.store_id) == []

        assert defs.resolve_job_def(SYNC_JOB).execute_in_process(instance=instance).success
        assert settle.execute_in_process(partition_key="2026-11-20", instance=instance).success
    rows = audit.stored_settlements(engine, DAY, config.store_id)
    assert [(r["tenant"], r["net"]) for r in rows] == [
        ("Bakkerij", Decimal("6.40")),
        ("Slagerij", Decimal("0.00")),
    ]


@pytest.mark.slow
def test_receipt_numbers_that_never_arrived_are_listed(tmp_path, monkeypatch):
    """bakery_1 numbers its receipts C0001, C0002, ...: 3 and 6 were printed but never came;
    5 came and was quarantined (it arrived: not a gap)."""
    from posfed_pipeline.core import central_db
    from posfed_pipeline.core.config import config_from_dict
    from posfed_pipeline_tests.support.daemon import sensor_and_runs
    from posfed_pipeline_tests.support.stores import store_config_dict

    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    terminals = [
        {"id": "bakery_1", "department": "10", "receipt_number_pattern": "C(\\d{4})"},
    ]
    config = config_from_dict(
        store_config_dict(tmp_path / "posfed", terminals=terminals), base_dir=tmp_path
    )
    config.ensure_folders()
    central_db.upgrade_database(central_db.make_engine(config.db_url))
    inbox = config.terminal("bakery_1").inbox
    for number in (1, 2, 4, 7):
        drop_receipt(inbox, receipt_doc(f"C{number:04d}", timestamp=TS))
    drop_receipt(inbox, receipt_doc("C0005", timestamp=TS, total="0.01"))
    sensor_and_runs(config)
    defs = build_definitions(config)

    with dg.instance_for_test() as instance:
        assert defs.resolve_job_def(SYNC_JOB).execute_in_process(instance=instance).success
        result = defs.resolve_job_def("reconciliation_job").execute_in_process(
            partition_key="2026-11-20|bakery_1", instance=instance
        )
    check = _checks(result)["receipt_numbers_complete"]
    assert not check.passed
    assert check.metadata["missing_numbers"].value == "3, 6"
    assert check.metadata["missing_count"].value == 2
    assert _checks(result)["db_rows_match_archive"].passed


def test_a_stray_number_far_off_the_sequence_does_not_make_the_check_run_away():
    pattern = re.compile(r"C(\d+)?")
    gaps = audit.number_gaps(pattern, ["C1", "C3", "C", "C" + "9" * 17, "C" + "9" * 40])
    assert gaps[:2] == [2, 4] and len(gaps) == audit.MAX_GAP_SPAN


def test_gaps_are_told_as_ranges():
    assert audit.describe_gaps([4, 5, 6, 9, 11, 12]) == "4-6, 9, 11-12"
    assert audit.number_gaps(re.compile(r"1C(\d+)"), ["1C0008", "1C0011", "X", "2C0009"]) == [
        9,
        10,
    ]


@pytest.mark.slow
def test_late_receipts_bring_a_settled_day_up_to_date_with_what_changed(config, engine):
    """The day was settled and reconciled; a terminal that was offline overnight then sends
    one more sale of that day. Nobody has to remember: the late-receipts sensor runs the
    settlement and the terminal's reconciliation again, and the settlement says what changed."""
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def("late_receipts_sensor")
    with dg.instance_for_test() as instance:
        _receive(config, instance, [receipt_doc("L1", timestamp=TS)])
        first = defs.resolve_job_def("settlement_job").execute_in_process(
            partition_key="2026-11-20", instance=instance
        )
        assert first.success
        assert (
            defs.resolve_job_def("reconciliation_job")
            .execute_in_process(partition_key="2026-11-20|bakery_1", instance=instance)
            .success
        )
        start = sensor(dg.build_sensor_context(instance=instance))
        assert start.run_requests == []

        _receive(config, instance, [receipt_doc("L2", timestamp=TS)])  # the late sale
        tick = sensor(dg.build_sensor_context(cursor=start.cursor, instance=instance))
        requested = sorted((r.job_name, r.partition_key) for r in tick.run_requests)
        assert requested == [
            ("reconciliation_job", "2026-11-20|bakery_1"),
            ("settlement_job", "2026-11-20"),
        ]
        for request in tick.run_requests:
            result = defs.resolve_job_def(request.job_name).execute_in_process(
                partition_key=request.partition_key, tags=request.tags, instance=instance
            )
            assert result.success
            if request.job_name == "settlement_job":
                [revision] = [
                    e.event_specific_data.materialization
                    for e in result.get_asset_materialization_events()
                ]
        quiet = sensor(dg.build_sensor_context(cursor=tick.cursor, instance=instance))
        assert quiet.run_requests == []

    assert revision.metadata["revision"].value is True
    assert revision.metadata["receipts_added"].value == 1
    assert revision.metadata["net_total"].value == "12.80"
    changes = revision.metadata["changes"].value
    assert "Bakkerij | 1 | 2 | 6\\.40 | 12\\.80" in changes
    [bakery] = [
        r
        for r in audit.stored_settlements(engine, DAY, config.store_id)
        if r["tenant"] == "Bakkerij"
    ]
    assert (bakery["receipts"], bakery["net"]) == (2, Decimal("12.80"))


@pytest.mark.slow
def test_late_receipts_of_a_day_never_audited_wait_for_the_nightly_runs(config, engine):
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def("late_receipts_sensor")
    with dg.instance_for_test() as instance:
        start = sensor(dg.build_sensor_context(instance=instance))
        _receive(config, instance, [receipt_doc("N1", timestamp=TS)])
        tick = sensor(dg.build_sensor_context(cursor=start.cursor, instance=instance))
    assert tick.run_requests == []
