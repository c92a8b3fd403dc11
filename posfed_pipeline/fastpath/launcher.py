"""A RunLauncher that hands runs to posfed's warm worker pool instead of spawning a process.

Configured in dagster.yaml (deploy/dagster.dev.yaml)::

    run_launcher:
      module: posfed_pipeline.fastpath.launcher
      class: WarmWorkerRunLauncher

Every Dagster process that loads the instance (webserver, daemon, trigger) gets one; each talks
to the pool over its Unix socket. When the pool is not running, runs fall back to Dagster's
default launcher (a fresh process per run): slower, never lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
from pathlib import Path

import dagster as dg
from dagster._core.launcher.base import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.launcher.default_run_launcher import DefaultRunLauncher
from dagster._serdes import ConfigurableClassData

from posfed_pipeline.run_tags import GRPC_INFO_TAG, lane_of

SOCKET_NAME = "posfed-run-workers.sock"

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


def ask_pool(request: dict, socket_path: Path, timeout: float = 2.0) -> dict | None:
    """One request to the pool; ``None`` when no pool is listening."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect(str(socket_path))
            client.sendall((json.dumps(request) + "\n").encode())
            reply = client.makefile("rb").readline()
    except (FileNotFoundError, ConnectionRefusedError, TimeoutError, OSError):
        return None
    return json.loads(reply) if reply else None


class WarmWorkerRunLauncher(DefaultRunLauncher):
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
        reply = ask_pool(
            {"op": "launch", "run_id": run.run_id, "lane": lane, "background": background},
            self.socket_path,
        )
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
            reply = ask_pool({"op": "terminate", "run_id": run_id}, self.socket_path)
            if reply and reply.get("ok"):
                return True
        return super().terminate(run_id)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        if GRPC_INFO_TAG in run.tags:
            # Launched by the fallback into a code-server process: not ours to judge.
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "launched without the warm pool")
        if _local_pool is not None:
            status = _local_pool.health(run.run_id)
        else:
            reply = ask_pool({"op": "health", "run_id": run.run_id}, self.socket_path)
            if reply is None:
                return CheckRunHealthResult(
                    WorkerStatus.FAILED, f"run-worker pool not reachable at {self.socket_path}"
                )
            status = reply.get("status", "NOT_FOUND")
        return CheckRunHealthResult(WorkerStatus(status), f"run-worker pool says {status}")
