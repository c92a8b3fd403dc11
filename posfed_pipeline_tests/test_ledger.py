"""The local ledger: what the store server accepted and emitted, decided at local-disk speed,
and its outbox for the central database."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from posfed_pipeline.core.model.outbox import Outcome
from posfed_pipeline.core.model.receipt import from_payload, to_payload
from posfed_pipeline.core.state.ledger import DeliveredReceipt, Ledger
from posfed_pipeline_tests.support.receipts import make_receipt

DAY = date(2026, 3, 14)


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(tmp_path / "ledger.db")


def delivered(receipt, name=None, size=100, mtime=1):
    return DeliveredReceipt(
        receipt, f"{name or receipt.source_file}:{size}:{mtime}", detected_at=1.0
    )


def test_payload_round_trip_is_exact():
    receipt = make_receipt("R0001", lines=[("2.95", "1"), ("-1.15", "0.375")])

    again = from_payload(to_payload(receipt))

    assert again == receipt
    assert again.items[1].price == Decimal("-1.15")
    assert again.timestamp.utcoffset() == receipt.timestamp.utcoffset()
    assert again.business_day == receipt.business_day


def test_new_duplicate_and_conflict_are_decided_locally(ledger):
    first = make_receipt("R0001")
    again = make_receipt("R0001", source_file="R0001-again.json")
    other = make_receipt("R0001", lines=[("9.99", "1")], source_file="R0001-other.json")

    accepted = ledger.accept([delivered(first)], tenant="Bakkerij")
    ledger.mark_emitted([(first, "20261120/scon10R0001.dat")])
    later = ledger.accept([delivered(again), delivered(other)], tenant="Bakkerij")

    assert accepted.inserted == [first] and accepted.to_emit == [first]
    assert later.redelivered == [again]
    assert later.to_emit == []  # a delivered .dat is never delivered again
    [(refused, reason)] = later.conflicts
    assert refused is other and "different content" in reason
    assert ledger.delivery_outcomes() == [
        ("R0001.json", "R0001", "inserted"),
        ("R0001-again.json", "R0001", "duplicate"),
        ("R0001-other.json", "R0001", "conflict"),
    ]


def test_a_retried_attempt_keeps_its_first_outcome_and_owes_only_the_dat(ledger):
    receipt = make_receipt("R0001")
    ledger.accept([delivered(receipt)], tenant="Bakkerij", run_id="run-1")

    # The first attempt stopped after the ledger's commit, before the .dat: the retry emits it.
    retry = ledger.accept([delivered(receipt)], tenant="Bakkerij", run_id="run-1")
    assert retry.to_emit == [receipt] and retry.inserted == []

    # It stopped after the .dat, before the archive: the retry only archives.
    ledger.mark_emitted([(receipt, "20261120/scon10R0001.dat")])
    resumed = ledger.accept([delivered(receipt)], tenant="Bakkerij", run_id="run-1")
    assert resumed.to_emit == [] and resumed.accepted == [receipt]
    assert len(ledger.delivery_outcomes()) == 1


def test_two_deliveries_of_one_key_in_one_batch(ledger):
    first = make_receipt("R0001", source_file="a.json")
    second = make_receipt("R0001", source_file="b.json")

    result = ledger.accept([delivered(first), delivered(second)], tenant="Bakkerij")

    assert result.inserted == [first]
    assert result.to_emit == [first]  # one .dat for the one receipt
    assert result.accepted == [first, second]  # both files go to the archive
    assert [o for _, _, o in ledger.delivery_outcomes()] == ["inserted", "duplicate"]


def test_the_outbox_waits_for_the_dat_and_keeps_each_terminals_order(ledger):
    r1, r2 = make_receipt("R0001"), make_receipt("R0002")
    butcher = make_receipt("B0001", terminal_id="butcher_1")
    ledger.accept([delivered(r1), delivered(r2)], tenant="Bakkerij")
    ledger.accept([delivered(butcher)], tenant="Slagerij")
    ledger.mark_emitted([(r2, "x"), (butcher, "y")])

    # R0001 has no .dat yet: nothing of bakery_1 goes out before it; the butcher's does.
    assert [e.receipt_id for e in ledger.outbox()] == ["B0001"]

    ledger.mark_emitted([(r1, "z")])
    entries = ledger.outbox()
    assert [e.receipt_id for e in entries] == ["R0001", "R0002", "B0001"]
    assert entries[0].receipt == r1 and entries[0].tenant == "Bakkerij"
    assert entries[0].outcome is Outcome.INSERTED and entries[0].dat_written_at is not None

    ledger.mark_synced([e.seq for e in entries[:2]])
    assert [e.receipt_id for e in ledger.outbox()] == ["B0001"]
    lag = ledger.lag()
    assert (lag.pending_deliveries, lag.pending_receipts) == (1, 1)


def test_a_conflict_goes_out_without_content_and_parked_entries_are_set_aside(ledger):
    first = make_receipt("R0001")
    other = make_receipt("R0001", lines=[("9.99", "1")], source_file="other.json")
    ledger.accept([delivered(first)], tenant="Bakkerij")
    ledger.accept([delivered(other)], tenant="Bakkerij")
    ledger.mark_emitted([(first, "20260314/scon10R0001.dat")])

    accepted, conflict = ledger.outbox()
    assert accepted.receipt == first
    assert conflict.outcome is Outcome.CONFLICT and conflict.receipt is None
    assert conflict.content_hash == other.content_hash and conflict.dat_written_at is None

    ledger.park({conflict.seq: "refused"})
    assert ledger.outbox() == [accepted]
    assert ledger.lag().parked == 1
    assert ledger.parked_entries() == [("bakery_1", "2026-03-14", "R0001", "refused")]
    assert ledger.resync(business_day=DAY) == 2
    assert ledger.lag().parked == 0


def test_sync_slot_is_held_by_one_and_backs_off_after_failures(ledger):
    never_done = lambda key, taken_at: False  # noqa: E731
    done = lambda key, taken_at: True  # noqa: E731

    assert ledger.take_sync_slot("a", holder_done=never_done, now=100.0)
    assert not ledger.take_sync_slot("b", holder_done=never_done, now=100.5)
    # The holder's run ended without giving the slot back (killed): it can be taken over.
    assert ledger.take_sync_slot("b", holder_done=done, now=101.0)

    state = ledger.finish_sync("b", error="link down", backoff=lambda n: 2.0**n, now=102.0)
    assert (state.run_key, state.failures, state.next_attempt_at) == (None, 1, 104.0)
    assert not ledger.take_sync_slot("c", holder_done=done, now=103.0)  # backing off
    assert ledger.take_sync_slot("c", holder_done=done, now=104.0)
    state = ledger.finish_sync("c", error=None, backoff=lambda n: 2.0**n, now=105.0)
    assert (state.failures, state.last_error, state.last_success_at) == (0, None, 105.0)


def test_the_ledger_commits_are_durable(ledger):
    # FULL: a commit is on disk before it returns; WAL: readers never block the checkout.
    connection = ledger._connect()
    assert connection.execute("PRAGMA synchronous").fetchone() == (2,)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_process_killed_mid_transaction_leaves_nothing_half_recorded(tmp_path):
    """kill -9 between the ledger's writes of one batch: all of it or none of it is there."""
    path = tmp_path / "ledger.db"
    Ledger(path)
    script = f"""
import os, signal
from posfed_pipeline.core.state.ledger import DeliveredReceipt, Ledger
from posfed_pipeline_tests.support.receipts import make_receipt
ledger = Ledger({str(path)!r})
connection = ledger._connect()
connection.execute("BEGIN IMMEDIATE")
connection.execute(
    "INSERT INTO receipt (terminal_id, business_day, receipt_id, content_hash, tenant, payload,"
    " accepted_at) VALUES ('bakery_1', '2026-11-20', 'HALF', 'h', 't', '{{}}', 0)")
os.kill(os.getpid(), signal.SIGKILL)
"""
    killed = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    assert killed.returncode == -9  # it got as far as the half-done transaction
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT COUNT(*) FROM receipt").fetchone() == (0,)
    assert Ledger(path).lag().pending_deliveries == 0


