"""The production instance profile, live: Dagster's storage and the central database on PostgreSQL.

deploy/dagster.prod.yaml is written unchanged into a temp DAGSTER_HOME and finds its database
through the DAGSTER_PG_* variables alone, as on a store server. A real ``dagster-daemon run``
watches a temp store; a dropped receipt must become a .dat file, a row in the central database,
and a successful run plus the sensor tick that launched it, recorded in PostgreSQL.

Without a PostgreSQL server at 127.0.0.1:5432 this skips, except in CI (``CI=true``), where it
fails: the production profile must never silently go untested.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime
from decimal import Decimal
from pathlib import Path

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
def prod_store(tmp_path, pg_databases, monkeypatch):
    """A temp store whose Dagster home holds the production profile; returns (config, env)."""
    dagster_pg = {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_USER": "postgres",
        # The local server trusts local connections; an empty password is left out of the URL.
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": pg_databases["dagster"],
    }
    register_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{pg_databases['register']}"
    config_path = write_store_config(tmp_path / "posfed.toml", tmp_path / "state")
    dagster_home = tmp_path / "dagster_home"
    render_instance_yaml(dagster_home, "prod")
    env = {
        **os.environ,
        **dagster_pg,
        "DAGSTER_HOME": str(dagster_home),
        "POSFED_CONFIG": str(config_path),
        "POSFED_DB_URL": register_url,
    }
    env.pop("POSFED_HOME", None)
    env.pop("POSFED_DB_PASSWORD", None)
    # This process opens the same instance afterwards, so it needs the same variables.
    for name, value in dagster_pg.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("POSFED_DB_URL", register_url)
    monkeypatch.delenv("POSFED_HOME", raising=False)
    config = load_config(config_path)
    config.ensure_folders()
    # The install steps of docs/deployment.md: the central database's schema, then Dagster's.
    central_db.upgrade_database(central_db.make_engine(config.db_url))
    subprocess.run(
        [str(_venv_bin("dagster")), "instance", "migrate"],
        env=env,
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return config, env


@pytest.fixture
def running_daemon(prod_store, tmp_path):
    """As the production units run them: the code server (posfed-code-server.service's own
    command) and the daemon, which loads the code location from it."""
    config, env = prod_store
    env = {**env, "POSFED_CODE_SERVER_SOCKET": str(tmp_path / "code-server.sock")}
    with (
        dagster_process(
            _unit_command("posfed-code-server.service", env),
            env=env,
            log_path=tmp_path / "code-server.log",
        ),
        dagster_process(
            ["dagster-daemon", "run", "-w", str(REPO_ROOT / "deploy/workspace.code-server.yaml")],
            env=env,
            log_path=tmp_path / "daemon.log",
        ),
    ):
        yield config, Path(env["DAGSTER_HOME"])


def _unit_command(unit: str, env: dict[str, str]) -> list[str]:
    """A unit's ExecStart, its variables filled in from ``env``, as a command of this venv."""
    text = (REPO_ROOT / "deploy/systemd" / unit).read_text()
    [line] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    words = line.removeprefix("ExecStart=").split()
    words = [re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], word) for word in words]
    return [Path(words[0]).name, *words[1:]]


def test_the_units_agree_on_the_code_server_and_its_code_location():
    """The daemon and the web UI load the code location from the code server's socket, by the
    same default; the code server serves it under the one name posfed uses everywhere."""
    import yaml

    from posfed_pipeline import packaged

    units = {
        name: (REPO_ROOT / "deploy/systemd" / name).read_text()
        for name in (
            "posfed-code-server.service",
            "posfed-dagster-daemon.service",
            "posfed-dagster-webserver.service",
        )
    }
    sockets = {
        re.search(r"^Environment=POSFED_CODE_SERVER_SOCKET=(\S+)$", text, re.MULTILINE)[1]
        for text in units.values()
    }
    assert len(sockets) == 1
    for name in ("posfed-dagster-daemon.service", "posfed-dagster-webserver.service"):
        assert " -w /opt/posfed/deploy/workspace.code-server.yaml" in units[name]
        assert "Wants=network-online.target posfed-code-server.service" in units[name]
    workspace = yaml.safe_load((REPO_ROOT / "deploy/workspace.code-server.yaml").read_text())
    [entry] = workspace["load_from"]
    assert entry["grpc_server"]["socket"] == {"env": "POSFED_CODE_SERVER_SOCKET"}
    assert entry["grpc_server"]["location_name"] == packaged.location_name()
    command = _unit_command("posfed-code-server.service", {"POSFED_CODE_SERVER_SOCKET": "S"})
    assert command[command.index("--socket") + 1] == "S"
    assert command[command.index("--location-name") + 1] == packaged.location_name()


