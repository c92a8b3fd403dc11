"""The nightly audit assets through Dagster: reconciliation checks and the settlement."""

import csv
from decimal import Decimal

import dagster as dg

from posfed_pipeline.core import audit
from posfed_pipeline.definitions import RECEIPTS_JOB, build_definitions
from posfed_pipeline.defs.assets import ReceiptBatchConfig, receipt_op_config
from posfed_pipeline.defs.central_db import SYNC_JOB
from posfed_pipeline_tests.conftest import drop_receipt, receipt_doc
from posfed_pipeline_tests.test_audit import DAY, TS


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
        }

        (config.dat_dir / "20261120" / "scon10A2.dat").unlink()
        broken = job.execute_in_process(partition_key="2026-11-20|bakery_1", instance=instance)
        checks = _checks(broken)
        assert checks["db_rows_match_archive"].passed
        assert not checks["dat_files_match_db"].passed
        assert checks["dat_files_match_db"].metadata["mismatches"].value == {
            ".dat file missing": ["A2"]
        }


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
    assert [r["tenant"] for r in audit.stored_settlements(engine, DAY)] == ["Bakkerij", "Slagerij"]


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
        assert audit.stored_settlements(engine, DAY) == []

        assert defs.resolve_job_def(SYNC_JOB).execute_in_process(instance=instance).success
        assert settle.execute_in_process(partition_key="2026-11-20", instance=instance).success
    rows = audit.stored_settlements(engine, DAY)
    assert [(r["tenant"], r["net"]) for r in rows] == [
        ("Bakkerij", Decimal("6.40")),
        ("Slagerij", Decimal("0.00")),
    ]
