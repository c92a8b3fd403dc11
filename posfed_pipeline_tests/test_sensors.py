"""The per-terminal inbox sensor: stable new files → one run per (terminal, day), never twice."""

import json
import os
from dataclasses import replace
from datetime import date, datetime, timedelta

import dagster as dg
import pytest

from posfed_pipeline.core.base.clock import ManualClock
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline_tests.support.daemon import run_as_the_daemon_would, tick_sensor
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc


def _batch_config(request: dg.RunRequest) -> dict:
    return request.run_config["ops"]["receipt_pipeline"]["config"]


def _sensor(config, terminal_id="bakery_1") -> dg.SensorDefinition:
    return build_definitions(config).resolve_sensor_def(f"{terminal_id}_inbox_sensor")


def test_new_stable_file_gives_one_run_request_and_never_again(config):
    inbox = config.terminal("bakery_1").inbox
    drop_receipt(inbox, receipt_doc("R0001", timestamp="2026-11-24T10:15:00+01:00"))
    sensor = _sensor(config)

    first = tick_sensor(sensor, None)
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.partition_key == "2026-11-24|bakery_1"
    assert request.tags["posfed/terminal"] == "bakery_1"
    assert request.run_config["ops"]["receipt_pipeline"]["config"]["files"] == ["R0001.json"]
    assert request.run_key.startswith("bakery_1:20261124:")

    again = tick_sensor(sensor, first.cursor)
    assert again.run_requests == []
    assert again.skip_reason.skip_message == "1 file(s) waiting on their run"

    (inbox / "R0001.json").unlink()  # the run moved it to the archive
    done = tick_sensor(sensor, again.cursor)
    assert done.run_requests == []
    assert json.loads(done.cursor) == {"launched": {}}


def test_file_still_being_written_is_not_taken_until_stable(config):
    slow = tuple(
        replace(t, delivery=replace(t.delivery, stability_seconds=1.5)) for t in config.terminals
    )
    config = replace(config, terminals=slow, _by_id={})
    inbox = config.terminal("bakery_1").inbox
    # The sensor's clock, not the wall clock: a slow first tick on a busy machine must not
    # let the file settle before the test looks.
    clock = ManualClock()
    sensor = build_definitions(config, clock=clock).resolve_sensor_def("bakery_1_inbox_sensor")
    path = drop_receipt(inbox, '{"receiptId": "R00', name="R0002.json", age=0)
    os.utime(path, (clock.time(), clock.time()))

    while_writing = tick_sensor(sensor, None)
    assert while_writing.run_requests == []
    assert "still being written" in while_writing.skip_reason.skip_message

    path.write_text(json.dumps(receipt_doc("R0002")))  # the writer finishes...
    os.utime(path, (clock.time(), clock.time()))
    clock.advance(1.5 + 0.05)  # ...and the file settles
    settled = tick_sensor(sensor, while_writing.cursor)
    assert [
        r.run_config["ops"]["receipt_pipeline"]["config"]["files"] for r in settled.run_requests
    ] == [["R0002.json"]]


def test_files_are_grouped_per_business_day(config):
    inbox = config.terminal("bakery_1").inbox
    # The business day is the store's local date, whatever offset the terminal wrote.
    drop_receipt(inbox, receipt_doc("LATE", timestamp="2026-11-23T23:30:00+01:00"))
    drop_receipt(inbox, receipt_doc("UTCLATE", timestamp="2026-11-23T23:30:00+00:00"))
    drop_receipt(inbox, receipt_doc("MORNING", timestamp="2026-11-24T08:00:00+01:00"))

    result = tick_sensor(_sensor(config), None)

    by_partition = {
        r.partition_key: sorted(r.run_config["ops"]["receipt_pipeline"]["config"]["files"])
        for r in result.run_requests
    }
    assert by_partition == {
        "2026-11-23|bakery_1": ["LATE.json"],
        # 23:30 UTC is 00:30 the next day in the store's timezone.
        "2026-11-24|bakery_1": ["MORNING.json", "UTCLATE.json"],
    }


