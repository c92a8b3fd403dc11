"""What a store's own state says to a fleet's monitoring, read without touching it.

``StoreWatcher.read()`` gathers, for ``posfed metrics`` to serve in the Prometheus text format:

- from the ledger (read-only, each statement bounded): per terminal, receipts accepted and
  re-delivered, and the latency from a receipt file's arrival (its mtime, as the ledger records
  it: when the till last wrote it, i.e. closed it) to its .dat (the ledger's record of it, made
  just before the .dat is renamed into place); each delivery row is read once, behind a cursor
  on its ``seq``, so the counts only ever grow; receipts accepted whose .dat is not written yet
  are followed (at most ``AWAITING_LIMIT``) until it is; the outbox's size and age (the central
  database's lag) and the sync's state; each terminal's latest receipt;
- from each terminal's quarantine history (appended to, read from where the last reading
  stopped): files quarantined, by the stage that refused them;
- each terminal's health, as ``posfed status`` judges it, every ``health_seconds``.

Everything that lists a terminal's folders (which may be a share that hangs) runs on a thread
of its own, one at a time per folder, waited for at most ``timeout`` seconds: a hung terminal
makes its own figures stale, never the others'. Nothing here writes to the store.
"""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from posfed_pipeline.core.base.clock import SYSTEM_CLOCK, Clock
from posfed_pipeline.core.config.store_config import PosfedConfig
from posfed_pipeline.core.model.outbox import Outcome
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.core.operations.terminal_health import TerminalHealth, terminal_health
from posfed_pipeline.core.state import quarantine
from posfed_pipeline.core.state.ledger import LedgerMissing, LedgerReader, SyncState, ledger_path

# Seconds. The checkout's target is 0.5 s (the seed's promise); the catch-up path (a sensor,
# about 35-45 s) lands in the last buckets.
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# The stages that quarantine (``core.stages.processing``); anything else is counted as "other".
QUARANTINE_STAGES = ("intake", "validation", "accept", "emit")
# Deliveries read per statement while catching up with a large ledger.
CATCH_UP_STEP = 20_000
# Receipts accepted and still without their .dat that are followed; normally a handful.
AWAITING_LIMIT = 10_000
# A history line longer than this is not a posfed event (and is skipped, not held in memory).
MAX_HISTORY_LINE = 1 << 20


@dataclass
class LatencyHistogram:
    """Observations per bucket of ``LATENCY_BUCKETS`` (the last one: above them all)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total_seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total_seconds += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, count)."""
        bounds = [*LATENCY_BUCKETS, float("inf")]
        running, rows = 0, []
        for bound, count in zip(bounds, self.counts, strict=True):
            running += count
            rows.append((bound, running))
        return rows


@dataclass
class TerminalFigures:
    """One terminal's figures; the counts only grow while the same ledger is read."""

    accepted: int = 0
    redelivered: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)  # by stage
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    last_receipt_at: float | None = None
    awaiting_dat: int = 0
    awaiting_dat_since: float | None = None  # accepted at, of the oldest still without .dat
    health: TerminalHealth | None = None
    health_at: float | None = None  # when that verdict was reached


@dataclass(frozen=True)
class StoreFigures:
    """One reading of the store: what a scrape is answered with until the next one."""

    store_id: str
    read_at: float
    read_seconds: float
    terminals: dict[str, TerminalFigures]
    tenants: dict[str, tuple[str, str]]  # terminal -> (tenant, department), configured ones
    outbox: tuple[int, float | None, int] | None  # deliveries, oldest entered at, parked
    sync: SyncState | None
    sources: dict[str, bool]  # ledger, quarantine, health: read without an error last time


class OneAtATime:
    """Calls on threads of their own, at most one per key at a time: a call that hangs (a
    share that does not answer) is left to end on its thread, and asking again meanwhile
    returns the same call instead of starting a second one."""

    def __init__(self) -> None:
        self._calls: dict[Hashable, Future] = {}

    def submit(self, key: Hashable, function: Callable[[], Any]) -> Future:
        call = self._calls.get(key)
        if call is not None and not call.done():
            return call
        call = Future()

        def run() -> None:
            if call.set_running_or_notify_cancel():
                try:
                    call.set_result(function())
                except BaseException as exc:  # handed to whoever waits for it
                    call.set_exception(exc)

        self._calls[key] = call
        threading.Thread(target=run, name=f"metrics-{key}", daemon=True).start()
        return call

    def running(self) -> int:
        return sum(1 for call in self._calls.values() if not call.done())


