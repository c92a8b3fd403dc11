"""The fast path: inotify trigger + warm run workers, against a real instance and store.

These tests guard what posfed takes from Dagster's private API (fastpath/dagster_internals.py):
if an upgrade breaks it, they fail loudly. They assert behaviour, never timings (latency is
measured by `posfed bench`).
"""

import dataclasses
import json
import os
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from posfed_pipeline.core import central_db
from posfed_pipeline.core.base.clock import ManualClock
from posfed_pipeline.core.config import load_config
from posfed_pipeline.core.intake import parsing
from posfed_pipeline.core.stages.sync import sync_pending
from posfed_pipeline.core.state import inbox
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.defs.inbox_sensors import run_request_for
from posfed_pipeline.fastpath import compatibility, dagster_internals, launcher
from posfed_pipeline.fastpath.service import UntestedDagster, start_fastpath
from posfed_pipeline.names import (
    CENTRAL_DB_RECEIPTS,
    CHECKOUT_RECORD_TAG,
    FAILURE_KIND_TAG,
    LAG_CHECK,
    RECEIPTS_JOB,
    SYNC_JOB,
    VALIDATED_RECEIPTS,
    inbox_sensor_name,
)
from posfed_pipeline_tests.support.receipts import receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.stores import open_instance_store

# Starts real processes (Dagster, servers, browsers): `make check` leaves it out.
pytestmark = pytest.mark.slow


@pytest.fixture
def fast_store(monkeypatch):
    # Short paths: the pool's Unix socket lives in DAGSTER_HOME.
    root = Path(tempfile.mkdtemp(prefix="pft-", dir="/tmp"))
    yield open_instance_store(
        root,
        monkeypatch,
        intake={
            "stability_seconds": 0.2,
            "relaunch_after_seconds": 0,
            # The terminal-day's recording run comes a moment after the last checkout.
            "record_after_quiet_seconds": 1.0,
        },
    )
    shutil.rmtree(root, ignore_errors=True)


def _now_doc(receipt_id, terminal):
    now = datetime.now(terminal.timezone).replace(microsecond=0)
    return receipt_doc(receipt_id, terminal.id, terminal.department, timestamp=now.isoformat())


def _write(terminal, doc) -> Path:
    path = terminal.inbox / f"{doc['receiptId']}.json"
    with open(path, "w") as handle:  # as a POS does: open, write, close
        handle.write(json.dumps(doc))
    return path


def _dat(config, terminal, doc) -> Path:
    day = datetime.fromisoformat(doc["timestamp"]).strftime("%Y%m%d")
    return config.dat_dir / day / f"scon{terminal.department}{doc['receiptId']}.dat"


def _wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _wait_finished(instance, count, timeout=60, job_name=RECEIPTS_JOB):
    def runs():
        return [r for r in instance.get_runs() if r.job_name == job_name]

    _wait(
        lambda: len(runs()) >= count and all(r.is_finished for r in runs()),
        timeout,
        f"{count} finished runs",
    )
    return runs()


def _run_files(run) -> list[str]:
    return run.run_config["ops"]["receipt_pipeline"]["config"]["files"]


def _record_runs(instance):
    return [
        r
        for r in instance.get_runs()
        if r.job_name == RECEIPTS_JOB and r.tags.get(CHECKOUT_RECORD_TAG) == "true"
    ]


def _materialization(instance, run_id, asset=VALIDATED_RECEIPTS):
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
    ).records
    [event] = [
        r.event_log_entry.dagster_event
        for r in records
        if r.event_log_entry.dagster_event.asset_key == dg.AssetKey(asset)
    ]
    return event.step_materialization_data.materialization


def _synced_receipts(instance) -> int:
    """Receipts the sync passes stored, by their runless materializations' metadata."""
    records = instance.fetch_materializations(dg.AssetKey(CENTRAL_DB_RECEIPTS), limit=1000).records
    return sum(
        r.asset_materialization.metadata["receipts_inserted"].value
        for r in records
        if not r.run_id  # a sync run's are its own
    )


