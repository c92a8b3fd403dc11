"""Security: what a receipt, a run's config or a deployment setting can and cannot reach.

- nothing in a receipt (or in a run's file list, editable in the UI) writes outside the
  configured folders;
- receipt text reaches the database only as bound parameters, and the UI only as text;
- database credentials come only from the environment and are never stored by Dagster;
- the web UI listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import zlib
from contextlib import suppress
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import event, inspect, select

from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import ConfigError, config_from_dict, load_config
from posfed_pipeline.core.dat import load_spec
from posfed_pipeline.core.stages.processing import process_batch
from posfed_pipeline.core.stages.sync import sync_pending
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.defs.partitions import terminal_day_key
from posfed_pipeline.defs.receipts import ReceiptBatchConfig, receipt_op_config
from posfed_pipeline.names import RECEIPTS_JOB, SYNC_JOB
from posfed_pipeline_tests.support.processes import free_port, wait_for
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.servers import dagster_process
from posfed_pipeline_tests.support.stores import store_config_dict, write_store_config

HOSTILE_IDS = [
    "../../../../escaped",
    "/tmp/escaped",
    "..",
    "a/b",
    "a\\b",
    "C:escaped",
    "x\x00y",
    "%2e%2e%2fescaped",
    "~escaped",
    "\u2215escaped",
]


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _run_sensor_and_runs(config, instance) -> list[dg.ExecuteInProcessResult]:
    """What the daemon does for one terminal: a sensor tick, then each of its runs, then the
    central database sync; returns the receipt runs' results."""
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def("bakery_1_inbox_sensor")
    job = defs.resolve_job_def(RECEIPTS_JOB)
    results = []
    for request in sensor(dg.build_sensor_context(instance=instance)).run_requests:
        results.append(
            job.execute_in_process(
                run_config=request.run_config,
                instance=instance,
                partition_key=request.partition_key,
                raise_on_error=False,
            )
        )
    assert defs.resolve_job_def(SYNC_JOB).execute_in_process(instance=instance).success
    return results


@pytest.mark.slow
def test_hostile_receipts_write_nothing_outside_the_store_folders(config, engine, tmp_path):
    terminal = config.terminal("bakery_1")
    for n, receipt_id in enumerate(HOSTILE_IDS):
        drop_receipt(terminal.inbox, receipt_doc(receipt_id), name=f"H{n:02d}.json")
    drop_receipt(terminal.inbox, receipt_doc("H90", terminal_id="../../escaped"), name="H90.json")
    drop_receipt(terminal.inbox, receipt_doc("H91", department="../.."), name="H91.json")
    # A link to a receipt-shaped file elsewhere: never followed, never moved.
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(receipt_doc("OUT1")))
    (terminal.inbox / "link.json").symlink_to(outside)
    before = _files_under(tmp_path)

    with dg.instance_for_test() as instance:
        results = _run_sensor_and_runs(config, instance)

    assert results and all(r.success for r in results)
    created = _files_under(tmp_path) - before
    assert created, "the rejected files' quarantine reports"
    for path in created:
        assert path.resolve().is_relative_to(config.home.resolve()), path
    assert not list(tmp_path.parent.rglob("*escaped*"))
    assert json.loads(outside.read_text())["receiptId"] == "OUT1"
    assert (terminal.inbox / "link.json").is_symlink()
    reports = list(terminal.quarantine.glob("*.error.json"))
    assert len(reports) == len(HOSTILE_IDS) + 2  # every hostile file, each with its reason
    with engine.connect() as connection:
        assert connection.execute(select(central_db.ReceiptRow.receipt_id)).all() == []
    assert not list(config.dat_dir.rglob("*.dat"))


def test_a_run_given_a_path_instead_of_a_file_name_fails_and_touches_nothing(
    config, engine, tmp_path
):
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(receipt_doc("OUT1")))
    defs = build_definitions(config)
    job = defs.resolve_job_def(RECEIPTS_JOB)
    day = datetime.now(config.timezone).date()
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            run_config=receipt_op_config(ReceiptBatchConfig(files=["../../../outside.json"])),
            instance=instance,
            partition_key=terminal_day_key("bakery_1", day),
            raise_on_error=False,
        )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "is not a receipt file name in bakery_1's inbox" in str(failure.event_specific_data)
    assert outside.exists() and json.loads(outside.read_text())["receiptId"] == "OUT1"


