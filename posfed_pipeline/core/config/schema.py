"""The store file (``posfed.toml``) as a typed model: one class per table, each key declared
once with its type, default, range and doc line; an unknown key is refused. Validating a file
reads nothing, writes nothing and imports no .dat engine: the start-up checks come after
(``core.config.startup``), environment overrides in ``core.config.environment``."""

from __future__ import annotations

import copy
import re
from datetime import date
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from posfed_pipeline.core.config.alert_settings import AlertsTable
from posfed_pipeline.core.config.metrics_settings import MetricsTable
from posfed_pipeline.core.config.sync_policy import SyncTable
from posfed_pipeline.core.model.barcodes import GS1_REGIONS, region_code
from posfed_pipeline.core.model.input_mapping import (
    DEFAULTABLE_FIELDS,
    FIELDS_FROM_TERMINAL,
    ITEM_FIELDS,
    RECEIPT_FIELDS,
    InputMapping,
    parse_json_path,
)
from posfed_pipeline.core.model.settings import TABLE, declared_fields
from posfed_pipeline.core.model.store import DEFAULT_STORE_ID
from posfed_pipeline.core.model.terminal import (
    CANONICAL_FORMAT,
    DeliveryRules,
    Encoding,
    HealthRules,
    TerminalEntry,
    VariableMeasureScheme,
    Zone,
    text,
)

# Part of every key in the central database, shared by a chain's stores.
STORE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
# Built-in formats; every [mappings.<name>] of the store file adds one more.
POSLOG_FORMAT = "arts-poslog"  # ARTS/NRF POSLog XML: many transactions per file
INPUT_FORMATS = (CANONICAL_FORMAT, POSLOG_FORMAT)
MAPPING_KINDS = ("json", "csv")


