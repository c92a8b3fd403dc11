"""Whatever lands in an inbox gets exactly one verdict, and never stops its terminal.

A store's inbox receives what tills, people and old SMB clients put there: names in another
code page, names near the file system's limit, files that are not receipts at all, duplicate
keys, DTDs, sales nested a thousand levels deep, directories, symlinks, FIFOs and sockets.
Each becomes that entry's verdict (accepted with its .dat, quarantined with a reason, or, for
what is not a regular file, reported and left alone), and the terminal's next valid receipt is
delivered as usual. Property-based (hypothesis) where the input space is open.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import time
from datetime import datetime, timedelta
from itertools import count
from pathlib import Path

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posfed_pipeline.core.base.clock import ManualClock
from posfed_pipeline.core.config import config_from_dict
from posfed_pipeline.core.dat import load_spec
from posfed_pipeline.core.intake import parsing
from posfed_pipeline.core.intake.poslog import write_poslog
from posfed_pipeline.core.model.receipt import Receipt
from posfed_pipeline.core.operations.terminal_health import terminal_health
from posfed_pipeline.core.stages import launching, processing
from posfed_pipeline.core.state import claims, inbox, quarantine
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.names import RECEIPTS_JOB
from posfed_pipeline_tests.support.daemon import run_as_the_daemon_would
from posfed_pipeline_tests.support.receipts import receipt_doc
from posfed_pipeline_tests.support.stores import store_config_dict

POSLOG_TERMINAL = {
    "id": "fish_1",
    "department": "40",
    "tenant": "Vis",
    "format": "arts-poslog",
    "workstation_id": "7",
}
CSV_MAPPING = {
    "caissepro-csv": {
        "kind": "csv",
        "delimiter": ";",
        "decimal_separator": ",",
        "timestamp_format": "%d/%m/%Y %H:%M",
        "fields": {
            "receiptId": "NUM_TICKET",
            "timestamp": "DATE_HEURE",
            "total": "TOTAL_TTC",
            "barcode": "CODE_EAN",
            "description": "LIBELLE",
            "price": "PRIX_UNIT",
            "quantity": "QTE",
        },
    }
}
CSV_TERMINAL = {"id": "flowers_1", "department": "90", "tenant": "Bloem", "format": "caissepro-csv"}
RECEIPT_KEYS = ["receiptId", "terminalId", "departmentCode", "items", "total", "timestamp"]
ITEM_KEYS = ["barcode", "description", "price", "quantity"]


def _store(home: Path, **intake_settings):
    raw = store_config_dict(
        home,
        terminals=[
            {"id": "bakery_1", "department": "10", "tenant": "Bakkerij"},
            POSLOG_TERMINAL,
            CSV_TERMINAL,
        ],
        mappings=CSV_MAPPING,
    )
    raw["intake"].update(intake_settings)
    config = config_from_dict(raw, base_dir=home)
    config.ensure_folders()
    return config


@pytest.fixture
def odd_store(tmp_path, monkeypatch):
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    return _store(tmp_path / "posfed")


# --- contents: any bytes, in every format, is a receipt or its reasons ------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["8712345678906", "2.95", "10", "2026-12-07T10:00:00+01:00"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(RECEIPT_KEYS + ITEM_KEYS) | st.text(max_size=8), children)
    ),
    max_leaves=25,
)


@st.composite
def wrong_json(draw) -> bytes:
    """A receipt with fields replaced by any JSON value, or any JSON document at all; keys may
    repeat, the document may be cut anywhere."""
    if draw(st.booleans()):
        doc = receipt_doc("1W1")
        for key in draw(st.lists(st.sampled_from(RECEIPT_KEYS), max_size=3)):
            doc[key] = draw(json_values)
        text = json.dumps(doc)
        if draw(st.booleans()):  # a key twice
            key = draw(st.sampled_from(RECEIPT_KEYS))
            text = text[:-1] + f', "{key}": {json.dumps(draw(json_values))}}}'
    else:
        text = json.dumps(draw(json_values))
    data = text.encode()
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


@st.composite
def wrong_csv(draw) -> bytes:
    header = draw(
        st.sampled_from(
            [
                "NUM_TICKET;DATE_HEURE;TOTAL_TTC;CODE_EAN;LIBELLE;PRIX_UNIT;QTE",
                "NUM_TICKET;NUM_TICKET;DATE_HEURE;TOTAL_TTC;CODE_EAN;LIBELLE;PRIX_UNIT;QTE",
                "",
            ]
        )
    )
    cell = st.text(alphabet=st.characters(codec="latin-1"), max_size=10) | st.sampled_from(
        ["T1", "20/11/2026 10:00", "2,95", "8712345678906", '"', ";", "\n"]
    )
    rows = draw(st.lists(st.lists(cell, max_size=9), max_size=5))
    text = "\n".join([header, *(";".join(row) for row in rows)])
    encoding = draw(st.sampled_from(["utf-8", "cp1252", "utf-16"]))
    return text.encode(encoding, "replace")


# One store for the tests that only read (parsing, names).
_STORE = _store(Path(tempfile.mkdtemp(prefix="posfed-odd-")))


def _sale(receipt_id: str = "2042") -> Receipt:
    doc = receipt_doc(receipt_id)
    return parsing.parse_receipt(json.dumps(doc).encode(), _STORE.terminal("bakery_1"))


@st.composite
def wrong_poslog(draw) -> bytes:
    """A till's POSLog export, broken one way or several (each change applies where the
    changes before it left something to change)."""
    text = write_poslog([_POSLOG_SALE], "7").decode()
    for change in draw(st.lists(st.sampled_from(range(6)), max_size=3)):
        tag = draw(
            st.sampled_from(
                ["SequenceNumber", "WorkstationID", "EndDateTime", "RetailTransaction"]
                + ["LineItem", "Total", "ItemID", "RegularSalesUnitPrice", "Quantity"]
            )
        )
        opening, closing = f"<{tag}", f"</{tag}>"
        present = opening in text and closing in text[text.index(opening) :]
        if change == 0:  # a DTD
            text = text.replace("?>", '?><!DOCTYPE POSLog [<!ENTITY x "y">]>', 1)
        elif change == 1:  # a sale nested very deeply
            depth = draw(st.integers(10, 5000))
            text = text.replace("<LineItem>", "<LineItem>" + "<x>" * depth + "</x>" * depth, 1)
        elif change == 2 and present:  # an element twice
            start = text.index(opening)
            end = text.index(closing, start) + len(closing)
            text = text[:end] + text[start:end] + text[end:]
        elif change == 3 and present:  # an element's text replaced
            value = draw(st.text(max_size=12).map(lambda t: t.replace("<", "").replace("&", "")))
            start = text.index(">", text.index(opening)) + 1
            text = text[:start] + value + text[text.index("</", start) :]
        elif change == 4:  # cut off
            text = text[: draw(st.integers(0, len(text)))]
        elif change == 5 and present:  # an element removed
            start = text.index(opening)
            text = text[:start] + text[text.index(closing, start) + len(closing) :]
    return text.encode("utf-8", "surrogatepass")


_POSLOG_SALE = _sale()
any_content = st.binary(max_size=3000) | wrong_json() | wrong_csv() | wrong_poslog()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=any_content, terminal_id=st.sampled_from(["bakery_1", "fish_1", "flowers_1"]))
def test_any_bytes_in_any_format_are_receipts_or_reasons_and_nothing_else(data, terminal_id):
    terminal = _STORE.terminal(terminal_id)
    try:
        readings = parsing.parse_receipts(data, terminal, source_file="x")
    except parsing.IntakeError as exc:
        assert exc.problems, "a rejection always says why"
        json.dumps([p.as_dict() for p in exc.problems]).encode("utf-8")  # reportable as is
        return
    for reading in readings:
        assert (reading.receipt is None) != (reading.error is None)


def test_a_json_key_twice_is_refused_not_last_one_wins(odd_store):
    terminal = odd_store.terminal("bakery_1")
    text = json.dumps(receipt_doc("1D1"))
    for repeated in (text[:-1] + ', "total": "0.01"}', text[:-1] + ', "receiptId": "1D2"}'):
        with pytest.raises(parsing.IntakeError) as refused:
            parsing.parse_receipt(repeated.encode(), terminal)
        [problem] = refused.value.problems
        assert "twice in one object" in problem.value and "must not repeat" in problem.rule


def test_a_poslog_element_twice_a_dtd_and_deep_nesting_are_refused(odd_store):
    terminal = odd_store.terminal("fish_1")
    good = write_poslog([_POSLOG_SALE], "7").decode()
    twice = good.replace("</SequenceNumber>", "</SequenceNumber><SequenceNumber>9</SequenceNumber>")
    dtd = good.replace("?>", "?><!DOCTYPE POSLog [<!ELEMENT POSLog ANY>]>", 1)
    deep = good.replace("<LineItem>", "<LineItem>" + "<x>" * 100_000 + "</x>" * 100_000, 1)
    for data, said in (
        (twice, "must appear once"),
        (dtd, "DTD or entities is refused"),
        (deep, "nested too deeply"),
    ):
        with pytest.raises(parsing.IntakeError) as refused:
            parsing.parse_receipt(data.encode(), terminal)
        assert said in str(refused.value)


def test_a_csv_header_naming_a_column_twice_is_refused(odd_store):
    terminal = odd_store.terminal("flowers_1")
    data = (
        b"NUM_TICKET;DATE_HEURE;TOTAL_TTC;TOTAL_TTC;CODE_EAN;LIBELLE;PRIX_UNIT;QTE\n"
        b"T1;20/11/2026 10:00;2,95;9,99;8712345678906;Brood;2,95;1\n"
    )
    with pytest.raises(parsing.IntakeError, match="more than once in the CSV header"):
        parsing.parse_receipt(data, terminal)


def test_a_poslog_file_whose_only_sale_is_bad_is_quarantined_whole(odd_store):
    terminal = odd_store.terminal("fish_1")
    bad = write_poslog([_POSLOG_SALE], "7").replace(b'TransactionGrandAmount">', b'x">', 1)
    path = terminal.inbox / "only-bad.xml"
    path.write_bytes(bad)
    ledger = open_ledger(odd_store.home)
    result = processing.process_batch(
        odd_store, terminal, [path], ledger=ledger, spec=load_spec(odd_store.dat_spec)
    )
    [(name, problems)] = result.intake.rejected
    assert name == "only-bad.xml" and any(p.field.startswith("total") for p in problems)
    assert (terminal.quarantine / "only-bad.xml.error.json").exists()
    assert not path.exists()


# --- names: any bytes the file system allows ---------------------------------------------------

names = st.binary(min_size=1, max_size=255).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)


@settings(max_examples=500)
@given(raw=names)
def test_every_name_gets_a_safe_one_that_posfed_can_carry(raw):
    name = os.fsdecode(raw)
    safe = inbox.safe_name(name)
    assert inbox.name_problem(safe) is None
    assert safe == inbox.safe_name(name)  # the same name, the same result
    assert len(safe.encode()) <= inbox.MAX_NAME_BYTES
    if inbox.name_problem(name) is None:
        assert safe == name
    shown = inbox.printable_name(name)
    shown.encode("utf-8")  # reports and consoles can show it
    assert not any(c in shown for c in "\n\r\x1b")


# --- through the real intake: sensor ticks and runs, as the daemon does -----------------------

ENTRY_KINDS = ["file", "file", "file", "dir", "symlink_in", "symlink_out", "fifo", "socket", "link"]


@st.composite
def inbox_entries(draw) -> list[tuple[str, bytes, bytes]]:
    """(kind, name, content) entries, their names distinct."""
    entries = draw(
        st.lists(
            st.tuples(st.sampled_from(ENTRY_KINDS), names, any_content),
            min_size=1,
            max_size=6,
            unique_by=lambda e: e[1],
        )
    )
    # Hidden and temporary names (".x", "x.tmp") are left for their writer, by design and
    # reported (test_sensors::test_temp_and_hidden_files_are_ignored): this test is about
    # every other name.
    return [e for e in entries if inbox.is_candidate(os.fsdecode(e[1]))]


def _make(
    folder: Path, kind: str, name: bytes, content: bytes, outside: Path, written_at: float
) -> None:
    path = os.path.join(os.fsencode(folder), name)
    if kind == "file":
        with open(path, "wb") as handle:
            handle.write(content)
    elif kind == "dir":
        os.mkdir(path)
    elif kind == "symlink_in":
        os.symlink(b"elsewhere.json", path)
    elif kind == "symlink_out":
        os.symlink(os.fsencode(outside), path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(path)
    elif kind == "link":  # a hard link: a second name for a file already there
        target = os.path.join(os.fsencode(folder), b"hard-original.json")
        if not os.path.exists(target):
            with open(target, "wb") as handle:
                handle.write(content)
        os.link(target, path)
    os.utime(path, (written_at, written_at), follow_symlinks=False)


def _regular_inodes(folder: Path) -> dict[int, int]:
    """inode -> how many regular files (names) have it, under ``folder``."""
    found: dict[int, int] = {}
    for root, _dirs, files in os.walk(os.fsencode(folder)):
        for name in files:
            status = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(status.st_mode):
                found[status.st_ino] = found.get(status.st_ino, 0) + 1
    return found


def _daemon_cycle(defs, instance, terminal_id: str, clock: ManualClock, ticks: int = 6) -> list:
    """Sensor ticks and their runs (with the tags the daemon gives them) until a tick has
    nothing to launch."""
    sensor_name = f"{terminal_id}_inbox_sensor"
    sensor = defs.resolve_sensor_def(sensor_name)
    job = defs.resolve_job_def(RECEIPTS_JOB)
    cursor, results = None, []
    for _ in range(ticks):
        tick = sensor(dg.build_sensor_context(cursor=cursor, instance=instance))
        cursor = tick.cursor
        if not tick.run_requests:
            break
        results += [
            run_as_the_daemon_would(job, request, instance, sensor_name)
            for request in tick.run_requests
        ]
    return results


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(entries=inbox_entries(), terminal_id=st.sampled_from(["bakery_1", "fish_1"]))
def test_every_inbox_entry_gets_one_verdict_and_the_next_receipt_is_delivered(
    odd_home, entries, terminal_id
):
    config, defs, instance, clock, outside, serial = odd_home
    terminal = config.terminal(terminal_id)
    for folder in (terminal.inbox, terminal.archive_root, terminal.quarantine):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    example = next(serial)
    for kind, name, content in entries:
        # Written before the sensor's clock (not the wall clock, which runs on past the
        # module's ManualClock: after a minute of examples "a minute ago" was its future),
        # and at another second in each example: one store serves every example, and a file of
        # the same name, size and mtime as one handled moments ago is the same version to the
        # claim table (relaunched only after relaunch_after_seconds, which this clock never
        # reaches).
        written_at = clock.time() - 60 - example
        _make(terminal.inbox, kind, name, content, outside, written_at=written_at)
    created = _regular_inodes(terminal.inbox)
    odd_before = sorted(e.name for e in inbox.scan_inbox(terminal).skipped if e.not_regular)

    # A valid receipt after them, from the same till.
    receipt_id = f"1V{example:05d}"
    now = datetime.fromtimestamp(clock.time(), terminal.timezone).replace(microsecond=0)
    doc = receipt_doc(receipt_id, timestamp=now.isoformat())  # bakery_1's
    if terminal_id == "bakery_1":
        data = json.dumps(doc).encode()
    else:  # the same sale from the POSLog till
        receipt = parsing.parse_receipt(json.dumps(doc).encode(), config.terminal("bakery_1"))
        data = write_poslog([receipt], "7")
    valid = terminal.inbox / (receipt_id + (".json" if terminal_id == "bakery_1" else ".xml"))
    valid.write_bytes(data)
    past = clock.time() - 5
    os.utime(valid, (past, past))

    results = _daemon_cycle(defs, instance, terminal_id, clock)

    assert results and all(r.success for r in results)  # no run failed on any entry
    # Every regular file left the inbox for the archive or quarantine, each name once.
    left = _regular_inodes(terminal.inbox)
    assert not set(left) & set(created), "a regular file was left without a verdict"
    done = _regular_inodes(terminal.archive_root)
    for inode, n in _regular_inodes(terminal.quarantine).items():
        done[inode] = done.get(inode, 0) + n
    for inode, n in created.items():
        assert done.get(inode) == n, "each name of a file has exactly one verdict"
    for report in terminal.quarantine.glob("*.error.json"):
        assert json.loads(report.read_text())["problems"]
    # What is not a regular file is still there, untouched, and reported where operators look.
    still = sorted(e.name for e in inbox.scan_inbox(terminal).skipped if e.not_regular)
    assert still == odd_before
    if still:
        health = terminal_health(terminal, open_ledger(config.home), datetime.now().astimezone())
        assert any("does not take" in p for p in health.problems)
    assert json.loads(outside.read_text()) == {"outside": True}
    # The valid receipt: billed once.
    dat = config.dat_dir / now.strftime("%Y%m%d") / f"scon{terminal.department}{receipt_id}.dat"
    assert dat.exists()


@pytest.fixture(scope="module")
def odd_home():
    root = Path(tempfile.mkdtemp(prefix="posfed-odd-", dir="/tmp"))  # short: socket paths
    config = _store(root / "s", incomplete_grace_seconds=0)
    from posfed_pipeline.core import central_db

    central_db.upgrade_database(central_db.make_engine(config.db_url))
    clock = ManualClock()
    defs = build_definitions(config, clock=clock)
    outside = root / "outside.json"
    outside.write_text(json.dumps({"outside": True}))
    with dg.instance_for_test() as instance:
        yield config, defs, instance, clock, outside, count()
    shutil.rmtree(root, ignore_errors=True)


# --- names and days that used to stop a terminal -----------------------------------------------


def _tick_and_run(config, instance, clock, terminal_id="bakery_1"):
    return _daemon_cycle(build_definitions(config, clock=clock), instance, terminal_id, clock, 1)


def test_a_name_not_utf8_or_too_long_is_renamed_billed_and_recorded(odd_store):
    terminal = odd_store.terminal("bakery_1")
    from posfed_pipeline.core import central_db

    central_db.upgrade_database(central_db.make_engine(odd_store.db_url))
    latin1 = b"re\xe7u-1.json"
    long_name = ("L" * 230 + ".json").encode()
    for name, receipt_id in ((latin1, "1N1"), (long_name, "1N2")):
        path = os.path.join(os.fsencode(terminal.inbox), name)
        with open(path, "wb") as handle:
            handle.write(json.dumps(receipt_doc(receipt_id)).encode())
        os.utime(path, (datetime.now().timestamp() - 5,) * 2)
    clock = ManualClock()
    with dg.instance_for_test() as instance:
        results = _tick_and_run(odd_store, instance, clock)
    assert results and all(r.success for r in results)
    archived = sorted(p.name for p in terminal.archive_root.rglob("*") if p.is_file())
    assert "re%E7u-1.json" in archived
    [cut] = [n for n in archived if n.startswith("LLL")]
    assert len(cut.encode()) <= inbox.MAX_NAME_BYTES and cut.endswith(".json")
    assert len(list(odd_store.dat_dir.rglob("*.dat"))) == 2
    renamed = [e for e in quarantine.history(terminal) if e["event"] == "renamed"]
    assert {e["original_name"] for e in renamed} >= {"re\\xe7u-1.json"}
    assert all("UTF-8" in e["reason"] or "bytes long" in e["reason"] for e in renamed)


def test_a_receipt_dated_tomorrow_is_quarantined_for_the_clock_not_a_dagster_error(odd_store):
    terminal = odd_store.terminal("bakery_1")
    from posfed_pipeline.core import central_db

    central_db.upgrade_database(central_db.make_engine(odd_store.db_url))
    tomorrow = (datetime.now(terminal.timezone) + timedelta(days=1)).isoformat()
    for receipt_id, when in (("1F1", tomorrow), ("1F2", "2099-06-01T10:00:00+02:00")):
        doc = receipt_doc(receipt_id, timestamp=when)
        (terminal.inbox / f"{receipt_id}.json").write_text(json.dumps(doc))
        os.utime(terminal.inbox / f"{receipt_id}.json", (datetime.now().timestamp() - 5,) * 2)
    clock = ManualClock()
    with dg.instance_for_test() as instance:
        results = _tick_and_run(odd_store, instance, clock)
    assert results and all(r.success for r in results)
    today = datetime.now(odd_store.timezone).date().isoformat()
    assert all(r.dagster_run.tags["dagster/partition"].startswith(today) for r in results)
    for receipt_id in ("1F1", "1F2"):
        report = json.loads((terminal.quarantine / f"{receipt_id}.json.error.json").read_text())
        assert "in the future" in report["problems"][0]["rule"]


def test_an_unreadable_file_is_relaunched_when_its_grace_ends_and_then_quarantined(odd_store):
    """A file that does not parse and was written moments ago waits for its writer; the run
    says when to look again (the claim), and the next look gives the verdict."""
    terminal = odd_store.terminal("bakery_1")
    from posfed_pipeline.core import central_db

    central_db.upgrade_database(central_db.make_engine(odd_store.db_url))
    clock = ManualClock()
    path = terminal.inbox / "cut.json"
    path.write_bytes(b'{"receiptId": "1C1", "ite')
    os.utime(path, (clock.time() - 1, clock.time() - 1))
    defs = build_definitions(odd_store, clock=clock)
    sensor = defs.resolve_sensor_def("bakery_1_inbox_sensor")
    job = defs.resolve_job_def(RECEIPTS_JOB)
    claim_table = claims.ClaimTable(claims.claim_table_path(odd_store.home))
    with dg.instance_for_test() as instance:
        [request] = sensor(dg.build_sensor_context(instance=instance)).run_requests
        assert job.execute_in_process(
            run_config=request.run_config,
            partition_key=request.partition_key,
            instance=instance,
        ).success
        [claim] = claim_table.claims_of(terminal.id).values()
        grace = odd_store.incomplete_grace_seconds
        assert claim.retry_at == pytest.approx(clock.time() - 1 + grace, abs=0.01)
        assert "written to moments ago" in claim.note
        assert path.exists()  # left for its writer

        clock.advance(grace - 2)  # not yet due: nothing relaunched
        assert not sensor(dg.build_sensor_context(instance=instance)).run_requests
        clock.advance(2)
        [again] = sensor(dg.build_sensor_context(instance=instance)).run_requests
        assert again.run_config["ops"]["receipt_pipeline"]["config"]["attempt"] == 1
        assert job.execute_in_process(
            run_config=again.run_config, partition_key=again.partition_key, instance=instance
        ).success
    report = json.loads((terminal.quarantine / "cut.json.error.json").read_text())
    assert "not valid JSON" in report["problems"][0]["rule"]


def test_a_file_that_cannot_be_archived_is_billed_once_and_left_for_a_later_attempt(
    odd_store, monkeypatch
):
    """The archive move fails (a full or read-only archive disk): the run succeeds, the .dat
    is written once, the file waits in the inbox with the reason and is moved later, never
    billed twice."""
    terminal = odd_store.terminal("bakery_1")
    path = terminal.inbox / "1A1.json"
    path.write_text(json.dumps(receipt_doc("1A1")))
    ledger = open_ledger(odd_store.home)
    spec = load_spec(odd_store.dat_spec)
    terminal.archive_root.rmdir()
    terminal.archive_root.write_text("not a folder")  # the archive cannot be made
    first = processing.process_batch(odd_store, terminal, [path], ledger=ledger, spec=spec)
    [(name, why)] = first.intake.held
    assert name == "1A1.json" and "could not be archived" in why
    [deferral] = first.intake.deferrals
    assert deferral.retry_at > first.intake.now
    assert len(first.dat_files) == 1 and path.exists()

    terminal.archive_root.unlink()
    again = processing.process_batch(
        odd_store, terminal, [path], ledger=ledger, spec=spec, attempt=1
    )
    assert again.acceptance.resumed and not again.dat_files  # known, its .dat written
    assert not path.exists() and len(list(terminal.archive_root.rglob("1A1.json"))) == 1


def test_receipt_validate_gives_the_pipelines_verdict_on_the_dat_layouts_limits(
    odd_store, tmp_path, capsys
):
    from posfed_pipeline.cli import main

    doc = receipt_doc("1TOOLONGRECEIPTID")  # valid for validation, too long for the .dat
    path = tmp_path / "long-id.json"
    path.write_text(json.dumps(doc))
    config_file = tmp_path / "posfed.toml"
    config_file.write_text(
        f'[store]\nid = "s"\ntimezone = "Europe/Amsterdam"\n[paths]\nhome = "{odd_store.home}"\n'
        f'[dat]\nspec = "{odd_store.dat_spec}"\n'
        '[[terminals]]\nid = "bakery_1"\ndepartment = "10"\n'
    )
    code = main(["--config", str(config_file), "receipt", "validate", "--json", str(path)])
    [verdict] = json.loads(capsys.readouterr().out)
    assert code == 1 and not verdict["valid"]
    assert verdict["errors"][0]["rule"].startswith("cannot be rendered")
    # ...which is what the pipeline does with it.
    terminal = odd_store.terminal("bakery_1")
    (terminal.inbox / "long-id.json").write_text(json.dumps(doc))
    result = processing.process_batch(
        odd_store,
        terminal,
        [terminal.inbox / "long-id.json"],
        ledger=open_ledger(odd_store.home),
        spec=load_spec(odd_store.dat_spec),
    )
    [(_, problems)] = result.validation.invalid
    assert problems[0].rule == verdict["errors"][0]["rule"]


def test_claiming_never_meets_a_name_it_cannot_store(odd_store):
    """The launchers' shared step renames before it claims: a name that is not UTF-8 never
    reaches the claim table (SQLite refuses it) or a run's config (JSON refuses it)."""
    terminal = odd_store.terminal("bakery_1")
    path = os.path.join(os.fsencode(terminal.inbox), b"\xff\xfe.json")
    with open(path, "wb") as handle:
        handle.write(json.dumps(receipt_doc("1U1")).encode())
    os.utime(path, (datetime.now().timestamp() - 5,) * 2)
    claim_table = claims.ClaimTable(claims.claim_table_path(odd_store.home))
    now = datetime.now().timestamp()
    days = launching.PartitionDays.of(odd_store, now)
    ready = launching.give_safe_names(terminal, inbox.scan_inbox(terminal).ready)
    [batch] = launching.claim_ready(claim_table, terminal, ready, days)
    assert batch.file_names == ["%FF%FE.json"]
    assert inbox.inbox_path(terminal, "%FF%FE.json").exists()


