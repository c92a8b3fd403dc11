"""A real Dagster daemon watches a temp store: a dropped receipt becomes a .dat file and a run."""

import os
import shutil
from datetime import datetime

import dagster as dg
import pytest

from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import load_config
from posfed_pipeline.dagster_home import render_instance_yaml
from posfed_pipeline_tests.support.processes import wait_for
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.servers import dagster_process
from posfed_pipeline_tests.support.stores import write_store_config

# Starts real processes (Dagster, servers, browsers): `make check` leaves it out.
pytestmark = pytest.mark.slow


@pytest.fixture
def running_daemon(tmp_path):
    config_path = write_store_config(tmp_path / "posfed.toml", tmp_path / "state")
    config = load_config(config_path)
    config.ensure_folders()
    central_db.upgrade_database(central_db.make_engine(config.db_url))
    dagster_home = tmp_path / "dagster_home"
    render_instance_yaml(dagster_home)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "POSFED_CONFIG": str(config_path),
    }
    env.pop("POSFED_HOME", None)
    env.pop("POSFED_DB_URL", None)
    with dagster_process(
        ["dagster-daemon", "run", "-w", str(REPO_ROOT / "workspace.yaml")],
        env=env,
        log_path=tmp_path / "daemon.log",
    ):
        yield config, dagster_home


def test_daemon_sensor_launches_run_that_writes_dat(running_daemon, tmp_path):
    config, dagster_home = running_daemon
    terminal = config.terminal("bakery_1")
    # Another terminal's inbox is broken (a file where its folder should be): it must not
    # delay or fail the bakery's receipt.
    broken = config.terminal("butcher_1").inbox
    shutil.rmtree(broken)
    broken.write_text("not a folder")
    now = datetime.now(terminal.timezone).replace(microsecond=0)
    drop_receipt(terminal.inbox, receipt_doc("D0001", timestamp=now.isoformat()), age=0)

    dat_file = config.dat_dir / now.strftime("%Y%m%d") / "scon10D0001.dat"
    wait_for(dat_file.exists, 120, f"{dat_file}", tmp_path / "daemon.log")
    assert dat_file.read_bytes().startswith(b"0010D0001")
    wait_for(
        lambda: (terminal.archive_dir(now.date()) / "D0001.json").exists(),
        30,
        "the original in the archive",
        tmp_path / "daemon.log",
    )

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:

        def finished_runs():
            runs = instance.get_runs(
                filters=dg.RunsFilter(tags={"dagster/sensor_name": "bakery_1_inbox_sensor"})
            )
            return [r for r in runs if r.is_finished] and runs

        runs = wait_for(finished_runs, 30, "the run to finish", tmp_path / "daemon.log")
        assert len(runs) == 1
        run = runs[0]
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == f"{now:%Y-%m-%d}|bakery_1"
        assert run.tags["posfed/terminal"] == "bakery_1"
        # The terminal's sensor recorded the tick that launched it (what the UI shows).
        state = _sensor_state(instance, "bakery_1")
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
        assert any(t.run_ids == [run.run_id] for t in ticks)

        butcher = _sensor_state(instance, "butcher_1")
        butcher_ticks = instance.get_ticks(butcher.instigator_origin_id, butcher.selector_id)
        assert any("unreadable" in (t.skip_reason or "") for t in butcher_ticks)


def _sensor_state(instance, terminal_id):
    states = instance.all_instigator_state()
    return next(s for s in states if s.instigator_name == f"{terminal_id}_inbox_sensor")