def test_the_checkout_delivers_at_once_and_the_terminal_days_run_records_it(fast_store):
    config, dagster_home = fast_store
    fastpath = start_fastpath(config, dagster_home, workers=2)
    instance = dg.DagsterInstance.get()
    try:
        docs = []
        for n in range(3):
            for terminal in config.terminals:  # both terminals at once: in parallel
                doc = _now_doc(f"T{n}{terminal.department}", terminal)
                _write(terminal, doc)
                docs.append((terminal, doc))
        _wait(lambda: all(_dat(config, t, d).exists() for t, d in docs), 60, "all .dat files")
        # The .dat files came without a run per receipt; the terminal-days' runs record them
        # once the terminals have been quiet a moment ([intake] record_after_quiet_seconds).
        assert fastpath.trigger.runs_launched == 0 and fastpath.trigger.checkouts >= 2
        _wait(
            lambda: (
                {r.tags["posfed/terminal"] for r in _record_runs(instance)}
                == {t.id for t in config.terminals}
                and all(r.is_finished for r in _record_runs(instance))
            ),
            60,
            "each terminal-day's recording run",
        )
        # The trigger syncs the central database after the checkout, by itself.
        engine = central_db.make_engine(config.db_url)
        _wait(
            lambda: all(
                central_db.count_receipts(engine, t.id, datetime.now(t.timezone).date()) == 3
                for t in config.terminals
            ),
            60,
            "the central database sync",
        )
        # Without a run of its own: each sync pass reports what it stored, as a sync run would.
        _wait(lambda: _synced_receipts(instance) == 6, 30, "the sync passes' materializations")
        # The passes ran on the background worker, at a lower CPU priority than the checkout's.
        [background] = [w for w in fastpath.pool._workers if w.for_background]
        assert os.getpriority(os.PRIO_PROCESS, background.process.pid) == 10
        assert fastpath.pool.stats()["background_ready"] == 1
    finally:
        fastpath.stop()

    assert not [r for r in instance.get_runs() if r.job_name == SYNC_JOB]
    assert fastpath.trigger.sync_passes >= 1
    lag = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey(CENTRAL_DB_RECEIPTS), LAG_CHECK)
    )
    assert lag is not None and lag.status.value == "SUCCEEDED"
    records = _record_runs(instance)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in records)
    # Each receipt's lineage: the ledger names the run it was accepted under, and that run is
    # its terminal-day's, in the UI, reporting every file of the window once.
    ledger = open_ledger(config.home)
    run_of = {receipt_id: run_id for _, receipt_id, run_id in ledger.delivery_runs()}
    files_recorded = 0
    for run in records:
        terminal_id = run.tags["posfed/terminal"]
        assert run.tags["dagster/sensor_name"] == f"{terminal_id}_inbox_sensor"
        assert run.tags["dagster/partition"].endswith(f"|{terminal_id}")
        materialization = _materialization(instance, run.run_id)
        assert materialization.partition == run.tags["dagster/partition"]
        files_recorded += materialization.metadata["files"].value
        mine = {d["receiptId"] for t, d in docs if t.id == terminal_id}
        assert {rid for rid, run_id in run_of.items() if run_id == run.run_id} <= mine
    assert files_recorded == len(docs)  # each file once
    assert set(run_of.values()) <= {r.run_id for r in records}
    # Recorded: the journal has nothing left.
    from posfed_pipeline.core.state.checkout_journal import CheckoutJournal, checkout_journal_path

    assert CheckoutJournal(checkout_journal_path(config.home)).windows() == []

    # The catch-up sensors now find nothing to launch, on a fresh tick with the same instance.
    defs = build_definitions(config)
    for terminal in config.terminals:
        sensor = defs.resolve_sensor_def(inbox_sensor_name(terminal.id))
        result = sensor(dg.build_sensor_context(instance=instance))
        assert result.run_requests == []


def _set_central_revision(config, revision: str) -> None:
    from sqlalchemy import text

    with central_db.make_engine(config.db_url).begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})