# --- on the real fast path: hostile entries while receipts keep coming ------------------------


@pytest.mark.slow
def test_hostile_entries_on_the_fast_path_leave_every_valid_receipt_billed_once(monkeypatch):
    """Odd and hostile entries (tools/odd_entries.py) arrive on a JSON till and a POSLog till
    while valid receipts keep arriving on them and on a third terminal; only the trigger and
    the warm workers run (no daemon): every valid receipt is billed once, every bad file is
    quarantined with its reason (an unreadable one when its grace ends, relaunched by the
    trigger itself), every entry that is not a file is left alone and reported."""
    from posfed_dev import odd_entries

    from posfed_pipeline.core import dat
    from posfed_pipeline.demo.tills import ReceiptSimulator
    from posfed_pipeline.fastpath.service import start_fastpath
    from posfed_pipeline_tests.support.stores import open_instance_store

    grace = 3.0
    root = Path(tempfile.mkdtemp(prefix="pfo-", dir="/tmp"))  # short: the pool's socket
    config, dagster_home = open_instance_store(
        root,
        monkeypatch,
        intake={"stability_seconds": 0.2, "max_age_days": 36500, "incomplete_grace_seconds": grace},
        terminals=[
            {"id": "bakery_1", "department": "10", "tenant": "Bakkerij"},
            {"id": "butcher_1", "department": "20", "tenant": "Slagerij"},
            POSLOG_TERMINAL,
        ],
    )
    spec = load_spec(config.dat_spec)
    simulator = ReceiptSimulator(list(config.terminals), seed=32)
    odd_tills = [config.terminal("bakery_1"), config.terminal("fish_1")]
    expected: list[Path] = []  # .dat files that must exist, once each
    made: list[tuple[odd_entries.OddEntry, object, bytes, float]] = []
    fastpath = start_fastpath(config, dagster_home, workers=2)
    try:
        plan = [(e, t) for t in odd_tills for e in odd_entries.entries_for(t)]
        for entry, till in plan:
            receipt = simulator.make_receipt(till)
            name = entry.make(till, receipt)
            made.append((entry, till, name, datetime.now().timestamp()))
            if entry.verdict == odd_entries.BILLED:
                expected.append(
                    config.dat_dir / dat.render_receipt(receipt, till, spec).relative_path
                )
            for terminal in config.terminals:  # valid receipts keep coming, everywhere
                good = simulator.make_receipt(terminal)
                simulator.drop(terminal, good)
                expected.append(
                    config.dat_dir / dat.render_receipt(good, terminal, spec).relative_path
                )
            time.sleep(0.05)

        def is_regular_file(path: Path) -> bool:
            try:
                return stat.S_ISREG(path.lstat().st_mode)
            except FileNotFoundError:  # taken (renamed away) since the folder was listed
                return False

        def settled() -> bool:
            regular = [p for t in config.terminals for p in t.inbox.iterdir() if is_regular_file(p)]
            return all(p.exists() for p in expected) and not regular

        deadline = time.monotonic() + 90
        while not settled() and time.monotonic() < deadline:
            time.sleep(0.2)
        instance = dg.DagsterInstance.get()
        runs = [r for r in instance.get_runs() if r.job_name == RECEIPTS_JOB]
    finally:
        fastpath.stop()

    missing = [p.name for p in expected if not p.exists()]
    assert not missing, f"valid receipts never billed: {missing}"
    billed = sorted(p.relative_to(config.dat_dir) for p in config.dat_dir.rglob("*.dat"))
    assert billed == sorted(p.relative_to(config.dat_dir) for p in expected)  # once each, no more
    # The checkout took them (its recording runs come a window later); none failed.
    assert fastpath.trigger.checkouts and fastpath.trigger.runs_launched == 0
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    for entry, till, name, made_at in made:
        if entry.verdict == odd_entries.QUARANTINED:
            report = till.quarantine / (name.decode() + quarantine.REPORT_SUFFIX)
            assert report.exists(), f"{entry.kind}: no verdict"
            reasons = json.loads(report.read_text())
            assert entry.reason in json.dumps(reasons["problems"]), (entry.kind, reasons)
            if entry.waits_for_grace:  # left for its writer, then judged (not before)
                at = datetime.fromisoformat(reasons["quarantined_at"]).timestamp()
                assert at >= int(made_at + grace) - 1, entry.kind
        elif entry.verdict == odd_entries.REPORTED:
            assert os.path.lexists(os.path.join(os.fsencode(till.inbox), name)), entry.kind
    for till in odd_tills:
        problems = terminal_health(till, open_ledger(config.home), datetime.now().astimezone())
        assert any("does not take" in p for p in problems.problems), till.id
    renamed = [e for t in odd_tills for e in quarantine.history(t) if e["event"] == "renamed"]
    assert len(renamed) == 3 * len(odd_tills)  # the three odd names of each till
    shutil.rmtree(root, ignore_errors=True)


