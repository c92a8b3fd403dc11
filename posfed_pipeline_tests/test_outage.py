"""The checkout never waits for the central database: real PostgreSQL, real faults.

A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl`` in a temp folder, on a free port; the
shared server on 5432 is never stopped) sits behind a TCP fault proxy that can partition the link
(bytes held, no RST), reset every connection, or add latency. While the central database is out
of reach in each of three ways (a silent link, a stopped server, a table lock held by another
session) receipt runs still write every .dat file and archive every original; sync attempts fail
in bounded time, as transient; once the fault is gone the central database holds every receipt
exactly once. Asserts behaviour, never timings (``posfed bench --central postgres --outage``
measures those); pytest-timeout is the guard against a hang.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
from posfed_dev.faults import FaultProxy, ThrowawayPostgres, hold_lock
from sqlalchemy import select

from posfed_pipeline.core import central_db
from posfed_pipeline.core.base.clock import ManualClock
from posfed_pipeline.core.config import config_from_dict, load_config
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.dagster_home import render_instance_yaml
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.defs.receipts import ReceiptBatchConfig, receipt_op_config
from posfed_pipeline.names import FAILURE_KIND_TAG, RECEIPTS_JOB, SYNC_JOB, SYNC_SENSOR
from posfed_pipeline_tests.support.processes import wait_for
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.servers import dagster_process
from posfed_pipeline_tests.support.stores import store_config_dict, write_store_config

# Starts real processes (Dagster, servers, browsers): `make check` leaves it out.
pytestmark = [pytest.mark.slow, pytest.mark.postgres]

DAY = date(2026, 11, 20)
TS = "2026-11-20T10:{:02d}:00+01:00"


@dataclass
class Central:
    cluster: ThrowawayPostgres
    proxy: FaultProxy
    database: str
    url: str  # through the proxy

    def engine(self):
        # Straight to the server, not through the proxy: what the test checks with.
        return central_db.make_engine(self.cluster.url(self.database))


@pytest.fixture
def central(pg_cluster):
    name = f"central_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(name)
    with FaultProxy("127.0.0.1", pg_cluster.port) as proxy:
        central = Central(pg_cluster, proxy, name, pg_cluster.url(name, port=proxy.port))
        engine = central.engine()
        central_db.upgrade_database(engine)
        engine.dispose()
        yield central
        proxy.heal()
    if not pg_cluster.running:
        pg_cluster.start()


@pytest.fixture
def outage_store(central, tmp_path, monkeypatch):
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.setenv("POSFED_DB_URL", central.url)
    raw = store_config_dict(tmp_path / "posfed")
    # Short limits keep the test short; the defaults are longer (docs/deployment.md).
    raw["sync"] = {"call_timeout_seconds": 3, "backoff_cap_seconds": 2}
    config = config_from_dict(raw, base_dir=tmp_path)
    config.ensure_folders()
    return config


def _receipts_run(defs, instance, terminal, names):
    return defs.resolve_job_def(RECEIPTS_JOB).execute_in_process(
        run_config=receipt_op_config(ReceiptBatchConfig(files=names)),
        partition_key=f"{DAY}|{terminal.id}",
        instance=instance,
    )


def _sync_run(defs, instance):
    return defs.resolve_job_def(SYNC_JOB).execute_in_process(
        instance=instance, raise_on_error=False
    )


def _central_receipts(central: Central) -> list[tuple]:
    engine = central.engine()
    header = central_db.ReceiptRow.__table__
    with engine.connect() as connection:
        rows = connection.execute(
            select(header.c.terminal_id, header.c.receipt_id, header.c.total).order_by(
                header.c.terminal_id, header.c.receipt_id
            )
        ).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def _drop(config, terminal_id: str, receipt_id: str, minute: int) -> tuple:
    terminal = config.terminal(terminal_id)
    doc = receipt_doc(receipt_id, terminal_id, terminal.department, timestamp=TS.format(minute))
    drop_receipt(terminal.inbox, doc)
    return terminal, f"{receipt_id}.json"


FAULTS = ["partition", "server_stopped", "table_locked"]


@contextlib.contextmanager
def fault(kind: str, central: Central):
    if kind == "partition":
        central.proxy.partition()
        try:
            yield
        finally:
            central.proxy.heal()
    elif kind == "server_stopped":
        central.cluster.stop()
        try:
            yield
        finally:
            central.cluster.start()
    else:
        with hold_lock("127.0.0.1", central.cluster.port, central.database):
            yield


@pytest.mark.parametrize("kind", FAULTS)
def test_the_checkout_never_waits_for_the_central_database(kind, central, outage_store):
    config = outage_store
    clock = ManualClock()
    defs = build_definitions(config, clock=clock)
    ledger = open_ledger(config.home)
    with dg.instance_for_test() as instance:
        bakery, name = _drop(config, "bakery_1", "A1", 1)
        assert _receipts_run(defs, instance, bakery, [name]).success
        assert _sync_run(defs, instance).success
        assert _central_receipts(central) == [("bakery_1", "A1", Decimal("6.40"))]

        with fault(kind, central):
            names = [_drop(config, "bakery_1", f"B{n}", 10 + n)[1] for n in range(3)]
            butcher, butcher_file = _drop(config, "butcher_1", "C1", 20)
            # The checkout: every .dat written, every original archived, central unreachable.
            assert _receipts_run(defs, instance, bakery, names).success
            assert _receipts_run(defs, instance, butcher, [butcher_file]).success
            for department, receipt_id in [("10", "B0"), ("10", "B1"), ("10", "B2"), ("20", "C1")]:
                assert (config.dat_dir / "20261120" / f"scon{department}{receipt_id}.dat").exists()
            assert list(bakery.inbox.iterdir()) == list(butcher.inbox.iterdir()) == []

            # The sync fails, bounded and transient; the receipts wait in the ledger.
            failed = _sync_run(defs, instance)
            assert not failed.success
            assert instance.get_run_by_id(failed.run_id).tags[FAILURE_KIND_TAG] == "transient"
            [lag] = failed.get_asset_check_evaluations()
            assert lag.metadata["receipts_pending"].value == 4
            assert ledger.lag().pending_receipts == 4
            state = ledger.sync_state()
            assert state.failures == 1 and state.next_attempt_at > clock.time()
            # Launchers back off: the sensor does not start another sync at once.
            sensor = defs.resolve_sensor_def(SYNC_SENSOR)
            tick = sensor(dg.build_sensor_context(instance=instance))
            assert "backing off" in str(tick.skip_message)

        # Back: the next sync stores everything, exactly once, as if it had never been away.
        clock.advance(ledger.sync_state().next_attempt_at - clock.time())
        tick = sensor(dg.build_sensor_context(instance=instance))
        assert isinstance(tick, dg.RunRequest) and tick.tags["posfed/lane"] == "central_db_sync"
        assert _sync_run(defs, instance).success
    assert _central_receipts(central) == [
        ("bakery_1", "A1", Decimal("6.40")),
        ("bakery_1", "B0", Decimal("6.40")),
        ("bakery_1", "B1", Decimal("6.40")),
        ("bakery_1", "B2", Decimal("6.40")),
        ("butcher_1", "C1", Decimal("6.40")),
    ]
    engine = central.engine()
    entries = central_db.ledger_entries(engine)
    engine.dispose()
    assert sorted(e.receipt_id for e in entries) == ["A1", "B0", "B1", "B2", "C1"]
    assert {e.outcome for e in entries} == {"inserted"}
    assert all(e.dat_written_at is not None for e in entries)
    assert ledger.lag().pending_deliveries == 0
    assert ledger.sync_state().failures == 0


def test_a_reset_or_slow_link_costs_nothing(central, outage_store):
    config = outage_store
    defs = build_definitions(config)
    with dg.instance_for_test() as instance:
        bakery, name = _drop(config, "bakery_1", "R1", 1)
        assert _receipts_run(defs, instance, bakery, [name]).success
        assert _sync_run(defs, instance).success
        assert central.proxy.connections >= 1

        # Every pooled connection reset (a failover, a NAT timeout): the sync reconnects.
        assert central.proxy.reset() >= 1
        bakery, name = _drop(config, "bakery_1", "R2", 2)
        assert _receipts_run(defs, instance, bakery, [name]).success
        assert _sync_run(defs, instance).success

        # A slow link: slower, not failed.
        central.proxy.set_latency(0.05)  # 100 ms round trips: a long WAN line
        bakery, name = _drop(config, "bakery_1", "R3", 3)
        assert _receipts_run(defs, instance, bakery, [name]).success
        assert _sync_run(defs, instance).success
    assert [r[1] for r in _central_receipts(central)] == ["R1", "R2", "R3"]


def test_a_sync_hung_on_a_silent_link_is_cut_off_and_retried(central, outage_store):
    """A partition in the middle of a sync: the stuck call is cut off at the deadline, and
    nothing the interrupted transaction wrote survives on the server."""
    from posfed_pipeline.core.central_db.timeouts import DeadlineExceeded
    from posfed_pipeline.core.stages import sync

    config = outage_store
    ledger = open_ledger(config.home)
    defs = build_definitions(config)
    with dg.instance_for_test() as instance:
        bakery, name = _drop(config, "bakery_1", "H1", 1)
        assert _receipts_run(defs, instance, bakery, [name]).success
    engine = central_db.make_engine(central.url)
    central_db.schema_revision(engine)  # a pooled connection, as a running sync has
    central.proxy.partition()
    with pytest.raises(DeadlineExceeded) as cut_off:
        sync.sync_pending(ledger, engine, config.sync)
    assert central_db.is_transient_error(cut_off.value)
    # Never acknowledged, so never marked as stored: the ledger still owes it.
    assert ledger.lag().pending_receipts == 1
    central.proxy.heal()
    done = sync.sync_pending(ledger, engine, config.sync)
    engine.dispose()
    assert done.receipts_inserted == 1
    assert [r[1] for r in _central_receipts(central)] == ["H1"]


# --- the real services: daemon + fast path, a silent link, and the catch-up by itself ---------


def test_services_keep_the_checkout_through_a_partition_and_catch_up_by_themselves(central):
    root = Path(tempfile.mkdtemp(prefix="pfo-", dir="/tmp"))  # short: the pool's socket
    try:
        config_path = write_store_config(
            root / "posfed.toml",
            root / "s",
            intake={"stability_seconds": 0.2, "max_age_days": 36500},
        )
        with config_path.open("a") as handle:
            handle.write("[sync]\ncall_timeout_seconds = 3\nbackoff_cap_seconds = 4\n")
        config = load_config(config_path)
        config.ensure_folders()
        dagster_home = root / "dh"
        render_instance_yaml(dagster_home)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(dagster_home),
            "POSFED_CONFIG": str(config_path),
            "POSFED_DB_URL": central.url,
        }
        env.pop("POSFED_HOME", None)
        with dg.DagsterInstance.from_config(str(dagster_home)):
            pass  # create the instance's storage before two processes open it
        log = root / "daemon.log"
        with (
            dagster_process(
                ["dagster-daemon", "run", "-w", str(REPO_ROOT / "workspace.yaml")],
                env=env,
                log_path=log,
            ),
            dagster_process(
                [Path(sys.executable).name, "-m", "posfed_pipeline.cli", "fastpath"],
                env=env,
                log_path=root / "fastpath.log",
            ),
        ):
            terminal = config.terminal("bakery_1")
            now = datetime.now(terminal.timezone).replace(microsecond=0)
            drop_receipt(terminal.inbox, receipt_doc("S0", timestamp=now.isoformat()), age=0)
            dat = config.dat_dir / now.strftime("%Y%m%d")
            wait_for(lambda: (dat / "scon10S0.dat").exists(), 180, "the first .dat", log)
            wait_for(lambda: len(_central_receipts(central)) == 1, 120, "the first sync", log)

            central.proxy.partition()
            for n in range(1, 6):
                doc = receipt_doc(f"S{n}", timestamp=now.isoformat())
                drop_receipt(terminal.inbox, doc, age=0)
            wait_for(
                lambda: all((dat / f"scon10S{n}.dat").exists() for n in range(1, 6)),
                60,
                ".dat files while the central database is unreachable",
                log,
            )
            assert len(_central_receipts(central)) == 1  # it really was unreachable
            central.proxy.heal()
            wait_for(
                lambda: len(_central_receipts(central)) == 6,
                90,
                "the central database to catch up by itself",
                log,
            )
        assert [r[1] for r in _central_receipts(central)] == [f"S{n}" for n in range(6)]
        assert sorted(p.name for p in dat.iterdir()) == [f"scon10S{n}.dat" for n in range(6)]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_receipt_the_central_database_refuses_is_set_aside_and_the_rest_goes_on(
    central, outage_store
):
    """A value the central database will never take fails its batch; the sync finds the one
    receipt, parks it with the database's reason, and stores the others."""
    from dataclasses import replace

    from posfed_pipeline.core.stages import sync
    from posfed_pipeline.core.state.ledger import DeliveredReceipt
    from posfed_pipeline_tests.support.receipts import make_receipt

    ledger = open_ledger(outage_store.home)
    good = [make_receipt(f"G{n}") for n in range(3)]
    base = make_receipt("X1")
    # Longer than the column (NVARCHAR(200)): intake never lets one through, a DBA's
    # narrower column or a trigger could refuse others in the same way.
    too_long = replace(base, items=(replace(base.items[0], description="x" * 300),))
    receipts = [good[0], too_long, good[1], good[2]]
    ledger.accept([DeliveredReceipt(r, f"{r.receipt_id}:1:1") for r in receipts], tenant="Bakkerij")
    ledger.mark_emitted([(r, "x") for r in receipts])
    engine = central_db.make_engine(central.url)

    done = sync.sync_pending(ledger, engine, outage_store.sync)
    engine.dispose()

    assert done.receipts_inserted == 3 and len(done.refused) == 1
    [(terminal_id, day, receipt_id, why)] = ledger.parked_entries()
    assert receipt_id == "X1" and "refused" in why
    assert ledger.lag().parked == 1
    assert sync.lag_level(ledger.lag(), outage_store.sync) is sync.LagLevel.FAIL
    assert [r[1] for r in _central_receipts(central)] == ["G0", "G1", "G2"]