class QuarantineTally:
    """The ``quarantined`` events of one quarantine history file, counted as they are appended:
    the file is read from where the last reading stopped, complete lines only. A history
    rewritten by retention (``quarantine.prune_history``) is read again from its start, counting
    only events later than the latest one counted before."""

    def __init__(self, path: Path, terminal_ids: Iterable[str]):
        self.path = path
        ids = list(terminal_ids)
        self._ids = set(ids)
        self._default = ids[0]
        self._offset = 0
        self._inode: int | None = None
        self._latest = ""  # quarantined_at of the latest event counted
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str], int] = {}

    def totals(self) -> dict[tuple[str, str], int]:
        """(terminal, stage) -> files quarantined."""
        with self._lock:
            return dict(self._totals)

    def read(self) -> None:
        try:
            history = self.path.open("rb")
        except FileNotFoundError:
            return  # nothing quarantined yet
        with history:
            status = os.fstat(history.fileno())
            rewritten = self._inode is not None and (
                status.st_ino != self._inode or status.st_size < self._offset
            )
            if rewritten:
                self._offset = 0
            self._inode = status.st_ino
            history.seek(self._offset)
            after = self._latest if rewritten else ""
            while True:
                line = history.readline(MAX_HISTORY_LINE)
                if not line.endswith(b"\n"):
                    if len(line) < MAX_HISTORY_LINE:
                        break  # the end, or a line still being written: read it next time
                    # Not an event: skip the rest of it, a piece at a time (memory stays
                    # bounded), and only once it is whole (a line still being written is
                    # skipped from here next time, not read from its middle as a new one).
                    while True:
                        piece = history.readline(MAX_HISTORY_LINE)
                        if piece.endswith(b"\n"):
                            self._offset = history.tell()
                            break
                        if len(piece) < MAX_HISTORY_LINE:
                            return
                    continue
                self._offset += len(line)
                self._count(line, after)

    def _count(self, line: bytes, after: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return  # a line cut by a power cut
        if not isinstance(event, dict) or event.get("event") != "quarantined":
            return
        at = str(event.get("quarantined_at") or "")
        if after and at <= after:
            return  # counted before the file was rewritten
        terminal = event.get("terminal")
        terminal = terminal if terminal in self._ids else self._default
        stage = event.get("stage")
        stage = stage if stage in QUARANTINE_STAGES else "other"
        with self._lock:
            self._totals[(terminal, stage)] = self._totals.get((terminal, stage), 0) + 1
            self._latest = max(self._latest, at)


class _LastReceipts:
    """``terminal_health``'s question, answered from the watcher's last reading of the ledger:
    the health check itself then reads no ledger at all."""

    def __init__(self, last: dict[str, float]):
        self._last = last

    def last_accepted_at(self, terminal_id: str) -> float | None:
        return self._last.get(terminal_id)


class StoreWatcher:
    """Reads a store's figures, incrementally, without writing anything (``read``)."""

    def __init__(
        self,
        config: PosfedConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        timeout: float = 5.0,
        health_seconds: float | None = None,
    ):
        self.config = config
        self.clock = clock
        self.timeout = timeout
        self.health_seconds = (
            config.metrics.health_seconds if health_seconds is None else health_seconds
        )
        self.reader = LedgerReader(ledger_path(config.home), timeout=timeout)
        self._calls = OneAtATime()
        self._tallies = [
            QuarantineTally(path, ids) for path, ids in _histories(config.terminals).items()
        ]
        self._health: dict[str, tuple[TerminalHealth, float]] = {}
        self._health_started_at: float | None = None
        self._health_read = True  # the last round of health checks ended without an error
        self._reset()

    def _reset(self) -> None:
        """Forget what was counted: a new ledger (restored, replaced) is counted from scratch,
        which Prometheus sees as a counter reset."""
        self._terminals = {t.id: TerminalFigures() for t in self.config.terminals}
        self._cursor = 0
        self._inode: int | None = None
        # seq -> (terminal, arrived at, accepted at) of receipts accepted and still without .dat
        self._awaiting: dict[int, tuple[str, float | None, float]] = {}
        self._last_receipts: dict[str, float] = {}

    def close(self) -> None:
        self.reader.close()

    # --- one reading --------------------------------------------------------------------------

    def read(self) -> StoreFigures:
        """Read what changed since the last reading; the figures as they are now."""
        started = time.monotonic()
        now = self.clock.time()
        ledger_read = self._read_ledger()
        outbox, sync, outbox_read = self._outbox_and_sync()
        sources = {"ledger": ledger_read and outbox_read}
        sources.update(self._read_folders(now))
        terminals = copy.deepcopy(self._terminals)
        for tally in self._tallies:
            for (terminal, stage), count in tally.totals().items():
                figures = terminals.setdefault(terminal, TerminalFigures())
                figures.quarantined[stage] = count
        for terminal, (health, at) in list(self._health.items()):
            if terminal in terminals:
                terminals[terminal].health, terminals[terminal].health_at = health, at
        for terminal, at in self._last_receipts.items():
            terminals.setdefault(terminal, TerminalFigures()).last_receipt_at = at
        for terminal, _arrived, accepted_at in self._awaiting.values():
            figures = terminals.setdefault(terminal, TerminalFigures())
            figures.awaiting_dat += 1
            since = figures.awaiting_dat_since
            figures.awaiting_dat_since = accepted_at if since is None else min(since, accepted_at)
        return StoreFigures(
            store_id=self.config.store_id,
            read_at=now,
            read_seconds=time.monotonic() - started,
            terminals=terminals,
            tenants={t.id: (t.tenant, t.department) for t in self.config.terminals},
            outbox=outbox,
            sync=sync,
            sources=sources,
        )

    def _read_ledger(self) -> bool:
        try:
            inode, last_seq = self.reader.identity()
            if self._inode is not None and (inode != self._inode or last_seq < self._cursor):
                self._reset()
            self._inode = inode
            while self._cursor < last_seq:
                up_to = min(last_seq, self._cursor + CATCH_UP_STEP)
                self._count_deliveries(self._cursor, up_to)
                self._cursor = up_to
            self._follow_awaiting()
            ids = {t.id for t in self.config.terminals} | set(self._terminals)
            self._last_receipts = self.reader.last_accepted(sorted(ids))
        except LedgerMissing:
            return True  # a store that has taken no receipt yet: nothing to count
        except (sqlite3.Error, OSError):
            return False
        return True

    def _count_deliveries(self, after: int, up_to: int) -> None:
        totals = self.reader.delivery_totals(after, up_to)
        receipts = self.reader.new_receipts(after, up_to)
        for terminal, outcome, count in totals:
            figures = self._terminals.setdefault(terminal, TerminalFigures())
            if outcome == Outcome.INSERTED:
                figures.accepted += count
            elif outcome == Outcome.DUPLICATE:
                figures.redelivered += count
        for seq, terminal, arrived, accepted_at, written in receipts:
            if written is None:
                self._await(seq, terminal, arrived, accepted_at)
            else:
                self._observe(terminal, arrived, written)

    def _await(self, seq: int, terminal: str, arrived: float | None, accepted_at: float) -> None:
        self._awaiting[seq] = (terminal, arrived, accepted_at)
        while len(self._awaiting) > AWAITING_LIMIT:
            del self._awaiting[next(iter(self._awaiting))]  # the oldest: memory stays bounded

    def _follow_awaiting(self) -> None:
        if not self._awaiting:
            return
        written = self.reader.dat_written_at(self._awaiting)
        for seq, (terminal, arrived, _accepted_at) in list(self._awaiting.items()):
            if seq not in written:
                del self._awaiting[seq]  # withdrawn, or pruned: never a .dat to time
                continue
            written_at = written[seq]
            if written_at is not None:
                del self._awaiting[seq]
                self._observe(terminal, arrived, written_at)

    def _observe(self, terminal: str, arrived: float | None, written: float) -> None:
        if arrived is None:
            return  # a backfill of archived receipts: no arrival to time from
        figures = self._terminals.setdefault(terminal, TerminalFigures())
        # A share whose clock runs ahead can date a file after its .dat: counted as 0 s.
        figures.latency.observe(max(0.0, written - arrived))

    def _outbox_and_sync(
        self,
    ) -> tuple[tuple[int, float | None, int] | None, SyncState | None, bool]:
        """(the outbox's figures, the sync's state, read without an error)."""
        try:
            return self.reader.outbox(), self.reader.sync_state(), True
        except LedgerMissing:
            return (0, None, 0), None, True
        except (sqlite3.Error, OSError):
            return None, None, False

    def _read_folders(self, now: float) -> dict[str, bool]:
        """Every terminal's quarantine history, and its health when it is due, each on a
        thread of its own, waited for at most ``timeout`` in all."""
        calls = {
            self._calls.submit(("history", tally.path), tally.read): "quarantine"
            for tally in self._tallies
        }
        due = self._health_started_at is None or now - self._health_started_at >= (
            self.health_seconds
        )
        if due:
            self._health_started_at = now
            last = _LastReceipts(dict(self._last_receipts))
            moment = datetime.fromtimestamp(now, UTC)
            for terminal in self.config.terminals:
                call = self._calls.submit(
                    ("health", terminal.id), _judge(terminal, last, moment, self._health)
                )
                calls[call] = "health"
        done, _ = wait(calls, timeout=self.timeout)
        ok = {"quarantine": True, "health": True}
        for call, source in calls.items():
            if call not in done or call.exception() is not None:
                ok[source] = False
        if due:
            self._health_read = ok["health"]
        ok["health"] = self._health_read  # between rounds: as the last round ended
        return ok


def _judge(
    terminal: Terminal,
    last: _LastReceipts,
    moment: datetime,
    verdicts: dict[str, tuple[TerminalHealth, float]],
) -> Callable[[], None]:
    def judge() -> None:
        verdicts[terminal.id] = (terminal_health(terminal, last, moment), moment.timestamp())

    return judge


def _histories(terminals: Iterable[Terminal]) -> dict[Path, list[str]]:
    """Each quarantine history file and the terminals that write to it (terminals whose
    inboxes share a folder share one)."""
    found: dict[Path, list[str]] = {}
    for terminal in terminals:
        found.setdefault(quarantine.history_path(terminal), []).append(terminal.id)
    return found


__all__ = [
    "AWAITING_LIMIT",
    "LATENCY_BUCKETS",
    "QUARANTINE_STAGES",
    "LatencyHistogram",
    "OneAtATime",
    "QuarantineTally",
    "StoreFigures",
    "StoreWatcher",
    "TerminalFigures",
]