def test_after_a_failed_sync_pass_the_syncs_are_runs_until_one_succeeds(fast_store):
    """A pass that fails (here the central database's schema is behind this posfed's: a
    permanent error a DBA fixes) is followed by sync runs, each failure a failed run in the UI
    with its reason; once one succeeds, the passes without a run come back."""
    config, dagster_home = fast_store
    head = central_db.head_revision()
    _set_central_revision(config, central_db.revisions_behind_head()[0])
    fastpath = start_fastpath(config, dagster_home, workers=1)
    instance = dg.DagsterInstance.get()
    terminal = config.terminals[0]
    engine = central_db.make_engine(config.db_url)
    today = datetime.now(terminal.timezone).date()
    try:
        first = _now_doc("S1", terminal)
        _write(terminal, first)
        _wait(lambda: _dat(config, terminal, first).exists(), 30, "the .dat, whatever the sync")

        def sync_runs(status):
            return [r for r in instance.get_runs() if r.job_name == SYNC_JOB and r.status == status]

        _wait(lambda: sync_runs(dg.DagsterRunStatus.FAILURE), 60, "a failed sync run")
        assert fastpath.trigger.sync_passes == 1  # the pass that failed; then runs
        failed = sync_runs(dg.DagsterRunStatus.FAILURE)[0]
        [failure] = instance.all_logs(failed.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        why = failure.dagster_event.step_failure_data.error.message
        assert "upgrade the central database first" in why
        assert failed.tags[FAILURE_KIND_TAG] in ("permanent", "repeated")

        _set_central_revision(config, head)  # the DBA upgraded the central database
        _wait(lambda: sync_runs(dg.DagsterRunStatus.SUCCESS), 60, "a sync run that succeeds")
        assert central_db.count_receipts(engine, terminal.id, today) == 1
        runs_before = len([r for r in instance.get_runs() if r.job_name == SYNC_JOB])

        second = _now_doc("S2", terminal)
        _write(terminal, second)
        _wait(lambda: central_db.count_receipts(engine, terminal.id, today) == 2, 30, "S2 synced")
        _wait(lambda: _synced_receipts(instance) == 1, 30, "S2's pass reported")
        assert len([r for r in instance.get_runs() if r.job_name == SYNC_JOB]) == runs_before
        assert fastpath.trigger.sync_passes == 2
    finally:
        fastpath.stop()


def test_a_batch_the_checkout_cannot_deliver_gets_a_run_of_its_own_that_retries(fast_store):
    config, dagster_home = fast_store
    terminal = config.terminal("bakery_1")
    doc = _now_doc("F0001", terminal)
    # A file where the day's .dat folder belongs: the checkout cannot write the .dat.
    blocker = _dat(config, terminal, doc).parent
    blocker.write_text("not a folder")
    fastpath = start_fastpath(config, dagster_home, workers=1)
    instance = dg.DagsterInstance.get()
    try:
        _write(terminal, doc)
        # The batch is handed to a receipts run of its own (visible, with its retries and
        # logs): it is still retrying (1 s, 2 s, 4 s) when the fault is mended.
        _wait(lambda: fastpath.trigger.runs_launched == 1, 30, "the batch's own run")
        [run] = [r for r in instance.get_runs() if r.job_name == RECEIPTS_JOB]
        assert _run_files(run) == ["F0001.json"]
        assert CHECKOUT_RECORD_TAG not in run.tags
        blocker.unlink()
        _wait(lambda: instance.get_run_by_id(run.run_id).is_finished, 60, "its run")
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.SUCCESS
        assert _dat(config, terminal, doc).exists()
        assert not (terminal.inbox / "F0001.json").exists()
    finally:
        fastpath.stop()
    ledger = open_ledger(config.home)
    assert [outcome for _, _, outcome in ledger.delivery_outcomes()] == ["inserted"]
    assert _record_runs(instance) == []  # nothing of it was the checkout's


def test_batches_journaled_before_a_restart_are_recorded_by_the_next_fast_path(fast_store):
    config, dagster_home = fast_store
    terminal = config.terminal("bakery_1")
    # A window that would stay open for an hour: the fast path stops before its run is made.
    hour_long = dataclasses.replace(
        config, record_after_quiet_seconds=3600.0, record_window_seconds=3600.0
    )
    fastpath = start_fastpath(hour_long, dagster_home, workers=1)
    instance = dg.DagsterInstance.get()
    try:
        doc = _now_doc("J0001", terminal)
        _write(terminal, doc)
        _wait(lambda: _dat(config, terminal, doc).exists(), 30, "the .dat file")
        _wait(
            lambda: fastpath.trigger.checkouts == 1 and not fastpath.trigger._checkouts,
            30,
            "the checkout to be journaled",
        )
    finally:
        fastpath.stop()
    assert _record_runs(instance) == []
    fastpath = start_fastpath(config, dagster_home, workers=1)
    try:
        _wait(
            lambda: [r.status for r in _record_runs(instance)] == [dg.DagsterRunStatus.SUCCESS],
            60,
            "the left window's recording run",
        )
    finally:
        fastpath.stop()
    [run] = _record_runs(instance)
    assert _materialization(instance, run.run_id).metadata["files"].value == 1
    ledger = open_ledger(config.home)
    assert [run_id for _, _, run_id in ledger.delivery_runs()] == [run.run_id]


def test_trigger_stopped_the_sensors_still_deliver_through_warm_workers(fast_store):
    config, dagster_home = fast_store
    fastpath = start_fastpath(config, dagster_home, workers=1, trigger=False)
    try:
        terminal = config.terminal("bakery_1")
        doc = _now_doc("S0001", terminal)
        _write(terminal, doc)
        settled = ManualClock(time.time() + config.stability_seconds)  # the file has settled
        instance = dg.DagsterInstance.get()
        defs = build_definitions(config, clock=settled)
        sensor = defs.resolve_sensor_def("bakery_1_inbox_sensor")
        [request] = sensor(dg.build_sensor_context(instance=instance)).run_requests
        # Create the run as the sensor daemon does, and launch it through the configured
        # launcher: it lands on the warm workers.
        code_location = dagster_internals.load_code_location(instance, dagster_home)
        factory = dagster_internals.SensorStyleRunFactory(instance, code_location, RECEIPTS_JOB)
        run = factory.create_run(request, "bakery_1_inbox_sensor")
        instance.launch_run(run.run_id, workspace=None)
        _wait(lambda: _dat(config, terminal, doc).exists(), 30, "the .dat file")
        [finished] = _wait_finished(instance, 1)
        # The worker reports back right after the run's last event.
        _wait(
            lambda: (
                instance.run_launcher.check_run_worker_health(finished).status.value == "SUCCESS"
            ),
            10,
            "the worker to report the run done",
        )
    finally:
        fastpath.stop()
    assert finished.status == dg.DagsterRunStatus.SUCCESS


def test_a_killed_run_worker_fails_its_run_and_the_files_are_processed_exactly_once(fast_store):
    config, dagster_home = fast_store
    terminal = config.terminal("bakery_1")
    # Long enough to be killed halfway: a batch is flushed at once, 400 files take ~0.3 s.
    docs = [_now_doc(f"K{n:04d}", terminal) for n in range(2000)]
    for doc in docs:
        _write(terminal, doc)
    time.sleep(config.stability_seconds + 0.1)
    fastpath = start_fastpath(config, dagster_home, workers=1, trigger=False)
    try:
        instance = dg.DagsterInstance.get()
        ready = inbox.scan_inbox(terminal, stability_seconds=0).ready
        [batch] = inbox.plan_batches(  # one long run, to be killed halfway
            terminal,
            ready,
            lambda f: parsing.business_day_of_file(f.path, terminal),
            max_files_per_run=2000,
        )
        code_location = dagster_internals.load_code_location(instance, dagster_home)
        factory = dagster_internals.SensorStyleRunFactory(instance, code_location, RECEIPTS_JOB)
        from posfed_pipeline.core.state import claims

        claim_table = claims.ClaimTable(claims.claim_table_path(config.home))
        claim_table.claim(terminal.id, [f.signature for f in batch.files], lambda _: batch.run_key)
        run = factory.create_run(run_request_for(terminal, batch), "bakery_1_inbox_sensor")
        instance.launch_run(run.run_id, workspace=None)
        _wait(
            lambda: instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED,
            30,
            "the run to start",
        )
        time.sleep(0.1)
        [worker] = [w for w in fastpath.pool._workers if w.run_id == run.run_id]
        os.kill(worker.process.pid, 9)  # kill -9 mid-run
        _wait(lambda: instance.get_run_by_id(run.run_id).is_finished, 30, "the run to fail")
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert list(terminal.inbox.iterdir())  # its receipts stay in the inbox

        # Without operator action, the terminal's sensor launches the rest once more.
        sensor = build_definitions(config).resolve_sensor_def("bakery_1_inbox_sensor")
        retries = sensor(dg.build_sensor_context(instance=instance)).run_requests
        assert retries and all(r.run_key.endswith(":retry1") for r in retries)
        for retry in retries:  # a run's worth (100 files) each
            rerun = factory.create_run(retry, "bakery_1_inbox_sensor")
            instance.launch_run(rerun.run_id, workspace=None)
            _wait(lambda r=rerun: instance.get_run_by_id(r.run_id).is_finished, 120, "a retry")
            assert instance.get_run_by_id(rerun.run_id).status == dg.DagsterRunStatus.SUCCESS
    finally:
        fastpath.stop()

    assert list(terminal.inbox.iterdir()) == []
    ledger = open_ledger(config.home)
    assert [outcome for _, _, outcome in ledger.delivery_outcomes()] == ["inserted"] * 2000
    assert len(list(config.dat_dir.rglob("*.dat"))) == 2000
    engine = central_db.make_engine(config.db_url)
    assert sync_pending(ledger, engine).receipts_inserted == 2000
    assert (
        central_db.count_receipts(engine, terminal.id, datetime.now(terminal.timezone).date())
        == 2000
    )


def test_launcher_cancels_queued_and_running_runs_and_reports_worker_health(fast_store):
    config, dagster_home = fast_store
    terminal = config.terminal("bakery_1")
    doc = _now_doc("B0001", terminal)
    _write(terminal, doc)
    # A file where the day's .dat folder belongs: the run retries (1 s, 2 s, 4 s), so it is
    # still executing when it is terminated, however fast the machine.
    blocker = _dat(config, terminal, doc).parent
    blocker.write_text("not a folder")
    time.sleep(config.stability_seconds + 0.1)
    fastpath = start_fastpath(config, dagster_home, workers=1, trigger=False)
    try:
        instance = dg.DagsterInstance.get()
        run_launcher = instance.run_launcher
        assert isinstance(run_launcher, launcher.WarmWorkerRunLauncher)
        retention_job = build_definitions(config).resolve_job_def("retention_job")
        unknown = instance.create_run_for_job(retention_job)
        assert run_launcher.check_run_worker_health(unknown).status.value == "NOT_FOUND"

        sensor = build_definitions(config).resolve_sensor_def("bakery_1_inbox_sensor")
        [request] = sensor(dg.build_sensor_context(instance=instance)).run_requests
        code_location = dagster_internals.load_code_location(instance, dagster_home)
        factory = dagster_internals.SensorStyleRunFactory(instance, code_location, RECEIPTS_JOB)
        busy = factory.create_run(request, "bakery_1_inbox_sensor")
        instance.launch_run(busy.run_id, workspace=None)
        _wait(
            lambda: instance.get_run_by_id(busy.run_id).status == dg.DagsterRunStatus.STARTED,
            30,
            "the run to start",
        )

        # A second run of the same terminal waits for the first: terminating it cancels it.
        queued = instance.create_run_for_job(retention_job, tags={"posfed/terminal": terminal.id})
        instance.launch_run(queued.run_id, workspace=None)
        assert run_launcher.check_run_worker_health(queued).status.value == "RUNNING"
        assert run_launcher.terminate(queued.run_id)
        _wait(lambda: instance.get_run_by_id(queued.run_id).is_finished, 10, "the cancel")
        assert instance.get_run_by_id(queued.run_id).status == dg.DagsterRunStatus.CANCELED

        # Terminating the executing run stops its worker; the receipt stays in the inbox.
        assert run_launcher.check_run_worker_health(busy).status.value == "RUNNING"
        assert run_launcher.terminate(busy.run_id)
        _wait(lambda: instance.get_run_by_id(busy.run_id).is_finished, 10, "the termination")
        assert instance.get_run_by_id(busy.run_id).status == dg.DagsterRunStatus.CANCELED
        assert run_launcher.check_run_worker_health(busy).status.value == "FAILED"
        assert (terminal.inbox / "B0001.json").exists()

        # The replacement worker takes the sensor's relaunch once the folder is fixed.
        blocker.unlink()
        [retry] = sensor(dg.build_sensor_context(instance=instance)).run_requests
        rerun = factory.create_run(retry, "bakery_1_inbox_sensor")
        instance.launch_run(rerun.run_id, workspace=None)
        _wait(lambda: instance.get_run_by_id(rerun.run_id).is_finished, 60, "the relaunch")
        assert instance.get_run_by_id(rerun.run_id).status == dg.DagsterRunStatus.SUCCESS
        assert _dat(config, terminal, doc).exists()
    finally:
        fastpath.stop()


def test_the_dev_instance_reuses_its_sqlite_connections_and_sees_other_processes_writes(
    fast_store,
):
    """If an upgrade renames what the pooled storages override, pooling silently stops: this
    fails. It also guards against a pooled connection serving a stale snapshot."""
    import subprocess
    import sys

    from sqlalchemy import event

    _, dagster_home = fast_store
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        storages = (instance.run_storage, instance.event_log_storage, instance.schedule_storage)
        assert [type(s).__name__ for s in storages] == [
            "PooledSqliteRunStorage",
            "PooledSqliteEventLogStorage",
            "PooledSqliteScheduleStorage",
        ]
        engine = dagster_internals.pooled_sqlite_engine(instance.run_storage._conn_string)
        opened, used = [], []
        event.listen(engine, "connect", lambda *_: opened.append(1))
        event.listen(engine, "checkout", lambda *_: used.append(1))
        run = instance.create_run_for_job(
            build_definitions(load_config()).resolve_job_def("retention_job")
        )
        for _ in range(20):
            instance.get_runs_count()
        assert len(used) >= 20  # every query went through the pool...
        assert len(opened) <= 1  # ...reusing its connection (Dagster's own opens one per query)

        # Another process tags the run; this process's pooled connections see it at once.
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import dagster as dg; "
                f"dg.DagsterInstance.get().add_run_tags({run.run_id!r}, {{'seen': 'yes'}})",
            ],
            check=True,
            env=dict(os.environ, DAGSTER_HOME=str(dagster_home)),
        )
        assert instance.get_run_by_id(run.run_id).tags.get("seen") == "yes"


