"""``posfed chaos``: the real pipeline under a store's faults, then a reconciliation.

It builds a fresh store in a temp folder (20 terminals, the embedded SQLite central database
or, with ``--central postgres``, a PostgreSQL cluster of its own behind a TCP fault proxy; its
own DAGSTER_HOME), runs it as ``posfed demo --no-simulator`` does: the code server, the fast
path (the inotify trigger and warm run workers), the webserver and the daemon (sensors, run
queue, run monitoring) under posfed's supervisor, which restarts whatever dies, and drives the
terminals with the simulator at a steady rate. Mixed into the receipts, on a seeded schedule:

- files the pipeline must reject: malformed, empty, truncated, non-UTF-8 and oversized files,
  receipt ids that try to escape their folder, receipts that claim another terminal, and a
  receipt id re-used with different content;
- files it must recognise as repeats: the same file dropped again under its name, the same
  receipt under another name;
- slow writers: a receipt written in chunks over seconds (one open handle, pauses between);
- one sale number on both terminals of a department ("twin": the same number after each
  terminal's own prefix, the same lines): two sales, two .dat files;
- a terminal clock minutes fast: its receipt is quarantined, and re-queued with
  ``posfed quarantine retry``'s code once the clock has caught up ("future").

A billing importer takes every .dat file out of the .dat folder as soon as it is complete, as
many import folders do, so every re-sent receipt arrives after its sale was billed; and the day
is settled midway, so the rest of the day's receipts arrive late for a settled day.

and, at fixed points of the run, the faults:

- ``kill -9`` of each kind of process the store runs: a warm run worker (the pool replaces it),
  the daemon, the fast path (the trigger and the pool), the code server and the webserver (the
  supervisor restarts them); for each, the time from the kill to the next .dat file written and
  until it is back is measured. And a power cut: every process at once, the supervisor too,
  which the harness then starts again, as a reboot would;
- the central database out of reach for ``--db-outage`` seconds: an exclusive SQLite
  transaction; with PostgreSQL, a silent link (partition, no reset), a server restart and an
  exclusive lock on the receipt tables held by another session, one after another;
- the day's .dat folder unwritable for a few seconds (replaced by a file: the harness may run
  as root, which ignores permission bits).

Then it waits until every file has a final place and the store's ledger has synced, and
reconciles what the terminals sent with what the central side holds: rows, .dat files,
quarantine (by reason), archive, and the central database against the store's ledger (every
accepted receipt once, every delivery record once, nothing else). The exit status is non-zero
unless loaded = .dat = valid, quarantined = invalid, duplicates = 0, lost = 0 and unbilled = 0
(valid receipts without a billed .dat), every sale was billed exactly once (imported .dat
files and any left in the folder, by name), the next .dat came after every kill, and the day's
settlement, re-run by the late-receipts sensor, counts every receipt of the day.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import case, func, select

from posfed_dev import bench
from posfed_pipeline import names, packaged
from posfed_pipeline.core import central_db, dat
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.intake.parsing import MAX_FILE_BYTES
from posfed_pipeline.core.model.outbox import Outcome
from posfed_pipeline.core.model.receipt import Receipt, canonical_json, content_hash
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.core.state import inbox, quarantine
from posfed_pipeline.core.state.ledger import Ledger, ledger_path
from posfed_pipeline.demo.tills import ReceiptSimulator
from posfed_pipeline.names import SYNC_SENSOR
from posfed_pipeline.processes import services
from posfed_pipeline.processes.supervisor import children, read_state, unix_socket_answers

# What each rejected kind's quarantine reason must say.
INVALID_KINDS = {
    "malformed": "not valid JSON",
    "empty": "file is empty",
    "truncated": "not valid JSON",
    "non_utf8": "not UTF-8",
    "oversized": f"larger than {MAX_FILE_BYTES} bytes",
    "path_escape": "nothing path-like",
    "foreign_terminal": "file arrived from terminal",
    "conflict": "different content",
}
REPEAT_KINDS = ("redrop", "resend")  # same content again: recognised, archived, no new rows
VALID_KINDS = ("valid", "slow", "twin", "future")
# A receipt this far ahead of the store's clock is quarantined (max_clock_skew_seconds 300)...
FUTURE_SECONDS = 360.0
# ...and once the clock has caught up with it, an operator re-queues it.
RETRY_AFTER_SECONDS = 75.0
# Share of the traffic per kind (the rest is plain valid receipts).
MIX = {
    "slow": 0.02,
    "twin": 0.01,
    "future": 0.004,
    "redrop": 0.01,
    "resend": 0.01,
    "conflict": 0.01,
    "malformed": 0.006,
    "empty": 0.006,
    "truncated": 0.006,
    "non_utf8": 0.006,
    "oversized": 0.004,
    "path_escape": 0.006,
    "foreign_terminal": 0.006,
}
# Where in the sending period each fault strikes (fraction of it).
FAULTS = [
    (0.08, "kill_worker"),
    (0.16, "kill_daemon"),
    (0.24, "kill_fastpath"),
    (0.32, "kill_code_server"),
    (0.40, "dat_folder_unwritable"),
    (0.50, "db_outage"),
    (0.60, "settle_today"),  # not a fault: the rest of the day's receipts arrive late
    (0.64, "kill_webserver"),
    (0.72, "power_cut"),
    (0.85, "kill_worker"),
]
# The services the supervisor restarts, by the fault that kills one (its name in services.json).
KILLED_SERVICE = {
    "kill_webserver": "webserver",
    "kill_daemon": "daemon",
    "kill_code_server": "code-server",
    "kill_fastpath": "fastpath",
}
KILL_FAULTS = ("kill_worker", *KILLED_SERVICE, "power_cut")
STORE_SERVICES = ("code-server", "fastpath", "webserver", "daemon")
# With a PostgreSQL central database, its outage comes three ways instead of one.
POSTGRES_FAULTS = [(0.50, "db_partition"), (0.58, "db_restart"), (0.76, "db_lock")]


def faults_for(central: str) -> list[tuple[float, str]]:
    if central != "postgres":
        return FAULTS
    return sorted([f for f in FAULTS if f[1] != "db_outage"] + POSTGRES_FAULTS)


RESTART_AFTER_SECONDS = 2.0  # a power cut: the server boots again after this long
DAT_BLOCK_SECONDS = 8.0
# After a kill: how long to watch for the next .dat file and for the killed kind to be back.
AFTER_KILL_TIMEOUT = 180.0
# The last receipts are sent once every kill has struck.
HELD_BACK_RECEIPTS = 10


@dataclass
class ChaosSettings:
    receipts: int = 10_000
    rate: float = 20.0
    terminals: int = 20
    workers: int = 2
    seed: int = 1
    db_outage_seconds: float = 30.0
    drain_timeout: float = 600.0  # after the last file, wait at most this long for the rest
    central: str = "sqlite"  # or "postgres"
    keep: bool = False
    progress: bool = True


@dataclass
class Item:
    kind: str
    terminal: Terminal
    name: str
    data: bytes = b""
    receipt: Receipt | None = None  # valid kinds: the receipt expected in the DB and as .dat
    original: Item | None = None  # repeats and conflicts: the delivered receipt they repeat
    sent_at: float | None = None


@dataclass
class Verdict:
    """Where every sent file ended up, and the reconciliation's verdict."""

    counts: dict = field(default_factory=dict)
    quarantined_by_reason: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        c = self.counts
        return (
            c["loaded_rows"] == c["dat_files"] == c["valid"]
            and c["quarantined"] == c["invalid"]
            and c["duplicates"] == 0
            and c["lost"] == 0
            and c["unbilled"] == 0
            and c["left_in_inbox"] == 0
            and not self.problems
        )


