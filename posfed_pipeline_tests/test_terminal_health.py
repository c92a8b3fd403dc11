"""A terminal that goes quiet, piles up files or keeps getting quarantined is noticed: by its
check in the Dagster UI, by an alert, and by `posfed status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from posfed_pipeline.core.config import config_from_dict
from posfed_pipeline.core.operations.terminal_health import terminal_health
from posfed_pipeline.core.state import inbox, quarantine
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.names import HEALTH_SENSOR, TERMINAL_INBOXES, health_check_name
from posfed_pipeline_tests.support.pipeline import process_and_sync
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.stores import store_config_dict, write_store_config

AMSTERDAM = ZoneInfo("Europe/Amsterdam")


def health_store(tmp_path, monkeypatch, health: dict, alerts: dict | None = None):
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    raw = store_config_dict(tmp_path / "posfed", health=health)
    if alerts:
        raw["alerts"] = alerts
    config = config_from_dict(raw, base_dir=tmp_path)
    config.ensure_folders()
    return config


def at(day_offset: int, hour: int, minute: int = 0) -> datetime:
    today = datetime.now(AMSTERDAM).date() + timedelta(days=day_offset)
    return datetime(today.year, today.month, today.day, hour, minute, tzinfo=AMSTERDAM)


def test_a_terminal_quiet_while_open_needs_a_look_counted_from_the_opening(tmp_path, monkeypatch):
    config = health_store(
        tmp_path, monkeypatch, {"opening_hours": "07:00-21:00", "quiet_after_minutes": 30}
    )
    terminal = config.terminal("bakery_1")
    ledger = open_ledger(config.home)
    assert terminal_health(terminal, ledger, at(0, 7, 20)).ok  # opened 20 min ago
    [problem] = terminal_health(terminal, ledger, at(0, 7, 45)).problems
    assert problem == "no receipt yet: quiet for 45 min while open (limit 30 min)"
    closed = terminal_health(terminal, ledger, at(0, 22, 30))
    assert closed.ok and not closed.open_now


class LastReceiptAt:
    """What the health check asks of a ledger (``KnowsLastReceipt``): one terminal's last
    receipt at a chosen moment, which a real ledger only records as now."""

    def __init__(self, when: datetime):
        self.when = when

    def last_accepted_at(self, terminal_id: str) -> float | None:
        return self.when.timestamp()


def test_a_terminal_open_round_the_clock_is_quiet_across_midnight(tmp_path, monkeypatch):
    # No opening hours: open all day, every day. A silence from 23:50 is 40 min long at 00:30;
    # midnight is no opening that forgives it.
    config = health_store(tmp_path, monkeypatch, {"quiet_after_minutes": 30})
    terminal = config.terminal("bakery_1")
    last_receipt = LastReceiptAt(at(0, 23, 50))
    assert terminal_health(terminal, last_receipt, at(1, 0, 10)).ok
    [problem] = terminal_health(terminal, last_receipt, at(1, 0, 30)).problems
    assert "quiet for 40 min while open (limit 30 min)" in problem
    # Closed on the day before: the morning's opening at midnight starts the count afresh.
    weekday = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[at(1, 0).weekday()]
    opens_at_midnight = health_store(
        tmp_path / "days", monkeypatch, {"quiet_after_minutes": 30, "open_days": [weekday]}
    )
    assert terminal_health(opens_at_midnight.terminal("bakery_1"), last_receipt, at(1, 0, 25)).ok


def test_the_last_receipt_restarts_the_quiet_clock(config, engine):
    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, receipt_doc("R1"))
    process_and_sync(config, engine, terminal, sorted(terminal.inbox.iterdir()))
    ledger = open_ledger(config.home)
    accepted = ledger.last_accepted_at(terminal.id)
    assert accepted is not None and abs(accepted - time.time()) < 60

    quiet = replace_health(config, quiet_after_minutes=30)
    now = datetime.fromtimestamp(accepted, UTC)
    assert terminal_health(quiet.terminal("bakery_1"), ledger, now + timedelta(minutes=10)).ok
    later = terminal_health(quiet.terminal("bakery_1"), ledger, now + timedelta(minutes=40))
    assert "quiet for 40 min while open" in later.problems[0]
    assert later.last_receipt_at is not None


def replace_health(config, **rules):
    from dataclasses import replace

    terminals = tuple(replace(t, health=replace(t.health, **rules)) for t in config.terminals)
    return replace(config, terminals=terminals, _by_id={})


def test_files_waiting_too_long_and_a_growing_quarantine_need_a_look(tmp_path, monkeypatch):
    config = health_store(
        tmp_path, monkeypatch, {"max_waiting_minutes": 2, "max_quarantined_per_day": 1}
    )
    terminal = config.terminal("bakery_1")
    ledger = open_ledger(config.home)
    drop_receipt(terminal.inbox, receipt_doc("R1"), age=60)
    fine = terminal_health(terminal, ledger, datetime.now(UTC))
    assert fine.ok and fine.waiting_files == 1 and 59 < fine.oldest_waiting_seconds < 120

    drop_receipt(terminal.inbox, receipt_doc("R2"), age=600)
    for n in range(2):
        path = drop_receipt(terminal.inbox, "{broken", name=f"bad{n}.json")
        quarantine.quarantine_file(terminal, inbox.stat_inbox_file(path), [], stage="intake")
    health = terminal_health(terminal, ledger, datetime.now(UTC))
    assert health.problems == (
        "a file has waited 10 min in the inbox (more than 2 min)",
        "2 file(s) quarantined today (more than 1)",
    )


def test_the_sensor_turns_a_terminals_check_red_once_and_mails_the_operator(
    tmp_path,
    monkeypatch,
    smtp_server,
):
    controller, mailbox = smtp_server
    config = health_store(
        tmp_path,
        monkeypatch,
        {"max_waiting_minutes": 1},
        alerts={
            "email_to": ["ops@example.com"],
            "smtp_host": "127.0.0.1",
            "smtp_port": controller.port,
        },
    )
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def(HEALTH_SENSOR)
    checks = {key.name for key in defs.resolve_asset_graph().asset_check_keys}
    assert {health_check_name(t.id) for t in config.terminals} <= checks
    with dg.instance_for_test() as instance:
        first = sensor(dg.build_sensor_context(instance=instance))
        assert sorted(e.check_name for e in first.asset_events) == sorted(
            health_check_name(t.id) for t in config.terminals
        )
        assert all(e.passed for e in first.asset_events)
        quiet = sensor(dg.build_sensor_context(instance=instance, cursor=first.cursor))
        assert quiet.asset_events == []  # nothing changed: nothing recorded

        terminal = config.terminal("butcher_1")
        drop_receipt(terminal.inbox, receipt_doc("S1", "butcher_1", "20"), age=300)
        bad = sensor(dg.build_sensor_context(instance=instance, cursor=quiet.cursor))
        [evaluation] = bad.asset_events
        assert (evaluation.asset_key, evaluation.check_name) == (
            dg.AssetKey(TERMINAL_INBOXES),
            "butcher_1_is_delivering",
        )
        assert not evaluation.passed
        assert evaluation.severity == dg.AssetCheckSeverity.ERROR
        problems = evaluation.metadata["problems"].value
        assert problems == "a file has waited 5 min in the inbox (more than 1 min)"
        [mail] = mailbox.messages
        assert "butcher_1 needs a look" in mail["Subject"]
        assert "waited 5 min" in mail.get_content()

        again = sensor(dg.build_sensor_context(instance=instance, cursor=bad.cursor))
        assert again.asset_events == [] and len(mailbox.messages) == 1  # said once


@pytest.mark.slow
def test_posfed_status_lists_every_terminal_and_its_reason(tmp_path):
    config_path = write_store_config(
        tmp_path / "posfed.toml",
        tmp_path / "home",
        health={"max_waiting_minutes": 1},
    )
    env = {**os.environ, "POSFED_CONFIG": str(config_path)}
    for key in ("POSFED_HOME", "POSFED_DB_URL", "DAGSTER_HOME"):
        env.pop(key, None)
    inbox_dir = tmp_path / "home" / "terminals" / "bakery_1" / "inbox"
    inbox_dir.mkdir(parents=True)
    (tmp_path / "home" / "terminals" / "butcher_1" / "inbox").mkdir(parents=True)
    drop_receipt(inbox_dir, receipt_doc("R1"), name="[x](http:evil).json", age=400)

    def status(*args):
        return subprocess.run(
            [sys.executable, "-m", "posfed_pipeline.cli", "status", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO_ROOT,
            timeout=60,
        )

    shown = status()
    assert shown.returncode == 0, shown.stderr
    assert "bakery_1" in shown.stdout and "butcher_1" in shown.stdout
    assert "a file has waited 6 min in the inbox (more than 1 min)" in shown.stdout
    assert "1 of 2 terminal(s) need a look: bakery_1" in shown.stdout
    assert status("--check").returncode == 1
    listed = json.loads(status("--json").stdout)
    assert [(t["terminal"], t["ok"], t["waiting_files"]) for t in listed] == [
        ("bakery_1", False, 1),
        ("butcher_1", True, 0),
    ]


@pytest.mark.parametrize(
    "hours, moment, is_open",
    [("07:00-21:00", (7, 0), True), ("07:00-21:00", (21, 0), False), ("22:00-06:00", (2, 0), True)],
)
def test_opening_hours_may_run_past_midnight(hours, moment, is_open, tmp_path, monkeypatch):
    config = health_store(tmp_path, monkeypatch, {"opening_hours": hours})
    assert config.terminal("bakery_1").health.is_open(at(0, *moment)) is is_open