def test_a_run_the_fallback_launcher_started_is_not_judged_by_the_absent_pool(tmp_path):
    """With no warm pool, Dagster's default launcher starts runs in fresh processes and marks
    them with its hidden grpc-info tag. Run monitoring asks the launcher about them every few
    seconds: the answer must not be "pool not reachable, FAILED", or every fallback run longer
    than one monitoring poll is marked failed while it still runs (seen in CI: a run with
    retries marked FAILURE, then finishing SUCCESS)."""
    from dagster._core.launcher.base import WorkerStatus
    from dagster._core.storage.tags import GRPC_INFO_TAG as DAGSTERS_TAG

    from posfed_pipeline.names import GRPC_INFO_TAG

    assert GRPC_INFO_TAG == DAGSTERS_TAG  # pinned: an upgrade that renames it fails here
    nowhere = launcher.WarmWorkerRunLauncher(socket_path=str(tmp_path / "no-pool.sock"))
    fallback_run = dg.DagsterRun(job_name="receipts_job", tags={DAGSTERS_TAG: "{}"})
    # Run monitoring (dagster/_daemon/monitoring/run_monitoring.py, monitor_started_run) fails
    # a started run on any status but these two: UNKNOWN included.
    alive = (WorkerStatus.RUNNING, WorkerStatus.SUCCESS)
    assert nowhere.check_run_worker_health(fallback_run).status in alive
    pool_run = dg.DagsterRun(job_name="receipts_job", tags={})
    assert nowhere.check_run_worker_health(pool_run).status == WorkerStatus.FAILED