# --- the traffic ------------------------------------------------------------------------------


class Traffic:
    """Builds each file a terminal sends, seeded; repeats pick from what was delivered."""

    def __init__(self, config: PosfedConfig, spec: dat.DatSpec, seed: int, total: int):
        self.config = config
        self.spec = spec
        self.random = random.Random(seed)
        self.simulator = ReceiptSimulator(list(config.terminals), seed=seed)
        self.plan = self._plan(total)
        self.delivered: list[Item] = []  # valid items whose .dat exists: repeatable
        self.items: list[Item] = []
        self._n = 0

    def _plan(self, total: int) -> list[str]:
        kinds = []
        for _ in range(total):
            roll, kind = self.random.random(), "valid"
            for name, share in MIX.items():
                if roll < share:
                    kind = name
                    break
                roll -= share
            kinds.append(kind)
        # Every kind at least once, early enough for repeats to find something delivered.
        for i, kind in enumerate(MIX):
            position = total // 8 + i * max(1, total // (4 * len(MIX)))
            kinds[min(position, total - 1)] = kind
        return kinds

    def next_item(self) -> Item:
        position = len(self.items)
        kind = self.plan[position]
        if kind in ("redrop", "resend", "conflict", "twin") and not self.delivered:
            # Nothing delivered yet to repeat: a little later, then.
            self.plan.insert(min(position + 10, len(self.plan) - 1), kind)
            kind = "valid"
        terminal = self.random.choice(self.simulator.terminals)
        item = getattr(self, f"_{kind}")(terminal)
        item.kind = kind
        self.items.append(item)
        return item

    def _unique(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n:06d}"

    def _valid(self, terminal: Terminal) -> Item:
        receipt = self.simulator.make_receipt(terminal)
        data = canonical_json(receipt).encode("utf-8")
        return Item("valid", terminal, f"{receipt.receipt_id}.json", data, receipt)

    def _slow(self, terminal: Terminal) -> Item:
        return self._valid(terminal)

    def _twin(self, terminal: Terminal) -> Item:
        """A delivered sale's number and lines, on the other terminal of its department."""
        original = self._repeat_of()  # each sale is twinned (or repeated) at most once
        sibling = next(
            (
                t
                for t in self.simulator.terminals
                if t.department == original.terminal.department and t.id != original.terminal.id
            ),
            None,
        )
        if sibling is None:
            return self._valid(terminal)
        number = original.receipt.receipt_id[len(original.terminal.receipt_id_prefix) :]
        receipt = replace(
            original.receipt,
            receipt_id=sibling.receipt_id_prefix + number,
            terminal_id=sibling.id,
        )
        data = canonical_json(receipt).encode("utf-8")
        return Item("twin", sibling, f"{receipt.receipt_id}.json", data, receipt, original)

    def _future(self, terminal: Terminal) -> Item:
        """A terminal whose clock runs minutes fast."""
        ahead = datetime.now(terminal.timezone) + timedelta(seconds=FUTURE_SECONDS)
        receipt = self.simulator.make_receipt(terminal, ahead)
        data = canonical_json(receipt).encode("utf-8")
        return Item("future", terminal, f"{receipt.receipt_id}.json", data, receipt)

    def _repeat_of(self) -> Item:
        original = self.random.choice(self.delivered)
        self.delivered.remove(original)  # each delivered receipt is repeated at most once
        return original

    def _redrop(self, terminal: Terminal) -> Item:
        original = self._repeat_of()
        return Item("redrop", original.terminal, original.name, original.data, None, original)

    def _resend(self, terminal: Terminal) -> Item:
        original = self._repeat_of()
        name = f"{original.receipt.receipt_id}-again.json"
        return Item("resend", original.terminal, name, original.data, None, original)

    def _conflict(self, terminal: Terminal) -> Item:
        """The delivered receipt's id again, with another quantity (and a matching total)."""
        original = self._repeat_of()
        receipt = original.receipt
        first = receipt.items[0]
        items = (replace(first, quantity=first.quantity + 7), *receipt.items[1:])
        variant = replace(receipt, items=items, total=sum((i.amount for i in items), Decimal(0)))
        data = canonical_json(variant).encode("utf-8")
        name = f"{receipt.receipt_id}-v2.json"
        return Item("conflict", original.terminal, name, data, None, original)

    def _bad(self, terminal: Terminal, data: bytes) -> Item:
        return Item("bad", terminal, f"{self._unique('BAD')}.json", data)

    def _malformed(self, terminal: Terminal) -> Item:
        return self._bad(terminal, b'{"receiptId": "X1", "items": [ oops ]}')

    def _empty(self, terminal: Terminal) -> Item:
        return self._bad(terminal, b"")

    def _truncated(self, terminal: Terminal) -> Item:
        data = canonical_json(self.simulator.make_receipt(terminal)).encode("utf-8")
        return self._bad(terminal, data[: len(data) // 2])

    def _non_utf8(self, terminal: Terminal) -> Item:
        data = canonical_json(self.simulator.make_receipt(terminal)).encode("utf-8")
        return self._bad(terminal, data.replace(b'"items"', b'"items\xff\xfe"', 1))

    def _oversized(self, terminal: Terminal) -> Item:
        doc = json.loads(canonical_json(self.simulator.make_receipt(terminal)))
        doc["items"][0]["description"] = "x" * (MAX_FILE_BYTES + 10)
        return self._bad(terminal, json.dumps(doc).encode("utf-8"))

    def _path_escape(self, terminal: Terminal) -> Item:
        doc = json.loads(canonical_json(self.simulator.make_receipt(terminal)))
        doc["receiptId"] = "../../../../tmp/posfed-escape"
        return self._bad(terminal, json.dumps(doc).encode("utf-8"))

    def _foreign_terminal(self, terminal: Terminal) -> Item:
        other = next(t for t in self.simulator.terminals if t.id != terminal.id)
        doc = json.loads(canonical_json(self.simulator.make_receipt(terminal)))
        doc["terminalId"] = other.id
        return self._bad(terminal, json.dumps(doc).encode("utf-8"))

    def dat_path(self, item: Item) -> Path:
        rendered = dat.render_receipt(item.receipt, item.terminal, self.spec)
        return self.config.dat_dir / rendered.relative_path


def write_file(item: Item, rng: random.Random) -> None:
    """As a POS writes: open, write, close; slow writers in chunks with pauses, one handle."""
    path = item.terminal.inbox / item.name
    with open(path, "wb") as handle:
        if item.kind == "slow":
            chunks = 4
            size = max(1, len(item.data) // chunks)
            for start in range(0, len(item.data), size):
                handle.write(item.data[start : start + size])
                handle.flush()
                time.sleep(rng.uniform(0.3, 1.2))
        else:
            handle.write(item.data)
    item.sent_at = time.time()


# --- the run ----------------------------------------------------------------------------------


class SupervisedStore(bench.Run):
    """The benchmark's store, set-up and measurements, its processes run as ``posfed demo``
    runs them: under posfed's supervisor (one process; "store" in the bench's processes),
    which restarts whatever of them dies."""

    def dagster_home_of(self, config: PosfedConfig) -> Path:
        return config.home / "dagster_home"  # where `posfed demo` keeps its instance

    def start_processes(self) -> None:
        with socket.socket() as probe:  # a free port for the webserver
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        demo = [sys.executable, "-m", "posfed_pipeline.cli", "demo", "--no-simulator"]
        options = ["--port", str(self.port), "--workers", str(self.settings.workers)]
        self.processes.start("store", demo + options)

    def serving(self, kind: str, since: float = 0.0) -> bool:
        """Whether ``kind`` does its work: the UI answers, the daemon's sensors tick (since
        ``since``, without failing), the code server listens, the fast path's workers are warm."""
        if kind == "webserver":
            try:
                url = f"http://127.0.0.1:{self.port}/server_info"
                with urllib.request.urlopen(url, timeout=2) as answer:
                    return answer.status == 200
            except OSError:
                return False
        if kind == "daemon":
            return self._sync_sensor_ticked_since(since)
        if kind == "code-server":
            return unix_socket_answers(services.code_server_socket_path(self.dagster_home))
        stats = self.pool_stats() or {}  # the fast path, or a warm worker
        return stats.get("ready") == self.settings.workers and bool(self.warm_workers())

    def _sync_sensor_ticked_since(self, since: float) -> bool:
        # The sync sensor ticks every daemon loop (about once a second).
        state = next(
            (s for s in self.instance.all_instigator_state() if s.instigator_name == SYNC_SENSOR),
            None,
        )
        if state is None:
            return False
        ticks = self.instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
        return bool(ticks) and ticks[0].timestamp > since and ticks[0].status.value != "FAILURE"

    def services(self) -> dict:
        """What the supervisor says of each service (pid, state, restarts, last exit)."""
        try:
            return read_state(services.state_file(self.dagster_home))["services"]
        except (OSError, ValueError):  # not written yet, or being replaced
            return {}

    def warm_workers(self) -> set[int]:
        """The fast path's warm run workers (its multiprocessing children)."""
        fastpath = self.services().get("fastpath", {}).get("pid")
        workers = set()
        for pid in children(fastpath) if fastpath else ():
            with contextlib.suppress(OSError):
                if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    workers.add(pid)
        return workers


class ChaosRun:
    def __init__(self, settings: ChaosSettings):
        self.settings = settings
        self.bench = SupervisedStore(
            "posfed",
            bench.BenchSettings(
                terminals=settings.terminals,
                workers=settings.workers,
                seed=settings.seed,
                progress=False,
                central=settings.central,
            ),
        )
        self.config = self.bench.config
        self.central_url = self.bench.central_url
        self.root = self.bench.root
        # Another seed than the harness's warm-up receipt, so no receipt id repeats by chance.
        self.traffic = Traffic(
            self.config, self.bench.spec, settings.seed + 7919, settings.receipts
        )
        self.rng = random.Random(settings.seed + 1)
        self.faults: list[dict] = []
        self.warm_up: set[Path] = set()  # .dat files there before the traffic
        self.warm_up_rows: set[tuple[str, str]] = set()  # and receipt rows
        self.current_fault = ""
        self._writers: list[threading.Thread] = []
        self._waiting_delivery: list[Item] = []
        self.importer = BillingImporter(self.config.dat_dir, self.root / "billing_imported")
        self._retries: list[Item] = []  # "future" receipts to re-queue once their time comes
        # Kills started but not struck yet (each waits for its victim to be up first).
        self._kills_pending = 0
        self._kills_struck = threading.Condition()
        self.settled_day: str | None = None  # the day settled midway, if it was

    # --- faults -------------------------------------------------------------------------------

    def _when_serving(self, kinds: tuple[str, ...]) -> None:
        """Wait until each of ``kinds`` does its work: a kill strikes a store that is up (in a
        short run, the previous fault's restart may not be over yet)."""
        deadline = time.monotonic() + AFTER_KILL_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # a state file being replaced, a busy instance
                if all(self.bench.serving(kind) for kind in kinds):
                    return
            time.sleep(0.5)

    def _one_strike(self):
        """What a kill calls once it has struck (again: nothing), for the held-back receipts."""
        done = threading.Event()

        def struck() -> None:
            if done.is_set():
                return
            done.set()
            with self._kills_struck:
                self._kills_pending -= 1
                self._kills_struck.notify_all()

        return struck

    def _kill_service(self, name: str, struck) -> tuple[str, dict]:
        self._when_serving((name,))
        victim = self.bench.services()[name]["pid"]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        struck()

        def back() -> bool:
            service = self.bench.services().get(name, {})
            return service.get("pid") not in (None, victim) and self.bench.serving(name, killed_at)

        return f"{name} pid {victim}", self._after_kill(killed_at, back)

    def _kill_worker(self, struck) -> tuple[str, dict]:
        self._when_serving(("warm worker",))
        workers = self.bench.warm_workers()
        if not workers:
            struck()
            return "no warm worker running", {}
        victim = self.rng.choice(sorted(workers))
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        struck()

        def back() -> bool:  # the pool has a warm worker in its place
            return victim not in self.bench.warm_workers() and self.bench.serving("warm worker")

        return f"pid {victim}", self._after_kill(killed_at, back)

    def _power_cut(self, struck) -> tuple[str, dict]:
        """Every process of the store at once, the supervisor too; then the server boots."""
        self._when_serving(STORE_SERVICES)
        store = self.bench.processes.started["store"]
        frozen: set[int] = set()
        # Stopped first, so none of them can start another meanwhile; then all killed.
        while pids := self.bench.processes.session_pids("store") - frozen:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            frozen |= pids
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        struck()
        with contextlib.suppress(subprocess.TimeoutExpired):
            store.wait(timeout=10)
        time.sleep(RESTART_AFTER_SECONDS)
        self.bench.start_processes()

        def back() -> bool:
            now = self.bench.services()
            # Every service the store runs again, in new processes (posfed metrics, which
            # the chaos store also runs, included); the ones that do the work serving.
            return (
                set(STORE_SERVICES) <= set(now)
                and all(service["pid"] not in (None, *frozen) for service in now.values())
                and all(self.bench.serving(kind, killed_at) for kind in STORE_SERVICES)
            )

        return f"{len(frozen)} processes", self._after_kill(killed_at, back)

    def _after_kill(self, killed_at: float, back) -> dict:
        """Seconds from the kill to the next .dat file written, and until ``back()`` says the
        killed kind runs again (None: not within AFTER_KILL_TIMEOUT)."""
        dat_after = back_after = None
        polls = 0
        deadline = time.monotonic() + AFTER_KILL_TIMEOUT
        while (dat_after is None or back_after is None) and time.monotonic() < deadline:
            if dat_after is None:
                written = []
                for path in self.config.dat_dir.glob("*/*.dat"):
                    with contextlib.suppress(OSError):
                        if (mtime := path.stat().st_mtime) > killed_at:
                            written.append(mtime)
                if written:
                    dat_after = round(min(written) - killed_at, 2)
            if back_after is None and polls % 5 == 0:
                with contextlib.suppress(Exception):  # a state file being replaced, say
                    if back():
                        back_after = round(time.time() - killed_at, 2)
            polls += 1
            time.sleep(0.1)
        return {"kill_to_dat_seconds": dat_after, "back_after_seconds": back_after}

    def _kill(self, fault: str) -> tuple[str, dict]:
        struck = self._one_strike()
        try:
            if fault == "kill_worker":
                return self._kill_worker(struck)
            if fault == "power_cut":
                return self._power_cut(struck)
            return self._kill_service(KILLED_SERVICE[fault], struck)
        finally:
            struck()  # also if it failed: the held-back receipts wait for no kill that failed

    def inject(self, fault: str) -> None:
        self.current_fault = fault
        started = time.time()
        detail = ""
        measured: dict = {}
        if fault in KILL_FAULTS:
            detail, measured = self._kill(fault)
        elif fault == "db_outage":
            self._lock_database(self.settings.db_outage_seconds)
            detail = f"{self.settings.db_outage_seconds:g} s"
        elif fault in ("db_partition", "db_restart", "db_lock"):
            kind = {"db_partition": "partition", "db_restart": "stop", "db_lock": "lock"}[fault]
            self.bench.central.fault(kind)
            try:
                time.sleep(self.settings.db_outage_seconds)
            finally:
                self.bench.central.heal(kind)
            detail = f"{self.settings.db_outage_seconds:g} s"
        elif fault == "settle_today":
            self.settled_day = dat_day_folder(self.config)
            detail = self._launch_settlement(datetime.now(self.config.timezone).date())
        elif fault == "dat_folder_unwritable":
            self._block_dat_folder(DAT_BLOCK_SECONDS)
            detail = f"{DAT_BLOCK_SECONDS:g} s"
        self.faults.append(
            {
                "fault": fault,
                "at": started,
                "seconds": round(time.time() - started, 1),
                "detail": detail,
                **measured,
            }
        )
        self.current_fault = ""

    def _launch_settlement(self, day) -> str:
        """Settle the day now, as the nightly schedule would: a run through the daemon."""
        dagster = str(Path(sys.executable).with_name("dagster"))
        launched = subprocess.run(
            [
                dagster,
                "job",
                "launch",
                "-w",
                str(packaged.workspace_file()),
                "-j",
                names.SETTLEMENT_JOB,
                "--tags",
                json.dumps({names.PARTITION_TAG: day.isoformat()}),
            ],
            env=self.bench.processes.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if launched.returncode != 0:
            raise RuntimeError(f"could not launch settlement_job: {launched.stderr[-500:]}")
        return f"settlement_job {day}"

    def _retry_due(self) -> None:
        """Re-queue the quarantined receipts of a fast clock once the clock has caught up."""
        still = []
        for item in self._retries:
            if time.time() < item.sent_at + RETRY_AFTER_SECONDS:
                still.append(item)
                continue
            entry = next(
                (
                    e
                    for e in quarantine.quarantined_files(item.terminal)
                    if e.report.get("file") == item.name
                ),
                None,
            )
            if entry is None:
                delivered = (
                    self.importer.billed(self.traffic.dat_path(item))
                    and not (item.terminal.inbox / item.name).exists()
                )
                if not delivered:
                    # Not quarantined yet; or taken late (a fault held it) when the clock had
                    # caught up already, and accepted at once: nothing to re-queue then.
                    still.append(item)
                continue
            quarantine.retry(item.terminal, entry.name, by="posfed chaos")
        self._retries = still

    def settlement_behind(self) -> str:
        """Empty if the day settled midway is settled with every receipt of that day."""
        if self.settled_day is None:
            return ""
        day = datetime.strptime(self.settled_day, "%Y%m%d").date()
        engine = central_db.make_engine(self.central_url)
        try:
            with engine.connect() as connection:
                settled = connection.execute(
                    select(func.coalesce(func.sum(central_db.SettlementRow.receipts), 0)).where(
                        central_db.SettlementRow.business_day == day
                    )
                ).scalar_one()
                receipts = connection.execute(
                    select(func.count()).where(central_db.ReceiptRow.business_day == day)
                ).scalar_one()
        finally:
            engine.dispose()
        if settled == receipts:
            return ""
        return f"the settlement of {day} counts {settled} receipts, the day has {receipts}"

    def _lock_database(self, seconds: float) -> None:
        path = self.config.db_url.removeprefix("sqlite:///")
        connection = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            connection.execute("BEGIN EXCLUSIVE")  # no other writer until it ends
            time.sleep(seconds)
            connection.execute("ROLLBACK")
        finally:
            connection.close()

    def _block_dat_folder(self, seconds: float) -> None:
        day = dat_day_folder(self.config)
        folder = self.config.dat_dir / day
        aside = self.config.dat_dir / f".{day}.aside"
        folder.mkdir(parents=True, exist_ok=True)
        os.rename(folder, aside)
        # If a writer recreated the folder in between, the block missed; the run goes on.
        with contextlib.suppress(IsADirectoryError):
            folder.write_text("the .dat folder is unwritable (posfed chaos)")
        time.sleep(seconds)
        if folder.is_file():
            folder.unlink()
        folder.mkdir(exist_ok=True)
        for path in aside.iterdir():  # nothing can have been written there meanwhile
            os.replace(path, folder / path.name)
        aside.rmdir()

    # --- driving ------------------------------------------------------------------------------

    def _send(self, item: Item) -> None:
        if item.kind == "slow":
            thread = threading.Thread(target=write_file, args=(item, random.Random(item.name)))
            thread.start()
            self._writers.append(thread)
        else:
            write_file(item, self.rng)

    def _track_deliveries(self) -> None:
        still = []
        for item in self._waiting_delivery:
            if (
                self.importer.billed(self.traffic.dat_path(item))
                and not (item.terminal.inbox / item.name).exists()
            ):
                self.traffic.delivered.append(item)
            else:
                still.append(item)
        self._waiting_delivery = still

    def drive(self) -> None:
        settings = self.settings
        period = settings.receipts / settings.rate
        schedule = sorted((share * period, fault) for share, fault in faults_for(settings.central))
        fault_threads = []
        start = time.monotonic()
        for i in range(settings.receipts):
            delay = start + i / settings.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            while schedule and time.monotonic() - start >= schedule[0][0]:
                _, fault = schedule.pop(0)
                if fault in KILL_FAULTS:
                    with self._kills_struck:
                        self._kills_pending += 1
                thread = threading.Thread(target=self.inject, args=(fault,), daemon=True)
                thread.start()
                fault_threads.append(thread)
            if i == settings.receipts - HELD_BACK_RECEIPTS:
                # In a short run a kill may strike late (it waits for its victim to be up):
                # the last receipts wait for it, so receipts arrive after every kill.
                with self._kills_struck:
                    self._kills_struck.wait_for(
                        lambda: self._kills_pending == 0, timeout=2 * AFTER_KILL_TIMEOUT
                    )
            if i % 20 == 0:
                self._track_deliveries()
                self._retry_due()
            item = self.traffic.next_item()
            self._send(item)
            if item.kind in ("valid", "slow"):
                self._waiting_delivery.append(item)
            elif item.kind == "future":
                self._retries.append(item)
        for thread in fault_threads + self._writers:
            thread.join()
        self.last_sent = time.monotonic()

    def settled(self) -> bool:
        self._retry_due()
        return (
            not self._retries
            and not inbox_files(self.config)
            and not self.bench.active_runs()
            and not Ledger(ledger_path(self.config.home)).lag().pending_deliveries
            and not self.settlement_behind()
        )

    def cursor_disagreements(self, wait_seconds: float = 30.0) -> list[str]:
        """The sensors' cursors agree with the inboxes: with every inbox empty, a sensor's next
        tick keeps no file as launched-and-pending. Waits for one tick after the drain."""
        from posfed_pipeline.fastpath.dagster_internals import InstigatorType

        instance = self.bench.instance
        drained_at = time.time()
        deadline = time.monotonic() + wait_seconds
        while True:
            states = [
                s
                for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
                if s.instigator_name.endswith(names.inbox_sensor_name(""))  # others keep no files
            ]
            ticked = all(
                (ticks := instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=1))
                and ticks[0].timestamp > drained_at
                for s in states
            )
            if ticked or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if not states:
            return ["no sensor state found: the cursors could not be checked"]
        problems = []
        for state in states:
            cursor = state.instigator_data.cursor if state.instigator_data else None
            pending = json.loads(cursor)["launched"] if cursor else {}
            if pending:
                problems.append(
                    f"{state.instigator_name}: cursor still lists {len(pending)} file(s)"
                )
        if not ticked:
            problems.append(f"not every sensor ticked within {wait_seconds:g} s after the drain")
        return problems

    def drain(self) -> None:
        deadline = self.last_sent + self.settings.drain_timeout
        while time.monotonic() < deadline:
            if self.settled():
                return
            time.sleep(1.0)

    def _progress_loop(self, stop: threading.Event) -> None:
        tty = sys.stdout.isatty()
        started = time.monotonic()
        total = self.settings.receipts
        while not stop.wait(0.5 if tty else 10.0):
            sent = len(self.traffic.items)
            left = len(inbox_files(self.config))
            width = 30
            filled = int(width * sent / total)
            line = (
                f"[{'#' * filled}{'.' * (width - filled)}] {sent}/{total} sent, "
                f"{left} in inboxes, {len(self.faults)} faults"
                + (f", now: {self.current_fault}" if self.current_fault else "")
                + f" ({time.monotonic() - started:.0f}s)"
            )
            print(("\r" + line.ljust(100)) if tty else line, end="" if tty else "\n", flush=True)
        if tty:
            print()

    def reconcile(self) -> Verdict:
        """Every file this run sent against what the store and the central side hold."""
        return reconcile(
            self.config,
            self.bench.spec,
            self.traffic.items,
            ignore=self.warm_up,
            ignore_rows=self.warm_up_rows,
            db_url=self.central_url,
            imported=self.importer.folder,
        )

    def execute(self) -> dict:
        report: dict = {"settings": self.settings.__dict__.copy(), "root": str(self.root)}
        try:
            self.bench.start()  # the store is up: sensors ticking, workers warm, one receipt in
            self.warm_up = {
                p.relative_to(self.config.dat_dir) for p in self.config.dat_dir.rglob("*.dat")
            }
            self.importer.start()
            self.warm_up_rows = row_keys(self.central_url)
            stop = threading.Event()
            progress = None
            if self.settings.progress:
                progress = threading.Thread(target=self._progress_loop, args=(stop,), daemon=True)
                progress.start()
            started = time.monotonic()
            try:
                self.drive()
                self.drain()
            finally:
                stop.set()
                self.importer.stop()
                if progress:
                    progress.join()
            report["seconds"] = round(time.monotonic() - started, 1)
            outcome = self.reconcile()
            for problem in self.cursor_disagreements():
                outcome.problems.append(problem)
            if behind := self.settlement_behind():
                outcome.problems.append(behind)
            elif self.settled_day is None:
                outcome.problems.append("the day was never settled midway")
            for item in self._retries:
                outcome.problems.append(f"{item.terminal.id}/{item.name} was never re-queued")
            for fault in self.faults:
                if "kill_to_dat_seconds" not in fault:  # not a kill, or nothing to kill
                    continue
                for measure, what in (
                    ("kill_to_dat_seconds", "no .dat file was written"),
                    ("back_after_seconds", "what was killed did not come back"),
                ):
                    if fault.get(measure) is None:
                        outcome.problems.append(
                            f"{fault['fault']} ({fault['detail']}): {what} within "
                            f"{AFTER_KILL_TIMEOUT:g} s"
                        )
            report.update(
                counts=outcome.counts,
                quarantined_by_reason=outcome.quarantined_by_reason,
                problems=outcome.problems[:50],
                faults=self.faults,
                kill_to_dat_seconds=kill_to_dat(self.faults),
                kinds=dict(Counter(i.kind for i in self.traffic.items)),
                passed=outcome.passed,
            )
        finally:
            self.bench.processes.stop()
            self.bench.central.close()
            if not self.settings.keep:
                shutil.rmtree(self.root, ignore_errors=True)
        return report


class BillingImporter:
    """The billing software's import: every complete .dat file is taken out of the .dat folder
    (into ``folder``), as many import folders work. A .dat written again after its sale was
    imported would be imported, and billed, again: ``imported_twice`` counts those."""

    def __init__(self, dat_dir: Path, folder: Path):
        self.dat_dir = dat_dir
        self.folder = folder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.take_all()

    def billed(self, dat_file: Path) -> bool:
        """Whether the sale's .dat exists, in the .dat folder or imported."""
        rel = dat_file.relative_to(self.dat_dir)
        return dat_file.exists() or (self.folder / rel).exists()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self.take_all(settled_for=1.0)

    def take_all(self, settled_for: float = 0.0) -> None:
        now = time.time()
        for path in self.dat_dir.glob("*/*.dat"):  # hidden temp files are not *.dat
            if path.parent.name.startswith("."):
                continue  # a day folder moved aside by a fault
            try:
                if now - path.stat().st_mtime < settled_for:
                    continue
                rel = path.relative_to(self.dat_dir)
                target = self.folder / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                n = 1
                while True:
                    try:
                        os.link(path, target)
                        break
                    except FileExistsError:
                        target = self.folder / rel.parent / f"{rel.name}.imported-again-{n}"
                        n += 1
                path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                continue  # the folder was moved aside by a fault: next round

    def imported(self) -> Counter:
        """Imports per .dat (relative path): 1 each, or a sale billed more than once."""
        counts: Counter = Counter()
        for path in self.folder.rglob("*.dat*"):
            name = path.name.split(".imported-again-")[0]
            counts[path.parent.relative_to(self.folder) / name] += 1
        return counts


def dat_day_folder(config: PosfedConfig) -> str:
    """Today's .dat folder name, by the store's local date (as the receipts are dated)."""
    return datetime.now(config.timezone).strftime("%Y%m%d")


# --- the reconciliation -----------------------------------------------------------------------


def inbox_files(config: PosfedConfig) -> list[str]:
    """``terminal/name`` of every receipt file still in an inbox."""
    return [
        f"{terminal.id}/{path.name}"
        for terminal in config.terminals
        for path in terminal.inbox.iterdir()
        if path.is_file() and inbox.is_candidate(path.name)
    ]


def row_keys(db_url: str) -> set[tuple[str, str]]:
    """(terminal, receipt id) of every receipt row in the central database."""
    engine = central_db.make_engine(db_url)
    try:
        with engine.connect() as connection:
            return set(
                connection.execute(
                    select(central_db.ReceiptRow.terminal_id, central_db.ReceiptRow.receipt_id)
                ).all()
            )
    finally:
        engine.dispose()


def _original_name(name: str) -> str:
    # move_unique names a clash ``stem~N.ext``.
    stem, dot, suffix = name.partition(".")
    return stem.split("~")[0] + dot + suffix


def reconcile(
    config: PosfedConfig,
    spec: dat.DatSpec,
    items: list[Item],
    ignore: set[Path] = frozenset(),
    ignore_rows: set[tuple[str, str]] = frozenset(),
    db_url: str | None = None,
    imported: Path | None = None,
) -> Verdict:
    """Every sent file against the central side: DB rows, .dat files, quarantine, archive,
    and the central database against the store's ledger.

    ``ignore``/``ignore_rows``: .dat files (relative to the .dat folder) and (terminal,
    receipt id) rows that were there before the traffic (the harness's warm-up receipt).
    ``imported``: where the billing importer put the .dat files it took; a sale is billed once
    per .dat it finds there or left in the .dat folder.
    """
    outcome = Verdict()
    engine = central_db.make_engine(db_url or config.db_url)
    with engine.connect() as connection:
        rows: Counter = Counter()
        row_hashes: dict[tuple[str, str], str] = {}
        for terminal, receipt, digest in connection.execute(
            select(
                central_db.ReceiptRow.terminal_id,
                central_db.ReceiptRow.receipt_id,
                central_db.ReceiptRow.content_hash,
            )
        ):
            rows[(terminal, receipt)] += 1
            row_hashes[(terminal, receipt)] = digest
        # The ledger agrees: each loaded receipt inserted once, its .dat recorded as written.
        ledger = {
            (terminal, receipt): (inserted, written)
            for terminal, receipt, inserted, written in connection.execute(
                select(
                    central_db.IngestLedgerRow.terminal_id,
                    central_db.IngestLedgerRow.receipt_id,
                    func.sum(
                        case(
                            (central_db.IngestLedgerRow.outcome == Outcome.INSERTED.value, 1),
                            else_=0,
                        )
                    ),
                    func.count(central_db.IngestLedgerRow.dat_written_at),
                ).group_by(
                    central_db.IngestLedgerRow.terminal_id, central_db.IngestLedgerRow.receipt_id
                )
            )
        }
        central_deliveries = Counter(
            connection.execute(select(central_db.IngestLedgerRow.delivery_id)).scalars()
        )
    engine.dispose()
    outcome.problems += ledger_disagreements(
        config, rows, row_hashes, central_deliveries, ignore_rows
    )
    billed: Counter = Counter()
    where_is: dict[Path, Path] = {}
    for path in config.dat_dir.glob("*/*.dat"):
        billed[path.relative_to(config.dat_dir)] += 1
        where_is[path.relative_to(config.dat_dir)] = path
    if imported is not None and imported.exists():
        for path in imported.rglob("*.dat*"):
            rel = path.parent.relative_to(imported) / path.name.split(".imported-again-")[0]
            billed[rel] += 1
            where_is.setdefault(rel, path)
    for rel in ignore:
        billed.pop(rel, None)
    dat_files = set(billed)
    billed_twice = {rel: n for rel, n in billed.items() if n > 1}
    for rel, n in sorted(billed_twice.items())[:10]:
        outcome.problems.append(f"{rel}: billed {n} times (written again after it was imported)")
    quarantined: dict[tuple[str, str], list[str]] = {}
    archived: Counter = Counter()
    left = inbox_files(config)
    for terminal in config.terminals:
        for report in terminal.quarantine.glob("*.error.json"):
            doc = json.loads(report.read_text())
            reason = "; ".join(f"{p['field']}: {p['rule']}" for p in doc["problems"])
            quarantined.setdefault((terminal.id, doc["file"]), []).append(reason)
        for path in terminal.archive_root.rglob("*"):
            if path.is_file():
                archived[(terminal.id, _original_name(path.name))] += 1

    expected_dat: set[Path] = set()
    valid = invalid = loaded = repeats = lost = unbilled = 0
    by_reason: Counter = Counter()
    for item in items:
        where = (item.terminal.id, item.name)
        if item.kind in VALID_KINDS:
            valid += 1
            rendered = dat.render_receipt(item.receipt, item.terminal, spec)
            rel = Path(rendered.relative_path)
            expected_dat.add(rel)
            if rel in dat_files and where_is[rel].read_bytes() != rendered.content:
                # Complete and exactly what this receipt renders to: never a partial file.
                outcome.problems.append(f"{rel}: not the receipt's exact .dat content")
            key = (item.terminal.id, item.receipt.receipt_id)
            count = rows[key]
            loaded += min(count, 1)
            if count and row_hashes[key] != content_hash(item.data):
                outcome.problems.append(f"{where}: the row holds other content than was sent")
            if rel not in dat_files:
                unbilled += 1  # the cashier would still be waiting for this sale
            if count == 0 or rel not in dat_files:
                lost += 1
                outcome.problems.append(
                    f"lost: {item.terminal.id}/{item.name} ({count} rows, "
                    f".dat {'present' if rel in dat_files else 'missing'})"
                )
            if where in quarantined:
                outcome.problems.append(f"valid receipt quarantined: {where}: {quarantined[where]}")
            inserted, written = ledger.get((item.terminal.id, item.receipt.receipt_id), (0, 0))
            if count and (inserted != 1 or not written):
                outcome.problems.append(
                    f"ledger disagrees for {where}: inserted {inserted} time(s), "
                    f"{written} .dat write(s) recorded"
                )
        elif item.kind in REPEAT_KINDS:
            repeats += 1
        else:
            invalid += 1
            reasons = quarantined.get(where, [])
            wanted = INVALID_KINDS[item.kind]
            if any(wanted in r for r in reasons):
                by_reason[item.kind] += 1
            elif reasons:
                outcome.problems.append(f"{item.kind} {where} quarantined for: {reasons}")
                by_reason[item.kind] += 1
            else:
                lost += 1
                outcome.problems.append(f"{item.kind} {where} is not in quarantine")
    # Repeats: no second row set (checked through the originals' row counts), the file kept.
    for item in items:
        if item.kind in REPEAT_KINDS:
            where = (item.terminal.id, item.name)
            needed = 2 if item.kind == "redrop" else 1  # a redrop shares its original's name
            if where in quarantined:
                outcome.problems.append(f"{item.kind} {where} quarantined: {quarantined[where]}")
            elif archived[where] < needed:
                lost += 1
                outcome.problems.append(f"{item.kind} {where}: the file was not archived")
    duplicates = sum(count - 1 for count in rows.values() if count > 1)
    expected_rows = {(i.terminal.id, i.receipt.receipt_id) for i in items if i.kind in VALID_KINDS}
    unexpected_rows = set(rows) - expected_rows - set(ignore_rows)
    duplicates += len(unexpected_rows)
    for key in sorted(unexpected_rows)[:10]:
        outcome.problems.append(f"unexpected row {key}: no valid receipt was sent with this id")
    extra_dat = dat_files - expected_dat
    duplicates += len(extra_dat) + sum(n - 1 for n in billed_twice.values())
    for rel in sorted(extra_dat)[:10]:
        outcome.problems.append(f"unexpected .dat file {rel}")
    if left:
        outcome.problems.append(f"{len(left)} file(s) still in inboxes: {left[:10]}")
    outcome.counts = {
        "sent": len(items),
        "valid": valid,
        "invalid": invalid,
        "repeats": repeats,
        "loaded_rows": loaded,
        "dat_files": len(dat_files & expected_dat),
        "billed_twice": len(billed_twice),
        "quarantined": sum(by_reason.values()),
        "duplicates": duplicates,
        "lost": lost,
        "unbilled": unbilled,
        "left_in_inbox": len(left),
    }
    outcome.quarantined_by_reason = dict(sorted(by_reason.items()))
    return outcome


def ledger_disagreements(
    config: PosfedConfig,
    rows: Counter,
    row_hashes: dict[tuple[str, str], str],
    central_deliveries: Counter,
    ignore_rows: set[tuple[str, str]],
) -> list[str]:
    """The central database against the store's ledger: every receipt the ledger accepted is
    there once with the same content, every delivery record once, and nothing else."""
    ledger = Ledger(ledger_path(config.home))
    problems = []
    accepted = {(r.terminal_id, r.receipt_id): r.content_hash for r in ledger.receipts()}
    for key in sorted(set(accepted) - set(rows))[:10]:
        problems.append(f"accepted by the ledger, not in the central database: {key}")
    for key in sorted(set(rows) - set(accepted) - set(ignore_rows))[:10]:
        problems.append(f"in the central database, never accepted by the ledger: {key}")
    for key in sorted(k for k in set(accepted) & set(rows) if row_hashes[k] != accepted[k])[:10]:
        problems.append(f"the central database holds other content than the ledger for {key}")
    for key in sorted(k for k, n in rows.items() if n > 1)[:10]:
        problems.append(f"{key} stored {rows[key]} times in the central database")
    lag = ledger.lag()
    if lag.pending_deliveries:
        problems.append(f"the ledger's outbox still holds {lag.pending_deliveries} delivery(ies)")
    delivered = ledger.delivery_ids()
    missing = delivered - set(central_deliveries)
    if missing:
        problems.append(f"{len(missing)} delivery record(s) of the ledger not in the database")
    return problems


# --- the command ------------------------------------------------------------------------------


def kill_to_dat(faults: list[dict]) -> dict[str, float | None]:
    """Per kind of kill, the longest time from a kill to the next .dat file (None: none)."""
    longest: dict[str, float | None] = {}
    for fault in faults:
        if fault["fault"] in KILL_FAULTS and "kill_to_dat_seconds" in fault:
            seconds = fault["kill_to_dat_seconds"]
            before = longest.get(fault["fault"], 0.0)
            longest[fault["fault"]] = None if None in (seconds, before) else max(seconds, before)
    return longest


def format_report(report: dict) -> str:
    c = report["counts"]
    lines = [
        f"posfed chaos: {report['settings']['receipts']} files, "
        f"{report['settings']['terminals']} terminals, {report['settings']['rate']:g}/s, "
        f"seed {report['settings']['seed']}, central database "
        f"{report['settings'].get('central', 'sqlite')} ({report['seconds']:.0f} s)",
        "faults injected:",
    ]
    for fault in report["faults"]:
        line = f"  {fault['fault']:<24} {fault['detail']:<22} ({fault['seconds']:.1f} s)"
        if "kill_to_dat_seconds" in fault:
            line += (
                f"  next .dat {_seconds(fault['kill_to_dat_seconds'])} after the kill, "
                f"back after {_seconds(fault['back_after_seconds'])}"
            )
        lines.append(line)
    lines += [
        f"sent                 {c['sent']}",
        f"  valid              {c['valid']}",
        f"  invalid            {c['invalid']}",
        f"  repeats            {c['repeats']}  (same content again: archived, no new rows)",
        f"loaded rows          {c['loaded_rows']}",
        f".dat files           {c['dat_files']}  (billed once each; "
        f"{c.get('billed_twice', 0)} billed twice)",
        f"quarantined          {c['quarantined']}",
    ]
    for kind, count in report["quarantined_by_reason"].items():
        lines.append(f"  {kind:<18} {count}  ({INVALID_KINDS[kind]})")
    lines += [
        f"duplicates           {c['duplicates']}",
        f"lost                 {c['lost']}",
        f"unbilled             {c.get('unbilled', 0)}  (valid receipts without a billed .dat)",
        f"left in inboxes      {c['left_in_inbox']}",
    ]
    for problem in report["problems"]:
        lines.append(f"  ! {problem}")
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def add_arguments(parser) -> None:
    parser.add_argument("--receipts", type=int, default=10_000, help="files to send (10000)")
    parser.add_argument("--rate", type=float, default=20.0, help="files per second (20)")
    parser.add_argument("--terminals", type=int, default=20, help="terminals (20)")
    parser.add_argument("--workers", type=int, default=2, help="warm run workers (2)")
    parser.add_argument("--seed", type=int, default=1, help="schedule and content seed (1)")
    parser.add_argument(
        "--db-outage", type=float, default=30.0, help="seconds the central DB is locked (30)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=600.0, help="max wait after the last file (600)"
    )
    parser.add_argument(
        "--central",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="central database: the embedded SQLite (a lock), or a PostgreSQL cluster of the "
        "run's own behind a fault proxy (a partition, a server restart, a held lock)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp store (logs, state)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(args) -> int:
    settings = ChaosSettings(
        receipts=args.receipts,
        rate=args.rate,
        terminals=args.terminals,
        workers=args.workers,
        seed=args.seed,
        db_outage_seconds=args.db_outage,
        drain_timeout=args.drain_timeout,
        central=args.central,
        keep=args.keep,
        progress=not args.quiet,
    )
    if settings.receipts < 100:
        print("posfed chaos: --receipts must be at least 100 (every kind of file at least once)")
        return 2
    report = ChaosRun(settings).execute()
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if args.keep:
        print(f"store kept in {report['root']}")
    return 0 if report["passed"] else 1


__all__ = ["ChaosSettings", "ChaosRun", "reconcile", "main", "add_arguments"]
