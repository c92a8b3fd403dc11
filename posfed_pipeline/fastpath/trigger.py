"""The event-driven trigger: a file closed in an inbox becomes its terminal's run in milliseconds.

inotify (through watchdog) reports ``IN_CLOSE_WRITE`` and ``IN_MOVED_TO`` within microseconds of
the writer's ``close()``/``rename()``: that is the completeness signal, so no stability wait is
needed. Files without such an event (present at start, or written while the trigger was down)
are taken once they are stable, exactly as the sensor would. The trigger claims the files, then
creates the very run the terminal's sensor would create (same run key and tags) and launches it
on the warm workers.

Adaptive batching: while a terminal's run is in flight, its new files wait; when the run
finishes, one run carries all of them. Under load runs get bigger, not more numerous.

After receipt runs, the trigger also launches the central database sync (the run its sensor
would launch), at most one at a time and one every ``[sync] min_interval_seconds`` (3 s), and
not while the sync backs off after a failure: the central database gets new receipts within a
few seconds, and an unreachable one costs the checkout nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from pathlib import Path

import dagster as dg
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from posfed_pipeline.core import claims, inbox, intake
from posfed_pipeline.core.config import PosfedConfig, Terminal
from posfed_pipeline.core.ledger import open_ledger
from posfed_pipeline.defs.central_db import (
    SYNC_SENSOR,
    slot_holder_done,
    sync_run_key,
    sync_run_tags,
)
from posfed_pipeline.defs.sensors import inbox_sensor_name, run_request_for
from posfed_pipeline.run_tags import TERMINAL_TAG, lane_of

log = logging.getLogger("posfed.fastpath.trigger")
RESCAN_SECONDS = 0.5  # how often files without a close event are re-checked for stability
SYNC_LANE = lane_of(sync_run_tags())[0]


class _InboxEvents(FileSystemEventHandler):
    def __init__(self, trigger: InboxTrigger):
        self.trigger = trigger

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.trigger.file_complete(Path(event.src_path))

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.trigger.file_complete(Path(event.dest_path))


class InboxTrigger:
    def __init__(
        self,
        config: PosfedConfig,
        instance: dg.DagsterInstance,
        run_factory,
        sync_run_factory=None,
    ):
        self.config = config
        self.instance = instance
        self.run_factory = run_factory
        self.sync_run_factory = sync_run_factory
        self.claims = claims.ClaimStore(claims.claim_store_path(config.home))
        self.ledger = open_ledger(config.home)
        self._sync_wanted = True  # the outbox may hold something from before a restart
        self._sync_in_flight: str | None = None
        self._next_sync_at = 0.0
        self._by_inbox = {t.inbox.resolve(): t for t in config.terminals}
        self._first_day = config.first_partition_day
        self._cond = threading.Condition()
        self._complete: dict[str, set[str]] = defaultdict(set)  # terminal -> closed file names
        self._dirty: set[str] = set(t.id for t in config.terminals)  # rescan everything at start
        self._in_flight: dict[str, set[str]] = defaultdict(set)  # terminal -> run ids
        self._stopping = False
        self._observer = Observer()
        self.runs_launched = 0
        self.files_launched = 0
        self.step_seconds: list[tuple[float, float]] = []  # (create run, launch run) per run

    # --- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        handler = _InboxEvents(self)
        for folder in self._by_inbox:
            try:
                self._observer.schedule(handler, str(folder), recursive=False)
            except OSError as exc:
                # One broken inbox must not stop the others; its sensor reports it.
                log.warning("cannot watch %s: %s", folder, exc)
        self._observer.start()
        threading.Thread(target=self._dispatch_loop, name="trigger-dispatch", daemon=True).start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._observer.stop()
        self._observer.join(timeout=5)

    # --- events -------------------------------------------------------------------------------

    def file_complete(self, path: Path) -> None:
        terminal = self._by_inbox.get(path.parent.resolve())
        if terminal is None or not inbox.is_candidate(path.name):
            return
        with self._cond:
            self._complete[terminal.id].add(path.name)
            self._dirty.add(terminal.id)
            self._cond.notify_all()

    def run_finished(self, run_id: str, terminal_id: str | None, status: str) -> None:
        """``terminal_id``: the run's lane (the pool's ``on_finished``)."""
        if terminal_id is None:
            return
        if terminal_id == SYNC_LANE:
            with self._cond:
                if self._sync_in_flight == run_id:
                    self._sync_in_flight = None
                self._sync_wanted = True  # what arrived during the sync
            return
        with self._cond:
            self._sync_wanted = True
            if run_id in self._in_flight[terminal_id]:
                self._in_flight[terminal_id].discard(run_id)
                self._dirty.add(terminal_id)  # files that arrived meanwhile: one run for all
                self._cond.notify_all()

    # --- dispatching --------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        next_rescan = time.monotonic() + RESCAN_SECONDS
        while True:
            with self._cond:
                while not self._stopping and not self._ready_terminals():
                    timeout = next_rescan - time.monotonic()
                    if timeout <= 0:
                        break
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                rescan = time.monotonic() >= next_rescan
                if rescan:
                    self._dirty.update(t.id for t in self.config.terminals)
                    next_rescan = time.monotonic() + RESCAN_SECONDS
                ready = self._ready_terminals()
                self._dirty -= set(ready)
            if rescan:
                # Tells the sensors the trigger is alive, so they leave fresh files to it.
                self.claims.beat()
            # Claim every ready terminal's files first (milliseconds each), then create the runs
            # (~50-100 ms each): in a burst the sensor's next tick finds the files taken instead
            # of claiming some itself and sending them the slow way, through the run queue.
            claimed = []
            for terminal_id in ready:
                try:
                    terminal = self.config.terminal(terminal_id)
                    claimed.append((terminal, self._claim_for(terminal)))
                except Exception:  # one terminal's trouble never stops the others
                    log.exception("trigger: claiming for %s failed", terminal_id)
            for terminal, batches in claimed:
                try:
                    self._launch_batches(terminal, batches)
                except Exception:
                    log.exception("trigger: launching for %s failed", terminal.id)
            try:
                self._maybe_sync()
            except Exception:  # the sensor is the catch-up path for the sync too
                log.exception("trigger: launching the central database sync failed")

    def _maybe_sync(self) -> None:
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
        if not self.ledger.has_outbox():
            return
        run_key = sync_run_key()
        if not self.ledger.take_sync_slot(run_key, holder_done=slot_holder_done(self.instance)):
            with self._cond:  # backing off, or a sync of the sensor's is in flight
                self._sync_wanted = True
            return
        run = None
        try:
            run = self.sync_run_factory.create_run(
                dg.RunRequest(run_key=run_key, tags=sync_run_tags()), SYNC_SENSOR
            )
            with self._cond:
                self._sync_in_flight = run.run_id
            self.instance.launch_run(run.run_id, workspace=None)
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

    def _sensor_run_queued(self, terminal: Terminal) -> bool:
        return bool(
            self.instance.get_runs_count(
                filters=dg.RunsFilter(
                    tags={TERMINAL_TAG: terminal.id}, statuses=[dg.DagsterRunStatus.QUEUED]
                ),
            )
        )

    def _ready_terminals(self) -> list[str]:
        return [t for t in self._dirty if not self._in_flight[t]]

    def _claim_for(self, terminal: Terminal) -> list[inbox.PlannedBatch]:
        with self._cond:
            complete = set(self._complete.pop(terminal.id, set()))
        if self._sensor_run_queued(terminal):
            # The sensor's catch-up run for this terminal waits in the run queue for the
            # terminal's slot: let it have the slot first (the rescan looks again), or it starves
            # behind our runs for as long as files keep arriving.
            with self._cond:
                self._complete[terminal.id] |= complete
            return []
        try:
            scan = inbox.scan_inbox(terminal, stability_seconds=self.config.stability_seconds)
        except OSError:
            return []  # an unreadable inbox: its sensor reports it
        eligible = scan.ready + [f for f in scan.settling if f.name in complete]
        if not eligible:
            return []
        taken = self.claims.claims(terminal.id, [f.signature for f in eligible])
        fresh = [f for f in eligible if f.signature not in taken]
        if not fresh:
            return []
        return claims.claim_batches(
            self.claims,
            terminal,
            sorted(fresh, key=lambda f: (f.mtime_ns, f.name)),
            lambda f: intake.business_day_of_file(f.path, terminal, not_before=self._first_day),
        )

    def _launch_batches(self, terminal: Terminal, batches: list[inbox.PlannedBatch]) -> None:
        for batch in batches:
            started = time.perf_counter()
            run = self.run_factory.create_run(
                run_request_for(terminal, batch), inbox_sensor_name(terminal)
            )
            created = time.perf_counter()
            with self._cond:
                self._in_flight[terminal.id].add(run.run_id)
            self.instance.launch_run(run.run_id, workspace=None)
            self.step_seconds.append((created - started, time.perf_counter() - created))
            self.runs_launched += 1
            self.files_launched += len(batch.files)