def test_a_fallback_run_whose_process_died_with_its_code_server_is_reported_dead(tmp_path):
    """A power cut takes the code server with the fresh run process it watched: nobody fails
    that run until max_runtime_seconds, and a sync run held every sync back that long (seen
    in the chaos run). Run monitoring asks the launcher: a fallback run whose process has
    exited on this server is reported FAILED; one whose process runs is RUNNING."""
    import subprocess

    from dagster._core.events import EngineEventData
    from dagster._core.launcher.base import WorkerStatus

    from posfed_pipeline.names import GRPC_INFO_TAG

    launcher_config = {
        "module": "posfed_pipeline.fastpath.launcher",
        "class": "WarmWorkerRunLauncher",
        "config": {"socket_path": str(tmp_path / "no-pool.sock")},
    }
    with dg.instance_for_test(overrides={"run_launcher": launcher_config}) as instance:

        def fallback_run_in(process: subprocess.Popen) -> dg.DagsterRun:
            run = instance.add_run(
                dg.DagsterRun(job_name="central_db_sync_job", tags={GRPC_INFO_TAG: "{}"})
            )
            instance.report_engine_event(
                f"Executing steps in process (pid: {process.pid})",
                run,
                EngineEventData(metadata={"pid": dg.MetadataValue.text(str(process.pid))}),
            )
            return run

        gone = subprocess.Popen(["true"])
        gone.wait()
        running = subprocess.Popen(["sleep", "60"])
        try:
            dead_run, live_run = fallback_run_in(gone), fallback_run_in(running)
            health = instance.run_launcher.check_run_worker_health
            assert health(dead_run).status == WorkerStatus.FAILED
            assert f"pid {gone.pid}" in health(dead_run).msg
            assert health(live_run).status == WorkerStatus.RUNNING
            # Not yet started anywhere (no pid reported): not judged.
            fresh = instance.add_run(dg.DagsterRun(job_name="x", tags={GRPC_INFO_TAG: "{}"}))
            assert health(fresh).status == WorkerStatus.RUNNING
        finally:
            running.kill()
            running.wait()