class StoreTable(BaseModel):
    """``[store]``: the retail store."""

    model_config = ConfigDict(**TABLE, arbitrary_types_allowed=True)

    id: str = Field(
        DEFAULT_STORE_ID,
        description="1-32 letters, digits, '.', '-' or '_', starting with a "
        "letter or digit: part of every key in the central database, shared by a chain's stores",
    )
    name: str | None = Field(None, description="the store's name (default: its id)")
    timezone: Zone = Field(
        ZoneInfo("UTC"), description="the business day is this zone's local date"
    )
    partitions_start: date | None = Field(
        None,
        description="the first day the Dagster UI offers for backfills (unset: the store's "
        "first business day, kept in <home>/first_business_day)",
    )
    partition_window_months: int = Field(
        12,
        strict=True,
        ge=0,
        le=1200,
        description="terminal x day partitions cover this many "
        "months before the current one (0: every day since the first)",
    )
    variable_measure: VariableMeasureScheme | None = Field(
        None,
        description="in-store EAN-13 codes (prefix 20-29) whose price is cross-checked "
        "against the receipt line (unset: not checked)",
    )
    gs1_region: str | None = Field(
        None,
        description="how in-store codes (prefix 02, 20-29) carry price, weight or count: "
        f"{', '.join(sorted(GS1_REGIONS))} (unset: see variable_measure)",
    )
    weighed_departments: frozenset[str] = Field(
        frozenset(),
        description="departments whose scale labels must agree with their line "
        '(e.g. ["20", "40"]; a terminal may say check_labels itself)',
    )

    @field_validator("id", "name", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return text(value)

    @field_validator("id")
    @classmethod
    def _store_id(cls, value: str) -> str:
        if not STORE_ID_PATTERN.match(value):
            raise ValueError(
                f"id {value!r} must be 1-32 letters, digits, '.', '-' or '_', starting with a "
                "letter or digit: it is part of every key in the central database"
            )
        return value

    @field_validator("partitions_start", mode="before")
    @classmethod
    def _day(cls, value: Any) -> Any:
        if value is None or type(value) is date:
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError as exc:
            raise ValueError(f"partitions_start: {exc}") from None

    @field_validator("variable_measure", mode="before")
    @classmethod
    def _scheme(cls, value: Any) -> Any:
        if not isinstance(value, dict | VariableMeasureScheme):
            raise ValueError("variable_measure must be a table")
        return value

    @field_validator("gs1_region", mode="before")
    @classmethod
    def _region(cls, value: Any) -> Any:
        if value is None:
            return None
        code = region_code(value) if isinstance(value, str) else None
        if code is None:
            known = ", ".join(sorted(GS1_REGIONS))
            raise ValueError(
                f"gs1_region: {value!r} is not a region whose in-store code rules posfed knows "
                f"(known: {known}). Elsewhere leave it unset and describe the store's price "
                "codes with [store.variable_measure]."
            )
        return code

    @field_validator("weighed_departments", mode="before")
    @classmethod
    def _departments(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple | frozenset) or not all(
            isinstance(v, str) for v in value
        ):
            raise ValueError(
                'weighed_departments: must be a list of department codes, e.g. ["20", "40"]'
            )
        return frozenset(value)


class PathsTable(BaseModel):
    """``[paths]``: where the store's state lives."""

    model_config = TABLE

    home: str = Field(
        ".posfed", description="all state, relative to the store file (POSFED_HOME overrides)"
    )
    terminals: str = Field(
        "terminals", description="<home>/terminals/<id>/{inbox,archive,quarantine}"
    )
    dat: str = Field("dat", description="<home>/dat/YYYYMMDD/*.dat for the billing software")


class IntakeTable(BaseModel):
    """``[intake]``: when a receipt file is taken, and which receipts are accepted."""

    model_config = TABLE

    # The store-wide [delivery] stability_seconds, said where it was first: one declaration.
    stability_seconds: float = copy.copy(declared_fields(DeliveryRules)["stability_seconds"])
    max_clock_skew_seconds: int = Field(
        300, strict=True, ge=0, le=86400, description="receipts may be this far in the future"
    )
    max_age_days: int = Field(
        45,
        strict=True,
        ge=1,
        le=36500,
        description="older receipts are rejected (a backfill is exempt)",
    )
    relaunch_after_seconds: float = Field(
        10.0,
        strict=True,
        ge=0,
        le=3600,
        description="files whose run failed are launched "
        "again after this, doubling per attempt (5 min cap)",
    )
    catchup_grace_seconds: float = Field(
        10.0,
        strict=True,
        ge=0,
        le=3600,
        description="while the event-driven trigger runs, "
        "sensors only take files at least this old",
    )
    catchup_interval_seconds: float = Field(
        30.0,
        strict=True,
        ge=1,
        le=600,
        description="each terminal's sensor (the catch-up path) "
        "is evaluated at most this often; every tick costs the daemon ~18 ms of CPU, so with "
        "more than 21 terminals the sensors together tick at most 0.7 times a second (each "
        "every terminals / 0.7 s)",
    )
    record_after_quiet_seconds: float = Field(
        30.0,
        strict=True,
        gt=0,
        le=3600,
        description="the fast path's checkout writes a terminal's .dat files at once and its "
        "terminal-day's run records them, in the UI, once the terminal has been quiet this long",
    )
    record_window_seconds: float = Field(
        60.0,
        strict=True,
        gt=0,
        le=3600,
        description="...or at the latest this long after the window's first batch (each "
        "recording run costs ~0.1 CPU-s: fewer, bigger runs leave the CPU to the checkout)",
    )
    incomplete_grace_seconds: float = Field(
        10.0,
        strict=True,
        ge=0,
        le=3600,
        description="a file that does not parse but changed "
        "more recently than this may still be being written: it waits, and is quarantined only "
        "once this old",
    )


class DatTable(BaseModel):
    """``[dat]``: the .dat files for the billing software."""

    model_config = TABLE

    spec: str | None = Field(
        None,
        description="the .dat spec, relative to the store file (default: the spec posfed "
        "ships, dat_specs/scon_default.json)",
    )


class RetentionTable(BaseModel):
    """``[retention]``: how long day folders stay as they are."""

    model_config = TABLE

    keep_days: int = Field(
        90,
        strict=True,
        ge=1,
        le=36500,
        description="older archive/.dat day folders become YYYYMMDD.tar.gz",
    )


class MappingTable(BaseModel):
    """``[mappings.<name>]``: how one vendor's files map onto the canonical receipt; its name
    is then a terminal's ``format``."""

    model_config = TABLE

    kind: Literal["json", "csv"] = Field(
        description='"json": fields are paths (a.b[0].c), item fields inside each element of '
        'items; "csv": one row per item, fields are header columns'
    )
    fields: dict[str, Any] = Field(
        description=f"where each canonical field is: {', '.join((*RECEIPT_FIELDS, *ITEM_FIELDS))}"
        " (and items for json)"
    )
    defaults: dict[str, Any] = Field(
        default_factory=dict,
        description=f"a constant for {', '.join(DEFAULTABLE_FIELDS)} when a vendor sends none",
    )
    delimiter: str = Field(",", description='csv: the one-character delimiter ("\\t" for tab)')
    decimal_separator: str = Field(".", description='"." or ","')
    timestamp_format: str | None = Field(
        None, description="a strptime format like %d-%m-%Y (unset: ISO 8601)"
    )
    encoding_fallback: Encoding = Field(None, description="tried only when a file is not UTF-8")
    description: str | None = Field(None, description="what the mapping is for (not read)")

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: Any) -> Any:
        if value not in MAPPING_KINDS:
            raise ValueError(f"kind must be one of {', '.join(MAPPING_KINDS)}")
        return value

    @field_validator("fields", "defaults", mode="before")
    @classmethod
    def _tables(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("fields and defaults must be tables")
        return value

    @field_validator("decimal_separator", mode="before")
    @classmethod
    def _separator(cls, value: Any) -> Any:
        if value not in (".", ","):
            raise ValueError('decimal_separator must be "." or ","')
        return value

    @field_validator("timestamp_format", mode="before")
    @classmethod
    def _format(cls, value: Any) -> Any:
        if value is not None and (not isinstance(value, str) or "%" not in value):
            raise ValueError("timestamp_format must be a strptime format like %d-%m-%Y")
        return value

    @model_validator(mode="after")
    def _sources(self) -> MappingTable:
        canonical = (*RECEIPT_FIELDS, *ITEM_FIELDS, *(("items",) if self.kind == "json" else ()))
        for key, value in self.fields.items():
            if key not in canonical:
                raise ValueError(f"fields.{key} is not a canonical field ({', '.join(canonical)})")
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"fields.{key} must be a non-empty string")
            if self.kind == "json":
                try:
                    parse_json_path(value)
                except ValueError as exc:
                    raise ValueError(f"fields.{key}: {exc}") from None
        for key, value in self.defaults.items():
            if key not in DEFAULTABLE_FIELDS:
                raise ValueError(
                    f"defaults.{key}: only {', '.join(DEFAULTABLE_FIELDS)} may have a default"
                )
            if not isinstance(value, str):
                raise ValueError(f'defaults.{key} must be a string (e.g. "1")')
        missing = [
            key
            for key in canonical
            if key not in self.fields
            and key not in FIELDS_FROM_TERMINAL
            and key not in self.defaults
        ]
        if missing:
            raise ValueError(f"no source for {', '.join(missing)} (add them to fields)")
        if self.kind == "csv" and len(self.delimiter) != 1:
            raise ValueError('delimiter must be one character (use "\\t" for tab)')
        return self

    def input_mapping(self, name: str) -> InputMapping:
        return InputMapping(
            name=name,
            kind=self.kind,
            fields=tuple(self.fields.items()),
            defaults=tuple(self.defaults.items()),
            delimiter=self.delimiter,
            decimal_separator=self.decimal_separator,
            timestamp_format=self.timestamp_format,
            encoding_fallback=self.encoding_fallback,
        )


