"""Operator-facing behaviour: transient failures retry with backoff, backfills from the CLI."""

import os
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import load_config
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.defs.receipts import ReceiptBatchConfig, receipt_op_config
from posfed_pipeline.names import RECEIPTS_JOB
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.stores import write_store_config

TS = "2026-11-20T10:15:00+01:00"
DAY = date(2026, 11, 20)


@pytest.mark.slow
def test_unwritable_dat_folder_is_retried_with_backoff_and_nothing_is_lost(config, engine):
    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, receipt_doc("R1", timestamp=TS))
    # The .dat folder is unusable (a file where the day folder should be) until the step has
    # failed once: then the "disk" recovers and the retry must succeed.
    blocker = config.dat_dir / "20261120"
    blocker.write_text("not a folder")
    job = build_definitions(config).resolve_job_def(RECEIPTS_JOB)

    with dg.instance_for_test() as instance:
        healer = threading.Thread(target=_unblock_after_first_retry, args=(instance, blocker))
        healer.start()
        started = time.monotonic()
        result = job.execute_in_process(
            run_config=receipt_op_config(ReceiptBatchConfig(files=["R1.json"])),
            partition_key="2026-11-20|bakery_1",
            instance=instance,
        )
        elapsed = time.monotonic() - started
        healer.join()

    assert result.success
    retries = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retries) == 1
    assert elapsed >= 1.0  # the first backoff is 1 s
    assert (config.dat_dir / "20261120" / "scon10R1.dat").is_file()
    assert (terminal.archive_dir(DAY) / "R1.json").is_file()
    assert open_ledger(config.home).delivery_outcomes() == [("R1.json", "R1", "inserted")]


def _unblock_after_first_retry(instance: dg.DagsterInstance, blocker: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for run in instance.get_runs():
            if instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY):
                blocker.unlink()
                return
        time.sleep(0.05)
    blocker.unlink()


@pytest.mark.slow
def test_backfill_from_the_dagster_cli_reprocesses_the_archive(tmp_path):
    config_path = write_store_config(tmp_path / "posfed.toml", tmp_path / "state")
    config = load_config(config_path)
    config.ensure_folders()
    engine = central_db.make_engine(config.db_url)
    central_db.upgrade_database(engine)
    terminal = config.terminal("bakery_1")
    archive_day = terminal.archive_root / "20261120"
    archive_day.mkdir(parents=True)
    drop_receipt(archive_day, receipt_doc("OLD1", timestamp=TS))

    env = {**os.environ, "POSFED_CONFIG": str(config_path), "DAGSTER_HOME": str(tmp_path)}
    env.pop("POSFED_HOME", None)
    env.pop("POSFED_DB_URL", None)
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    def materialize(selection: str, *partition: str) -> None:
        completed = subprocess.run(
            [
                str(Path(sys.executable).with_name("dagster")),
                "asset",
                "materialize",
                "-m",
                "posfed_pipeline.definitions",
                "--select",
                selection,
                *partition,
            ],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert completed.returncode == 0, completed.stderr[-3000:]

    materialize("validated_receipts,dat_files", "--partition", "2026-11-20|bakery_1")
    assert (config.dat_dir / "20261120" / "scon10OLD1.dat").read_bytes().startswith(b"0010OLD1")
    assert (archive_day / "OLD1.json").is_file()  # a backfill leaves the archive as it is
    # The day's receipts went back to the outbox: the next sync brings the central database
    # up to date with the archive.
    assert central_db.count_receipts(engine, "bakery_1", DAY) == 0
    materialize("central_db_receipts")
    assert central_db.count_receipts(engine, "bakery_1", DAY) == 1