def test_a_renamed_file_keeps_its_ready_marker(tmp_path, monkeypatch):
    """A till that writes ``<name>.ok`` after each file: the marker follows the file to its
    safe name, so the file stays ready and is billed."""
    from posfed_pipeline.core import central_db

    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    raw = store_config_dict(tmp_path / "s")
    raw["terminals"][0]["ready_marker"] = ".ok"
    config = config_from_dict(raw, base_dir=tmp_path)
    config.ensure_folders()
    central_db.upgrade_database(central_db.make_engine(config.db_url))
    terminal = config.terminal("bakery_1")
    name = os.path.join(os.fsencode(terminal.inbox), b"caf\xe9-1M1.json")
    with open(name, "wb") as handle:
        handle.write(json.dumps(receipt_doc("1M1")).encode())
    with open(name + b".ok", "wb"):
        pass
    with dg.instance_for_test() as instance:
        results = _tick_and_run(config, instance, ManualClock())
    assert results and all(r.success for r in results)
    assert [p.name for p in terminal.archive_root.rglob("*.json")] == ["caf%E9-1M1.json"]
    assert not list(terminal.inbox.iterdir())  # the marker went with its file


def test_entries_that_are_not_files_are_listed_where_operators_look(tmp_path, capsys):
    """posfed status (and the UI's check: the same health), posfed quarantine list: named,
    safely shown, and never touched."""
    from posfed_pipeline.cli import main
    from posfed_pipeline_tests.support.stores import write_store_config

    config_file = write_store_config(tmp_path / "posfed.toml", tmp_path / "home")
    inbox_dir = tmp_path / "home" / "terminals" / "bakery_1" / "inbox"
    inbox_dir.mkdir(parents=True)
    os.mkfifo(inbox_dir / "pipe.json")
    os.mkdir(os.path.join(os.fsencode(inbox_dir), b"map\xe9"))
    (inbox_dir / "link.json").symlink_to(tmp_path / "posfed.toml")

    assert main(["--config", str(config_file), "status", "--json"]) == 0
    [bakery] = [t for t in json.loads(capsys.readouterr().out) if t["terminal"] == "bakery_1"]
    [problem] = bakery["problems"]
    assert "3 inbox entries posfed does not take" in problem
    assert "pipe.json (a FIFO)" in problem and "map\\xe9 (a directory)" in problem
    assert "link.json (a symbolic link)" in problem

    assert main(["--config", str(config_file), "quarantine", "list"]) == 0
    listing = capsys.readouterr().out
    assert "bakery_1  inbox/pipe.json (a FIFO)" in listing
    assert "inboxes: 3 entries not taken" in listing
    assert sorted(os.listdir(inbox_dir)) == sorted(["pipe.json", "map\udce9", "link.json"])