def test_redropped_file_with_same_name_is_a_new_version(config):
    inbox = config.terminal("bakery_1").inbox
    path = drop_receipt(inbox, receipt_doc("R0003"))
    sensor = _sensor(config)
    first = tick_sensor(sensor, None)
    path.unlink()  # the run archived it

    drop_receipt(inbox, receipt_doc("R0003"), age=0.5)
    second = tick_sensor(sensor, first.cursor)

    assert len(second.run_requests) == 1
    assert second.run_requests[0].run_key != first.run_requests[0].run_key


def test_unreadable_inbox_skips_only_that_terminal(config):
    bakery = config.terminal("bakery_1")
    drop_receipt(config.terminal("butcher_1").inbox, receipt_doc("B1", "butcher_1", "20"))
    os.rename(bakery.inbox, bakery.inbox.with_name("moved-away"))

    bakery_result = tick_sensor(_sensor(config, "bakery_1"), None)
    butcher_result = tick_sensor(_sensor(config, "butcher_1"), None)

    assert bakery_result.run_requests == []
    assert "unreadable" in bakery_result.skip_reason.skip_message
    assert len(butcher_result.run_requests) == 1


def test_temp_and_hidden_files_are_ignored(config):
    inbox = config.terminal("bakery_1").inbox
    drop_receipt(inbox, receipt_doc("R0004"), name="R0004.json.tmp")
    drop_receipt(inbox, receipt_doc("R0005"), name=".R0005.json")

    result = tick_sensor(_sensor(config), None)
    assert result.run_requests == []


def test_run_key_is_the_one_any_launcher_derives_for_the_same_file_versions(config):
    from posfed_pipeline.core.intake import parsing
    from posfed_pipeline.core.state import inbox

    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, receipt_doc("R0006", timestamp="2026-11-24T10:15:00+01:00"))
    ready = inbox.scan_inbox(terminal, stability_seconds=0).ready
    [planned] = inbox.plan_batches(
        terminal, ready, lambda f: parsing.business_day_of_file(f.path, terminal)
    )

    [request] = tick_sensor(_sensor(config), None).run_requests
    assert request.run_key == planned.run_key


def test_a_file_claimed_by_another_launcher_is_not_launched_again(config):
    from posfed_pipeline.core.state import claims, inbox

    terminal = config.terminal("bakery_1")
    path = drop_receipt(terminal.inbox, receipt_doc("R0008"))
    claim_table = claims.ClaimTable(claims.claim_table_path(config.home))
    signature = inbox.stat_inbox_file(path).signature
    assert claim_table.claim("bakery_1", [signature], lambda won: "trigger-key") == [signature]

    result = tick_sensor(_sensor(config), None)
    assert result.run_requests == []
    assert result.skip_reason.skip_message == "1 file(s) waiting on their run"


def test_business_day_falls_back_to_arrival_day_for_unparseable_files(config):
    inbox = config.terminal("bakery_1").inbox
    drop_receipt(inbox, b"not json at all", name="garbage.json")
    result = tick_sensor(_sensor(config), None)
    today = datetime.now(config.timezone).date()
    assert [r.partition_key for r in result.run_requests] == [f"{today:%Y-%m-%d}|bakery_1"]


