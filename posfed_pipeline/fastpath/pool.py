"""Warm run workers: processes that imported the code location once and execute runs by id,
and the checkout's batches (``checkout``: every stage at once, no run of their own).

A fresh run process costs 1.2-1.6 s of imports; a warm worker starts a run in milliseconds.
Workers are processes, not threads: two ``execute_run`` calls on threads of one process
deadlock in dagster 1.13 (``logging.config.dictConfig`` lock order).

The pool serialises the runs of one lane in submission order (a terminal's, by its
``posfed/terminal`` tag, or a background lane such as the central database sync) and runs
different lanes in parallel. Background runs have a worker of their own, at a lower CPU
priority (nice 10): a sync never takes a checkout worker, so one that waits on an unreachable
central database holds up no terminal, and one that works competes as little as possible with
the runs a cashier waits for; so does a terminal's backlog (a run of 50 files or more: a
flooded inbox, a catch-up), so that it never slows the other terminals. It answers the run
launcher over a local Unix socket (launch, terminate, health), so runs launched from the UI,
the daemon or the trigger all land on the same workers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socketserver
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from posfed_pipeline.core.base.errors import PosfedError
from posfed_pipeline.fastpath.checkout import CheckoutBatch, CheckoutWorker, is_checkout_job
from posfed_pipeline.fastpath.sync_pass import (
    SyncPassJob,
    SyncPassWorker,
    is_sync_pass,
    is_sync_pass_message,
)
from posfed_pipeline.names import ACCEPTED_TAG, GRPC_INFO_TAG, LANE_TAG, SYNC_LANE
from posfed_pipeline.processes import pid_lock
from posfed_pipeline.processes.exiting import exit_at_once
from posfed_pipeline.processes.supervisor import describe_exit
from posfed_pipeline.run_tags import lane_of

log = logging.getLogger("posfed.fastpath.pool")


BACKGROUND_NICE = 10
# posfed JSON, packaged beside this module: what each worker validates once before its first run.
WARM_UP_RECEIPT = "warm_up_receipt.json"
FINISHED_KEPT = 10_000  # finished runs' statuses kept for the launcher's health checks


def _worker_main(conn, dagster_home: str, working_directory: str) -> None:
    """A run worker: warm up once, then execute the runs it is handed, one at a time."""
    os.environ["DAGSTER_HOME"] = dagster_home
    os.chdir(working_directory)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool decides when a worker stops
    from posfed_pipeline.fastpath import dagster_internals

    instance = dg.DagsterInstance.get()
    _warm_up()
    checkouts = CheckoutWorker()
    sync_passes = SyncPassWorker(instance, checkouts.config, checkouts.ledger)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return  # the pool is gone (killed): its successor starts workers of its own
        if job is None:
            exit_at_once()  # idle: everything it did is committed
        if isinstance(job, dict) and is_sync_pass_message(job):
            sync_pass = SyncPassJob.from_message(job)
            try:
                status = "SUCCESS" if sync_passes.run(sync_pass) else "FAILURE"
            except Exception:  # the trigger makes the next attempt a sync run
                log.exception("sync pass %s failed", sync_pass.job_id)
                status = "FAILURE"
            conn.send(("done", sync_pass.job_id, status))
            continue
        if isinstance(job, dict):
            batch = CheckoutBatch.from_message(job)
            try:
                checkouts.process(batch)
                status = "SUCCESS"
            except Exception:  # the trigger hands the batch to a run of its own
                log.exception("checkout %s of %s failed", batch.job_id, batch.terminal_id)
                status = "FAILURE"
            conn.send(("done", batch.job_id, status))
            continue
        run_id = job
        status = "FAILURE"
        try:
            run = instance.get_run_by_id(run_id)
            if run is None:
                status = "NOT_FOUND"
            elif run.is_finished:
                status = run.status.value
            else:
                status = dagster_internals.execute_run_in_this_process(instance, run).value
        except Exception as exc:  # the run is marked failed; the worker lives on
            log.exception("run %s failed in its worker", run_id)
            run = instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                instance.report_run_failed(run, f"run worker error: {exc}")
        conn.send(("done", run_id, status))


def _warm_up() -> None:
    """Pay once, before the first run, what a cold run pays: definitions, schemas, a connection."""
    import dataclasses
    from datetime import datetime
    from importlib.resources import files

    from posfed_pipeline.core.config import CANONICAL_FORMAT, load_config
    from posfed_pipeline.core.intake import parsing, validation
    from posfed_pipeline.defs.resources import central_db_engine
    from posfed_pipeline.fastpath import dagster_internals
    from posfed_pipeline.names import RECEIPTS_JOB

    config = load_config()
    dagster_internals.load_job_as_runs_will(RECEIPTS_JOB)
    # Each distinct set of rules is its own pandera schema; a weighed line loads biip's tables.
    sample = json.loads((files("posfed_pipeline.fastpath") / WARM_UP_RECEIPT).read_text())
    warmed = set()
    for terminal in config.terminals:
        rules = validation.rules_of(terminal)
        if tuple(rules.values()) in warmed:
            continue
        warmed.add(tuple(rules.values()))
        # The packaged sample, as if this terminal had sold it now (in posfed JSON, whatever
        # the terminal's own format): a verdict either way warms the schema up.
        sold_here = dict(
            sample,
            terminalId=terminal.id,
            departmentCode=terminal.department,
            timestamp=datetime.now(terminal.timezone).replace(microsecond=0).isoformat(),
        )
        canonical = dataclasses.replace(terminal, input_format=CANONICAL_FORMAT, mapping=None)
        with contextlib.suppress(Exception):
            receipt = parsing.parse_receipt(json.dumps(sold_here).encode(), canonical)
            validation.validate_batch([receipt], **rules)
    # The database may be down right now; the run will say so.
    with contextlib.suppress(Exception):
        central_db_engine(config).connect().close()


@dataclass
class _Worker:
    process: multiprocessing.Process
    conn: object
    ready: bool = False
    run_id: str | None = None
    lane: str | None = None
    for_background: bool = False  # the background runs' own worker


@dataclass
class _Job:
    run_id: str  # or a checkout's job id
    lane: str | None
    background: bool = False
    submitted_at: float = field(default_factory=time.monotonic)
    # Not a run: a checkout batch (fastpath.checkout) or a sync pass (fastpath.sync_pass).
    message: dict | None = None

    @property
    def is_backlog(self) -> bool:
        """A terminal's run sent to the background: many files at once (a flooded inbox)."""
        return self.background and self.lane is not None and not self.lane.startswith("lane:")


