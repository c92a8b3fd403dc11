"""The event-driven trigger: a file closed in an inbox reaches its .dat in milliseconds.

inotify (one instance for every inbox, ``inbox_events``) reports ``IN_CLOSE_WRITE`` and
``IN_MOVED_TO`` within microseconds of the writer's ``close()``/``rename()``: that is the
completeness signal, so no stability wait is needed. Files without such an event (present at
start, or written while the trigger was down) are taken once they are stable, exactly as the
sensor would. The trigger claims the files (as the sensor would: same claims, same run keys),
then hands them to the checkout (``checkout``): a warm worker runs every stage at once, without
a Dagster run of its own, under the id of the terminal-day's recording run. That run is created
once the terminal has been quiet ``[intake] record_after_quiet_seconds`` (30 s), or at the
latest ``record_window_seconds`` (60 s) after the window's first batch, and reports the window's
batches as one run: a run's bookkeeping (~0.1 CPU-s) is paid per window, not per receipt. A
batch the checkout cannot deliver gets a receipts run of its own, with its retries.

Adaptive batching: while a terminal's batch is in the checkout, its new files wait; when it is
done, one batch carries all of them (up to a run's worth of files, oldest first; a flooded
inbox becomes batches of 500, one per round between other terminals' batches, checked out in the
background, between cashiers' receipts). Under load batches get bigger, not more numerous.
A flooded inbox is listed again while its last full batches are still being checked out, so
the background worker does not wait for the listing.

Terminals whose inbox is on a network mount (``watch = "poll"``: inotify sees no remote
writes) are listed every ``poll_interval_seconds`` instead. Each terminal's inbox is listed and
claimed on a thread of its own, at most one at a time: an inbox of 50,000 files, or one on a
share that hangs, delays its own terminal and no other.

After the checkout, the trigger also launches the central database sync (the run its sensor
would launch), at most one at a time and one every ``[sync] min_interval_seconds`` (3 s), and
not while the sync backs off after a failure: the central database gets new receipts within a
few seconds, and an unreachable one costs the checkout nothing.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg

from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.core.stages import launching
from posfed_pipeline.core.state import claims, inbox
from posfed_pipeline.core.state.checkout_journal import CheckoutJournal, checkout_journal_path
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.defs.central_db import slot_holder_done, sync_run_key, sync_run_tags
from posfed_pipeline.defs.inbox_sensors import run_request_for
from posfed_pipeline.defs.partitions import terminal_day_key
from posfed_pipeline.defs.receipts import ReceiptBatchConfig, receipt_op_config
from posfed_pipeline.fastpath import dagster_internals
from posfed_pipeline.fastpath.checkout import JOB_PREFIX, CheckoutBatch, is_checkout_job
from posfed_pipeline.fastpath.inbox_events import InboxEvents
from posfed_pipeline.fastpath.sync_pass import SyncPassJob, is_sync_pass
from posfed_pipeline.names import (
    CHECKOUT_RECORD_TAG,
    SYNC_SENSOR,
    TERMINAL_TAG,
    inbox_sensor_name,
)
from posfed_pipeline.run_tags import lane_of

log = logging.getLogger("posfed.fastpath.trigger")
# An inbox with inotify events is listed again this often when nothing happens there: every
# close and rename is reported at once, and files still settling are rechecked on their own
# schedule; this only catches what no event announced. (At 0.5 s, 200 idle terminals cost the
# trigger a quarter of a core.)
EVENTS_RESCAN_SECONDS = 5.0
# How long the answer "which terminals have a catch-up run queued" is reused.
QUEUED_RUNS_TTL_SECONDS = 0.5
HEARTBEAT_SECONDS = 1.0
# An inbox that takes long to list (tens of thousands of files) is listed less often, so
# listing it never costs more than about 1/SLOW_SCAN_FACTOR of a core.
SLOW_SCAN_FACTOR = 20
MAX_SCAN_THREADS = 32
RUNS_PER_LISTING = 10
# A checkout batch carries at most this many files (a run, 50: its config lists them): a
# flooded inbox drains in big batches, whose fixed costs (a validation, a flush, a commit)
# are paid once per 500 files.
CHECKOUT_MAX_FILES = 500
SYNC_LANE = lane_of(sync_run_tags())[0]
# A flooded inbox is listed again once this few of its full batches are left in the checkout
# (each ~0.5 s of work: enough to cover the listing).
LIST_AHEAD_BATCHES = 2


@dataclass
class _Window:
    """A terminal-day's checkout batches waiting for the run that records them."""

    run_id: str
    terminal_id: str
    business_day: date
    opened_at: float  # monotonic
    last_at: float
    in_flight: int = 0  # batches handed to a worker, not finished yet
    done: int = 0  # batches processed and journaled
    files: int = 0