class StoreFile(BaseModel):
    """The store file: its tables, and the [[terminals]] entries."""

    model_config = TABLE

    store: StoreTable = Field(StoreTable.model_validate({}), description=StoreTable.__doc__)
    paths: PathsTable = Field(PathsTable.model_validate({}), description=PathsTable.__doc__)
    intake: IntakeTable = Field(IntakeTable.model_validate({}), description=IntakeTable.__doc__)
    delivery: DeliveryRules = Field(DeliveryRules(), description=DeliveryRules.__doc__)
    health: HealthRules = Field(HealthRules(), description=HealthRules.__doc__)
    dat: DatTable = Field(DatTable.model_validate({}), description=DatTable.__doc__)
    retention: RetentionTable = Field(
        RetentionTable.model_validate({}), description=RetentionTable.__doc__
    )
    sync: SyncTable = Field(SyncTable.model_validate({}), description=SyncTable.__doc__)
    alerts: AlertsTable = Field(AlertsTable.model_validate({}), description=AlertsTable.__doc__)
    metrics: MetricsTable = Field(MetricsTable.model_validate({}), description=MetricsTable.__doc__)
    mappings: dict[str, MappingTable] = Field(
        default_factory=dict, description=MappingTable.__doc__
    )
    terminals: tuple[TerminalEntry, ...] = Field((), description=TerminalEntry.__doc__)

    @model_validator(mode="before")
    @classmethod
    def _intake_stability_is_the_store_wide_delivery_default(cls, data: Any) -> Any:
        intake, delivery = data.get("intake"), data.get("delivery", {})
        if (
            isinstance(intake, dict)
            and isinstance(delivery, dict)
            and "stability_seconds" in intake
            and "stability_seconds" not in delivery
            and _plain_number(intake["stability_seconds"])
        ):
            data = {
                **data,
                "delivery": {**delivery, "stability_seconds": intake["stability_seconds"]},
            }
        return data

    @field_validator("mappings", mode="before")
    @classmethod
    def _not_built_in(cls, value: Any) -> Any:
        for name in value if isinstance(value, dict) else ():
            if name in INPUT_FORMATS:
                raise ValueError(f"{name!r} is a built-in format name: choose another")
        return value

    @model_validator(mode="after")
    def _terminals(self) -> StoreFile:
        if not self.terminals:
            raise ValueError("no [[terminals]] configured")
        seen: set[str] = set()
        for index, entry in enumerate(self.terminals):
            if entry.id in seen:
                raise ValueError(f"terminals[{index}]: terminal id {entry.id!r} appears twice")
            seen.add(entry.id)
            if entry.format not in INPUT_FORMATS and entry.format not in self.mappings:
                formats = ", ".join([*INPUT_FORMATS, *sorted(self.mappings)])
                raise ValueError(
                    f"terminals[{index}]: format {entry.format!r} is neither built in nor a "
                    f"[mappings] entry (known: {formats})"
                )
        return self


def _plain_number(value: Any) -> bool:
    stability = declared_fields(DeliveryRules)["stability_seconds"]
    low, high = (
        next(getattr(m, a) for m in stability.metadata if hasattr(m, a)) for a in ("ge", "le")
    )
    return isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high
