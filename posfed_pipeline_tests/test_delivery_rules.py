"""Completeness rules per terminal: which inbox files are ready, by the till's own convention."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from posfed_pipeline.core.base.fsutil import move_unique
from posfed_pipeline.core.config import ConfigError, config_from_dict
from posfed_pipeline.core.dat import load_spec
from posfed_pipeline.core.stages import processing
from posfed_pipeline.core.state import inbox, quarantine
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc
from posfed_pipeline_tests.support.stores import SHIPPED_MAPPINGS, store_config_dict


def store(tmp_path: Path, delivery: dict | None = None, **terminal_settings):
    raw = store_config_dict(
        tmp_path / "posfed",
        mappings=SHIPPED_MAPPINGS,
        terminals=[
            {"id": "bakery_1", "department": "10", **terminal_settings},
            {"id": "flowers_2", "department": "90", "format": "caissepro-csv"},
        ],
    )
    if delivery is not None:
        raw["delivery"] = delivery
    config = config_from_dict(raw, base_dir=tmp_path)
    config.ensure_folders()
    return config


def names(files) -> list[str]:
    return [f.name for f in files]


def test_rules_are_set_store_wide_and_per_terminal(tmp_path):
    config = store(
        tmp_path,
        delivery={"watch": "poll", "poll_interval_seconds": 2, "ignore": ["*.bak"]},
        ready_marker=".ok",
        stability_seconds=1.5,
    )
    bakery, flowers = config.terminal("bakery_1").delivery, config.terminal("flowers_2").delivery
    assert (bakery.watch, bakery.poll_interval_seconds, bakery.ignore) == ("poll", 2.0, ("*.bak",))
    assert (bakery.ready_marker, bakery.stability_seconds) == (".ok", 1.5)
    assert (flowers.ready_marker, flowers.stability_seconds) == (None, 0.2)  # [intake]'s


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"watch": "inotify"}, "watch must be one of events, poll"),
        ({"poll_interval_seconds": 0}, "poll_interval_seconds must be a number from 0.05"),
        ({"ready_marker": "ok"}, 'ready_marker must be a suffix such as ".ok"'),
        ({"ready_marker": ".ok", "batch_marker": "end.trg"}, "choose one"),
        ({"batch_marker": "../end.trg"}, "batch_marker must be a plain file name"),
        ({"ignore": "*.bak"}, "ignore must list glob patterns"),
        ({"opening_hours": "7-21"}, 'opening_hours must read like "07:00-21:00"'),
        ({"open_days": ["monday"]}, "open_days must list days among mon"),
        ({"max_quarantined_per_day": -1}, "max_quarantined_per_day must be a whole number"),
        ({"quiet_after_minutes": 0}, "quiet_after_minutes must be a number from 1"),
    ],
)
def test_a_wrong_rule_is_refused_with_its_place(tmp_path, settings, message):
    with pytest.raises(ConfigError, match="terminals\\[0\\]") as caught:
        store(tmp_path, **settings)
    assert message in str(caught.value)


def test_a_ready_marker_makes_a_file_ready_and_goes_with_it(tmp_path):
    config = store(tmp_path, ready_marker=".ok")
    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, receipt_doc("R1"), age=30)  # old, but no marker yet
    scan = inbox.scan_inbox(terminal)
    assert (names(scan.ready), names(scan.settling)) == ([], ["R1.json"])

    (terminal.inbox / "R1.json.ok").touch()
    scan = inbox.scan_inbox(terminal)
    assert names(scan.ready) == ["R1.json"]  # the marker itself is never a receipt

    inbox.archive_file(terminal, scan.ready[0], datetime.now().date())
    assert sorted(os.listdir(terminal.inbox)) == []  # the marker left with its file

    # A marker older than a re-sent file is the earlier delivery's: the new one waits.
    (terminal.inbox / "R2.json.ok").touch()
    past = time.time() - 5
    os.utime(terminal.inbox / "R2.json.ok", (past, past))
    drop_receipt(terminal.inbox, receipt_doc("R2"), age=0)
    assert names(inbox.scan_inbox(terminal).settling) == ["R2.json"]


def test_a_quarantined_file_takes_its_marker_and_a_retry_gives_it_one(tmp_path):
    config = store(tmp_path, ready_marker=".ok")
    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, "{not json", name="R9.json")
    (terminal.inbox / "R9.json.ok").touch()
    [version] = inbox.scan_inbox(terminal).ready
    quarantine.quarantine_file(terminal, version, [], stage="intake")
    assert os.listdir(terminal.inbox) == []
    [entry] = quarantine.quarantined_files(terminal)
    quarantine.retry(terminal, entry.name)
    assert names(inbox.scan_inbox(terminal).ready) == ["R9.json"]


def test_a_batch_marker_releases_every_file_written_before_it_at_once(tmp_path):
    config = store(tmp_path, batch_marker="endofday.trg")
    terminal = config.terminal("bakery_1")
    for n in range(3):
        drop_receipt(terminal.inbox, receipt_doc(f"B{n}"), age=20 - n)
    assert names(inbox.scan_inbox(terminal).ready) == []  # old files, but no trigger file yet

    trigger = terminal.inbox / "endofday.trg"
    trigger.touch()
    os.utime(trigger, (time.time() - 10, time.time() - 10))
    drop_receipt(terminal.inbox, receipt_doc("B9"), age=1)  # after the trigger: next batch
    scan = inbox.scan_inbox(terminal)
    assert names(scan.ready) == ["B0.json", "B1.json", "B2.json"]
    assert names(scan.settling) == ["B9.json"]
    assert [b.file_names for b in inbox.plan_batches(terminal, scan.ready, lambda f: 1)] == [
        ["B0.json", "B1.json", "B2.json"]  # taken together: one run
    ]

    for version in scan.ready:
        inbox.archive_file(terminal, version, datetime.now().date())
    inbox.scan_inbox(terminal)  # everything it announced is handled: the trigger is consumed
    assert sorted(os.listdir(terminal.inbox)) == ["B9.json"]


def test_ignored_names_are_never_read(tmp_path):
    config = store(tmp_path, ignore=["*.bak", "~$*"])
    terminal = config.terminal("bakery_1")
    for name in ("R1.json", "R1.json.bak", "~$R1.json"):
        drop_receipt(terminal.inbox, receipt_doc("R1"), name=name, age=5)
    assert names(inbox.scan_inbox(terminal).ready) == ["R1.json"]
    with pytest.raises(ValueError, match="not a receipt file name"):
        inbox.inbox_path(terminal, "R1.json.bak")


def test_a_csv_still_being_appended_is_left_in_the_inbox_not_quarantined(tmp_path):
    config = store(tmp_path)
    terminal = config.terminal("flowers_2")
    now = datetime.now(terminal.timezone).strftime("%d/%m/%Y %H:%M")
    header = "TICKET;CAISSE;RAYON;DATE_HEURE;EAN;LIBELLE;PRIX_UNIT;QTE;TOTAL_TICKET\n"
    rows = [
        f"T1;flowers_2;90;{now};8712345600044;Tulpen;4,99;2;19,93\n",
        f"T1;flowers_2;90;{now};8712345600051;Rozen;9,95;1;19,93\n",
    ]
    path = terminal.inbox / "T1.csv"
    path.write_text(header + rows[0])  # cut at a row boundary: parses, total does not add up
    ledger = open_ledger(config.home)
    spec = load_spec(config.dat_spec)

    def process():
        return processing.process_batch(config, terminal, [path], ledger=ledger, spec=spec)

    first = process()
    assert first.intake.deferred == ["T1.csv"] and first.rejections() == []
    assert path.exists() and not any(terminal.quarantine.iterdir())

    with path.open("a") as handle:  # the writer appends the last row
        handle.write(rows[1])
    second = process()
    assert [r.receipt_id for r in second.acceptance.accepted] == ["T1"]

    # A CSV that is still wrong once its writer is long done is quarantined, with its reason.
    path = drop_receipt(terminal.inbox, header + rows[0], name="T2.csv", age=60)
    third = processing.process_batch(config, terminal, [path], ledger=ledger, spec=spec)
    assert [r.file for r in third.rejections()] == ["T2.csv"]


def test_readiness_by_observation_ignores_coarse_or_skewed_mtimes(tmp_path):
    """On a share, mtimes may be whole seconds or another clock's: a file counts as settled
    only once two listings, stability_seconds apart, saw it unchanged."""
    config = store(tmp_path)
    terminal = config.terminal("bakery_1")
    path = drop_receipt(terminal.inbox, '{"receiptId": "R', name="R1.json", age=3600)
    watch = inbox.SettleWatch()
    assert names(watch.split(inbox.scan_inbox(terminal), 0.3, now=100.0).ready) == []
    with path.open("a") as handle:
        handle.write('1"}')
    os.utime(path, (time.time() - 3600, time.time() - 3600))  # an old-looking mtime again
    assert names(watch.split(inbox.scan_inbox(terminal), 0.3, now=100.5).ready) == []
    assert names(watch.split(inbox.scan_inbox(terminal), 0.3, now=100.9).ready) == ["R1.json"]


def test_a_file_moves_across_file_systems_whole_and_without_clobbering(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs a second file system (/dev/shm)")
    source_dir = Path(os.path.realpath(shm)) / f"posfed-{os.getpid()}"
    source_dir.mkdir()
    try:
        for content in (b"first", b"second"):
            source = source_dir / "R1.json"
            source.write_bytes(content)
            moved = move_unique(source, tmp_path / "archive")
            assert moved.read_bytes() == content and not source.exists()
        assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == ["R1.json", "R1~1.json"]
    finally:
        for leftover in source_dir.iterdir():
            leftover.unlink()
        source_dir.rmdir()


def test_a_new_files_marker_survives_the_old_files_move(tmp_path):
    """A till re-sends a name while the earlier file of that name is being archived: the new
    file's marker is the new file's, and stays."""
    config = store(tmp_path, ready_marker=".ok")
    terminal = config.terminal("bakery_1")
    drop_receipt(terminal.inbox, receipt_doc("R1"), age=10)
    (terminal.inbox / "R1.json.ok").touch()
    [old] = inbox.scan_inbox(terminal).ready
    claimed = inbox.take(old)
    drop_receipt(terminal.inbox, receipt_doc("R1", total="9.99"), age=0)  # the new one...
    (terminal.inbox / "R1.json.ok").touch()  # ...and its marker, while the old one moves
    move_unique(claimed, terminal.archive_dir(datetime.now().date()), name="R1.json")
    inbox.release_ready_marker(terminal, "R1.json")
    assert names(inbox.scan_inbox(terminal).ready) == ["R1.json"]


def test_a_claim_is_judged_stale_by_its_own_time_not_the_file_systems_ctime(tmp_path):
    config = store(tmp_path)
    terminal = config.terminal("bakery_1")
    now_ns = time.time_ns()
    fresh = terminal.inbox / f"{inbox.CLAIM_PREFIX}1.{now_ns}.R1.json"
    stale = terminal.inbox / f"{inbox.CLAIM_PREFIX}1.{now_ns - 120 * 10**9}.R2.json"
    for path in (fresh, stale):
        path.write_text("{}")
        os.utime(path, (0, 0))  # as sshfs shows it: an old time, whatever the rename did
    inbox.scan_inbox(terminal)
    assert sorted(os.listdir(terminal.inbox)) == sorted([fresh.name, "R2.json"])


@pytest.mark.parametrize(
    "hours, days, weekday_hour, is_open",
    [
        ("00:00-24:00", ["mon"], (0, 3), True),  # Monday 03:00: open all day
        ("22:00-06:00", ["fri"], (4, 23), True),  # Friday 23:00
        ("22:00-06:00", ["fri"], (5, 2), True),  # Saturday 02:00: still Friday's night
        ("22:00-06:00", ["fri"], (4, 2), False),  # Friday 02:00: Thursday's night
    ],
)
def test_opening_hours_belong_to_the_day_they_open(tmp_path, hours, days, weekday_hour, is_open):
    config = store(tmp_path, opening_hours=hours, open_days=days)
    weekday, hour = weekday_hour
    monday = datetime(2026, 11, 30, tzinfo=config.timezone)  # a Monday
    moment = monday + timedelta(days=weekday, hours=hour)
    assert config.terminal("bakery_1").health.is_open(moment) is is_open