@pytest.mark.slow
def test_files_of_a_failed_run_are_launched_again_and_then_processed_once(config, tmp_path):
    from posfed_pipeline.core.state.ledger import open_ledger
    from posfed_pipeline.names import RECEIPTS_JOB

    config = replace(config, relaunch_after_seconds=0.0, _by_id={})
    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, receipt_doc("R0007", timestamp="2026-11-20T10:00:00+01:00"))
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def("bakery_1_inbox_sensor")
    job = defs.resolve_job_def(RECEIPTS_JOB)
    # The same job while its .dat layout spec is broken (a botched deployment).
    broken = tmp_path / "broken.json"
    broken.write_text("{ not a spec")
    broken_spec = replace(config, dat_spec=broken, _by_id={})
    broken_job = build_definitions(broken_spec).resolve_job_def(RECEIPTS_JOB)

    with dg.instance_for_test() as instance:
        first = tick_sensor(sensor, None, instance)
        assert not run_as_the_daemon_would(
            broken_job, first.run_requests[0], instance, sensor.name
        ).success
        assert (terminal.inbox / "R0007.json").exists()  # the run failed: the file stays put

        second = tick_sensor(sensor, first.cursor, instance)
        [retry] = second.run_requests
        assert retry.run_key == first.run_requests[0].run_key + ":retry1"
        # The same files, the run told it is their second attempt.
        assert _batch_config(retry) == {**_batch_config(first.run_requests[0]), "attempt": 1}

        # The cause is gone.
        assert run_as_the_daemon_would(job, retry, instance, sensor.name).success

        third = tick_sensor(sensor, second.cursor, instance)
        assert third.run_requests == []
    assert not (terminal.inbox / "R0007.json").exists()
    assert open_ledger(config.home).delivery_outcomes() == [("R0007.json", "R0007", "inserted")]


def test_while_the_trigger_is_alive_the_sensor_only_catches_up_on_old_files(config):
    from posfed_pipeline.core.state import claims

    inbox = config.terminal("bakery_1").inbox
    drop_receipt(inbox, receipt_doc("FRESH"), age=1.0)
    drop_receipt(inbox, receipt_doc("MISSED"), age=config.catchup_grace_seconds + 5)
    claims.ClaimTable(claims.claim_table_path(config.home)).beat()

    [request] = tick_sensor(_sensor(config), None).run_requests

    assert request.run_config["ops"]["receipt_pipeline"]["config"]["files"] == ["MISSED.json"]


@pytest.mark.slow
def test_a_file_left_by_a_successful_run_is_looked_at_again(config):
    """A run that found a file still being written leaves it (and succeeds); the sensor gives
    the file another run after the relaunch delay, which judges it once its writer is gone."""
    from posfed_pipeline.core import central_db
    from posfed_pipeline.names import RECEIPTS_JOB

    config = replace(config, relaunch_after_seconds=0.0, incomplete_grace_seconds=3.0, _by_id={})
    central_db.upgrade_database(central_db.make_engine(config.db_url))
    terminal = config.terminal("bakery_1")
    path = drop_receipt(terminal.inbox, b'{"receiptId": "CUT1", "ite', name="CUT1.json", age=0.5)
    clock = ManualClock()
    defs = build_definitions(config, clock=clock)
    sensor = defs.resolve_sensor_def("bakery_1_inbox_sensor")
    job = defs.resolve_job_def(RECEIPTS_JOB)

    with dg.instance_for_test() as instance:
        first = tick_sensor(sensor, None, instance)
        assert run_as_the_daemon_would(job, first.run_requests[0], instance, sensor.name).success
        assert path.exists()  # younger than the grace period: left to its writer

        clock.advance(config.incomplete_grace_seconds)  # the grace period passes
        second = tick_sensor(sensor, first.cursor, instance)
        [again] = second.run_requests
        assert again.run_key == first.run_requests[0].run_key + ":retry1"
        assert run_as_the_daemon_would(job, again, instance, sensor.name).success
    assert not path.exists()
    assert (terminal.quarantine / "CUT1.json.error.json").exists()