def test_a_leftover_marker_too_long_for_a_claim_never_stops_the_listing(tmp_path, monkeypatch):
    """A till's `<name>.ok` whose file never came, its name 250 bytes: no claim name fits
    beside it (they add ~45 bytes), yet the inbox lists, and the stale marker goes."""
    monkeypatch.delenv("POSFED_HOME", raising=False)
    raw = store_config_dict(tmp_path / "s")
    raw["terminals"][0]["ready_marker"] = ".ok"
    config = config_from_dict(raw, base_dir=tmp_path)
    config.ensure_folders()
    terminal = config.terminal("bakery_1")
    marker = terminal.inbox / ("M" * 247 + ".ok")
    marker.touch()
    old = datetime.now().timestamp() - 2 * inbox.STALE_CLAIM_SECONDS
    os.utime(marker, (old, old))
    (terminal.inbox / "1K1.json").write_text(json.dumps(receipt_doc("1K1")))
    (terminal.inbox / "1K1.json.ok").touch()

    scan = inbox.scan_inbox(terminal)

    assert [f.name for f in scan.ready] == ["1K1.json"]
    assert not marker.exists()


def test_two_launchers_renaming_one_file_leave_it_under_one_name(odd_store):
    terminal = odd_store.terminal("bakery_1")
    path = os.path.join(os.fsencode(terminal.inbox), b"dubbel\xe9.json")
    with open(path, "wb") as handle:
        handle.write(json.dumps(receipt_doc("1R1")).encode())
    [item] = inbox.scan_inbox(terminal, stability_seconds=0).ready
    first = inbox.give_safe_name(terminal, item)
    second = inbox.give_safe_name(terminal, item)  # the other launcher, a moment later
    assert first is not None and second is None
    assert os.listdir(terminal.inbox) == ["dubbel%E9.json"]


