"""The quarantine loses nothing and can be undone: no file or report is ever replaced, only the
version that was read is moved, and an operator re-queues files once the cause is fixed."""

import json
import os
import subprocess
import sys
import time
from datetime import date

import dagster as dg
import pytest

from posfed_pipeline.core.config import load_config
from posfed_pipeline.core.dat import load_spec
from posfed_pipeline.core.stages import processing
from posfed_pipeline.core.state import quarantine
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.names import RECEIPTS_JOB
from posfed_pipeline_tests.support.daemon import (
    run_as_the_daemon_would,
    sensor_and_runs,
    tick_sensor,
)
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc
from posfed_pipeline_tests.support.stores import write_store_config

WHEN = "2026-11-20T10:15:00+01:00"
RETURN_LINE = {"barcode": "8712345678906", "description": "Retour", "price": "2.95", "quantity": -1}


def _posfed(config_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "posfed_pipeline.cli", "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_a_report_never_replaces_a_quarantined_file_or_another_report(config):
    terminal = config.terminal("bakery_1")
    # A terminal delivered a bad receipt under a name that looks like a report, then a bad
    # A.json twice.
    odd = drop_receipt(
        terminal.inbox, receipt_doc("A0", timestamp=WHEN, total="0.01"), name="A.json.error.json"
    )
    odd_bytes = odd.read_bytes()
    sensor_and_runs(config)
    drop_receipt(terminal.inbox, receipt_doc("A1", timestamp=WHEN, total="1.00"), name="A.json")
    sensor_and_runs(config)
    drop_receipt(terminal.inbox, receipt_doc("A2", timestamp=WHEN, total="2.00"), name="A.json")
    sensor_and_runs(config)

    entries = {e.name: e for e in quarantine.quarantined_files(terminal)}
    assert set(entries) == {"A.json.error.json", "A~1.json", "A~2.json"}
    assert (terminal.quarantine / "A.json.error.json").read_bytes() == odd_bytes
    assert json.loads((terminal.quarantine / "A~1.json").read_text())["receiptId"] == "A1"
    assert json.loads((terminal.quarantine / "A~2.json").read_text())["receiptId"] == "A2"
    assert entries["A~1.json"].report["file"] == "A.json"
    assert entries["A~2.json"].report["problems"][0]["field"] == "total"
    assert [e["quarantined_as"] for e in quarantine.history(terminal, "A.json")] == [
        "A~1.json",
        "A~2.json",
    ]


def test_only_the_version_that_was_read_is_archived(config):
    """A till that writes every sale to the same file name replaced it after the run read it:
    the new sale stays in the inbox for its own run, and both are billed once."""
    terminal = config.terminal("bakery_1")
    spec = load_spec(config.dat_spec)
    ledger = open_ledger(config.home)
    path = drop_receipt(terminal.inbox, receipt_doc("R0001", timestamp=WHEN), name="sale.json")
    batch = processing.read_batch(terminal, [path])
    report = processing.validate(config, terminal, batch, spec=spec)
    acceptance = processing.accept(ledger, terminal, batch, report.valid)
    processing.emit(config, terminal, spec, acceptance.to_emit, ledger=ledger)
    # The next sale lands under the same name before the file is archived.
    later = terminal.inbox / ".sale.json.tmp"
    later.write_text(json.dumps(receipt_doc("R0002", timestamp=WHEN)))
    os.replace(later, path)

    processing.archive(terminal, batch, acceptance.accepted)

    assert json.loads(path.read_text())["receiptId"] == "R0002"  # still waiting in the inbox
    assert not terminal.archive_dir(batch.receipts[0].business_day).exists()
    sensor_and_runs(config)
    archived = terminal.archive_dir(batch.receipts[0].business_day)
    assert [json.loads(p.read_text())["receiptId"] for p in archived.iterdir()] == ["R0002"]
    assert sorted(p.name for p in (config.dat_dir / "20261120").iterdir()) == [
        "scon10R0001.dat",
        "scon10R0002.dat",
    ]
    assert not list(terminal.inbox.iterdir())


@pytest.mark.slow
def test_an_operator_lists_reads_and_requeues_quarantined_files(tmp_path, monkeypatch):
    """A butcher's return reached a bakery terminal not allowed returns: quarantined. Once the
    store allows it, `posfed quarantine retry` re-queues the file and the sale goes through."""
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    home = tmp_path / "state"
    strict = write_store_config(tmp_path / "strict.toml", home)
    config = load_config(strict)
    config.ensure_folders()
    terminal = config.terminal("bakery_1")
    drop_receipt(
        terminal.inbox, receipt_doc("R0007", timestamp=WHEN, items=[RETURN_LINE]), name="r7.json"
    )
    sensor_and_runs(config)

    listed = _posfed(strict, "quarantine", "list")
    assert listed.returncode == 0
    assert "bakery_1  r7.json" in listed.stdout and "quantity" in listed.stdout
    assert "quarantine: 1 file(s)" in listed.stdout
    shown = _posfed(strict, "quarantine", "show", "bakery_1", "r7.json")
    assert '"stage": "validation"' in shown.stdout and "quarantined  as r7.json" in shown.stdout
    assert _posfed(strict, "quarantine", "retry", "bakery_1", "nope.json").returncode == 1

    # The cause is fixed: this terminal may take returns. Re-queue, and the sale goes through.
    terminals = [
        {"id": "bakery_1", "department": "10", "tenant": "Bakkerij", "allow_returns": True},
        {"id": "butcher_1", "department": "20", "tenant": "Slagerij", "allow_returns": True},
    ]
    fixed = write_store_config(tmp_path / "fixed.toml", home, terminals=terminals)
    retried = _posfed(fixed, "quarantine", "retry", "bakery_1", "r7.json")
    assert retried.returncode == 0, retried.stderr
    assert "r7.json -> inbox/r7.json" in retried.stdout
    assert (terminal.inbox / "r7.json").exists()
    assert quarantine.quarantined_files(terminal) == []

    sensor_and_runs(load_config(fixed))
    assert (config.dat_dir / "20261120" / "scon10R0007.dat").exists()
    events = [(e["event"], e["file"]) for e in quarantine.history(terminal, "r7.json")]
    assert events == [("quarantined", "r7.json"), ("retried", "r7.json")]


@pytest.mark.slow
def test_a_retry_that_fails_again_keeps_every_attempt(config):
    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, receipt_doc("R0008", timestamp=WHEN, total="9.99"), name="x.json")
    sensor_and_runs(config)
    quarantine.retry(terminal, "x.json", by="tester")
    sensor_and_runs(config)  # nothing was fixed: quarantined again

    assert [e.name for e in quarantine.quarantined_files(terminal)] == ["x.json"]
    events = list(quarantine.history(terminal, "x.json"))
    assert [e["event"] for e in events] == ["quarantined", "retried", "quarantined"]
    assert events[1]["by"] == "tester"
    assert all(e["problems"][0]["field"] == "total" for e in events if e["event"] != "retried")