def test_retention_prunes_only_what_the_central_database_holds(ledger):
    old, recent = make_receipt("R0001"), make_receipt("R0002", day=date(2026, 6, 1))
    unsynced = make_receipt("R0003")
    ledger.accept([delivered(old), delivered(recent), delivered(unsynced)], tenant="Bakkerij")
    ledger.mark_emitted([(old, "a"), (recent, "b"), (unsynced, "c")])
    entries = {e.receipt_id: e for e in ledger.outbox()}
    ledger.mark_synced([entries["R0001"].seq, entries["R0002"].seq])

    assert ledger.prune(date(2026, 5, 1)) == 1

    assert [r.receipt_id for r in ledger.receipts()] == ["R0002", "R0003"]
    assert [e.receipt_id for e in ledger.outbox()] == ["R0003"]  # never pruned unsent


def test_one_terminal_waiting_for_a_dat_never_holds_up_the_others(ledger):
    stuck = [make_receipt(f"S{n:04d}") for n in range(30)]  # bakery_1: the first has no .dat
    ledger.accept([delivered(r) for r in stuck], tenant="Bakkerij")
    ledger.mark_emitted([(r, "x") for r in stuck[1:]])
    butcher = make_receipt("B0001", terminal_id="butcher_1")
    ledger.accept([delivered(butcher)], tenant="Slagerij")
    ledger.mark_emitted([(butcher, "y")])

    assert [e.receipt_id for e in ledger.outbox(limit=5)] == ["B0001"]
    assert ledger.has_outbox()
    assert ledger.owed_dat("bakery_1") == [stuck[0]]

    ledger.mark_emitted([(stuck[0], "z")])
    assert [e.receipt_id for e in ledger.outbox(limit=3)] == ["S0000", "S0001", "S0002"]