@pytest.mark.postgres
def test_prod_profile_records_runs_and_ticks_in_postgres(running_daemon, pg_databases, tmp_path):
    import psycopg

    config, dagster_home = running_daemon
    log = tmp_path / "daemon.log"
    terminal = config.terminal("bakery_1")
    now = datetime.now(terminal.timezone).replace(microsecond=0)
    drop_receipt(terminal.inbox, receipt_doc("P0001", timestamp=now.isoformat()), age=0)

    dat_file = config.dat_dir / now.strftime("%Y%m%d") / "scon10P0001.dat"
    wait_for(dat_file.exists, 120, str(dat_file), log)
    assert dat_file.read_bytes().startswith(b"0010P0001")

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        from dagster_postgres import (
            PostgresEventLogStorage,
            PostgresRunStorage,
            PostgresScheduleStorage,
        )

        # dagster-postgres's storages, each with posfed's per-process connection pool.
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert instance.run_storage._engine.pool.__class__.__name__ == "QueuePool"
        assert instance.run_monitoring_enabled
        # Operators see no "Join the Dagster community" prompt; nothing is reported home.
        assert not instance.nux_enabled
        assert not instance.telemetry_enabled

        def finished_runs():
            runs = instance.get_runs(
                filters=dg.RunsFilter(tags={"dagster/sensor_name": "bakery_1_inbox_sensor"})
            )
            return runs if runs and all(r.is_finished for r in runs) else None

        runs = wait_for(finished_runs, 30, "the run to finish", log)
        assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS]
        run = runs[0]
        assert run.tags["dagster/partition"] == f"{now:%Y-%m-%d}|bakery_1"
        assert run.tags["posfed/terminal"] == "bakery_1"

        state = next(
            s
            for s in instance.all_instigator_state()
            if s.instigator_name == "bakery_1_inbox_sensor"
        )
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id)
        assert any(t.run_ids == [run.run_id] for t in ticks)

        # The run-monitoring daemon is alive beside the sensor and run-queue daemons.
        heartbeats = wait_for(
            lambda: (
                {"SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING"}
                <= set(instance.get_daemon_heartbeats())
                and instance.get_daemon_heartbeats()
            ),
            30,
            "daemon heartbeats",
            log,
        )
        assert {"SENSOR", "QUEUED_RUN_COORDINATOR", "MONITORING"} <= set(heartbeats)

    # Straight from PostgreSQL, past Dagster's API: the run and the tick are stored there.
    dagster_dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={pg_databases['dagster']}"
    with psycopg.connect(dagster_dsn) as db:
        assert db.execute(
            "SELECT pipeline_name, status, partition FROM runs WHERE run_id = %s", (run.run_id,)
        ).fetchall() == [("receipts_job", "SUCCESS", f"{now:%Y-%m-%d}|bakery_1")]
        (ticks_with_run,) = db.execute(
            "SELECT count(*) FROM job_ticks WHERE selector_id = %s AND tick_body LIKE %s",
            (state.selector_id, f"%{run.run_id}%"),
        ).fetchone()
        assert ticks_with_run >= 1

    # The central database gets it from the store's ledger: the sync sensor's run, by itself.
    register_dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={pg_databases['register']}"

    def registered():
        with psycopg.connect(register_dsn) as db:
            return db.execute("SELECT terminal_id, receipt_id, total FROM pos_receipt").fetchall()

    assert wait_for(registered, 60, "the central database sync", log) == [
        ("bakery_1", "P0001", Decimal("6.40"))
    ]


def _venv_bin(name: str) -> Path:
    return Path(sys.executable).with_name(name)
