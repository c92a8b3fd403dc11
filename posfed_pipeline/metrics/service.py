"""``posfed metrics``: the store's figures in the Prometheus text format, over HTTP.

A process of its own (one of ``posfed demo``'s services; ``deploy/systemd/posfed-metrics.service``
in production), so whatever happens to it never touches a checkout: it only reads (the ledger
read-only, quarantine histories, inbox listings, Dagster's run storage, the supervisor's state
file), every reading bounded in time, on a schedule of its own (``[metrics] refresh_seconds``);
a scrape is answered from the latest reading and costs the store nothing. Memory stays bounded:
its figures are per terminal, never per receipt. SIGTERM or SIGINT stops it within a reading.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import wait
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.operations.store_metrics import OneAtATime, StoreWatcher
from posfed_pipeline.metrics.exposition import Reading, StoreCollector
from posfed_pipeline.metrics.sources import FailedRuns, supervised_services, systemd_services

# How long the Dagster instance may take to answer one reading (a page at a time).
DAGSTER_TIMEOUT_SECONDS = 10.0


class Metrics:
    """The readings of one store, and the registry that serves the latest."""

    def __init__(self, config: PosfedConfig, dagster_home: Path, *, say: Callable[[str], None]):
        self.config = config
        self.dagster_home = dagster_home
        self.say = say
        self.watcher = StoreWatcher(config)
        self.failed_runs = FailedRuns(dagster_home, config.terminal_ids)
        self._calls = OneAtATime()
        self._sources_before: dict[str, bool] = {}
        self.latest: Reading | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(lambda: self.latest))
        # The process's own memory and CPU: its memory stays flat however many receipts pass.
        ProcessCollector(registry=self.registry)

    def read(self) -> Reading:
        figures = self.watcher.read()
        sources: dict[str, bool] = {}
        failed = None
        if self.failed_runs.available():
            call = self._calls.submit("dagster", self.failed_runs.read)
            done, _ = wait([call], timeout=DAGSTER_TIMEOUT_SECONDS)
            sources["dagster"] = call in done and call.exception() is None
            if call in done and call.exception() is not None:
                self._tell_once("dagster", f"{type(call.exception()).__name__}: {call.exception()}")
            failed = self.failed_runs.totals()
        services = supervised_services(self.dagster_home)
        if services is None:
            services = systemd_services()
        self.latest = Reading(figures, failed, services, sources)
        self._say_what_changed({**figures.sources, **sources})
        return self.latest

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def close(self) -> None:
        self.watcher.close()
        self.failed_runs.close()

    def _tell_once(self, source: str, why: str) -> None:
        if self._sources_before.get(source, True):
            self.say(f"posfed metrics: {source}: {why}")

    def _say_what_changed(self, sources: dict[str, bool]) -> None:
        for source, ok in sorted(sources.items()):
            before = self._sources_before.get(source, True)
            if before and not ok:
                self.say(
                    f"posfed metrics: the {source} could not be read in time; its figures stay "
                    "as last read (posfed_metrics_source_up 0)"
                )
            elif not before and ok:
                self.say(f"posfed metrics: the {source} is read again")
        self._sources_before = sources


def serve(
    config: PosfedConfig,
    dagster_home: Path,
    *,
    stop: threading.Event,
    host: str,
    port: int,
    say: Callable[[str], None] | None = None,
) -> None:
    """Serve http://host:port/metrics until ``stop`` is set, reading the store every
    ``[metrics] refresh_seconds``. OSError if it cannot listen there."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    metrics = Metrics(config, dagster_home, say=say)
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    address = f"[{host}]" if ":" in host else host
    say(
        f"posfed metrics: serving http://{address}:{port}/metrics for store "
        f"{config.store_id} ({len(config.terminals)} terminals)"
    )
    try:
        while not stop.is_set():
            started = time.monotonic()
            metrics.read()
            stop.wait(max(0.0, config.metrics.refresh_seconds - (time.monotonic() - started)))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        metrics.close()
        say("posfed metrics: stopped")