def test_a_receipt_whose_dat_cannot_be_written_is_withdrawn_as_a_conflict(ledger):
    receipt = make_receipt("R0001")
    ledger.accept([delivered(receipt)], tenant="Bakkerij")

    ledger.withdraw(receipt, "its .dat file is another receipt's")

    assert ledger.receipts() == [] and ledger.owed_dat("bakery_1") == []
    [entry] = ledger.outbox()
    assert entry.outcome is Outcome.CONFLICT and entry.reason.startswith("its .dat file")
    # Delivered again later (the other receipt's .dat was dealt with): accepted anew.
    again = ledger.accept([delivered(receipt, name="R0001-again.json")], tenant="Bakkerij")
    assert again.inserted == [receipt]


def test_a_resync_counts_the_lag_from_the_resync(ledger):
    receipt = make_receipt("R0001")
    ledger.accept([delivered(receipt)], tenant="Bakkerij", now=1000.0)
    ledger.mark_emitted([(receipt, "x")])
    ledger.mark_synced([e.seq for e in ledger.outbox()])

    assert ledger.resync(terminal_id="bakery_1") == 1

    assert ledger.lag().age_seconds() < 60  # not the days since it was accepted


def test_a_changed_file_under_the_same_name_size_and_mtime_is_not_taken_for_a_retry(ledger):
    first = make_receipt("R0001")
    changed = make_receipt("R0001", lines=[("9.99", "1")])

    ledger.accept([delivered(first, name="R0001.json")], tenant="Bakkerij")
    ledger.mark_emitted([(first, "x")])
    result = ledger.accept([delivered(changed, name="R0001.json")], tenant="Bakkerij")

    assert result.resumed == [] and [r for r, _ in result.conflicts] == [changed]
