"""The figures of one reading as Prometheus metric families (prometheus-client writes the text
format). Every metric carries the ``store`` label (the store's ``[store] id``), so a fleet's
Prometheus tells stores apart however it scrapes them; per-terminal metrics carry ``terminal``
too. No label ever holds a receipt's or a file's name: the number of series is fixed by the
number of terminals."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from posfed_pipeline.core.operations.store_metrics import QUARANTINE_STAGES, StoreFigures
from posfed_pipeline.metrics.sources import ServiceState


@dataclass(frozen=True)
class Reading:
    """Everything a scrape is answered with: the store's figures and the other sources'."""

    store: StoreFigures
    failed_runs: dict[tuple[str, str], int] | None = None  # (job, terminal) -> count
    services: dict[str, ServiceState] | None = None
    sources: dict[str, bool] = field(default_factory=dict)  # dagster, services


class StoreCollector(Collector):
    """Answers a scrape with the latest reading (``latest``, a callable), never reading the
    store itself: a scrape costs the same whoever scrapes and however often."""

    def __init__(self, latest):
        self._latest = latest

    def describe(self) -> list[Metric]:
        return []  # nothing to read at registration

    def collect(self) -> Iterator[Metric]:
        reading: Reading | None = self._latest()
        if reading is None:
            return
        yield from _families(reading)


def _families(reading: Reading) -> Iterator[Metric]:
    figures = reading.store
    store = figures.store_id
    per_terminal = ["store", "terminal"]

    info = GaugeMetricFamily(
        "posfed_terminal_info",
        "A configured terminal: its tenant and department (always 1).",
        labels=["store", "terminal", "tenant", "department"],
    )
    for terminal, (tenant, department) in sorted(figures.tenants.items()):
        info.add_metric([store, terminal, tenant, department], 1)
    yield info

    latency = HistogramMetricFamily(
        "posfed_dat_latency_seconds",
        "From a receipt file's arrival in its inbox (its mtime: when the till last wrote it) "
        "to its .dat file (the ledger's record of it, made just before the rename into "
        "place), per accepted receipt.",
        labels=per_terminal,
    )
    accepted = CounterMetricFamily(
        "posfed_receipts_accepted",
        "Receipts the store's ledger accepted as new (each gets one .dat file).",
        labels=per_terminal,
    )
    redelivered = CounterMetricFamily(
        "posfed_receipts_redelivered",
        "Re-deliveries: a receipt delivered again with the same content (archived, counted, "
        "no second .dat).",
        labels=per_terminal,
    )
    quarantined = CounterMetricFamily(
        "posfed_receipts_quarantined",
        "Files (or POSLog transactions) moved to quarantine, by the stage that refused them: "
        "intake (unreadable), validation (the business rules), accept (a conflict with an "
        "accepted receipt), emit (its .dat name is another's).",
        labels=[*per_terminal, "stage"],
    )
    awaiting = GaugeMetricFamily(
        "posfed_dat_awaiting_receipts",
        "Receipts accepted whose .dat file is not written yet.",
        labels=per_terminal,
    )
    awaiting_age = GaugeMetricFamily(
        "posfed_dat_awaiting_oldest_seconds",
        "How long the oldest receipt accepted and still without its .dat has waited (0: none).",
        labels=per_terminal,
    )
    last_receipt = GaugeMetricFamily(
        "posfed_terminal_last_receipt_timestamp_seconds",
        "When the terminal's latest receipt was accepted (Unix time); its age: time() - this.",
        labels=per_terminal,
    )
    for terminal, values in sorted(figures.terminals.items()):
        labels = [store, terminal]
        latency.add_metric(
            labels,
            buckets=[
                (floatToGoString(bound), count) for bound, count in values.latency.cumulative()
            ],
            sum_value=values.latency.total_seconds,
        )
        accepted.add_metric(labels, values.accepted)
        redelivered.add_metric(labels, values.redelivered)
        stages = [*QUARANTINE_STAGES, *sorted(set(values.quarantined) - set(QUARANTINE_STAGES))]
        for stage in stages:
            quarantined.add_metric([*labels, stage], values.quarantined.get(stage, 0))
        awaiting.add_metric(labels, values.awaiting_dat)
        since = values.awaiting_dat_since
        awaiting_age.add_metric(labels, 0.0 if since is None else max(0.0, figures.read_at - since))
        if values.last_receipt_at is not None:
            last_receipt.add_metric(labels, values.last_receipt_at)
    yield from (latency, accepted, redelivered, quarantined, awaiting, awaiting_age, last_receipt)
    yield from _health(figures)
    yield from _outbox(figures)
    yield from _runs_and_services(reading)
    yield from _self(reading)


def _health(figures: StoreFigures) -> Iterator[Metric]:
    store = figures.store_id
    labels = ["store", "terminal"]
    families = {
        "healthy": GaugeMetricFamily(
            "posfed_terminal_healthy",
            "The terminal's health verdict, as `posfed status` gives it: 1 nothing needs a look, "
            "0 something does (silent while open, files waiting too long, too many quarantined "
            "today, its inbox not answering).",
            labels=labels,
        ),
        "silent": GaugeMetricFamily(
            "posfed_terminal_silent",
            "1 while the store is open and the terminal has sent no receipt for longer than its "
            "[health] quiet_after_minutes.",
            labels=labels,
        ),
        "open": GaugeMetricFamily(
            "posfed_terminal_open",
            "1 within the terminal's opening hours ([health] opening_hours, open_days).",
            labels=labels,
        ),
        "waiting": GaugeMetricFamily(
            "posfed_inbox_waiting_files",
            "Files in the terminal's inbox not yet taken.",
            labels=labels,
        ),
        "oldest": GaugeMetricFamily(
            "posfed_inbox_oldest_waiting_seconds",
            "How long the oldest complete file in the inbox has waited (0: none).",
            labels=labels,
        ),
        "quarantined_today": GaugeMetricFamily(
            "posfed_terminal_quarantined_today",
            "Files in the terminal's quarantine that were quarantined today (the store's day).",
            labels=labels,
        ),
        "checked": GaugeMetricFamily(
            "posfed_terminal_health_checked_timestamp_seconds",
            "When the health verdict above was reached (Unix time).",
            labels=labels,
        ),
    }
    for terminal, values in sorted(figures.terminals.items()):
        health = values.health
        if health is None or values.health_at is None:
            continue
        labels_of = [store, terminal]
        families["healthy"].add_metric(labels_of, 1 if health.ok else 0)
        families["silent"].add_metric(labels_of, 1 if health.silent else 0)
        families["open"].add_metric(labels_of, 1 if health.open_now else 0)
        if health.waiting_files is not None:
            families["waiting"].add_metric(labels_of, health.waiting_files)
        families["oldest"].add_metric(labels_of, health.oldest_waiting_seconds or 0.0)
        families["quarantined_today"].add_metric(labels_of, health.quarantined_today)
        families["checked"].add_metric(labels_of, values.health_at)
    yield from families.values()


def _outbox(figures: StoreFigures) -> Iterator[Metric]:
    store = [figures.store_id]
    if figures.outbox is not None:
        pending, oldest_at, parked = figures.outbox
        size = GaugeMetricFamily(
            "posfed_outbox_deliveries",
            "Deliveries in the ledger's outbox: recorded here, not yet in the central database "
            "(parked ones included).",
            labels=["store"],
        )
        size.add_metric(store, pending)
        age = GaugeMetricFamily(
            "posfed_outbox_age_seconds",
            "How long the oldest delivery in the outbox has waited: the central database's lag "
            "(0: it holds everything).",
            labels=["store"],
        )
        age.add_metric(store, 0.0 if oldest_at is None else max(0.0, figures.read_at - oldest_at))
        parked_family = GaugeMetricFamily(
            "posfed_outbox_parked_deliveries",
            "Deliveries the central database refused, set aside for an operator "
            "(`posfed db status`).",
            labels=["store"],
        )
        parked_family.add_metric(store, parked)
        yield from (size, age, parked_family)
    sync = figures.sync
    if sync is not None:
        failures = GaugeMetricFamily(
            "posfed_sync_failures",
            "Failed attempts in a row to load the outbox into the central database (0: the "
            "last one succeeded).",
            labels=["store"],
        )
        failures.add_metric(store, sync.failures)
        yield failures
        if sync.last_success_at is not None:
            success = GaugeMetricFamily(
                "posfed_sync_last_success_timestamp_seconds",
                "When a sync last succeeded (Unix time).",
                labels=["store"],
            )
            success.add_metric(store, sync.last_success_at)
            yield success


def _runs_and_services(reading: Reading) -> Iterator[Metric]:
    store = reading.store.store_id
    if reading.failed_runs is not None:
        failed = CounterMetricFamily(
            "posfed_runs_failed",
            "Dagster runs of this store's instance that ended in failure, by Dagster job and "
            "terminal (empty for store-wide jobs).",
            # Not "job": Prometheus gives every scraped series its own job label.
            labels=["store", "dagster_job", "terminal"],
        )
        for (job, terminal), count in sorted(reading.failed_runs.items()):
            failed.add_metric([store, job, terminal], count)
        yield failed
    if reading.services is not None:
        restarts = CounterMetricFamily(
            "posfed_service_restarts",
            "Times a service was restarted after it died (posfed demo's supervisor, or "
            "systemd's NRestarts), since the supervisor started.",
            labels=["store", "service"],
        )
        up = GaugeMetricFamily(
            "posfed_service_up",
            "1 while the service runs (posfed demo's supervisor, or systemd: active).",
            labels=["store", "service"],
        )
        for name, state in sorted(reading.services.items()):
            restarts.add_metric([store, name], state.restarts)
            up.add_metric([store, name], 1 if state.up else 0)
        yield from (restarts, up)


def _self(reading: Reading) -> Iterator[Metric]:
    figures = reading.store
    store = [figures.store_id]
    source_up = GaugeMetricFamily(
        "posfed_metrics_source_up",
        "1 if posfed metrics read the source without an error last time (ledger, quarantine, "
        "health, dagster, services); 0: its figures are stale.",
        labels=["store", "source"],
    )
    for source, ok in sorted({**figures.sources, **reading.sources}.items()):
        source_up.add_metric([*store, source], 1 if ok else 0)
    read_at = GaugeMetricFamily(
        "posfed_metrics_read_timestamp_seconds",
        "When the figures served were read from the store (Unix time).",
        labels=["store"],
    )
    read_at.add_metric(store, figures.read_at)
    duration = GaugeMetricFamily(
        "posfed_metrics_read_duration_seconds",
        "How long that reading of the store took.",
        labels=["store"],
    )
    duration.add_metric(store, figures.read_seconds)
    yield from (source_up, read_at, duration)
