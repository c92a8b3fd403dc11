"""The store's configuration: where state lives and which POS terminals exist.

A store is described by one TOML file (``posfed.toml`` by default). Adding a terminal is a
config change: sensors and partitions are built from the registry loaded here.

Environment variables override what must not live in a file or differs per machine:
``POSFED_CONFIG`` (the file), ``POSFED_HOME`` (the state folder), ``POSFED_DB_URL`` (the central
database, credentials included).
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from posfed_pipeline.core.base.fsutil import ContentConflict, write_once
from posfed_pipeline.core.config.alert_settings import SMTP_SECURITY, AlertSettings
from posfed_pipeline.core.config.sync_policy import DEFAULT_STORE_ID, SyncPolicy
from posfed_pipeline.core.model.barcodes import GS1_REGIONS, region_code
from posfed_pipeline.core.model.delivery_rules import (
    DELIVERY_KEYS,
    HEALTH_KEYS,
    DeliveryRules,
    HealthRules,
    delivery_rules,
    health_rules,
)
from posfed_pipeline.packaged import default_dat_spec

DEFAULT_CONFIG_FILE = "posfed.toml"
FIRST_DAY_FILE = "first_business_day"  # in the home folder: see first_partition_day
# Terminal ids become Dagster sensor names and partition keys: keep them to that alphabet.
TERMINAL_ID_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
DEPARTMENT_PATTERN = re.compile(r"^[A-Za-z0-9]{1,8}$")
RECEIPT_ID_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9]{0,16}$")
# Part of every key in the central register, shared by a chain's stores.
STORE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
CANONICAL_FORMAT = "posfed-json"
# Built-in formats; every [mappings.<name>] of the store file adds one more.
POSLOG_FORMAT = "arts-poslog"  # ARTS/NRF POSLog XML: many transactions per file
INPUT_FORMATS = (CANONICAL_FORMAT, POSLOG_FORMAT)
MAPPING_KINDS = ("json", "csv")
# The canonical receipt's fields, named as in the posfed JSON; mappings say where each one is.
RECEIPT_FIELDS = ("receiptId", "terminalId", "departmentCode", "timestamp", "total")
ITEM_FIELDS = ("barcode", "description", "price", "quantity")
# Unmapped, these come from the terminal the file arrived from (which is authoritative anyway).
FIELDS_FROM_TERMINAL = ("terminalId", "departmentCode")
# Only these may fall back to a constant when a vendor does not send them.
DEFAULTABLE_FIELDS = ("description", "quantity")
VARIABLE_MEASURE_PREFIXES = tuple(str(p) for p in range(20, 30))
_JSON_PATH_TOKEN = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


class ConfigError(ValueError):
    """The configuration file is missing or says something posfed cannot use."""


JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class InputMapping:
    """How one vendor's receipt files map onto the canonical receipt (``[mappings.<name>]``).

    ``kind = "json"``: ``fields`` holds a path per canonical field (``a.b[0].c``); item fields
    are paths inside each element of the ``items`` list. ``kind = "csv"``: one row per item,
    ``fields`` holds a header column per canonical field, receipt fields repeated on every row.
    """

    name: str
    kind: str
    fields: tuple[tuple[str, str], ...]
    defaults: tuple[tuple[str, str], ...] = ()
    delimiter: str = ","
    decimal_separator: str = "."
    timestamp_format: str | None = None  # strptime format; ISO 8601 when unset
    encoding_fallback: str | None = None

    def source(self, canonical: str) -> str | None:
        return dict(self.fields).get(canonical)

    def default(self, canonical: str) -> str | None:
        return dict(self.defaults).get(canonical)

    def json_path(self, canonical: str) -> JsonPath | None:
        source = self.source(canonical)
        return parse_json_path(source) if source is not None else None


@dataclass(frozen=True)
class VariableMeasureScheme:
    """In-store EAN-13 codes (prefix 20-29) whose digits before the check digit hold a price.

    ``price_digits`` 5: digits 8-12 are the price in cents; 4: digits 9-12 (digit 8 is then
    the scale's own price check digit, which posfed does not interpret).
    """

    price_prefixes: tuple[str, ...] = VARIABLE_MEASURE_PREFIXES
    price_digits: int = 5


@dataclass(frozen=True)
class Terminal:
    """One POS terminal of one tenant (the independent business behind a department)."""

    id: str
    department: str
    tenant: str
    inbox: Path
    timezone: ZoneInfo
    input_format: str = CANONICAL_FORMAT
    allow_returns: bool = False
    mapping: InputMapping | None = None  # None: the canonical posfed JSON
    encoding_fallback: str | None = None  # tried only when a file is not UTF-8
    quantity_decimals: int = 3  # weighed items: kilograms to the gram
    variable_measure: VariableMeasureScheme | None = None
    # How in-store codes (RCNs) read: a biip region code from [store] gs1_region, or None.
    gs1_region: str | None = None
    # A price, amount or weight on a scale label must agree with its line (core.validation).
    check_labels: bool = False
    # POSLog's WorkstationID for this till, when it is not the terminal's id.
    workstation_id: str | None = None
    # The terminal's own receipt numbers all begin with this (its number range): what tells two
    # terminals of one department apart in a .dat name like scon{department}{receiptId}.dat.
    receipt_id_prefix: str = ""
    # Receipt ids numbered in sequence: the regex's one group is the number. The daily
    # reconciliation lists the numbers of a day that never arrived.
    receipt_number_pattern: re.Pattern[str] | None = None
    delivery: DeliveryRules = DeliveryRules()  # how its files arrive and when one is complete
    health: HealthRules = HealthRules()  # when its silence or its backlog needs a look

    @property
    def folder(self) -> Path:
        return self.inbox.parent

    @property
    def archive_root(self) -> Path:
        return self.folder / "archive"

    @property
    def quarantine(self) -> Path:
        return self.folder / "quarantine"

    def archive_dir(self, business_day: date) -> Path:
        return self.archive_root / business_day.strftime("%Y%m%d")


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
    # Terminal x day partitions cover this many months before the current one (0: all days
    # since first_partition_day); see terminal_day_start.
    partition_window_months: int = 12
    # A file is taken only once its size and mtime have been unchanged this long.
    stability_seconds: float = 0.3
    max_clock_skew_seconds: int = 300
    max_age_days: int = 45
    # Files whose run failed are launched again after this, doubling per attempt (5 min cap).
    relaunch_after_seconds: float = 10.0
    # While the event-driven trigger runs, sensors only take files at least this old.
    catchup_grace_seconds: float = 10.0
    # Each terminal's sensor (the catch-up path) is evaluated at most this often. Every tick
    # costs the daemon a few tens of milliseconds whether or not a file came, times the
    # terminals; the fast path takes new files within milliseconds meanwhile.
    catchup_interval_seconds: float = 30.0
    # A file that does not parse (empty, cut-off JSON, broken UTF-8) but changed more recently
    # than this may still be being written (a writer that closes and reopens, a slow share):
    # it is left in the inbox and looked at again, and quarantined only once it is this old.
    incomplete_grace_seconds: float = 10.0
    # Day folders (archive, .dat) older than this are compressed into per-day .tar.gz files.
    retention_days: int = 90
    sync: SyncPolicy = field(default_factory=SyncPolicy)
    alerts: AlertSettings = field(default_factory=AlertSettings)
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
        business day: the oldest .dat day folder, or today, recorded once in the home folder,
        so every process agrees on the partitions, today and after any restart."""
        if self.partitions_start is not None:
            return self.partitions_start
        record = self.home / FIRST_DAY_FILE
        try:
            return date.fromisoformat(record.read_text().strip())
        except (FileNotFoundError, ValueError):
            pass
        today = datetime.now(self.timezone).date()
        days = [today]
        if self.dat_dir.is_dir():
            for entry in self.dat_dir.iterdir():
                with contextlib.suppress(ValueError):
                    days.append(datetime.strptime(entry.name[:8], "%Y%m%d").date())
        self.home.mkdir(parents=True, exist_ok=True)
        # The first process to ask records it (atomically); any other reads what it wrote.
        with contextlib.suppress(ContentConflict):
            write_once(record, f"{min(days).isoformat()}\n".encode())
        return date.fromisoformat(record.read_text().strip())

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


def resolve_config_path(path: str | os.PathLike[str] | None = None) -> Path:
    candidate = path or os.environ.get("POSFED_CONFIG") or DEFAULT_CONFIG_FILE
    return Path(candidate).expanduser().resolve()


TOP_LEVEL_TABLES = {
    "store",
    "paths",
    "intake",
    "dat",
    "retention",
    "sync",
    "alerts",
    "mappings",
    "terminals",
    "delivery",
    "health",
}
TABLE_KEYS = {
    "store": {
        "id",
        "name",
        "timezone",
        "partitions_start",
        "partition_window_months",
        "variable_measure",
        "gs1_region",
        "weighed_departments",
    },
    "paths": {"home", "terminals", "dat"},
    "intake": {
        "stability_seconds",
        "max_clock_skew_seconds",
        "max_age_days",
        "relaunch_after_seconds",
        "catchup_grace_seconds",
        "catchup_interval_seconds",
        "incomplete_grace_seconds",
    },
    "dat": {"spec"},
    "delivery": set(DELIVERY_KEYS),
    "health": set(HEALTH_KEYS),
    "retention": {"keep_days"},
    "sync": {
        "batch_size",
        "backoff_cap_seconds",
        "call_timeout_seconds",
        "min_interval_seconds",
        "warn_after_seconds",
        "fail_after_seconds",
    },
    "alerts": {
        "email_to",
        "email_from",
        "smtp_host",
        "smtp_port",
        "smtp_security",
        "smtp_user",
        "webhook_url",
        "timeout_seconds",
    },
}
TERMINAL_KEYS = {
    "id",
    "department",
    "tenant",
    "inbox",
    "timezone",
    "format",
    "encoding_fallback",
    "quantity_decimals",
    "variable_measure",
    "check_labels",
    "workstation_id",
    "allow_returns",
    "receipt_id_prefix",
    "receipt_number_pattern",
    *DELIVERY_KEYS,
    *HEALTH_KEYS,
}


def _refuse_unknown_keys(table: dict, known: set[str], place: str, what: str = "setting") -> None:
    """A misspelt key would silently mean its default, and credentials must not sit here."""
    unknown = sorted(set(table) - known)
    if unknown:
        hint = ""
        if place.endswith("[alerts]") and any("password" in k for k in unknown):
            hint = " (the SMTP password comes from POSFED_SMTP_PASSWORD only)"
        elif any(k == "database" or "db" in k or "password" in k for k in unknown):
            hint = (
                " (the central database is set through the environment only: POSFED_DB_URL or "
                "POSFED_DB_HOST/PORT/NAME/USER, and POSFED_DB_PASSWORD; credentials never go in "
                "this file)"
            )
        raise ConfigError(
            f"{place}: unknown {what}(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(known))}{hint}"
        )


def load_config(path: str | os.PathLike[str] | None = None) -> PosfedConfig:
    """Read and check the store configuration; every problem is reported with its place."""
    config_path = resolve_config_path(path)
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no configuration at {config_path}; set POSFED_CONFIG or run from the repo root"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
    return config_from_dict(raw, base_dir=config_path.parent, config_path=config_path)


def config_from_dict(raw: dict, *, base_dir: Path, config_path: Path | None = None) -> PosfedConfig:
    where = str(config_path or "configuration")
    _refuse_unknown_keys(raw, TOP_LEVEL_TABLES, where, what="section")
    store = raw.get("store", {})
    paths = raw.get("paths", {})
    intake = raw.get("intake", {})
    dat = raw.get("dat", {})
    for table, known in TABLE_KEYS.items():
        if isinstance(raw.get(table), dict):
            _refuse_unknown_keys(raw[table], known, f"{where}: [{table}]")

    timezone = _zone(store.get("timezone", "UTC"), f"{where}: [store] timezone")
    store_id = str(store.get("id", DEFAULT_STORE_ID))
    if not STORE_ID_PATTERN.match(store_id):
        raise ConfigError(
            f"{where}: [store] id {store_id!r} must be 1-32 letters, digits, '.', '-' or '_', "
            "starting with a letter or digit: it is part of every key in the central register"
        )
    mappings = _mappings(raw.get("mappings", {}), where)
    store_variable_measure = (
        _variable_measure(store["variable_measure"], f"{where}: [store.variable_measure]")
        if "variable_measure" in store
        else None
    )
    gs1_region = _gs1_region(store.get("gs1_region"), f"{where}: [store] gs1_region")
    weighed_departments = _department_list(
        store.get("weighed_departments", []), f"{where}: [store] weighed_departments"
    )
    stability = intake.get("stability_seconds", 0.3)
    if isinstance(stability, bool) or not isinstance(stability, int | float):
        raise ConfigError(f"{where}: [intake] stability_seconds must be a number")
    if not 0 <= stability <= 60:
        raise ConfigError(f"{where}: [intake] stability_seconds must be between 0 and 60")
    store_delivery = _rules(
        delivery_rules,
        raw.get("delivery", {}),
        DeliveryRules(stability_seconds=float(stability)),
        f"{where}: [delivery]",
    )
    store_health = _rules(health_rules, raw.get("health", {}), HealthRules(), f"{where}: [health]")
    home_setting = os.environ.get("POSFED_HOME") or paths.get("home", ".posfed")
    home = _resolve(home_setting, base_dir if "POSFED_HOME" not in os.environ else Path.cwd())
    terminals_root = _resolve(paths.get("terminals", "terminals"), home)

    terminals: list[Terminal] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw.get("terminals", [])):
        if isinstance(entry, dict):
            _refuse_unknown_keys(entry, TERMINAL_KEYS, f"{where}: terminals[{index}]")
        place = f"{where}: terminals[{index}]"
        terminal_id = str(entry.get("id", ""))
        if not TERMINAL_ID_PATTERN.match(terminal_id):
            raise ConfigError(
                f"{place}: id {terminal_id!r} must start with a letter and use only letters, "
                "digits and '_' (at most 32)"
            )
        if terminal_id in seen:
            raise ConfigError(f"{place}: terminal id {terminal_id!r} appears twice")
        seen.add(terminal_id)
        department = str(entry.get("department", ""))
        if not DEPARTMENT_PATTERN.match(department):
            raise ConfigError(f"{place}: department {department!r} must be 1-8 letters or digits")
        input_format = entry.get("format", CANONICAL_FORMAT)
        if input_format not in INPUT_FORMATS and input_format not in mappings:
            formats = ", ".join([*INPUT_FORMATS, *sorted(mappings)])
            raise ConfigError(
                f"{place}: format {input_format!r} is neither built in nor a [mappings] entry "
                f"(known: {formats})"
            )
        mapping = mappings.get(input_format)
        encoding_fallback = _encoding(entry.get("encoding_fallback"), place) or (
            mapping.encoding_fallback if mapping else None
        )
        quantity_decimals = entry.get("quantity_decimals", 3)
        if type(quantity_decimals) is not int or not 0 <= quantity_decimals <= 6:
            raise ConfigError(f"{place}: quantity_decimals must be a whole number from 0 to 6")
        variable_measure = entry.get("variable_measure")
        if variable_measure is None:
            terminal_variable_measure = store_variable_measure
        elif variable_measure is False:
            terminal_variable_measure = None
        else:
            terminal_variable_measure = _variable_measure(
                variable_measure, f"{place}: variable_measure"
            )
        check_labels = entry.get("check_labels", department in weighed_departments)
        if not isinstance(check_labels, bool):
            raise ConfigError(f"{place}: check_labels must be true or false")
        receipt_id_prefix = str(entry.get("receipt_id_prefix", ""))
        if not RECEIPT_ID_PREFIX_PATTERN.match(receipt_id_prefix):
            raise ConfigError(
                f"{place}: receipt_id_prefix {receipt_id_prefix!r} must be at most 16 letters or "
                "digits"
            )
        number_pattern = _number_pattern(entry.get("receipt_number_pattern"), place)
        inbox = (
            _resolve(entry["inbox"], base_dir)
            if "inbox" in entry
            else terminals_root / terminal_id / "inbox"
        )
        terminals.append(
            Terminal(
                id=terminal_id,
                department=department,
                tenant=str(entry.get("tenant") or department),
                inbox=inbox,
                timezone=_zone(entry["timezone"], place) if "timezone" in entry else timezone,
                input_format=input_format,
                allow_returns=bool(entry.get("allow_returns", False)),
                mapping=mapping,
                encoding_fallback=encoding_fallback,
                quantity_decimals=quantity_decimals,
                variable_measure=terminal_variable_measure,
                gs1_region=gs1_region,
                check_labels=check_labels,
                workstation_id=_optional_text(entry.get("workstation_id"), place, "workstation_id"),
                receipt_id_prefix=receipt_id_prefix,
                receipt_number_pattern=number_pattern,
                delivery=_rules(delivery_rules, entry, store_delivery, place),
                health=_rules(health_rules, entry, store_health, place),
            )
        )
    if not terminals:
        raise ConfigError(f"{where}: no [[terminals]] configured")

    try:
        start = store.get("partitions_start")
        partitions_start = date.fromisoformat(str(start)) if start is not None else None
    except ValueError as exc:
        raise ConfigError(f"{where}: [store] partitions_start: {exc}") from None

    in_intake, in_retention = f"{where}: [intake]", f"{where}: [retention]"
    config = PosfedConfig(
        store_id=store_id,
        store_name=str(store.get("name", store_id)),
        timezone=timezone,
        home=home,
        terminals=tuple(terminals),
        # No spec named: the one posfed ships (posfed_pipeline/dat_specs, linked as dat_specs/).
        dat_spec=_resolve(dat["spec"], base_dir) if "spec" in dat else default_dat_spec(),
        dat_dir=_resolve(paths.get("dat", "dat"), home),
        db_url=_central_database_url(home),
        partitions_start=partitions_start,
        partition_window_months=_whole(
            store, "partition_window_months", 12, 0, 1200, f"{where}: [store]"
        ),
        stability_seconds=float(stability),
        max_clock_skew_seconds=_whole(intake, "max_clock_skew_seconds", 300, 0, 86400, in_intake),
        max_age_days=_whole(intake, "max_age_days", 45, 1, 36500, in_intake),
        relaunch_after_seconds=_between(intake, "relaunch_after_seconds", 10.0, 0, 3600, in_intake),
        catchup_grace_seconds=_between(intake, "catchup_grace_seconds", 10.0, 0, 3600, in_intake),
        catchup_interval_seconds=_between(
            intake, "catchup_interval_seconds", 30.0, 1, 600, in_intake
        ),
        incomplete_grace_seconds=_between(
            intake, "incomplete_grace_seconds", 10.0, 0, 3600, in_intake
        ),
        retention_days=_whole(raw.get("retention", {}), "keep_days", 90, 1, 36500, in_retention),
        sync=_sync_policy(raw.get("sync", {}), f"{where}: [sync]", store_id),
        alerts=_alert_settings(raw.get("alerts", {}), f"{where}: [alerts]"),
        config_path=config_path,
    )
    _refuse_shared_dat_names(config, where)
    return config