def test_without_partitions_start_the_store_starts_on_its_first_day_and_keeps_it(
    tmp_path, monkeypatch
):
    """The UI offers days from the store's first business day (not an arbitrary January 1st),
    every process agrees on it, and a receipt older than that day still gets a run."""
    from posfed_pipeline.core.config import config_from_dict
    from posfed_pipeline_tests.support.stores import store_config_dict

    monkeypatch.delenv("POSFED_HOME", raising=False)
    raw = store_config_dict(tmp_path / "home")
    del raw["store"]["partitions_start"]
    config = config_from_dict(raw, base_dir=tmp_path)
    config.ensure_folders()
    (config.dat_dir / "20261115").mkdir()  # a .dat day folder: the store had data then
    assert config.first_partition_day == date(2026, 11, 15)
    (config.dat_dir / "20261001").mkdir()  # recorded once: a later finding changes nothing
    again = config_from_dict(raw, base_dir=tmp_path)
    assert again.first_partition_day == date(2026, 11, 15)
    assert (config.home / "first_business_day").read_text() == "2026-11-15\n"

    # A receipt dated before the first day runs in the first day's partition.
    terminal = config.terminal("bakery_1")
    old = datetime(2026, 11, 2, 10, 0, tzinfo=terminal.timezone).isoformat()
    drop_receipt(terminal.inbox, receipt_doc("OLD1", timestamp=old))
    [request] = tick_sensor(_sensor(config), None).run_requests
    assert request.partition_key == "2026-11-15|bakery_1"


def test_the_catch_up_interval_is_the_sensors_and_is_checked(tmp_path):
    import pytest

    from posfed_pipeline.core.config import ConfigError, config_from_dict
    from posfed_pipeline.names import inbox_sensor_name
    from posfed_pipeline_tests.support.stores import store_config_dict

    def sensor_interval(**intake) -> int:
        raw = store_config_dict(tmp_path)
        raw["intake"] = {"stability_seconds": 0.2, **intake}
        config = config_from_dict(raw, base_dir=tmp_path)
        terminal = config.terminals[0]
        sensor = build_definitions(config).resolve_sensor_def(inbox_sensor_name(terminal.id))
        return sensor.minimum_interval_seconds

    # A second under a multiple of the daemon's 5-s loop: a loop a little early still ticks.
    assert sensor_interval() == 29  # the default, 30 s
    assert sensor_interval(catchup_interval_seconds=4) == 4
    assert sensor_interval(catchup_interval_seconds=60) == 59
    with pytest.raises(ConfigError, match="catchup_interval_seconds must be a number from 1"):
        sensor_interval(catchup_interval_seconds=0)


def test_terminal_day_partitions_cover_a_rolling_window_of_months():
    """Terminals x days passes Dagster's advised 100,000 partitions per asset in under two
    years at 200 terminals: the terminal partitions start the first of the month a year back."""
    from posfed_pipeline.core.config import partition_window_start

    first = date(2023, 12, 6)
    assert partition_window_start(first, date(2026, 12, 6), 12) == date(2025, 12, 1)
    assert partition_window_start(first, date(2026, 12, 31), 12) == date(2025, 12, 1)
    assert partition_window_start(first, date(2027, 1, 1), 12) == date(2026, 1, 1)
    assert partition_window_start(first, date(2026, 3, 15), 3) == date(2025, 12, 1)
    assert partition_window_start(first, date(2026, 12, 6), 0) == first  # no window
    assert partition_window_start(date(2026, 6, 2), date(2026, 12, 6), 12) == date(2026, 6, 2)


def test_a_receipt_older_than_the_window_still_runs_and_old_days_stay_backfillable(tmp_path):
    """200 terminals x 3 years would be 219,000 partitions; the window keeps at most 13 months.
    A receipt from before the window runs in its first day; a wider window (or 0) brings the
    old days back into the UI for a backfill, and the store-wide days keep all history."""
    import pytest

    from posfed_pipeline.core.config import ConfigError, config_from_dict
    from posfed_pipeline.names import RECEIPTS_JOB
    from posfed_pipeline_tests.support.stores import store_config_dict

    def store(**settings):
        raw = store_config_dict(tmp_path / "home")
        raw["store"].update(partitions_start="2023-12-06", **settings)
        return config_from_dict(raw, base_dir=tmp_path)

    config = store()
    config.ensure_folders()
    today = datetime.now(config.timezone).date()
    window_start = date(today.year - 1, today.month, 1)
    assert config.terminal_day_start == window_start
    defs = build_definitions(config)
    terminal_days = defs.resolve_job_def(RECEIPTS_JOB).partitions_def
    keys = terminal_days.get_partition_keys()
    assert f"{window_start}|bakery_1" in keys
    assert f"{window_start - timedelta(days=1)}|bakery_1" not in keys
    assert len(keys) <= 2 * (366 + 31)
    settlement_days = defs.resolve_job_def("settlement_job").partitions_def.get_partition_keys()
    assert settlement_days[0] == "2023-12-06"

    terminal = config.terminal("bakery_1")
    old = datetime(2024, 3, 2, 10, 0, tzinfo=terminal.timezone).isoformat()
    drop_receipt(terminal.inbox, receipt_doc("OLD1", timestamp=old))
    [request] = tick_sensor(_sensor(config), None).run_requests
    assert request.partition_key == f"{window_start}|bakery_1"

    everything = store(partition_window_months=0)
    assert everything.terminal_day_start == date(2023, 12, 6)
    keys = build_definitions(everything).resolve_job_def(RECEIPTS_JOB).partitions_def
    assert "2024-03-02|bakery_1" in keys.get_partition_keys()

    for wrong in (-1, 1.5, "12", True):
        with pytest.raises(ConfigError, match=r"\[store\] partition_window_months must be a whole"):
            store(partition_window_months=wrong)