def test_a_pool_slow_to_answer_never_gets_its_run_launched_a_second_time(tmp_path, monkeypatch):
    """A pool that listens but answers late (a host under load) may have queued the run
    already. Falling back to a fresh process then would execute the run twice (seen: a UI
    launch during the pool's warm-up, interrupted 0.02 s after it started). The launcher
    waits; if the pool still does not answer, the launch fails loudly instead; and run
    monitoring reads "busy" as running, never as a dead worker."""
    import socket as socketlib

    from dagster._core.launcher.base import LaunchRunContext, WorkerStatus

    path = tmp_path / "busy.sock"
    listener = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)  # accepts connections, never answers: a pool too busy to reply
    monkeypatch.setattr(launcher, "POOL_PATIENCE_SECONDS", 0.5)
    busy = launcher.WarmWorkerRunLauncher(socket_path=str(path))
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(
            build_definitions(load_config(REPO_ROOT / "posfed.toml")).resolve_job_def(RECEIPTS_JOB),
            tags={"posfed/terminal": "bakery_1"},
        )
        busy.register_instance(instance)
        with pytest.raises(dg.DagsterInvariantViolationError, match="did not answer"):
            # A workspace is given: the old code fell back to it.
            busy.launch_run(LaunchRunContext(dagster_run=run, workspace=object()))
        assert instance.get_run_by_id(run.run_id).tags.get("dagster/grpc_info") is None
        assert ".dagster/grpc_info" not in instance.get_run_by_id(run.run_id).tags
        # What run monitoring does not fail (monitor_started_run: RUNNING or SUCCESS only).
        assert busy.check_run_worker_health(run).status == WorkerStatus.RUNNING
    listener.close()