def test_a_file_dated_ahead_of_the_clock_waits_its_grace_once_then_gets_its_verdict(odd_store):
    """A NAS whose clock runs a day ahead: the file is taken (its mtime says nothing of when
    it was written), an unreadable one waits the grace from now, once, and is then judged."""
    terminal = odd_store.terminal("bakery_1")
    path = terminal.inbox / "ahead.json"
    path.write_bytes(b'{"receiptId": "1A')
    ahead = datetime.now().timestamp() + 86400
    os.utime(path, (ahead, ahead))
    [item] = inbox.scan_inbox(terminal).ready  # not left settling for a day
    ledger, spec = open_ledger(odd_store.home), load_spec(odd_store.dat_spec)

    first = processing.process_batch(odd_store, terminal, [item.path], ledger=ledger, spec=spec)
    [deferral] = first.intake.deferrals
    assert deferral.retry_at <= first.intake.now + odd_store.incomplete_grace_seconds + 1
    again = processing.process_batch(
        odd_store, terminal, [item.path], ledger=ledger, spec=spec, attempt=1
    )
    assert again.intake.rejected and (terminal.quarantine / "ahead.json.error.json").exists()


def test_a_fifo_put_where_a_listed_file_was_is_left_alone_and_never_opened(odd_store):
    terminal = odd_store.terminal("bakery_1")
    path = terminal.inbox / "swapped.json"
    os.mkfifo(path)  # the file listed a moment ago is a FIFO now
    result = processing.read_batch(terminal, [path])
    assert result.missing == ["swapped.json"] and not result.rejected
    assert stat.S_ISFIFO(path.lstat().st_mode)  # not moved: the listing reports it


