"""Loading the store configuration in three steps: read the TOML file, validate it into the
file model (``core.config.schema``), build the ``PosfedConfig`` the rest of posfed uses; then
``load_config`` runs the start-up checks (``core.config.startup``) on it."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

from pydantic import ValidationError

from posfed_pipeline.core.config import environment
from posfed_pipeline.core.config.alert_settings import AlertSettings
from posfed_pipeline.core.config.errors import ConfigError, refused
from posfed_pipeline.core.config.metrics_settings import MetricsSettings
from posfed_pipeline.core.config.schema import StoreFile
from posfed_pipeline.core.config.startup import check_at_start
from posfed_pipeline.core.config.store_config import PosfedConfig
from posfed_pipeline.core.config.sync_policy import SyncPolicy
from posfed_pipeline.core.model.input_mapping import InputMapping
from posfed_pipeline.core.model.terminal import (
    DELIVERY_KEYS,
    HEALTH_KEYS,
    DeliveryRules,
    HealthRules,
    Terminal,
    TerminalEntry,
)
from posfed_pipeline.packaged import default_dat_spec


def load_config(path: str | os.PathLike[str] | None = None) -> PosfedConfig:
    """Read and check the store configuration; every problem is reported with its place."""
    config_path = environment.resolve_config_path(path)
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no configuration at {config_path}; set POSFED_CONFIG or run from the repo root"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
    config = config_from_dict(raw, base_dir=config_path.parent, config_path=config_path)
    check_at_start(config)
    return config


def config_from_dict(raw: dict, *, base_dir: Path, config_path: Path | None = None) -> PosfedConfig:
    """The configuration a store file's tables describe (``raw`` as tomllib reads it), paths
    relative to ``base_dir``; the start-up checks are ``check_at_start``'s."""
    where = str(config_path or "configuration")
    try:
        file = StoreFile.model_validate(raw)
    except ValidationError as exc:
        raise refused(exc, StoreFile, where) from None
    store, paths, intake = file.store, file.paths, file.intake
    home = environment.home_folder(paths.home, base_dir)
    terminals_root = environment.resolve_path(paths.terminals, home)
    mappings = {name: table.input_mapping(name) for name, table in file.mappings.items()}
    terminals = tuple(
        _terminal(file, index, entry, mappings, base_dir, terminals_root, where)
        for index, entry in enumerate(file.terminals)
    )
    return PosfedConfig(
        store_id=store.id,
        store_name=store.name or store.id,
        timezone=store.timezone,
        home=home,
        terminals=terminals,
        # No spec named: the one posfed ships (posfed_pipeline/dat_specs, linked as dat_specs/).
        dat_spec=(
            environment.resolve_path(file.dat.spec, base_dir)
            if file.dat.spec is not None
            else default_dat_spec()
        ),
        dat_dir=environment.resolve_path(paths.dat, home),
        db_url=environment.central_database_url(home),
        partitions_start=store.partitions_start,
        partition_window_months=store.partition_window_months,
        stability_seconds=intake.stability_seconds,
        max_clock_skew_seconds=intake.max_clock_skew_seconds,
        max_age_days=intake.max_age_days,
        relaunch_after_seconds=intake.relaunch_after_seconds,
        catchup_grace_seconds=intake.catchup_grace_seconds,
        catchup_interval_seconds=intake.catchup_interval_seconds,
        incomplete_grace_seconds=intake.incomplete_grace_seconds,
        record_after_quiet_seconds=intake.record_after_quiet_seconds,
        record_window_seconds=intake.record_window_seconds,
        retention_days=file.retention.keep_days,
        sync=SyncPolicy(store_id=store.id, **file.sync.model_dump()),
        alerts=AlertSettings.from_table(file.alerts),
        metrics=MetricsSettings.from_table(file.metrics),
        config_path=config_path,
    )


def _terminal(
    file: StoreFile,
    index: int,
    entry: TerminalEntry,
    mappings: dict[str, InputMapping],
    base_dir: Path,
    terminals_root: Path,
    where: str,
) -> Terminal:
    """One terminal: its entry over the store-wide tables ([delivery], [health], [store])."""
    store = file.store
    mapping = mappings.get(entry.format)
    own = entry.rule_keys
    try:
        delivery = dataclasses.replace(
            file.delivery, **{k: v for k, v in own.items() if k in DELIVERY_KEYS}
        )
    except ValidationError as exc:
        raise refused(exc, DeliveryRules, where, at=("terminals", index)) from None
    try:
        health = dataclasses.replace(
            file.health, **{k: v for k, v in own.items() if k in HEALTH_KEYS}
        )
    except ValidationError as exc:
        raise refused(exc, HealthRules, where, at=("terminals", index)) from None
    return Terminal(
        id=entry.id,
        department=entry.department,
        tenant=entry.tenant or entry.department,
        inbox=(
            environment.resolve_path(entry.inbox, base_dir)
            if entry.inbox is not None
            else terminals_root / entry.id / "inbox"
        ),
        timezone=entry.timezone or store.timezone,
        input_format=entry.format,
        allow_returns=entry.allow_returns,
        mapping=mapping,
        encoding_fallback=entry.encoding_fallback
        or (mapping.encoding_fallback if mapping else None),
        quantity_decimals=entry.quantity_decimals,
        variable_measure=(
            entry.variable_measure
            if "variable_measure" in entry.model_fields_set
            else store.variable_measure
        ),
        gs1_region=store.gs1_region,
        check_labels=(
            entry.check_labels
            if entry.check_labels is not None
            else entry.department in store.weighed_departments
        ),
        workstation_id=entry.workstation_id,
        receipt_id_prefix=entry.receipt_id_prefix,
        receipt_number_pattern=entry.receipt_number_pattern,
        delivery=delivery,
        health=health,
    )