def test_a_backlog_run_waits_while_a_cashiers_receipt_is_processed(tmp_path):
    """A flooded inbox's runs (posfed/backlog) go to the background worker, and start only
    while no terminal's ordinary run is running or waiting; a sync run is not held back."""
    import multiprocessing

    from posfed_pipeline.fastpath.pool import WarmWorkerPool, _Job, _Worker
    from posfed_pipeline.names import BACKLOG_TAG, TERMINAL_TAG
    from posfed_pipeline.run_tags import lane_of

    assert lane_of({TERMINAL_TAG: "coffee_2", BACKLOG_TAG: "true"}) == ("coffee_2", True)
    assert lane_of({TERMINAL_TAG: "bakery_1"}) == ("bakery_1", False)

    pool = WarmWorkerPool(tmp_path, tmp_path, size=1)
    pipes = [multiprocessing.Pipe() for _ in range(2)]
    checkout = _Worker(process=None, conn=pipes[0][0], ready=True)
    background = _Worker(process=None, conn=pipes[1][0], ready=True, for_background=True)
    pool._workers = [checkout, background]
    checkout.run_id, checkout.lane = "cashier-run", "bakery_1"
    pool._busy_lanes.add("bakery_1")
    pool._queue.append(_Job("flood-run", "coffee_2", background=True))
    assert not pool._assign_one()  # the backlog waits for the cashier's run

    pool._queue.append(_Job("sync-run", "lane:central_db_sync", background=True))
    assert pool._assign_one() and background.run_id == "sync-run"  # a sync does not wait
    assert pipes[1][1].recv() == "sync-run"

    pool._free(background)
    pool._free(checkout)
    pool._queue.append(_Job("next-cashier-run", "butcher_1"))
    assert pool._assign_one() and checkout.run_id == "next-cashier-run"
    assert not pool._assign_one()  # still a cashier's run in progress
    pool._free(checkout)
    assert pool._assign_one() and background.run_id == "flood-run"