def _refuse_shared_dat_names(config: PosfedConfig, where: str) -> None:
    """One .dat file is one sale: terminals whose file names could coincide never start."""
    # Imported here: loading a spec is work, and most of the .dat engine is not config's.
    from posfed_pipeline.core.dat import SpecError, load_spec
    from posfed_pipeline.core.dat.names import HOW_TO_TELL_APART, dat_name_clashes

    try:
        spec = load_spec(config.dat_spec)
    except (OSError, SpecError):
        # Reported where a spec is needed (a receipts run, `posfed spec check`): commands that
        # never render one, such as `posfed db upgrade --sql` for a DBA, still work.
        return
    clashes = dat_name_clashes(config.terminals, spec)
    if clashes:
        raise ConfigError(
            f"{where}: these terminals could write the same .dat file, and one file would be "
            "two sales to the billing software:\n"
            + "".join(f"  - {clash}\n" for clash in clashes[:20])
            + (f"  ... and {len(clashes) - 20} more\n" if len(clashes) > 20 else "")
            + HOW_TO_TELL_APART
        )


def _rules(parse, table: object, defaults, place: str):
    if not isinstance(table, dict):
        raise ConfigError(f"{place}: must be a table")
    try:
        return parse(table, defaults)
    except ValueError as exc:
        raise ConfigError(f"{place}: {exc}") from None


