"""The store's configuration as the rest of posfed uses it: ``PosfedConfig``, built by
``core.config.loading`` from the validated store file (whose model declares every default)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from posfed_pipeline.core.config.alert_settings import AlertSettings
from posfed_pipeline.core.config.errors import ConfigError
from posfed_pipeline.core.config.first_day import first_business_day
from posfed_pipeline.core.config.metrics_settings import MetricsSettings
from posfed_pipeline.core.config.schema import IntakeTable, RetentionTable, StoreTable
from posfed_pipeline.core.config.sync_policy import SyncPolicy
from posfed_pipeline.core.model.settings import default_of
from posfed_pipeline.core.model.terminal import Terminal


@dataclass(frozen=True)
class PosfedConfig:
    store_id: str
    store_name: str
    timezone: ZoneInfo
    home: Path
    terminals: tuple[Terminal, ...]
    dat_spec: Path
    dat_dir: Path
    db_url: str
    # None: the store's first business day, recorded once (first_partition_day).
    partitions_start: date | None
    # The settings below are declared, with their ranges and doc lines, in core.config.schema.
    partition_window_months: int = default_of(StoreTable, "partition_window_months")
    stability_seconds: float = default_of(IntakeTable, "stability_seconds")
    max_clock_skew_seconds: int = default_of(IntakeTable, "max_clock_skew_seconds")
    max_age_days: int = default_of(IntakeTable, "max_age_days")
    relaunch_after_seconds: float = default_of(IntakeTable, "relaunch_after_seconds")
    catchup_grace_seconds: float = default_of(IntakeTable, "catchup_grace_seconds")
    catchup_interval_seconds: float = default_of(IntakeTable, "catchup_interval_seconds")
    incomplete_grace_seconds: float = default_of(IntakeTable, "incomplete_grace_seconds")
    record_after_quiet_seconds: float = default_of(IntakeTable, "record_after_quiet_seconds")
    record_window_seconds: float = default_of(IntakeTable, "record_window_seconds")
    retention_days: int = default_of(RetentionTable, "keep_days")
    sync: SyncPolicy = field(default_factory=SyncPolicy)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    config_path: Path | None = None
    _by_id: dict[str, Terminal] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_id.update({t.id: t for t in self.terminals})

    def terminal(self, terminal_id: str) -> Terminal:
        try:
            return self._by_id[terminal_id]
        except KeyError:
            ids = self.terminal_ids
            known = ", ".join(ids[:12]) + (f" and {len(ids) - 12} more" if len(ids) > 12 else "")
            where = f" in {self.config_path}" if self.config_path else ""
            raise ConfigError(f"unknown terminal {terminal_id!r}{where} (known: {known})") from None

    @property
    def terminal_ids(self) -> list[str]:
        return [t.id for t in self.terminals]

    @functools.cached_property
    def first_partition_day(self) -> date:
        """The first day the UI offers: ``[store] partitions_start``, else the store's first
        business day: the oldest .dat day folder, or today, recorded once in the home folder
        (core.config.first_day) the first time a process asks."""
        if self.partitions_start is not None:
            return self.partitions_start
        return first_business_day(self.home, self.dat_dir, self.timezone)

    @functools.cached_property
    def terminal_day_start(self) -> date:
        """The first day of the terminal x day partitions: the first of the month
        ``partition_window_months`` before the current one, or first_partition_day if later.

        Dagster advises under 100,000 partitions per asset; terminals x days passes that in
        under two years at 200 terminals. The window holds at most 12 months + 31 days (79,400
        partitions at 200 terminals) and moves only when a month begins, so processes started
        on different days of a month agree. The store-wide daily partitions (settlement,
        retention) keep every day since first_partition_day."""
        today = datetime.now(self.timezone).date()
        return partition_window_start(self.first_partition_day, today, self.partition_window_months)

    def ensure_folders(self) -> None:
        """Create every folder the pipeline writes to (idempotent)."""
        for terminal in self.terminals:
            for folder in (terminal.inbox, terminal.archive_root, terminal.quarantine):
                folder.mkdir(parents=True, exist_ok=True)
        self.dat_dir.mkdir(parents=True, exist_ok=True)


def partition_window_start(first_day: date, today: date, months: int) -> date:
    """The first of the month ``months`` before ``today``'s, or ``first_day`` if later
    (``months`` 0: ``first_day``)."""
    if not months:
        return first_day
    index = today.year * 12 + today.month - 1 - months
    return max(first_day, date(index // 12, index % 12 + 1, 1))