def test_a_poslog_file_whose_bad_sale_cannot_be_quarantined_stays_whole_for_a_later_run(
    odd_store,
):
    """One sale of three is bad and the quarantine cannot be written (a full disk): the file
    is not archived (the bad sale would have no verdict); the next run quarantines the sale
    and archives the file, and the good sales are billed once."""
    terminal = odd_store.terminal("fish_1")
    good = [_sale(f"{n}") for n in (7001, 7002)]
    bad = replace_total(_sale("7003"))
    path = terminal.inbox / "day.xml"
    path.write_bytes(write_poslog([good[0], bad, good[1]], "7"))
    ledger, spec = open_ledger(odd_store.home), load_spec(odd_store.dat_spec)
    terminal.quarantine.rmdir()
    terminal.quarantine.write_text("not a folder")

    first = processing.process_batch(odd_store, terminal, [path], ledger=ledger, spec=spec)
    assert path.exists() and first.intake.held and len(first.dat_files) == 2

    terminal.quarantine.unlink()
    again = processing.process_batch(
        odd_store, terminal, [path], ledger=ledger, spec=spec, attempt=1
    )
    assert not path.exists() and not again.dat_files  # the good ones: billed before, once
    assert (terminal.quarantine / "day.t2.xml.error.json").exists()
    assert len(list(odd_store.dat_dir.rglob("*.dat"))) == 2