class WarmWorkerPool:
    def __init__(
        self,
        dagster_home: Path,
        working_directory: Path,
        size: int = 2,
        on_finished: Callable[[str, str | None, str], None] | None = None,
        background_workers: int = 1,
    ):
        self.dagster_home = Path(dagster_home)
        self.working_directory = Path(working_directory)
        self.size = size
        self.background_workers = background_workers
        self.on_finished = on_finished
        self._ctx = multiprocessing.get_context("spawn")
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._workers: list[_Worker] = []
        self._busy_lanes: set[str] = set()
        self._known: set[str] = set()
        self._finished: OrderedDict[str, str] = OrderedDict()
        self._stopping = False
        self._instance: dg.DagsterInstance | None = None

    # --- life cycle ---------------------------------------------------------------------------

    def start(self, wait_ready: float = 60.0) -> None:
        """Start the workers; wait at most ``wait_ready`` seconds for them to be warm (runs
        submitted meanwhile wait for the first that is)."""
        os.environ.setdefault("DAGSTER_HOME", str(self.dagster_home))
        self._instance = dg.DagsterInstance.from_config(str(self.dagster_home))
        for _ in range(self.size):
            self._spawn()
        for _ in range(self.background_workers):
            self._spawn(for_background=True)
        self._requeue_orphans()
        threading.Thread(target=self._dispatch_loop, name="pool-dispatch", daemon=True).start()
        self.wait_ready(wait_ready)

    def wait_ready(self, timeout: float) -> bool:
        """Until every worker is warm, at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(w.ready for w in self._workers):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            workers = list(self._workers)
        for worker in workers:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(None)
        for worker in workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()

    def _requeue_orphans(self) -> None:
        """Runs launched to a pool that died (kill -9, power cut) before a worker took them.

        They are STARTING: launched, never started. One pool serves a store, so a pool that
        starts knows they are nobody's; it queues them again rather than leave them to run
        monitoring's start timeout. (Runs a dead pool's worker had STARTED are failed by run
        monitoring, as this pool does not know them, and their files relaunched by the sensor.)
        """
        records = self._instance.get_run_records(
            filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING])
        )
        for record in sorted(records, key=lambda r: r.create_timestamp):
            run = record.dagster_run
            # Only runs a pool accepted: a run STARTING while no pool listened went to the
            # fallback launcher (a code-server process), which may be starting it right now.
            if run.tags.get(ACCEPTED_TAG) == "true" and GRPC_INFO_TAG not in run.tags:
                self.submit(run.run_id, *lane_of(run.tags))
                log.info("re-queued run %s, left STARTING by a pool that stopped", run.run_id)

    def _spawn(self, *, for_background: bool = False) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_worker_main,
            args=(child, str(self.dagster_home), str(self.working_directory)),
            name="posfed-background-worker" if for_background else "posfed-run-worker",
            daemon=True,
        )
        process.start()
        if for_background:
            # At once, from here: its imports (seconds of CPU) already yield to the checkout
            # workers warming up beside it. Raising a child's niceness needs no privilege.
            niceness = min(19, os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICE)
            with contextlib.suppress(ProcessLookupError):  # died at once: the read loop sees it
                os.setpriority(os.PRIO_PROCESS, process.pid, niceness)
        child.close()
        worker = _Worker(process, parent, for_background=for_background)
        self._workers.append(worker)
        threading.Thread(target=self._read_loop, args=(worker,), daemon=True).start()
        return worker

    # --- requests -----------------------------------------------------------------------------

    def submit(self, run_id: str, lane: str | None, background: bool = False) -> bool:
        """Queue a run in its lane; a run id already known is not queued twice."""
        with self._cond:
            if run_id in self._known or run_id in self._finished:
                return False
            self._known.add(run_id)
        # Marked before it can start: if this pool dies, the next one knows the run was ours
        # (and not a fallback run, STARTING in a code-server process).
        try:
            self._instance.add_run_tags(run_id, {ACCEPTED_TAG: "true"})
        except dg.DagsterRunNotFoundError:
            with self._cond:
                self._known.discard(run_id)
            return False
        with self._cond:
            self._queue.append(_Job(run_id, lane, background))
            self._cond.notify_all()
        return True

    def submit_checkout(self, batch: CheckoutBatch, background: bool = False) -> None:
        """Queue a checkout batch in its terminal's lane (``on_finished`` reports it)."""
        with self._cond:
            self._queue.append(
                _Job(batch.job_id, batch.terminal_id, background, message=batch.to_message())
            )
            self._cond.notify_all()

    def submit_sync_pass(self, job: SyncPassJob) -> None:
        """Queue a central database sync pass in the sync lane, on the background worker."""
        with self._cond:
            lane, _ = lane_of({LANE_TAG: SYNC_LANE})  # a sync run's lane: one sync at a time
            self._queue.append(_Job(job.job_id, lane, True, message=job.to_message()))
            self._cond.notify_all()

    def health(self, run_id: str) -> str:
        with self._cond:
            if any(j.run_id == run_id for j in self._queue) or any(
                w.run_id == run_id for w in self._workers
            ):
                return "RUNNING"
            status = self._finished.get(run_id)
        if status is None:
            return "NOT_FOUND"
        return "SUCCESS" if status == "SUCCESS" else "FAILED"

    def terminate(self, run_id: str) -> bool:
        """Cancel a queued run, or stop the worker executing it (a fresh one replaces it)."""
        with self._cond:
            for job in list(self._queue):
                if job.run_id == run_id:
                    self._queue.remove(job)
                    self._record_finished(run_id, "CANCELED")
                    self._report(run_id, "canceled before it started")
                    return True
            worker = next((w for w in self._workers if w.run_id == run_id), None)
        if worker is None:
            return False
        run = self._instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            self._instance.report_run_canceling(run)
        worker.process.kill()  # the read loop reports the run and respawns the worker
        return True

    def stats(self) -> dict:
        with self._cond:
            checkout = [w for w in self._workers if not w.for_background]
            background = [w for w in self._workers if w.for_background]
            return {
                "workers": len(checkout),
                "ready": sum(w.ready for w in checkout),
                "busy": sum(w.run_id is not None for w in checkout),
                "background_workers": len(background),
                "background_ready": sum(w.ready for w in background),
                "queued": len(self._queue),
            }

    # --- internals ----------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        with self._cond:
            while not self._stopping:
                assigned = self._assign_one()
                if not assigned:
                    self._cond.wait(1.0)

    def _assign_one(self) -> bool:
        # Without a background worker (background_workers=0) background runs share the others.
        shared = not any(w.for_background for w in self._workers)
        # A backlog run starts only while no receipt a cashier waits for is being processed or
        # waiting: its fsyncs and ledger writes would otherwise delay theirs (a lower CPU
        # priority alone does not order the disk).
        checkout_busy = any(
            w.run_id is not None and w.lane is not None and not w.lane.startswith("lane:")
            for w in self._workers
            if not w.for_background
        ) or any(not job.background for job in self._queue)
        for idle in (w for w in self._workers if w.ready and w.run_id is None):
            for job in self._queue:
                if job.lane is not None and job.lane in self._busy_lanes:
                    continue
                if job.background != idle.for_background and not (shared and job.background):
                    continue
                if job.is_backlog and checkout_busy:
                    continue
                self._queue.remove(job)
                idle.run_id, idle.lane = job.run_id, job.lane
                if job.lane:
                    self._busy_lanes.add(job.lane)
                # On a dead worker the read loop sees the broken pipe and reports the run.
                with contextlib.suppress(OSError, ValueError):
                    idle.conn.send(job.message if job.message is not None else job.run_id)
                return True
        return False

    def _read_loop(self, worker: _Worker) -> None:
        while True:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                self._worker_died(worker)
                return
            with self._cond:
                if message[0] == "ready":
                    worker.ready = True
                elif message[0] == "done":
                    _, run_id, status = message
                    lane = worker.lane
                    self._free(worker)
                    self._record_finished(run_id, status)
                self._cond.notify_all()
            if message[0] == "done" and self.on_finished:
                self.on_finished(run_id, lane, status)

    def _free(self, worker: _Worker) -> None:
        if worker.lane:
            self._busy_lanes.discard(worker.lane)
        worker.run_id = worker.lane = None

    def _record_finished(self, run_id: str, status: str) -> None:
        self._finished[run_id] = status
        # A finished run is never submitted again (its launcher's run ended): forget it as a
        # known id, and keep only the latest statuses, so a pool that runs for months stays
        # small.
        self._known.discard(run_id)
        while len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)

    def _worker_died(self, worker: _Worker) -> None:
        worker.process.join(timeout=5)
        with self._cond:
            run_id, lane = worker.run_id, worker.lane
            self._free(worker)
            self._workers.remove(worker)
            if run_id:
                self._record_finished(run_id, "FAILURE")
            stopping = self._stopping
            if not stopping:
                self._spawn(for_background=worker.for_background)
            self._cond.notify_all()
        code = worker.process.exitcode
        if not stopping:
            how = describe_exit(code) if code is not None else "is gone"
            log.warning("run worker (pid %s) %s; a new one is starting", worker.process.pid, how)
        if run_id:
            if not is_checkout_job(run_id) and not is_sync_pass(run_id):
                why = f"its run worker (pid {worker.process.pid}) died (exit {code})"
                self._report(run_id, why)
            if self.on_finished:
                self.on_finished(run_id, lane, "FAILURE")

    def _report(self, run_id: str, why: str) -> None:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return
        if run.status == dg.DagsterRunStatus.CANCELING or "canceled" in why:
            self._instance.report_run_canceled(run, f"Run {why}.")
        else:
            # A receipts run's files stay in the inbox (its sensor relaunches them); a sync
            # run's receipts stay in the ledger's outbox (the next sync sends them).
            self._instance.report_run_failed(run, f"Run {why}; nothing it carried is lost.")