def test_an_untested_dagster_keeps_the_fast_path_off_and_the_instance_on_dagsters_own_parts(
    fast_store,
):
    """The fast path rests on Dagster internals: on a release outside the tested ones it
    refuses to start, naming the tested releases, the found one and the override, before it
    touches anything. The instance every Dagster process loads (the sensors' daemon among
    them) still loads, on Dagster's own storages; the release the operator names is allowed."""
    from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

    config, dagster_home = fast_store
    untested = compatibility.check(
        found={"dagster": "1.14.0", "dagster-webserver": "1.14.0"}, env={}
    )
    with pytest.raises(UntestedDagster) as refused:
        start_fastpath(config, dagster_home, workers=1, dagster_releases=untested)
    said = str(refused.value)
    assert "tested on dagster 1.13.27–1.13.29, dagster-webserver 1.13.27–1.13.28" in said
    assert "found dagster 1.14.0, dagster-webserver 1.14.0" in said
    assert "set POSFED_ALLOW_UNTESTED_DAGSTER=1.14.0 for every posfed service" in said
    assert "pip install 'dagster>=1.13.27,<=1.13.29'" in said
    assert not launcher.default_socket_path().exists()  # no pool, no worker was started

    # Dagster's own storage in place of posfed's pooled one, on the same files.
    pooled = dagster_internals.PooledSqliteRunStorage
    assert dagster_internals.dagsters_own_storage(pooled, untested) is SqliteRunStorage
    own = SqliteRunStorage.from_config_value(None, {"base_dir": str(dagster_home / "history")})
    assert own.get_runs_count() == 0
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:  # the tested releases
        assert type(instance.run_storage) is pooled
        assert isinstance(instance.run_launcher, launcher.WarmWorkerRunLauncher)

    allowed = compatibility.check(
        found={"dagster": "1.14.0"}, env={"POSFED_ALLOW_UNTESTED_DAGSTER": "1.14.0"}
    )
    assert allowed.fast_path_allowed and allowed.overridden
    assert dagster_internals.dagsters_own_storage(pooled, allowed) is None


def test_the_fast_path_uses_the_code_locations_definitions_built_once(fast_store, monkeypatch):
    """The trigger's runs and a worker's jobs come from the one set of definitions the code
    location built: none is built a second time, not even by a worker alternating a terminal's
    runs with syncs (Dagster keeps only one reconstructed job per process)."""
    from posfed_pipeline import definitions

    config, dagster_home = fast_store
    builds = []
    build = definitions.build_definitions
    monkeypatch.setattr(definitions, "build_definitions", lambda c: builds.append(c) or build(c))
    definitions._definitions_for.cache_clear()
    monkeypatch.chdir(dagster_home)  # where the pool starts its workers

    instance = dg.DagsterInstance.get()
    location = dagster_internals.load_code_location(instance, dagster_home)
    receipts = dagster_internals.SensorStyleRunFactory(instance, location, RECEIPTS_JOB)
    sync = dagster_internals.SensorStyleRunFactory(instance, location, SYNC_JOB)
    warmed = dagster_internals.load_job_as_runs_will(RECEIPTS_JOB)
    for factory in (receipts, sync, receipts, sync):
        job = dagster_internals._reconstructable(factory.remote_job.get_python_origin())
        assert job.get_definition() is factory.job_def
    assert warmed is receipts.job_def
    assert len(builds) == 1


def test_a_warm_worker_keeps_nothing_of_the_runs_it_executed(fast_store):
    """Dagster's instance keeps an (empty) list of event listeners per run it reported events
    for; a worker that executes runs for weeks drops them after each run."""
    config, dagster_home = fast_store
    terminal = config.terminal("bakery_1")
    instance = dg.DagsterInstance.get()
    location = dagster_internals.load_code_location(instance, dagster_home)
    factory = dagster_internals.SensorStyleRunFactory(instance, location, RECEIPTS_JOB)
    for n in range(3):
        _write(terminal, _now_doc(f"W{n:04d}", terminal))
        ready = inbox.scan_inbox(terminal, stability_seconds=0).ready
        [batch] = inbox.plan_batches(
            terminal, ready, lambda f: parsing.business_day_of_file(f.path, terminal)
        )
        run = factory.create_run(run_request_for(terminal, batch), inbox_sensor_name(terminal.id))
        status = dagster_internals.execute_run_in_this_process(instance, run)
        assert status == dg.DagsterRunStatus.SUCCESS
        assert dagster_internals.drop_idle_event_subscriptions(instance) == 0
    assert list(terminal.inbox.iterdir()) == []