def test_many_terminals_sensors_tick_less_often_so_an_idle_store_stays_cheap(tmp_path):
    """Each tick costs the daemon ~18 ms whatever the sensor returns: 20 terminals tick every
    30 s each as configured; 200 together at most 0.7 times a second (docs/benchmarks.md)."""
    from posfed_pipeline.core.config import load_config
    from posfed_pipeline.defs.inbox_sensors import catchup_interval
    from posfed_pipeline_tests.support.stores import write_store_config

    def interval(count: int) -> int:
        terminals = [
            {
                "id": f"till_{n}",
                "department": f"{10 + n % 80}",
                "tenant": f"T{n}",
                "receipt_id_prefix": f"{n:03d}",
            }
            for n in range(count)
        ]
        path = write_store_config(
            tmp_path / f"{count}.toml", tmp_path / f"s{count}", terminals=terminals
        )
        return catchup_interval(load_config(path))

    assert interval(20) == 29
    assert 284 <= interval(200) <= 289  # 200 / 0.7 s, on the daemon's 5-s loop
    assert 200 / interval(200) <= 0.7


def test_a_dead_triggers_claims_are_relaunched_while_a_new_trigger_lives(config):
    """A trigger killed with files in its checkout leaves claims without a run; the live
    trigger's own claims are left to it (its checkout may queue a flood for minutes)."""
    import sqlite3
    import time

    from posfed_pipeline.core.state import claims

    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, receipt_doc("LEFT"), age=120)
    table = claims.ClaimTable(claims.claim_table_path(config.home))
    [version] = [f for f in inbox_scan(terminal) if f.name == "LEFT.json"]
    table.claim(terminal.id, [version.signature], lambda _: "bakery_1:checkout-left")

    def claimed_ago(seconds: float) -> None:
        with sqlite3.connect(claims.claim_table_path(config.home)) as db:
            db.execute("UPDATE claim SET claimed_at = ?", (time.time() - seconds,))

    def started_ago(seconds: float) -> None:
        with sqlite3.connect(claims.claim_table_path(config.home)) as db:
            db.execute(
                "INSERT OR REPLACE INTO heartbeat VALUES (?, ?)",
                (claims.TRIGGER_STARTED, time.time() - seconds),
            )

    table.beat()  # a trigger is alive
    claimed_ago(60)
    started_ago(90)  # ...and made this claim a minute ago: its checkout has it
    assert tick_sensor(_sensor(config), None).run_requests == []
    started_ago(30)  # ...no: it started after the claim, which a trigger before it left
    [request] = tick_sensor(_sensor(config), None).run_requests
    assert request.run_config["ops"]["receipt_pipeline"]["config"]["files"] == ["LEFT.json"]
    assert request.run_key.endswith(":retry1")


def inbox_scan(terminal):
    from posfed_pipeline.core.state import inbox

    return inbox.scan_inbox(terminal, stability_seconds=0).ready
