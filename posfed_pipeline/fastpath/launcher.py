"""A RunLauncher that hands runs to posfed's warm worker pool instead of spawning a process.

Configured in dagster.yaml (deploy/dagster.dev.yaml)::

    run_launcher:
      module: posfed_pipeline.fastpath.launcher
      class: WarmWorkerRunLauncher

Every Dagster process that loads the instance (webserver, daemon, trigger) gets one; each talks
to the pool over its Unix socket. When the pool is not running (stopped, or kept off on a
Dagster release posfed is not tested on: compatibility.py), runs fall back to Dagster's default
launcher (a fresh process per run): slower, never lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
from pathlib import Path

import dagster as dg

from posfed_pipeline.core.base.errors import PosfedError
from posfed_pipeline.fastpath.dagster_internals import (
    CheckRunHealthResult,
    ConfigurableClassData,
    LaunchRunContext,
    WorkerStatus,
)
from posfed_pipeline.names import GRPC_INFO_TAG
from posfed_pipeline.run_tags import lane_of

SOCKET_NAME = "posfed-run-workers.sock"
# How long a launch waits on a pool that listens but is slow to answer, before it gives up.
POOL_PATIENCE_SECONDS = 30.0

# The pool, when it lives in this very process (the fast-path service): no socket round trip.
_local_pool = None


def register_local_pool(pool) -> None:
    global _local_pool
    _local_pool = pool


def default_socket_path() -> Path:
    home = Path(os.environ.get("DAGSTER_HOME", ".")).resolve()
    path = home / SOCKET_NAME
    if len(str(path)) < 100:
        return path
    # Unix socket paths are limited to ~108 bytes: deep homes get a stable short name.
    digest = hashlib.sha1(str(home).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"posfed-{digest}.sock"


class PoolDidNotAnswer(PosfedError):
    """A pool listens but did not answer in time (busy, or a host under load): it may have
    acted on the request, so the caller must not act as if no pool were there."""


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this server (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def ask_pool(request: dict, socket_path: Path, timeout: float = 2.0) -> dict | None:
    """One request to the pool; ``None`` when no pool is listening (``PoolDidNotAnswer`` when
    one is, but its answer did not come within ``timeout``)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        try:
            client.connect(str(socket_path))
        except OSError:  # no socket file, nobody listening, or a stale socket
            return None
        try:
            client.sendall((json.dumps(request) + "\n").encode())
            reply = client.makefile("rb").readline()
        except OSError as exc:  # TimeoutError included
            raise PoolDidNotAnswer(f"{request.get('op')}: {exc or 'timed out'}") from exc
    if not reply:
        raise PoolDidNotAnswer(f"{request.get('op')}: the pool closed the line without answering")
    return json.loads(reply)


class WarmWorkerRunLauncher(dg.DefaultRunLauncher):
    def __init__(
        self, inst_data: ConfigurableClassData | None = None, socket_path: str | None = None
    ):
        super().__init__(inst_data=inst_data)
        self._socket_path = Path(socket_path) if socket_path else None

    @classmethod
    def config_type(cls):
        return {"socket_path": dg.Field(str, is_required=False)}

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls(inst_data=inst_data, **config_value)

    @property
    def socket_path(self) -> Path:
        return self._socket_path or default_socket_path()

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        lane, background = lane_of(run.tags)
        if _local_pool is not None:
            _local_pool.submit(run.run_id, lane, background)
            return
        request = {"op": "launch", "run_id": run.run_id, "lane": lane, "background": background}
        try:
            reply = ask_pool(request, self.socket_path)
        except PoolDidNotAnswer:
            # The pool may have queued the run already: launching it in a fresh process as
            # well would run it twice. Ask again, patiently (a launch is idempotent).
            try:
                reply = ask_pool(request, self.socket_path, timeout=POOL_PATIENCE_SECONDS)
            except PoolDidNotAnswer as exc:
                raise dg.DagsterInvariantViolationError(
                    f"posfed's run-worker pool at {self.socket_path} did not answer within "
                    f"{POOL_PATIENCE_SECONDS:.0f} s ({exc}); the run was not launched twice"
                ) from exc
        if reply and reply.get("ok"):
            return
        if context.workspace is None:
            raise dg.DagsterInvariantViolationError(
                f"posfed's run-worker pool is not running ({self.socket_path}) and no workspace "
                "was given to fall back to a fresh run process"
            )
        super().launch_run(context)

    def terminate(self, run_id: str) -> bool:
        if _local_pool is not None:
            if _local_pool.terminate(run_id):
                return True
        else:
            with contextlib.suppress(PoolDidNotAnswer):
                reply = ask_pool({"op": "terminate", "run_id": run_id}, self.socket_path)
                if reply and reply.get("ok"):
                    return True
        return super().terminate(run_id)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def _run_process_pid(self, run: dg.DagsterRun) -> int | None:
        """The pid of the process a fallback run executes in (its engine events say it); None
        when not known (no instance, no such event yet)."""
        if not self.has_instance:
            return None
        events = self._instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        for event in reversed(events):
            data = event.dagster_event.event_specific_data if event.dagster_event else None
            pid = getattr(data, "metadata", {}).get("pid") if data is not None else None
            if pid is not None:
                with contextlib.suppress(ValueError):
                    return int(getattr(pid, "value", pid))
        return None

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        # Run monitoring fails a STARTED run on any answer but RUNNING or SUCCESS (UNKNOWN
        # included), so only a run the pool no longer knows is reported dead.
        if GRPC_INFO_TAG in run.tags:
            # Launched by the fallback into a code-server process, which watches it itself
            # (it fails a run whose process died)... unless the code server died with it (a
            # power cut, a killed daemon): then the run would stay STARTED until
            # max_runtime_seconds, holding its lane (a sync: every sync) for ten minutes.
            pid = self._run_process_pid(run)
            if pid is not None and not _process_alive(pid):
                return CheckRunHealthResult(
                    WorkerStatus.FAILED, f"its process (pid {pid}) on this server has exited"
                )
            return CheckRunHealthResult(WorkerStatus.RUNNING, "launched without the warm pool")
        if _local_pool is not None:
            status = _local_pool.health(run.run_id)
        else:
            try:
                reply = ask_pool({"op": "health", "run_id": run.run_id}, self.socket_path)
            except PoolDidNotAnswer:
                # Busy is not dead; a run that really hangs meets max_runtime_seconds.
                return CheckRunHealthResult(WorkerStatus.RUNNING, "run-worker pool busy")
            if reply is None:
                return CheckRunHealthResult(
                    WorkerStatus.FAILED, f"run-worker pool not reachable at {self.socket_path}"
                )
            status = reply.get("status", "NOT_FOUND")
        return CheckRunHealthResult(WorkerStatus(status), f"run-worker pool says {status}")