HOSTILE_TEXT = "Brood'); DROP TABLE pos_receipt; --"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def hostile_db(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'central.db'}"
    else:
        url = request.getfixturevalue("pg_database_url")
    engine = central_db.make_engine(url)
    central_db.upgrade_database(engine)
    yield engine
    engine.dispose()


def test_receipt_text_reaches_the_database_only_as_bound_parameters(config, hostile_db):
    statements: list[tuple[str, object]] = []

    @event.listens_for(hostile_db, "before_cursor_execute")
    def _record(connection, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    terminal = config.terminal("bakery_1")
    doc = receipt_doc("SQL1")
    doc["items"][0]["description"] = HOSTILE_TEXT
    path = drop_receipt(terminal.inbox, doc)
    ledger = open_ledger(config.home)
    summary = process_batch(
        config, terminal, [path], ledger=ledger, spec=load_spec(config.dat_spec)
    )
    sync_pending(ledger, hostile_db)

    assert len(summary.acceptance.inserted) == 1
    assert statements
    assert not [s for s, _ in statements if "DROP TABLE" in s or "Brood'" in s]
    assert any(HOSTILE_TEXT in repr(params) for _, params in statements)
    with hostile_db.connect() as connection:
        stored = connection.execute(select(central_db.ReceiptLineRow.description)).scalars().all()
    assert HOSTILE_TEXT in stored
    assert "pos_receipt" in inspect(hostile_db).get_table_names()


def test_database_settings_in_the_config_file_are_refused(tmp_path):
    raw = store_config_dict(tmp_path / "home")
    raw["database"] = {"url": "postgresql://posfed:secret@db/register"}
    with pytest.raises(ConfigError, match="POSFED_DB_PASSWORD.*never go in this file"):
        config_from_dict(raw, base_dir=tmp_path)


def test_credentials_or_misspelt_settings_anywhere_in_the_config_file_are_refused(tmp_path):
    raw = store_config_dict(tmp_path / "home")
    raw["store"]["db_password"] = "secret"
    with pytest.raises(ConfigError, match=r"\[store\]: unknown setting.*db_password.*POSFED_DB"):
        config_from_dict(raw, base_dir=tmp_path)
    raw = store_config_dict(tmp_path / "home")
    raw["intake"]["incomplete_grace_second"] = 30  # a typo would silently mean the default
    with pytest.raises(ConfigError, match="incomplete_grace_second.*known: .*incomplete_grace"):
        config_from_dict(raw, base_dir=tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_the_database_password_comes_from_the_environment_and_dagster_never_stores_it(
    pg_database_url, tmp_path, monkeypatch
):
    # PostgreSQL here trusts local connections, so any password works: the point is where the
    # password travels, not that the server checks it.
    secret = "s3cret-Pa55-for-posfed"
    monkeypatch.setenv("POSFED_DB_URL", pg_database_url)
    monkeypatch.setenv("POSFED_DB_PASSWORD", secret)
    monkeypatch.delenv("POSFED_HOME", raising=False)
    config_path = write_store_config(tmp_path / "posfed.toml", tmp_path / "home")
    config = load_config(config_path)
    config.ensure_folders()
    assert secret in config.db_url  # used to connect...
    central_db.upgrade_database(central_db.make_engine(config.db_url))
    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, receipt_doc("PW1"))

    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
        [result] = _run_sensor_and_runs(config, instance)
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert secret not in json.dumps(run.run_config)

    # ...and nowhere in what Dagster keeps: runs, event logs, sensor state, snapshots (which
    # Dagster stores zlib-compressed, so every value is looked at decompressed as well).
    assert _stored_values_containing(dagster_home, secret) == []
    engine = central_db.make_engine(config.db_url)
    with engine.connect() as connection:
        loaded = connection.execute(select(central_db.ReceiptRow.receipt_id)).scalars().all()
    assert "PW1" in loaded  # the run connected with the password from the environment
    engine.dispose()


def _stored_values_containing(dagster_home: Path, secret: str) -> list[str]:
    """Where ``secret`` appears in Dagster's storage: raw file bytes, and every value of every
    SQLite table, zlib-decompressed when it is compressed."""
    needle = secret.encode()
    found = [str(p) for p in _files_under(dagster_home) if needle in p.read_bytes()]
    databases = [p for p in _files_under(dagster_home) if p.suffix == ".db"]
    assert databases, "Dagster's SQLite storage"
    for database in databases:
        connection = sqlite3.connect(database)
        try:
            tables = [
                r[0]
                for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                for row in connection.execute(f'SELECT * FROM "{table}"'):
                    for value in row:
                        data = value.encode() if isinstance(value, str) else value
                        if not isinstance(data, bytes):
                            continue
                        with suppress(zlib.error):
                            data += zlib.decompress(data)
                        if needle in data:
                            at = data.index(needle)
                            found.append(f"{database.name}:{table}: …{data[at - 300 : at + 40]!r}")
        finally:
            connection.close()
    return found


class LeakyResource(dg.ConfigurableResource):
    password: str


@dg.op
def uses_leaky(leaky: LeakyResource) -> None: ...


@dg.job(resource_defs={"leaky": LeakyResource(password="plain-Pa55-in-config")})
def leaky_job():
    uses_leaky()


def test_the_secret_search_finds_a_password_in_a_compressed_job_snapshot(tmp_path):
    """The check above can fail: a resource holding its password in plain config is found."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
        assert leaky_job.execute_in_process(instance=instance).success
    assert _stored_values_containing(dagster_home, "plain-Pa55-in-config")


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (IPv4 and IPv6)."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, 32, 8))
                    found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


@pytest.mark.slow
def test_the_demo_web_ui_listens_on_the_loopback_only(tmp_path):
    config_path = write_store_config(tmp_path / "posfed.toml", tmp_path / "home")
    port = free_port()
    env = dict(os.environ, POSFED_CONFIG=str(config_path))
    for name in ("POSFED_HOME", "POSFED_DB_URL", "DAGSTER_HOME"):
        env.pop(name, None)
    log = tmp_path / "demo.log"
    command = ["posfed", "demo", "--no-simulator", "--no-fastpath", "--port", str(port)]
    with dagster_process(command, env=env, log_path=log) as demo:
        addresses = wait_for(lambda: _listening_addresses(port), 120, "the web UI", log)
    assert addresses == {"127.0.0.1"}
    # Ctrl-C stopped the demo and all it started: no webserver or daemon left behind.
    assert demo.outlived == []


def test_the_production_web_ui_unit_binds_the_loopback_unless_configured():
    unit = (REPO_ROOT / "deploy/systemd/posfed-dagster-webserver.service").read_text()
    lines = unit.splitlines()
    host = lines.index("Environment=DAGSTER_WEBSERVER_HOST=127.0.0.1")
    # The operator's env file may override it, so it must be read after the default.
    assert host < lines.index("EnvironmentFile=/etc/posfed/posfed.env")


@pytest.mark.slow
def test_receipt_text_in_the_run_metadata_renders_as_text_not_markup(config):
    """A receipt id like [Pay](https://x), a barcode carrying HTML, a file name with a table
    pipe and an image: through the sensor and the run, the UI shows them as the text they are."""
    from markdown_it import MarkdownIt

    from posfed_pipeline_tests.support.daemon import run_as_the_daemon_would, tick_sensor

    terminal = config.terminal("bakery_1")
    when = "2026-11-20T10:15:00+01:00"
    drop_receipt(terminal.inbox, receipt_doc("[Pay](https://x)", timestamp=when), name="a.json")
    hostile_line = {
        "barcode": '<img src=x onerror="alert(1)">',
        "description": "Brood",
        "price": "2.95",
        "quantity": 1,
    }
    drop_receipt(
        terminal.inbox,
        receipt_doc("R0002", timestamp=when, items=[hostile_line]),
        name="b | ![x](x.png) www.x.nl.json",
    )
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def("bakery_1_inbox_sensor")
    with dg.instance_for_test() as instance:
        tables = []
        # Two runs: the receipt with the unusable id is filed under the day it arrived.
        for request in tick_sensor(sensor, None, instance).run_requests:
            result = run_as_the_daemon_would(
                defs.resolve_job_def(RECEIPTS_JOB), request, instance, sensor.name
            )
            tables += [
                check.metadata["reasons"].value
                for check in result.get_asset_check_evaluations()
                if check.check_name == "validation_pass_rate"
            ]
    assert len(tables) == 2

    pages = [MarkdownIt("commonmark").enable("table").render(table) for table in tables]
    for page in pages:
        assert "<a " not in page and "<img" not in page
        assert page.count("<tr>") == 2  # the header and the file's row: no cell split off
    page = "".join(pages)
    assert "[Pay](https://x)" in page  # shown, as text
    assert "&lt;img src=x onerror=" in page
    assert "b | ![x](x.png) www.x.nl.json" in page