# --- the launcher's line to the pool ------------------------------------------------------------


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        pool: WarmWorkerPool = self.server.pool  # type: ignore[attr-defined]
        try:
            request = json.loads(self.rfile.readline())
            op = request.get("op")
            if op == "launch":
                reply = {
                    "ok": True,
                    "queued": pool.submit(
                        request["run_id"], request.get("lane"), bool(request.get("background"))
                    ),
                }
            elif op == "terminate":
                reply = {"ok": pool.terminate(request["run_id"])}
            elif op == "health":
                reply = {"ok": True, "status": pool.health(request["run_id"])}
            elif op == "stats":
                reply = {"ok": True, **pool.stats()}
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as exc:  # a bad request must not take the server down
            reply = {"ok": False, "error": str(exc)}
        self.wfile.write((json.dumps(reply) + "\n").encode())


class AlreadyServing(PosfedError, RuntimeError):
    """Another fast path holds this launcher socket."""


def claim_socket(socket_path: Path):
    """Hold ``<socket>.lock`` for this process's life (the kernel lets go when it dies, however
    it dies); a second fast path is refused instead of taking the first one's socket."""
    try:
        return pid_lock.hold(socket_path.with_name(socket_path.name + ".lock"))
    except pid_lock.LockHeld as held:
        raise AlreadyServing(
            f"another posfed fastpath (pid {held.holder}) serves {socket_path}; stop it first"
        ) from None


class PoolServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, socket_path: Path, pool: WarmWorkerPool):
        """Call ``claim_socket`` first: the socket left by a fast path that died is replaced."""
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path.unlink(missing_ok=True)
        super().__init__(str(socket_path), _Handler)
        os.chmod(socket_path, 0o600)  # only this user's processes may launch runs
        self.pool = pool
        self.socket_path = socket_path

    def serve_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="pool-server", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.socket_path.unlink(missing_ok=True)
