"""Metrics for a fleet: ``posfed metrics`` reads a store's real ledger, quarantine and health
without writing to them and serves what it read in the Prometheus text format; the alert rules
and the dashboard in deploy/ hold up against Prometheus's own tools and server.

The fast tests read a real ledger that the real stages filled; the slow ones run a store
(``posfed demo``) and a real Prometheus server (Debian's ``prometheus``) scraping it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from posfed_pipeline.core.config import ConfigError, config_from_dict
from posfed_pipeline.core.operations.store_metrics import (
    LATENCY_BUCKETS,
    MAX_HISTORY_LINE,
    QuarantineTally,
    StoreWatcher,
)
from posfed_pipeline.core.state import quarantine
from posfed_pipeline.core.state.ledger import DeliveredReceipt, Ledger, ledger_path, open_ledger
from posfed_pipeline.metrics.exposition import Reading, StoreCollector
from posfed_pipeline.metrics.sources import ServiceState, parse_systemctl_show
from posfed_pipeline_tests.support.pipeline import process_and_sync
from posfed_pipeline_tests.support.receipts import drop_receipt, make_receipt, receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.stores import store_config_dict

DEPLOY = REPO_ROOT / "deploy"


def _butcher_doc(receipt_id: str) -> dict:
    return receipt_doc(receipt_id, "butcher_1", "20")


def _exposition(reading: Reading) -> dict[str, list]:
    """The text format prometheus-client writes for a reading, parsed back: family name ->
    its samples."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(lambda: reading))
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _sample(families, name: str, **labels) -> float:
    family_name = name.removesuffix("_total").removesuffix("_bucket").removesuffix("_count")
    family_name = family_name.removesuffix("_sum")
    [value] = [
        s.value
        for s in families[family_name].samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return value


# --- the reading: a real ledger, real quarantine, the real stages ------------------------------


def test_a_reading_counts_what_the_ledger_and_the_quarantine_hold_per_terminal(config, engine):
    bakery, butcher = config.terminal("bakery_1"), config.terminal("butcher_1")
    docs = [receipt_doc(f"1M{n:04d}") for n in range(4)]
    # Every file arrived two seconds ago: each .dat comes at least 2 s after its arrival.
    first = [drop_receipt(bakery.inbox, doc, age=2.0) for doc in docs]
    first.append(drop_receipt(bakery.inbox, {**receipt_doc("1M0099"), "total": "99.99"}, age=2.0))
    process_and_sync(config, engine, bakery, first)
    again = drop_receipt(bakery.inbox, docs[0], "1M0000-again.json", age=2.0)
    changed = {**receipt_doc("1M0001", items=[_item("0.50")]), "timestamp": docs[1]["timestamp"]}
    conflict = drop_receipt(bakery.inbox, changed, "1M0001-changed.json", age=2.0)
    process_and_sync(config, engine, bakery, [again, conflict])
    butcher_files = [drop_receipt(butcher.inbox, _butcher_doc(f"2M{n:04d}")) for n in range(2)]
    process_and_sync(config, engine, butcher, butcher_files)

    watcher = StoreWatcher(config)
    figures = watcher.read()

    assert figures.sources == {"ledger": True, "quarantine": True, "health": True}
    baked = figures.terminals["bakery_1"]
    assert (baked.accepted, baked.redelivered) == (4, 1)
    # The bad total, and the conflict (its .dat holds the first content), both refused by
    # validation.
    assert baked.quarantined == {"validation": 2}
    assert baked.latency.count == 4
    cumulative = dict(baked.latency.cumulative())
    assert cumulative[1.0] == 0 and cumulative[30.0] == 4 and cumulative[float("inf")] == 4
    assert 4 * 2.0 <= baked.latency.total_seconds < 4 * 30.0
    cut = figures.terminals["butcher_1"]
    assert (cut.accepted, cut.redelivered, cut.quarantined, cut.latency.count) == (2, 0, {}, 2)
    assert figures.outbox == (0, None, 0)  # the sync took everything
    assert baked.health is not None and baked.health.quarantined_today == 2
    assert baked.last_receipt_at is not None and time.time() - baked.last_receipt_at < 60
    assert baked.awaiting_dat == 0

    # ... and as Prometheus gets it.
    families = _exposition(Reading(figures))
    assert _sample(families, "posfed_receipts_accepted_total", terminal="bakery_1") == 4
    assert _sample(families, "posfed_receipts_redelivered_total", terminal="bakery_1") == 1
    quarantined = "posfed_receipts_quarantined_total"
    assert _sample(families, quarantined, terminal="bakery_1", stage="validation") == 2
    assert _sample(families, quarantined, terminal="bakery_1", stage="accept") == 0
    assert _sample(families, quarantined, terminal="bakery_1", stage="intake") == 0
    buckets = {
        s.labels["le"]: s.value
        for s in families["posfed_dat_latency_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["terminal"] == "butcher_1"
    }
    assert list(buckets) == [*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
    assert buckets["+Inf"] == 2
    assert _sample(families, "posfed_dat_latency_seconds_count", terminal="bakery_1") == 4
    assert _sample(families, "posfed_terminal_healthy", terminal="butcher_1") == 1
    assert _sample(families, "posfed_outbox_deliveries", store="test-store") == 0
    info = families["posfed_terminal_info"].samples
    assert {(s.labels["terminal"], s.labels["tenant"]) for s in info} == {
        ("bakery_1", "Bakkerij"),
        ("butcher_1", "Slagerij"),
    }
    for family in families.values():
        assert family.documentation, f"{family.name} has no HELP text"
        assert family.name.startswith(("posfed_", "process_")), family.name


def _item(price: str) -> dict:
    return {
        "barcode": "8712345678906",
        "description": "Volkorenbrood",
        "price": price,
        "quantity": 1,
    }


def test_counts_only_grow_and_each_delivery_is_counted_once(config, engine):
    bakery = config.terminal("bakery_1")
    process_and_sync(config, engine, bakery, [drop_receipt(bakery.inbox, receipt_doc("1G0001"))])
    watcher = StoreWatcher(config)
    first = watcher.read().terminals["bakery_1"]
    again = watcher.read().terminals["bakery_1"]
    assert (
        (again.accepted, again.latency.counts)
        == (first.accepted, first.latency.counts)
        == (
            1,
            again.latency.counts,
        )
    )
    assert first.latency.count == 1
    files = [drop_receipt(bakery.inbox, receipt_doc(f"1G{n:04d}")) for n in range(2, 5)]
    process_and_sync(config, engine, bakery, files)
    later = watcher.read().terminals["bakery_1"]
    assert (later.accepted, later.latency.count) == (4, 4)
    assert all(b >= a for a, b in zip(first.latency.counts, later.latency.counts, strict=True))


def test_a_receipt_waiting_for_its_dat_is_timed_when_the_dat_is_written(config):
    ledger = open_ledger(config.home)
    receipt = make_receipt("1W0001")
    ledger.accept(
        [DeliveredReceipt(receipt, "1W0001.json:1", detected_at=1000.0)],
        tenant="Bakkerij",
        now=1000.2,
    )
    withdrawn = make_receipt("1W0002")
    ledger.accept(
        [DeliveredReceipt(withdrawn, "1W0002.json:1", detected_at=1000.0)],
        tenant="Bakkerij",
        now=1000.2,
    )
    watcher = StoreWatcher(config)
    waiting = watcher.read().terminals["bakery_1"]
    assert (waiting.accepted, waiting.awaiting_dat, waiting.awaiting_dat_since) == (2, 2, 1000.2)
    assert waiting.latency.count == 0

    ledger.mark_emitted([(receipt, "20260314/x.dat")], now=1000.35)
    ledger.withdraw(withdrawn, "its .dat file is another receipt's")
    written = watcher.read().terminals["bakery_1"]
    assert (written.awaiting_dat, written.latency.count) == (0, 1)
    cumulative = dict(written.latency.cumulative())
    assert (cumulative[0.3], cumulative[0.5]) == (0, 1)  # 0.35 s from arrival to .dat
    assert written.latency.total_seconds == pytest.approx(0.35)


def test_a_store_without_a_ledger_reads_as_empty_and_gets_none(config):
    watcher = StoreWatcher(config)
    figures = watcher.read()
    assert figures.sources["ledger"] is True
    assert figures.outbox == (0, None, 0)
    assert figures.terminals["bakery_1"].accepted == 0
    assert not ledger_path(config.home).exists()  # reading never creates it


def test_the_ledger_is_opened_read_only(config, engine):
    bakery = config.terminal("bakery_1")
    process_and_sync(config, engine, bakery, [drop_receipt(bakery.inbox, receipt_doc("1R0001"))])
    watcher = StoreWatcher(config)
    watcher.read()
    import sqlite3

    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        watcher.reader._connect().execute("DELETE FROM delivery")
    assert watcher.read().terminals["bakery_1"].accepted == 1


def test_a_ledger_restored_or_replaced_is_counted_afresh(config, engine, tmp_path):
    bakery = config.terminal("bakery_1")
    files = [drop_receipt(bakery.inbox, receipt_doc(f"1X{n:04d}")) for n in range(3)]
    process_and_sync(config, engine, bakery, files)
    watcher = StoreWatcher(config)
    assert watcher.read().terminals["bakery_1"].accepted == 3

    other = Ledger(tmp_path / "other" / "ledger.db")
    other.accept(
        [DeliveredReceipt(make_receipt("1Y0001"), "1Y0001.json:1", detected_at=5.0)],
        tenant="Bakkerij",
        now=6.0,
    )
    other.close()
    open_ledger(config.home).close()
    for suffix in ("-wal", "-shm"):
        Path(f"{ledger_path(config.home)}{suffix}").unlink(missing_ok=True)
    os.replace(other.path, ledger_path(config.home))

    replaced = watcher.read().terminals["bakery_1"]
    assert (replaced.accepted, replaced.latency.count) == (1, 0)  # not yet written: awaiting
    assert replaced.awaiting_dat == 1


def test_a_quarantine_history_trimmed_by_retention_is_not_counted_twice(config, engine):
    bakery = config.terminal("bakery_1")
    bad = {**receipt_doc("1Q0001"), "total": "99.99"}
    process_and_sync(config, engine, bakery, [drop_receipt(bakery.inbox, bad)])
    watcher = StoreWatcher(config)
    assert watcher.read().terminals["bakery_1"].quarantined == {"validation": 1}

    # Retention rewrites the file (nothing old enough to drop here: a new file, same events).
    history = quarantine.history_path(bakery)
    lines = history.read_bytes()
    history.unlink()
    history.write_bytes(lines)
    assert watcher.read().terminals["bakery_1"].quarantined == {"validation": 1}
    worse = {**receipt_doc("1Q0002"), "total": "0.01"}
    process_and_sync(config, engine, bakery, [drop_receipt(bakery.inbox, worse)])
    assert watcher.read().terminals["bakery_1"].quarantined == {"validation": 2}


def test_an_overlong_history_line_is_skipped_in_bounded_memory(tmp_path):
    history = tmp_path / "quarantine-history.jsonl"
    event = {"event": "quarantined", "terminal": "bakery_1", "stage": "validation"}

    def line(at: str) -> bytes:
        return json.dumps({**event, "quarantined_at": at}).encode() + b"\n"

    tally = QuarantineTally(history, ["bakery_1"])
    # A line ten times the limit, its end not written yet, then written with an event after.
    history.write_bytes(line("2026-12-07T10:00:00") + b"x" * (10 * MAX_HISTORY_LINE))
    tracemalloc.start()
    try:
        tally.read()
        with history.open("ab") as appending:
            appending.write(b"x" * 100 + b"\n" + line("2026-12-07T10:06:00"))
        tally.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tally.totals() == {("bakery_1", "validation"): 2}
    assert peak < 5 * MAX_HISTORY_LINE, f"{peak} bytes held for a {10 * MAX_HISTORY_LINE}-byte line"


def test_a_terminal_folder_that_hangs_holds_up_neither_the_reading_nor_the_others(config, engine):
    """The butcher's quarantine history is a FIFO no one writes to: opening it blocks, as a
    hung share does. The reading still ends within its timeout, the bakery's figures are
    there, and the stuck listing is not started a second time."""
    bakery, butcher = config.terminal("bakery_1"), config.terminal("butcher_1")
    bad = {**receipt_doc("1H0001"), "total": "99.99"}
    process_and_sync(config, engine, bakery, [drop_receipt(bakery.inbox, bad)])
    stuck = quarantine.history_path(butcher)
    os.mkfifo(stuck)
    watcher = StoreWatcher(config, timeout=0.2, health_seconds=3600)
    try:
        for _ in range(3):
            started = time.monotonic()
            figures = watcher.read()
            assert time.monotonic() - started < 3.0
            assert figures.sources["quarantine"] is False
            assert figures.terminals["bakery_1"].quarantined == {"validation": 1}
        hung = [t for t in threading.enumerate() if str(stuck) in t.name]
        assert len(hung) == 1
    finally:
        # The share comes back: the stuck open() returns (a writer comes and goes), and the
        # history is an ordinary (absent) file again.
        fd = os.open(stuck, os.O_RDWR | os.O_NONBLOCK)
        stuck.unlink()
        os.close(fd)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and watcher.read().sources["quarantine"] is not True:
        time.sleep(0.1)
    assert watcher.read().sources["quarantine"] is True


# --- configuration, restarts --------------------------------------------------------------------


def test_the_metrics_table_says_where_to_listen(tmp_path):
    raw = store_config_dict(tmp_path, metrics={"listen": "[::1]:9500", "refresh_seconds": 2.0})
    metrics = config_from_dict(raw, base_dir=tmp_path).metrics
    assert (metrics.enabled, metrics.host, metrics.port, metrics.listen) == (
        True,
        "::1",
        9500,
        "[::1]:9500",
    )
    default = config_from_dict(store_config_dict(tmp_path), base_dir=tmp_path).metrics
    assert (default.enabled, default.listen, default.refresh_seconds) == (
        True,
        "127.0.0.1:9464",
        5.0,
    )
    for listen in ("9464", "localhost:0", "localhost:70000", "a b:1"):
        with pytest.raises(ConfigError, match=r"\[metrics\].*listen must be host:port"):
            config_from_dict(
                store_config_dict(tmp_path, metrics={"listen": listen}), base_dir=tmp_path
            )
    with pytest.raises(ConfigError, match="refresh_secs"):
        config_from_dict(
            store_config_dict(tmp_path, metrics={"refresh_secs": 1}), base_dir=tmp_path
        )


def test_systemd_restart_counts_are_read_by_service_name():
    shown = (
        "Id=posfed-fastpath.service\nNRestarts=3\nActiveState=active\nLoadState=loaded\n\n"
        "Id=posfed-dagster-daemon.service\nNRestarts=0\nActiveState=activating\n"
        "LoadState=loaded\n\n"
        "Id=posfed-metrics.service\nNRestarts=0\nActiveState=inactive\nLoadState=not-found\n"
    )
    assert parse_systemctl_show(shown) == {
        "fastpath": ServiceState(3, True),
        "daemon": ServiceState(0, False),
    }


# --- Dagster's failed runs, from a real instance --------------------------------------------------


@pytest.mark.slow
def test_failed_runs_are_counted_per_job_and_terminal_once_each(tmp_path):
    import dagster as dg

    from posfed_pipeline.metrics.sources import FailedRuns

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")

    @dg.op
    def till_jammed():
        raise RuntimeError("the till jammed")

    @dg.op
    def fine():
        return 1

    @dg.job(name="receipts_job")
    def receipts_job():
        till_jammed()

    @dg.job(name="central_db_sync_job")
    def sync_job():
        fine()

    instance = dg.DagsterInstance.from_config(str(home))
    try:

        def run(job, **tags):
            job.execute_in_process(instance=instance, raise_on_error=False, tags=tags)

        run(receipts_job, **{"posfed/terminal": "bakery_1"})
        run(sync_job)
        failed = FailedRuns(home, ["bakery_1", "butcher_1"])
        failed.read()
        totals = failed.totals()
        # Every posfed job is there from the start, at 0: increase() sees its first failure.
        assert totals[("receipts_job", "butcher_1")] == totals[("central_db_sync_job", "")] == 0
        assert _failures(totals) == {("receipts_job", "bakery_1"): 1}
        failed.read()
        assert _failures(failed.totals()) == {("receipts_job", "bakery_1"): 1}  # counted once
        run(receipts_job, **{"posfed/terminal": "bakery_1"})
        run(receipts_job, **{"posfed/terminal": "butcher_1"})
        failed.read()
        assert _failures(failed.totals()) == {
            ("receipts_job", "bakery_1"): 2,
            ("receipts_job", "butcher_1"): 1,
        }
        # A process started later counts the instance's history from the start.
        later = FailedRuns(home, ["bakery_1", "butcher_1"])
        later.read()
        assert later.totals() == failed.totals()
        later.close()
        failed.close()
    finally:
        instance.dispose()


def test_a_burst_of_failures_larger_than_a_page_is_counted_whole(tmp_path):
    # More failed runs within the cursor's overlap (2 s) than one page holds: the page of runs
    # already counted must not be asked for again and again, hiding the ones after it.
    import dagster as dg

    from posfed_pipeline.metrics.sources import FailedRuns

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")

    @dg.op
    def till_jammed():
        raise RuntimeError("the till jammed")

    @dg.job(name="receipts_job")
    def receipts_job():
        till_jammed()

    instance = dg.DagsterInstance.from_config(str(home))
    try:
        for _ in range(4):
            run = instance.create_run_for_job(receipts_job, tags={"posfed/terminal": "bakery_1"})
            instance.report_run_failed(run)
        failed = FailedRuns(home, ["bakery_1"], page=3)
        failed.read()
        assert _failures(failed.totals()) == {("receipts_job", "bakery_1"): 4}
        failed.close()
    finally:
        instance.dispose()


def _failures(totals: dict) -> dict:
    return {key: count for key, count in totals.items() if count}


# --- the alert rules ----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_alert_rules_are_valid_and_their_unit_tests_pass():
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    rules = DEPLOY / "prometheus"
    checked = subprocess.run(
        [promtool, "check", "rules", "posfed-alerts.yml"],
        cwd=rules,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 11 rules found" in checked.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", "posfed-alerts.test.yml"],
        cwd=rules,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=rules,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    for alert in (
        "PosfedTerminalSilent",
        "PosfedSyncLagging",
        "PosfedQuarantineGrowing",
        "PosfedNoDatWhileReceiptsArrive",
    ):
        assert f"alertname: {alert}" in (rules / "posfed-alerts.test.yml").read_text()


def test_the_dashboard_is_grafana_json_whose_every_panel_queries_posfed_metrics():
    dashboard = json.loads((DEPLOY / "grafana" / "posfed-store.json").read_text())
    assert dashboard["uid"] == "posfed-store"
    targets = _dashboard_queries(dashboard)
    assert len(targets) >= 15
    for title, expr in targets:
        assert "posfed_" in expr, title


def _dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


# --- a running store, scraped by a real Prometheus -----------------------------------------------


class _Fleet:
    """A store (``posfed demo``, its metrics on a port of their own) and Prometheus scraping it;
    ``sent``: the receipts delivered to each terminal, ``quarantined``: the bad ones."""

    def __init__(self, config, prometheus: str, metrics_url: str, log: Path):
        self.config = config
        self.prometheus = prometheus
        self.metrics_url = metrics_url
        self.log = log
        self.sent: dict[str, int] = {"bakery_1": 0, "butcher_1": 0}
        self.redelivered: dict[str, int] = {"bakery_1": 0, "butcher_1": 0}
        self.quarantined: dict[str, int] = {"bakery_1": 0, "butcher_1": 0}

    def deliver(self, terminal_id: str, doc: dict, name: str | None = None) -> None:
        """As a till does: open, write, close (the fast path's trigger sees the close)."""
        terminal = self.config.terminal(terminal_id)
        with open(terminal.inbox / (name or f"{doc['receiptId']}.json"), "w") as handle:
            handle.write(json.dumps(doc))

    def dat_files(self) -> int:
        return sum(1 for _ in self.config.dat_dir.rglob("*.dat"))

    def wait_until_processed(self) -> None:
        from posfed_pipeline_tests.support.processes import wait_for

        def done() -> bool:
            waiting = any(any(t.inbox.iterdir()) for t in self.config.terminals)
            quarantined = {
                t.id: len(quarantine.quarantined_files(t)) for t in self.config.terminals
            }
            return (
                not waiting
                and self.dat_files() == sum(self.sent.values())
                and quarantined == self.quarantined
            )

        wait_for(done, 120, "every receipt's .dat and every bad file in quarantine", self.log)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from posfed_pipeline.core.config import load_config
    from posfed_pipeline_tests.support.processes import free_port, wait_for
    from posfed_pipeline_tests.support.prometheus import prometheus_server
    from posfed_pipeline_tests.support.servers import dagster_process
    from posfed_pipeline_tests.support.stores import write_store_config

    root = tmp_path_factory.mktemp("fleet")
    metrics_port, ui_port = free_port(), free_port()
    config_path = write_store_config(
        root / "posfed.toml",
        root / "home",
        metrics={
            "listen": f"127.0.0.1:{metrics_port}",
            "refresh_seconds": 1.0,
            "health_seconds": 1.0,
        },
    )
    env = dict(os.environ, POSFED_CONFIG=str(config_path))
    for name in ("POSFED_HOME", "POSFED_DB_URL", "DAGSTER_HOME"):
        env.pop(name, None)
    config = load_config(config_path)
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    log = root / "demo.log"
    command = ["posfed", "demo", "--no-simulator", "--port", str(ui_port)]
    with dagster_process(command, env=env, log_path=log):
        wait_for(
            lambda: "fast path up" in log.read_text() and _serves_metrics(metrics_url),
            240,
            "the demo's fast path and its metrics",
            log,
        )
        rules = [DEPLOY / "prometheus" / "posfed-alerts.yml"]
        with prometheus_server(
            root / "prometheus", [f"127.0.0.1:{metrics_port}"], rule_files=rules
        ) as prometheus:
            fleet = _Fleet(config, prometheus, metrics_url, log)
            for n in range(5):
                fleet.deliver("bakery_1", receipt_doc(f"1P{n:04d}"))
            fleet.sent["bakery_1"] += 5
            fleet.deliver("bakery_1", {**receipt_doc("1P0099"), "total": "99.99"})
            fleet.quarantined["bakery_1"] += 1
            first = _butcher_doc("2P0001")
            fleet.deliver("butcher_1", first)
            fleet.deliver("butcher_1", _butcher_doc("2P0002"))
            fleet.sent["butcher_1"] += 2
            fleet.wait_until_processed()
            fleet.deliver("butcher_1", first, "2P0001-again.json")  # the till sent it twice
            fleet.redelivered["butcher_1"] += 1
            fleet.wait_until_processed()
            yield fleet


def _serves_metrics(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return b"posfed_receipts_accepted_total" in answer.read()
    except OSError:
        return False


@pytest.mark.slow
def test_prometheus_scraping_a_store_gets_its_latency_histogram_and_counts_per_terminal(fleet):
    from posfed_pipeline_tests.support.processes import wait_for
    from posfed_pipeline_tests.support.prometheus import api, query, values_by

    prometheus = fleet.prometheus

    def scraped() -> bool:
        accepted = values_by(prometheus, "posfed_receipts_accepted_total", "terminal")
        redelivered = values_by(prometheus, "posfed_receipts_redelivered_total", "terminal")
        return accepted == fleet.sent and redelivered == fleet.redelivered

    wait_for(scraped, 60, "Prometheus to hold the store's counts", fleet.log)
    quarantined = values_by(
        prometheus, "sum by (terminal) (posfed_receipts_quarantined_total)", "terminal"
    )
    assert quarantined == fleet.quarantined
    by_stage = values_by(
        prometheus, 'posfed_receipts_quarantined_total{terminal="bakery_1"} > 0', "stage"
    )
    assert by_stage == {"validation": fleet.quarantined["bakery_1"]}

    # The histogram: every bucket of every terminal, cumulative, the last one all receipts.
    buckets: dict[str, dict[str, float]] = {}
    for row in query(prometheus, "posfed_dat_latency_seconds_bucket"):
        labels = row["metric"]
        assert labels["store"] == "test-store" and labels["job"] == "posfed"
        buckets.setdefault(labels["terminal"], {})[labels["le"]] = float(row["value"][1])
    expected_le = [*(str(float(b)) for b in LATENCY_BUCKETS), "+Inf"]
    for terminal, sent in fleet.sent.items():
        counts = buckets[terminal]
        assert sorted(counts, key=lambda le: float(le)) == expected_le
        ordered = [counts[le] for le in expected_le]
        assert ordered == sorted(ordered) and ordered[-1] == sent
        assert counts["60.0"] == sent  # the fast path: every .dat within the minute
    counted = values_by(prometheus, "posfed_dat_latency_seconds_count", "terminal")
    assert counted == fleet.sent
    p95 = values_by(
        prometheus,
        "histogram_quantile(0.95, sum by (terminal, le) (posfed_dat_latency_seconds_bucket))",
        "terminal",
    )
    assert set(p95) == set(fleet.sent) and all(0 < v <= 60 for v in p95.values()), p95

    # The rest a fleet watches: health, the outbox, the services, and the rules loaded.
    assert values_by(prometheus, "posfed_terminal_healthy", "terminal") == {
        "bakery_1": 1,
        "butcher_1": 1,
    }
    wait_for(
        lambda: values_by(prometheus, "posfed_outbox_deliveries", "store") == {"test-store": 0},
        60,
        "the sync to empty the outbox",
        fleet.log,
    )
    up = values_by(prometheus, "posfed_service_up", "service")
    assert up == {"code-server": 1, "fastpath": 1, "webserver": 1, "daemon": 1, "metrics": 1}
    restarts = values_by(prometheus, "posfed_service_restarts_total", "service")
    assert set(restarts) == set(up)
    failed = values_by(
        prometheus, 'posfed_runs_failed_total{dagster_job="receipts_job"}', "terminal"
    )
    assert failed == {"bakery_1": 0, "butcher_1": 0}
    sources = values_by(prometheus, "posfed_metrics_source_up", "source")
    assert sources == {"ledger": 1, "quarantine": 1, "health": 1, "dagster": 1}
    groups = api(prometheus, "rules")["groups"]
    assert sum(len(group["rules"]) for group in groups) == 11
    assert all(r["health"] == "ok" for group in groups for r in group["rules"])


@pytest.mark.slow
def test_every_dashboard_query_runs_on_prometheus_and_finds_the_store(fleet):
    """Each panel's PromQL, with Grafana's variables as "All" sets them, parses and runs on
    the real server; where the metrics it reads have data, it returns series."""
    from posfed_pipeline_tests.support.processes import wait_for
    from posfed_pipeline_tests.support.prometheus import query

    dashboard = json.loads((DEPLOY / "grafana" / "posfed-store.json").read_text())
    # Enough scrapes for a rate over the window the test gives $__rate_interval.
    wait_for(
        lambda: query(fleet.prometheus, "count_over_time(up[30s]) >= 5"),
        60,
        "five scrapes",
        fleet.log,
    )
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = query(fleet.prometheus, _variable_query(variable["query"]["query"]))
            assert found, variable["name"]
    empty = []
    for title, expr in _dashboard_queries(dashboard):
        runnable = (
            expr.replace("$__rate_interval", "30s")
            .replace("$store", ".*")
            .replace("$terminal", ".*")
        )
        result = query(fleet.prometheus, runnable)  # fails the test if Prometheus refuses it
        names = set(_metric_names(runnable))
        with_data = all(query(fleet.prometheus, f"count({{__name__={name!r}}})") for name in names)
        if with_data and not result:
            empty.append((title, runnable))
    assert empty == []


def _variable_query(definition: str) -> str:
    """Grafana's label_values(metric, label) as the series query it stands for."""
    inner = definition.removeprefix("label_values(").removesuffix(")")
    metric, _label = inner.rsplit(",", 1)
    return metric.replace("$store", ".*").strip()


def _metric_names(expr: str) -> list[str]:
    import re

    return re.findall(r"\bposfed_[a-z_]+", expr)


@pytest.mark.slow
@pytest.mark.browser
def test_prometheus_graphs_the_latency_per_terminal(fleet, tmp_path):
    """Receipts keep coming for a minute; Prometheus's own graph page draws each terminal's
    p95 .dat latency (the screenshot in docs/operating.md: POSFED_UPDATE_SCREENSHOTS=1)."""
    import urllib.parse

    from posfed_dev.browser import headless_chromium, missing_browser

    from posfed_pipeline_tests.support.processes import wait_for
    from posfed_pipeline_tests.support.prometheus import query

    if missing_browser():
        pytest.fail(f"missing: {missing_browser()} (scripts/install-system-deps.sh)")
    for second in range(60):
        terminal, department, prefix = (
            ("bakery_1", "10", "1") if second % 2 else ("butcher_1", "20", "2")
        )
        fleet.deliver(terminal, receipt_doc(f"{prefix}F{second:04d}", terminal, department))
        fleet.sent[terminal] += 1
        time.sleep(1.0)
    fleet.wait_until_processed()
    expr = (
        "histogram_quantile(0.95, sum by (terminal, le) "
        "(rate(posfed_dat_latency_seconds_bucket[30s])))"
    )
    wait_for(lambda: len(query(fleet.prometheus, expr)) == 2, 60, "both curves", fleet.log)
    screenshots = (
        REPO_ROOT / "docs" if os.environ.get("POSFED_UPDATE_SCREENSHOTS") == "1" else tmp_path
    )
    params = urllib.parse.urlencode(
        {"g0.expr": expr, "g0.tab": "0", "g0.range_input": "1m", "g0.stacked": "0"}
    )
    browser = headless_chromium(tmp_path / "browser")
    try:
        browser.set_window_size(1400, 1150)
        browser.get(f"{fleet.prometheus}/classic/graph?{params}")
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        legend = (By.CSS_SELECTOR, ".graph_legend .legend_item, .legend .line")
        WebDriverWait(browser, 60).until(expected_conditions.presence_of_element_located(legend))
        shown = browser.find_element(By.TAG_NAME, "body").text
        assert 'terminal="bakery_1"' in shown and 'terminal="butcher_1"' in shown
        time.sleep(1)  # the chart's last transition
        assert browser.save_screenshot(str(screenshots / "prometheus-latency.png"))
    finally:
        browser.quit()