def test_a_file_left_half_moved_by_a_dead_run_goes_back_to_the_inbox(config):
    """A run killed between claiming a file and moving it leaves a hidden claim; the next
    look at the inbox puts the file back under its name, never over a newer one."""
    from posfed_pipeline.core.state import inbox

    terminal = config.terminal("bakery_1")
    path = drop_receipt(terminal.inbox, receipt_doc("R0009", timestamp=WHEN), name="r9.json")
    claimed = inbox.take(inbox.stat_inbox_file(path))
    assert claimed is not None and not path.exists()
    newer = drop_receipt(terminal.inbox, receipt_doc("R0010", timestamp=WHEN), name="r9.json")

    # A minute later (the claim's age is its ctime), the sensor or the trigger looks.
    inbox.scan_inbox(terminal, stability_seconds=0, now=time.time() + 120)

    assert sorted(os.listdir(terminal.inbox)) == ["r9.json", "r9~1.json"]
    assert json.loads(newer.read_text())["receiptId"] == "R0010"
    assert json.loads((terminal.inbox / "r9~1.json").read_text())["receiptId"] == "R0009"
    later = inbox.scan_inbox(terminal, stability_seconds=0, now=time.time() + 120)
    assert sorted(f.name for f in later.ready) == ["r9.json", "r9~1.json"]


def test_the_history_is_kept_as_long_as_the_archive_and_no_longer(config):
    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, receipt_doc("R0011", timestamp=WHEN, total="9.99"), name="o.json")
    sensor_and_runs(config)
    path = quarantine.history_path(terminal)
    old = json.dumps({"event": "quarantined", "file": "old.json", "quarantined_at": "2020-01-02"})
    path.write_text(old + "\n" + path.read_text())

    assert quarantine.prune_history(terminal, date(2026, 1, 1)) == 1

    assert [e["file"] for e in quarantine.history(terminal)] == ["o.json"]
    assert quarantine.prune_history(terminal, date(2026, 1, 1)) == 0


@pytest.mark.slow
def test_a_terminal_days_check_stays_failed_until_its_quarantined_file_is_dealt_with(
    tmp_path, monkeypatch
):
    """The terminal's next good receipt must not turn the day's check green while a rejected
    file of that day still waits; discarding it (with a reason, kept) does."""
    monkeypatch.delenv("POSFED_HOME", raising=False)
    config_path = write_store_config(tmp_path / "posfed.toml", tmp_path / "state")
    config = load_config(config_path)
    config.ensure_folders()
    terminal = config.terminal("bakery_1")

    def run_and_check(*docs) -> dg.AssetCheckEvaluation:
        for doc in docs:
            drop_receipt(terminal.inbox, doc)
        defs = build_definitions(config)
        sensor = defs.resolve_sensor_def("bakery_1_inbox_sensor")
        with dg.instance_for_test() as instance:
            [request] = tick_sensor(sensor, None, instance).run_requests
            result = run_as_the_daemon_would(
                defs.resolve_job_def(RECEIPTS_JOB), request, instance, sensor.name
            )
        [check] = [
            e
            for e in result.get_asset_check_evaluations()
            if e.check_name == "validation_pass_rate"
        ]
        return check

    rejected = run_and_check(receipt_doc("Q1", timestamp=WHEN, total="9.99"))
    assert not rejected.passed
    assert rejected.metadata["rejected_by_this_run"].value == 1
    later = run_and_check(receipt_doc("Q2", timestamp=WHEN))
    assert not later.passed, "a good receipt hid the waiting rejection"
    assert later.metadata["rejected_by_this_run"].value == 0
    assert later.metadata["waiting_in_quarantine"].value == 1
    assert later.metadata["file"].value == "Q1.json"
    assert "posfed quarantine retry bakery_1 Q1.json" in later.metadata["requeue_command"].value

    done = _posfed(config_path, "quarantine", "discard", "bakery_1", "Q1.json", "--reason", "void")
    assert done.returncode == 0, done.stderr
    assert (terminal.quarantine / "discarded" / "Q1.json").exists()
    assert quarantine.quarantined_files(terminal) == []
    assert [e["event"] for e in quarantine.history(terminal, "Q1.json")] == [
        "quarantined",
        "discarded",
    ]
    assert run_and_check(receipt_doc("Q3", timestamp=WHEN)).passed