def _number_pattern(value: object, place: str) -> re.Pattern[str] | None:
    if value is None:
        return None
    try:
        pattern = re.compile(str(value))
    except re.error as exc:
        raise ConfigError(f"{place}: receipt_number_pattern {value!r}: {exc}") from None
    if pattern.groups != 1:
        raise ConfigError(
            f"{place}: receipt_number_pattern {value!r} needs exactly one group, around the "
            'number: e.g. "1C(\\d+)" for 1C0001, 1C0002, ...'
        )
    return pattern


def _between(table: dict, key: str, default: float, low: float, high: float, place: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigError(f"{place} {key} must be a number from {low:g} to {high:g}")
    return float(value)


def partition_window_start(first_day: date, today: date, months: int) -> date:
    """The first of the month ``months`` before ``today``'s, or ``first_day`` if later
    (``months`` 0: ``first_day``)."""
    if not months:
        return first_day
    index = today.year * 12 + today.month - 1 - months
    return max(first_day, date(index // 12, index % 12 + 1, 1))


def _central_database_url(home: Path) -> str:
    """POSFED_DB_URL, else the POSFED_DB_* parts, else the embedded SQLite under ``home``.

    SQLAlchemy builds (and checks) a URL from the environment; it is imported only then, so
    loading the configuration of an embedded store imports no database library."""
    embedded = f"sqlite:///{home / 'central.db'}"
    if not any(os.environ.get(name) for name in ("POSFED_DB_URL", "POSFED_DB_DIALECT")):
        return embedded
    from posfed_pipeline.core.central_db.engines import database_url_from_env

    return database_url_from_env(default=embedded)


def _whole(table: dict, key: str, default: int, low: int, high: int, place: str) -> int:
    value = table.get(key, default)
    if type(value) is not int or not low <= value <= high:
        raise ConfigError(f"{place} {key} must be a whole number from {low} to {high}")
    return value


def _positive(table: dict, key: str, default: float, place: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{place}: {key} must be a positive number")
    return float(value)


def _sync_policy(table: dict, place: str, store_id: str) -> SyncPolicy:
    default = SyncPolicy()
    batch_size = table.get("batch_size", default.batch_size)
    if type(batch_size) is not int or not 1 <= batch_size <= 10_000:
        raise ConfigError(f"{place}: batch_size must be a whole number from 1 to 10000")
    policy = SyncPolicy(
        store_id=store_id,
        batch_size=batch_size,
        backoff_cap_seconds=_positive(
            table, "backoff_cap_seconds", default.backoff_cap_seconds, place
        ),
        call_timeout_seconds=_positive(
            table, "call_timeout_seconds", default.call_timeout_seconds, place
        ),
        min_interval_seconds=_positive(
            table, "min_interval_seconds", default.min_interval_seconds, place
        ),
        warn_after_seconds=_positive(
            table, "warn_after_seconds", default.warn_after_seconds, place
        ),
        fail_after_seconds=_positive(
            table, "fail_after_seconds", default.fail_after_seconds, place
        ),
    )
    if policy.fail_after_seconds <= policy.warn_after_seconds:
        raise ConfigError(f"{place}: fail_after_seconds must be more than warn_after_seconds")
    return policy


def _alert_settings(table: dict, place: str) -> AlertSettings:
    email_to = table.get("email_to", [])
    if isinstance(email_to, str):
        email_to = [email_to]
    if not isinstance(email_to, list) or not all(isinstance(a, str) and "@" in a for a in email_to):
        raise ConfigError(f'{place}: email_to must list e-mail addresses (["ops@example.com"])')
    security = table.get("smtp_security", "none")
    if security not in SMTP_SECURITY:
        raise ConfigError(f"{place}: smtp_security must be one of {', '.join(SMTP_SECURITY)}")
    port = table.get("smtp_port", 465 if security == "ssl" else 25)
    if type(port) is not int or not 0 < port < 65536:
        raise ConfigError(f"{place}: smtp_port must be a port number")
    webhook = table.get("webhook_url")
    if webhook is not None and (
        not isinstance(webhook, str) or not webhook.startswith(("http://", "https://"))
    ):
        raise ConfigError(f"{place}: webhook_url must be an http:// or https:// URL")
    return AlertSettings(
        email_to=tuple(email_to),
        email_from=str(table.get("email_from", AlertSettings.email_from)),
        smtp_host=str(table.get("smtp_host", AlertSettings.smtp_host)),
        smtp_port=port,
        smtp_security=security,
        smtp_user=table.get("smtp_user"),
        webhook_url=webhook,
        timeout_seconds=_positive(table, "timeout_seconds", AlertSettings.timeout_seconds, place),
    )


def parse_json_path(text: str) -> JsonPath:
    """``"header.lines[0].id"`` -> ``("header", "lines", 0, "id")``; ValueError if malformed."""
    steps: list[str | int] = []
    position = 0
    while position < len(text):
        match = _JSON_PATH_TOKEN.match(text, position)
        if not match or (match.group(0).startswith(".") and not steps):
            raise ValueError(f"path {text!r} is malformed at character {position + 1}")
        key, index = match.groups()
        steps.append(int(index) if index is not None else key)
        position = match.end()
    if not steps:
        raise ValueError("path is empty")
    return tuple(steps)


def _mappings(raw: object, where: str) -> dict[str, InputMapping]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [mappings] must be a table of named mappings")
    mappings = {}
    for name, table in raw.items():
        place = f"{where}: [mappings.{name}]"
        if name in INPUT_FORMATS:
            raise ConfigError(f"{place}: {name!r} is a built-in format name")
        if not isinstance(table, dict):
            raise ConfigError(f"{place}: must be a table")
        mappings[name] = _mapping(name, table, place)
    return mappings


def _mapping(name: str, table: dict, place: str) -> InputMapping:
    known_keys = {
        "kind",
        "fields",
        "defaults",
        "delimiter",
        "decimal_separator",
        "timestamp_format",
        "encoding_fallback",
        "description",
    }
    _refuse_unknown_keys(table, known_keys, place)
    kind = table.get("kind")
    if kind not in MAPPING_KINDS:
        raise ConfigError(f"{place}: kind must be one of {', '.join(MAPPING_KINDS)}")
    fields = table.get("fields")
    defaults = table.get("defaults", {})
    if not isinstance(fields, dict) or not isinstance(defaults, dict):
        raise ConfigError(f"{place}: fields and defaults must be tables")
    canonical = (*RECEIPT_FIELDS, *ITEM_FIELDS, *(("items",) if kind == "json" else ()))
    for key, value in fields.items():
        if key not in canonical:
            raise ConfigError(
                f"{place}: fields.{key} is not a canonical field ({', '.join(canonical)})"
            )
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{place}: fields.{key} must be a non-empty string")
        if kind == "json":
            try:
                parse_json_path(value)
            except ValueError as exc:
                raise ConfigError(f"{place}: fields.{key}: {exc}") from None
    for key, value in defaults.items():
        if key not in DEFAULTABLE_FIELDS:
            raise ConfigError(
                f"{place}: defaults.{key}: only {', '.join(DEFAULTABLE_FIELDS)} may have a default"
            )
        if not isinstance(value, str):
            raise ConfigError(f'{place}: defaults.{key} must be a string (e.g. "1")')
    missing = [
        key
        for key in canonical
        if key not in fields and key not in FIELDS_FROM_TERMINAL and key not in defaults
    ]
    if missing:
        raise ConfigError(f"{place}: no source for {', '.join(missing)} (add them to fields)")
    delimiter = table.get("delimiter", ",")
    if kind == "csv" and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise ConfigError(f'{place}: delimiter must be one character (use "\\t" for tab)')
    decimal_separator = table.get("decimal_separator", ".")
    if decimal_separator not in (".", ","):
        raise ConfigError(f'{place}: decimal_separator must be "." or ","')
    timestamp_format = table.get("timestamp_format")
    if timestamp_format is not None and (
        not isinstance(timestamp_format, str) or "%" not in timestamp_format
    ):
        raise ConfigError(f"{place}: timestamp_format must be a strptime format like %d-%m-%Y")
    return InputMapping(
        name=name,
        kind=kind,
        fields=tuple(fields.items()),
        defaults=tuple(defaults.items()),
        delimiter=delimiter,
        decimal_separator=decimal_separator,
        timestamp_format=timestamp_format,
        encoding_fallback=_encoding(table.get("encoding_fallback"), place),
    )


def _encoding(value: object, place: str) -> str | None:
    if value is None:
        return None
    try:
        return codecs.lookup(str(value)).name
    except LookupError:
        raise ConfigError(f"{place}: encoding_fallback {value!r} is not a known encoding") from None


def _variable_measure(raw: object, place: str) -> VariableMeasureScheme:
    if not isinstance(raw, dict):
        raise ConfigError(f"{place}: must be a table (or false on a terminal to switch it off)")
    _refuse_unknown_keys(raw, {"price_prefixes", "price_digits"}, place)
    prefixes = raw.get("price_prefixes", list(VARIABLE_MEASURE_PREFIXES))
    if (
        not isinstance(prefixes, list)
        or not prefixes
        or any(str(p) not in VARIABLE_MEASURE_PREFIXES for p in prefixes)
    ):
        raise ConfigError(f'{place}: price_prefixes must list in-store prefixes "20" to "29"')
    digits = raw.get("price_digits", 5)
    if digits not in (4, 5) or type(digits) is not int:
        raise ConfigError(f"{place}: price_digits must be 4 or 5")
    return VariableMeasureScheme(tuple(str(p) for p in prefixes), digits)


def _gs1_region(value: object, place: str) -> str | None:
    if value is None:
        return None
    code = region_code(value) if isinstance(value, str) else None
    if code is None:
        known = ", ".join(sorted(GS1_REGIONS))
        raise ConfigError(
            f"{place}: {value!r} is not a region whose in-store code rules posfed knows "
            f"(known: {known}). Elsewhere leave it unset and describe the store's price codes "
            "with [store.variable_measure]."
        )
    return code


def _optional_text(value: object, place: str, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise ConfigError(f"{place}: {key} must be a non-empty text or number")
    return str(value).strip()


def _department_list(value: object, place: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f'{place}: must be a list of department codes, e.g. ["20", "40"]')
    return frozenset(value)


def _resolve(value: str | os.PathLike[str], base: Path) -> Path:
    path = Path(value).expanduser()
    # abspath, not resolve(): resolving stats every component, and an inbox on a network
    # share that hangs would hang whoever loads the configuration (every run, every sensor).
    return Path(os.path.abspath(path if path.is_absolute() else base / path))


def _zone(name: str, place: str) -> ZoneInfo:
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{place}: unknown timezone {name!r}") from None
