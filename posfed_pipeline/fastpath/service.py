"""The fast-path service: warm run workers, their launcher socket, and the inbox trigger.

Runs beside the Dagster webserver and daemon (``posfed fastpath``; ``make demo`` starts it), as
its own supervised service in production (deploy/systemd/). Stopping it loses nothing: runs
fall back to fresh processes and the sensors take every file the trigger does not. That is
also what happens on a Dagster release posfed is not tested on (compatibility.py): it refuses
to start there unless the operator allows that release.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import dagster as dg

from posfed_pipeline.core.base.errors import PosfedError
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.fastpath import compatibility, dagster_internals, launcher
from posfed_pipeline.fastpath.pool import PoolServer, WarmWorkerPool, claim_socket
from posfed_pipeline.fastpath.trigger import InboxTrigger
from posfed_pipeline.names import RECEIPTS_JOB, SYNC_JOB
from posfed_pipeline.processes import priority

log = logging.getLogger("posfed.fastpath")


class UntestedDagster(PosfedError):
    """The installed Dagster is outside the tested releases and the operator has not allowed
    it: the fast path stays off (the message says what was found and what to do)."""


@dataclass
class FastPath:
    pool: WarmWorkerPool
    server: PoolServer
    trigger: InboxTrigger | None
    lock: IO[str]

    def stop(self) -> None:
        if self.trigger:
            self.trigger.stop()
        self.server.close()
        self.pool.stop()
        launcher.register_local_pool(None)
        self.lock.close()


def start_fastpath(
    config: PosfedConfig,
    dagster_home: Path,
    *,
    workers: int = 2,
    trigger: bool = True,
    background_workers: int = 1,
    dagster_releases: compatibility.DagsterCompatibility | None = None,
    favour_checkout: bool = False,
) -> FastPath:
    """Raises ``UntestedDagster`` on a Dagster release outside the tested ones (the installed
    ones, or ``dagster_releases``) unless allowed, ``AlreadyServing`` if another fast path
    serves this instance's socket. ``favour_checkout``: raise this process's CPU priority (and
    so its workers'), where allowed: the service does; a test leaves its process alone."""
    verdict = compatibility.check() if dagster_releases is None else dagster_releases
    if not verdict.fast_path_allowed:
        raise UntestedDagster(verdict.message())
    if verdict.overridden:
        log.warning("%s", verdict.message())
    # The launcher in every Dagster process finds the socket from DAGSTER_HOME: so must we.
    os.environ.setdefault("DAGSTER_HOME", str(dagster_home))
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    socket_path = launcher.default_socket_path()
    if isinstance(instance.run_launcher, launcher.WarmWorkerRunLauncher):
        socket_path = instance.run_launcher.socket_path
    lock = claim_socket(socket_path)
    if favour_checkout:
        priority.favour_checkout()  # before the workers start: they inherit it
    # The workers' and the code location's working directory: the instance's own folder
    # (the code location is a module: nothing is read relative to it).
    pool = WarmWorkerPool(
        dagster_home, dagster_home, size=workers, background_workers=background_workers
    )
    launcher.register_local_pool(pool)
    # The workers warm up (seconds: each imports the code location) while the trigger starts:
    # a fast path restarted after a crash takes the files that came meanwhile at once, and
    # their runs start the moment the first worker is warm.
    pool.start(wait_ready=0)
    server = PoolServer(socket_path, pool)
    server.serve_in_background()
    inbox_trigger = None
    if trigger:
        code_location = dagster_internals.load_code_location(instance, dagster_home)
        factory = dagster_internals.SensorStyleRunFactory(instance, code_location, RECEIPTS_JOB)
        sync_factory = dagster_internals.SensorStyleRunFactory(instance, code_location, SYNC_JOB)
        inbox_trigger = InboxTrigger(config, instance, factory, sync_factory, pool=pool)
        pool.on_finished = inbox_trigger.run_finished
        inbox_trigger.start()
    if not pool.wait_ready(60.0):
        log.warning("run workers still warming up after 60 s: runs wait for them meanwhile")
    log.info(
        "fast path up: %d warm workers (+%d for background runs), socket %s, trigger %s",
        workers,
        background_workers,
        socket_path,
        "on" if trigger else "off",
    )
    return FastPath(pool, server, inbox_trigger, lock)


def serve_forever(
    config: PosfedConfig,
    dagster_home: Path,
    *,
    workers: int,
    trigger: bool,
    stop: threading.Event,
    background_workers: int = 1,
) -> None:
    fastpath = start_fastpath(
        config,
        dagster_home,
        workers=workers,
        trigger=trigger,
        background_workers=background_workers,
        favour_checkout=True,
    )
    try:
        stop.wait()
    finally:
        fastpath.stop()