def replace_total(receipt: Receipt) -> Receipt:
    from dataclasses import replace
    from decimal import Decimal

    return replace(receipt, total=receipt.total + Decimal("1.00"))


def test_receipt_validate_refuses_the_second_of_two_files_with_one_id_as_the_pipeline_would(
    odd_store, tmp_path, capsys
):
    from posfed_pipeline.cli import main

    first = receipt_doc("1S1")
    bread = {"barcode": "8712345678906", "description": "Volkorenbrood", "price": "3.05"}
    other = receipt_doc("1S1", items=[{**bread, "quantity": 1}])  # other content, valid
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    (tmp_path / "a" / "r.json").write_text(json.dumps(first))
    (tmp_path / "b" / "r.json").write_text(json.dumps(first))  # the same name elsewhere
    (tmp_path / "other.json").write_text(json.dumps(other))
    config_file = tmp_path / "posfed.toml"
    config_file.write_text(
        f'[store]\nid = "s"\ntimezone = "Europe/Amsterdam"\n[paths]\nhome = "{odd_store.home}"\n'
        f'[dat]\nspec = "{odd_store.dat_spec}"\n'
        '[[terminals]]\nid = "bakery_1"\ndepartment = "10"\n'
    )
    files = [str(tmp_path / "a" / "r.json"), str(tmp_path / "b" / "r.json")]
    files.append(str(tmp_path / "other.json"))
    main(["--config", str(config_file), "receipt", "validate", "--json", *files])
    verdicts = {v["file"]: v for v in json.loads(capsys.readouterr().out)}
    assert set(verdicts) == set(files)  # one verdict each, the same name twice included
    assert verdicts[files[0]]["valid"] and verdicts[files[1]]["valid"]  # the same sale again
    assert "different content" in verdicts[files[2]]["errors"][0]["rule"]