class InboxTrigger:
    def __init__(
        self,
        config: PosfedConfig,
        instance: dg.DagsterInstance,
        run_factory,
        sync_run_factory=None,
        pool=None,
    ):
        """``pool``: the warm workers, for the checkout (None: a receipts run per batch)."""
        self.config = config
        self.instance = instance
        self.run_factory = run_factory
        self.sync_run_factory = sync_run_factory
        self.pool = pool
        self.journal = CheckoutJournal(checkout_journal_path(config.home))
        self._windows: dict[tuple[str, date], _Window] = {}
        # checkout job id -> (terminal, its batch, its window), until its worker says it is done
        self._checkouts: dict[str, tuple[Terminal, inbox.PlannedBatch, _Window]] = {}
        self._fallbacks: list[tuple[Terminal, inbox.PlannedBatch]] = []  # to hand to runs
        self.claims = claims.ClaimTable(claims.claim_table_path(config.home))
        self.ledger = open_ledger(config.home)
        self._sync_wanted = True  # the outbox may hold something from before a restart
        self._sync_in_flight: str | None = None  # a sync run's id or a sync pass's job id
        # With a pool, a sync is a pass on its background worker (no run, ``sync_pass``);
        # after a failed one, runs, until one succeeds.
        self._sync_by_run = False
        self._failed_passes: list[str] = []  # passes that failed: the slot may still be theirs
        self._next_sync_at = 0.0
        # abspath, not resolve(): resolving stats the path, and an inbox on a share that
        # hangs would hang the trigger's start.
        self._by_inbox = {os.path.abspath(t.inbox): t for t in config.terminals}
        # terminal -> its inbox entries that are not regular files, as last reported
        self._reported_skipped: dict[str, set[str]] = defaultdict(set)
        self._cond = threading.Condition()
        self._complete: dict[str, set[str]] = defaultdict(set)  # terminal -> closed file names
        self._dirty: set[str] = set(t.id for t in config.terminals)  # rescan everything at start
        self._in_flight: dict[str, set[str]] = defaultdict(set)  # terminal -> run ids
        self._scanning: set[str] = set()  # terminals whose inbox is being listed right now
        self._claimed: list[tuple[Terminal, list[inbox.PlannedBatch]]] = []  # to launch
        self._launching: set[str] = set()  # terminals with claimed files not yet in a run
        self._next_scan = {t.id: 0.0 for t in config.terminals}
        self._scan_seconds = {t.id: 0.0 for t in config.terminals}  # the last listing took
        self._queued_terminals: set[str | None] = set()  # with a catch-up run in the queue
        self._queued_at = float("-inf")
        self._settle = {
            t.id: inbox.SettleWatch() for t in config.terminals if t.delivery.watch == "poll"
        }
        # Daemon threads: one stuck on a hung share must not keep the service from exiting.
        self._scan_queue: queue.SimpleQueue[Terminal | None] = queue.SimpleQueue()
        self._scan_threads = [
            threading.Thread(target=self._scan_worker, name=f"inbox-scan-{n}", daemon=True)
            for n in range(min(MAX_SCAN_THREADS, len(config.terminals)))
        ]
        self._stopping = False
        self._events = InboxEvents(self.file_complete, self.rescan_all)
        self.runs_launched = 0
        self.files_launched = 0
        self.checkouts = 0
        self.records_launched = 0
        self.sync_passes = 0
        # (create run, launch run) of the latest runs, for `posfed bench`.
        self.step_seconds: deque[tuple[float, float]] = deque(maxlen=10_000)

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        # Claims older than this are a trigger's before it (killed with files in its checkout):
        # the sensors relaunch those after ORPHAN_CLAIM_SECONDS, not the live trigger's grace.
        self.claims.beat(claims.TRIGGER_STARTED)
        try:
            self._record_left_windows()
        except Exception:  # the journal keeps them: the next start records them
            log.exception("trigger: recording the checkout's batches left from before failed")
        for folder, terminal in self._by_inbox.items():
            if terminal.delivery.watch != "events":
                continue  # listed every poll interval instead
            try:
                self._events.watch(folder)
            except OSError as exc:
                # One broken inbox must not stop the others; its sensor reports it.
                log.warning("cannot watch %s: %s", folder, exc)
        self._events.start()
        for thread in self._scan_threads:
            thread.start()
        threading.Thread(target=self._dispatch_loop, name="trigger-dispatch", daemon=True).start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._events.stop()
        # A listing stuck on a hung share cannot be interrupted; its thread is left to end.
        for _ in self._scan_threads:
            self._scan_queue.put(None)

    # --- events -------------------------------------------------------------------------------

    def file_complete(self, path: Path) -> None:
        terminal = self._by_inbox.get(os.path.dirname(os.path.abspath(path)))
        if terminal is None or not inbox.is_candidate(path.name, terminal.delivery):
            # A marker (`<name>.ok`, `endofday.trg`) is no receipt, but says files are ready.
            if terminal is not None and terminal.delivery.is_marker(path.name):
                with self._cond:
                    self._dirty.add(terminal.id)
                    self._cond.notify_all()
            return
        with self._cond:
            self._complete[terminal.id].add(path.name)
            self._dirty.add(terminal.id)
            self._cond.notify_all()

    def rescan_all(self) -> None:
        """The kernel dropped events: list every inbox again."""
        with self._cond:
            self._dirty.update(t.id for t in self.config.terminals)
            self._cond.notify_all()

    def run_finished(self, run_id: str, terminal_id: str | None, status: str) -> None:
        """``terminal_id``: the run's lane (the pool's ``on_finished``)."""
        if terminal_id is None:
            return
        if is_checkout_job(run_id):
            self._checkout_finished(run_id, terminal_id, status)
            return
        if terminal_id == SYNC_LANE:
            with self._cond:
                if self._sync_in_flight == run_id:
                    self._sync_in_flight = None
                self._sync_wanted = True  # what arrived during the sync
                if is_sync_pass(run_id):
                    if status != "SUCCESS":
                        # Sync runs from now on, until one succeeds: each failure a run in the
                        # UI, with its reason and its alert.
                        self._sync_by_run = True
                        self._failed_passes.append(run_id)
                elif status == "SUCCESS":
                    self._sync_by_run = False
                self._cond.notify_all()
            return
        with self._cond:
            self._sync_wanted = True
            if run_id in self._in_flight[terminal_id]:
                self._in_flight[terminal_id].discard(run_id)
                self._dirty.add(terminal_id)  # files that arrived meanwhile: one run for all
                self._cond.notify_all()

    # --- dispatching --------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        next_beat = 0.0
        while True:
            with self._cond:
                while not self._stopping and not self._work_waiting():
                    timeout = min(self._next_scan.values()) - time.monotonic()
                    timeout = min(timeout, self._next_record_due() - time.monotonic())
                    if timeout <= 0:
                        break
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                now = time.monotonic()
                for terminal_id, due in self._next_scan.items():
                    if now >= due:
                        self._dirty.add(terminal_id)
                        self._next_scan[terminal_id] = now + self._scan_interval(terminal_id)
                to_scan = self._ready_terminals()
                self._dirty -= set(to_scan)
                self._scanning |= set(to_scan)
                claimed, self._claimed = self._claimed, []
                fallbacks, self._fallbacks = self._fallbacks, []
                to_record = self._windows_due(now)
            if now >= next_beat:
                # Tells the sensors the trigger is alive, so they leave fresh files to it.
                self.claims.beat()
                next_beat = now + HEARTBEAT_SECONDS
            # Listing and claiming happen on the scan threads (milliseconds each, one thread per
            # terminal at most); creating runs (~50-100 ms each) here. In a burst, the files are
            # claimed before the sensor's next tick could take some the slow way.
            for terminal_id in to_scan:
                self._start_scan(terminal_id)
            # One run per terminal per round (~20 ms each): a flooded inbox's runs are
            # created in between other terminals' new receipts, never all at once before them.
            for terminal, batches in claimed:
                rest = batches[1:]
                try:
                    self._launch_batches(terminal, batches[:1])
                except Exception:  # one terminal's trouble never stops the others
                    log.exception("trigger: launching for %s failed", terminal.id)
                    rest = []  # its files stay claimed: the sensor relaunches them
                with self._cond:
                    if rest:
                        self._claimed.append((terminal, rest))
                    else:
                        self._launching.discard(terminal.id)
            for terminal, batch in fallbacks:
                try:
                    self._launch_runs(terminal, [batch])
                except Exception:  # its claims stay: the sensor relaunches the files
                    log.exception("trigger: a run for %s's failed checkout failed", terminal.id)
            for window in to_record:
                try:
                    self._launch_record_run(window)
                except Exception:  # the journal keeps the batches: recorded at the next start
                    log.exception("trigger: recording %s's checkout failed", window.terminal_id)
            try:
                self._maybe_sync()
            except Exception:  # the sensor is the catch-up path for the sync too
                log.exception("trigger: launching the central database sync failed")

    def _work_waiting(self) -> bool:
        return bool(self._claimed) or bool(self._fallbacks) or bool(self._ready_terminals())

    def _scan_interval(self, terminal_id: str) -> float:
        delivery = self.config.terminal(terminal_id).delivery
        base = delivery.poll_interval_seconds if delivery.watch == "poll" else EVENTS_RESCAN_SECONDS
        return max(base, SLOW_SCAN_FACTOR * self._scan_seconds[terminal_id])

    def _start_scan(self, terminal_id: str) -> None:
        terminal = self.config.terminal(terminal_id)
        try:
            if self._sensor_run_queued(terminal):
                # The sensor's catch-up run for this terminal waits in the run queue for the
                # terminal's slot: let it have the slot first (the rescan looks again), or it
                # starves behind our runs for as long as files keep arriving.
                with self._cond:
                    self._scanning.discard(terminal_id)
                return
        except Exception:
            log.exception("trigger: looking for %s's queued runs failed", terminal_id)
        self._scan_queue.put(terminal)

    def _scan_worker(self) -> None:
        while (terminal := self._scan_queue.get()) is not None:
            self._scan_and_claim(terminal)

    def _scan_and_claim(self, terminal: Terminal) -> None:
        started = time.monotonic()
        batches: list[inbox.PlannedBatch] = []
        settling = False
        retry_at: float | None = None
        try:
            batches, settling, retry_at = self._claim_for(terminal)
        except Exception:
            log.exception("trigger: claiming for %s failed", terminal.id)
        finally:
            with self._cond:
                now = time.monotonic()
                self._scan_seconds[terminal.id] = now - started
                if settling and terminal.delivery.closes_mean_complete:
                    # Look again once they may have settled, not a poll later (markers say
                    # when files are complete: no point in looking sooner for them).
                    wait = max(terminal.delivery.stability_seconds, 0.05)
                    recheck = now + max(wait, SLOW_SCAN_FACTOR * self._scan_seconds[terminal.id])
                    self._next_scan[terminal.id] = min(self._next_scan[terminal.id], recheck)
                if retry_at is not None:
                    # A file a run left for a later look: relaunched the moment it is due
                    # (an unreadable file gets its verdict when its grace ends, not a poll on).
                    due = now + max(0.0, retry_at - time.time()) + 0.01
                    self._next_scan[terminal.id] = min(self._next_scan[terminal.id], due)
                self._scanning.discard(terminal.id)
                if batches:
                    # Not listed again until these are runs: new files wait for the next run.
                    self._launching.add(terminal.id)
                    self._claimed.append((terminal, batches))
                self._cond.notify_all()

    def _maybe_sync(self) -> None:
        self._give_back_failed_passes()
        now = time.monotonic()
        with self._cond:
            if (
                self.sync_run_factory is None
                or not self._sync_wanted
                or self._sync_in_flight
                or now < self._next_sync_at
            ):
                return
            self._sync_wanted = False
            self._next_sync_at = now + self.config.sync.min_interval_seconds
            by_run = self._sync_by_run or self.pool is None
        if not self.ledger.has_outbox():
            return
        sync_pass = None if by_run else SyncPassJob.new()
        run_key = sync_run_key() if sync_pass is None else sync_pass.job_id
        holder_done = slot_holder_done(self.instance, self.config.home)
        if not self.ledger.take_sync_slot(run_key, holder_done=holder_done):
            with self._cond:  # backing off, or a sync of the sensor's is in flight
                self._sync_wanted = True
            return
        if sync_pass is not None:
            with self._cond:
                self._sync_in_flight = sync_pass.job_id
            self.pool.submit_sync_pass(sync_pass)
            self.sync_passes += 1
            return
        run = None
        try:
            run = self.sync_run_factory.create_run(
                dg.RunRequest(run_key=run_key, tags=sync_run_tags()), SYNC_SENSOR
            )
            with self._cond:
                self._sync_in_flight = run.run_id
            self.instance.launch_run(run.run_id, workspace=None)
            dagster_internals.drop_idle_event_subscriptions(self.instance)
        except Exception as exc:
            # Give the slot back at once: the sensor (or the next receipt run) tries again.
            if run is not None:
                self.instance.report_run_failed(run, f"launching the sync failed: {exc}")
            with self._cond:
                self._sync_in_flight = None
                self._sync_wanted = True
            self.ledger.finish_sync(
                run_key, error=f"launching the sync failed: {exc}", backoff=lambda _: 1.0
            )
            raise

    def _give_back_failed_passes(self) -> None:
        """A pass whose worker died never gave the slot back (held under the pass's id): give
        it back, as a failure."""
        with self._cond:
            failed, self._failed_passes = self._failed_passes, []
        for run_key in failed:
            if self.ledger.sync_state().run_key == run_key:
                self.ledger.finish_sync(
                    run_key,
                    error="the sync pass's worker died",
                    backoff=self.config.sync.backoff_seconds,
                )

    def _sensor_run_queued(self, terminal: Terminal) -> bool:
        """One query for every terminal, reused for a moment: not one per listing."""
        now = time.monotonic()
        with self._cond:
            fresh = now - self._queued_at < QUEUED_RUNS_TTL_SECONDS
            if fresh:
                return terminal.id in self._queued_terminals
        queued = {
            record.dagster_run.tags.get(TERMINAL_TAG)
            for record in self.instance.get_run_records(
                filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.QUEUED])
            )
        }
        with self._cond:
            self._queued_terminals, self._queued_at = queued, now
        return terminal.id in queued

    def _ready_terminals(self) -> list[str]:
        busy = self._scanning | self._launching
        return [t for t in self._dirty if t not in busy and self._may_list(t)]

    def _may_list(self, terminal_id: str) -> bool:
        """A terminal's new files wait while its batch is checked out (the next batch carries
        them all). A flooded inbox is listed again while its last full batches are still in
        the background worker: listing tens of thousands of files takes a second, which the
        worker would otherwise spend idle, between listings."""
        in_flight = self._in_flight[terminal_id]
        if not in_flight:
            return True
        if len(in_flight) > LIST_AHEAD_BATCHES:
            return False
        return all(self._is_full_checkout(job_id) for job_id in in_flight)

    def _is_full_checkout(self, job_id: str) -> bool:
        entry = self._checkouts.get(job_id)
        return entry is not None and len(entry[1].files) >= CHECKOUT_MAX_FILES

    def _claim_for(self, terminal: Terminal) -> tuple[list[inbox.PlannedBatch], bool, float | None]:
        """On a scan thread: list the inbox and claim up to one run's worth of its files.
        Also says whether files are still settling, and when a file left for a later look is
        due (wall clock)."""
        with self._cond:
            complete = set(self._complete.pop(terminal.id, set()))
        try:
            scan = inbox.scan_inbox(terminal)
        except OSError:
            return [], False, None  # an unreadable inbox: its sensor reports it
        self._report_skipped(terminal, scan.skipped)
        settle = self._settle.get(terminal.id)
        if settle is not None and terminal.delivery.closes_mean_complete:
            stability = terminal.delivery.stability_seconds
            scan = settle.split(scan, stability, time.monotonic())
        eligible = scan.ready
        if terminal.delivery.closes_mean_complete:
            # A close or rename event is the completeness signal: no stability wait.
            eligible = sorted(
                scan.ready + [f for f in scan.settling if f.name in complete],
                key=lambda f: (f.mtime_ns, f.name),
            )
        # A name the claim table and a run's config cannot hold is made safe before either
        # sees it (cheap: a check per name, a rename only for the odd one).
        eligible = launching.give_safe_names(terminal, eligible)
        # Up to a few runs' worth: a flooded inbox is listed once per few runs, not per run.
        per_batch = inbox.MAX_FILES_PER_RUN if self.pool is None else CHECKOUT_MAX_FILES
        fresh, held = self._unclaimed(terminal, eligible, limit=RUNS_PER_LISTING * per_batch)
        now = time.time()
        days = launching.PartitionDays.of(self.config, now)
        batches = launching.relaunch_due(self.claims, terminal, eligible, held, days, now)
        if fresh:
            batches += launching.claim_ready(
                self.claims, terminal, fresh, days, max_files=per_batch
            )
        waiting = {s: c for s, c in held.items() if not c.due(now)}
        return batches, bool(scan.settling), launching.next_retry_at(waiting)

    def _report_skipped(self, terminal: Terminal, skipped: list[inbox.SkippedEntry]) -> None:
        """Say once, in the service's log, what in an inbox posfed does not take (the health
        check and `posfed status` keep saying it while it is there)."""
        odd = {entry.name: entry for entry in skipped if entry.not_regular}
        reported = self._reported_skipped[terminal.id]
        for name in odd.keys() - reported:
            log.warning(
                "trigger: %s's inbox holds %s: not taken, never followed or opened",
                terminal.id,
                odd[name].describe(),
            )
        self._reported_skipped[terminal.id] = set(odd)

    def _unclaimed(
        self, terminal: Terminal, files: list[inbox.InboxFile], *, limit: int
    ) -> tuple[list[inbox.InboxFile], dict[str, claims.Claim]]:
        """The oldest ``limit`` files no launcher has claimed (looked up a chunk at a time:
        a flooded inbox costs one lookup per run, not one per file waiting), and the claims
        among those looked at that their run left for a later look."""
        fresh: list[inbox.InboxFile] = []
        held: dict[str, claims.Claim] = {}
        for start in range(0, len(files), limit):
            chunk = files[start : start + limit]
            taken = self.claims.claims(terminal.id, [f.signature for f in chunk])
            fresh += [f for f in chunk if f.signature not in taken]
            held.update({s: c for s, c in taken.items() if c.retry_at is not None})
            if len(fresh) >= limit:
                return fresh[:limit], held
        return fresh, held

    def _launch_batches(self, terminal: Terminal, batches: list[inbox.PlannedBatch]) -> None:
        if self.pool is None:
            self._launch_runs(terminal, batches)
            return
        for batch in batches:
            self._hand_to_checkout(terminal, batch)

    def _launch_runs(self, terminal: Terminal, batches: list[inbox.PlannedBatch]) -> None:
        """A receipts run per batch: without a pool, and for a batch the checkout failed."""
        for batch in batches:
            started = time.perf_counter()
            run = self.run_factory.create_run(
                run_request_for(terminal, batch), inbox_sensor_name(terminal.id)
            )
            created = time.perf_counter()
            with self._cond:
                self._in_flight[terminal.id].add(run.run_id)
            self.instance.launch_run(run.run_id, workspace=None)
            self.step_seconds.append((created - started, time.perf_counter() - created))
            self.runs_launched += 1
            self.files_launched += len(batch.files)
        dagster_internals.drop_idle_event_subscriptions(self.instance)

    # --- the checkout -------------------------------------------------------------------------

    def _hand_to_checkout(self, terminal: Terminal, batch: inbox.PlannedBatch) -> None:
        now = time.monotonic()
        with self._cond:
            key = (terminal.id, batch.business_day)
            window = self._windows.get(key)
            if window is None:
                window = _Window(str(uuid.uuid4()), terminal.id, batch.business_day, now, now)
                self._windows[key] = window
            window.in_flight += 1
            window.last_at = now
            job = CheckoutBatch(
                job_id=f"{JOB_PREFIX}{uuid.uuid4().hex}",
                terminal_id=terminal.id,
                business_day=batch.business_day,
                files=tuple(batch.file_names),
                attempt=batch.attempt,
                run_key=batch.run_key,
                record_run_id=window.run_id,
            )
            self._checkouts[job.job_id] = (terminal, batch, window)
            self._in_flight[terminal.id].add(job.job_id)
        # A full batch (a flooded inbox): in the background, between cashiers' receipts. (A busy
        # terminal's few dozen waiting files are its cashier's: they go first.)
        self.pool.submit_checkout(job, background=len(batch.files) >= CHECKOUT_MAX_FILES)
        self.checkouts += 1
        self.files_launched += len(batch.files)

    def _checkout_finished(self, job_id: str, terminal_id: str, status: str) -> None:
        with self._cond:
            entry = self._checkouts.pop(job_id, None)
            self._sync_wanted = True
            self._in_flight[terminal_id].discard(job_id)
            self._dirty.add(terminal_id)  # files that arrived meanwhile: one batch for all
            if entry is not None:
                terminal, batch, window = entry
                window.in_flight -= 1
                window.last_at = time.monotonic()
                if status == "SUCCESS":
                    window.done += 1
                    window.files += len(batch.files)
                else:
                    # A run of its own processes the batch, with its retries and its logs.
                    self._fallbacks.append((terminal, batch))
            self._cond.notify_all()

    def _windows_due(self, now: float) -> list[_Window]:
        """Windows to record now (removed from the open ones); under the condition's lock."""
        due = [w for w in self._windows.values() if w.in_flight == 0 and now >= self._record_due(w)]
        for window in due:
            del self._windows[(window.terminal_id, window.business_day)]
        return [w for w in due if w.done]

    def _record_due(self, window: _Window) -> float:
        return min(
            window.last_at + self.config.record_after_quiet_seconds,
            window.opened_at + self.config.record_window_seconds,
        )

    def _next_record_due(self) -> float:
        due = [self._record_due(w) for w in self._windows.values() if w.in_flight == 0]
        return min(due, default=float("inf"))

    def _launch_record_run(self, window: _Window) -> None:
        """The terminal-day's run that records the window's batches (from the journal)."""
        request = dg.RunRequest(
            run_key=f"checkout-record:{window.run_id}",
            partition_key=terminal_day_key(window.terminal_id, window.business_day),
            run_config=receipt_op_config(ReceiptBatchConfig(record_checkout=True)),
            tags={TERMINAL_TAG: window.terminal_id, CHECKOUT_RECORD_TAG: "true"},
        )
        run = self.run_factory.create_run(
            request, inbox_sensor_name(window.terminal_id), run_id=window.run_id
        )
        self.instance.launch_run(run.run_id, workspace=None)
        self.records_launched += 1
        dagster_internals.drop_idle_event_subscriptions(self.instance)

    def _record_left_windows(self) -> None:
        """Batches journaled before a restart whose run was never created: recorded now."""
        for left in self.journal.windows():
            if self.instance.get_run_by_id(left.run_id) is not None:
                continue  # created: the pool re-queues it if it never ran; a failure shows
            now = time.monotonic()
            self._launch_record_run(
                _Window(left.run_id, left.terminal_id, left.business_day, now, now, done=1)
            )
            log.info(
                "recording %d checkout batch(es) of %s left from before a restart",
                left.batches,
                left.terminal_id,
            )
