"""The head office file (``headoffice.toml``): the chain's stores as the head office watches
them, for ``posfed headoffice`` (its own Dagster code location, never a store's).

Each store runs its own posfed and feeds the chain's central database; the head office reads
that database and nothing else. What it cannot read there, this file says: each store's time
zone and opening hours (when its silence means trouble), and how long a silence or a sync lag
may last. ``[store_defaults]`` holds what most stores share; a ``[[stores]]`` entry overrides
it for one store. A store that sends receipts but is not listed is still shown, judged by the
defaults, and flagged (its own checks need its entry). The central database is named by the
environment only, as for a store: ``POSFED_DB_URL`` or ``POSFED_DB_*``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from posfed_pipeline.core.config.environment import resolve_path
from posfed_pipeline.core.config.errors import ConfigError, refused
from posfed_pipeline.core.config.schema import STORE_ID_PATTERN
from posfed_pipeline.core.model.settings import TABLE
from posfed_pipeline.core.model.terminal import (
    WEEKDAYS,
    HealthRules,
    Zone,
    parse_open_days,
    parse_opening_hours,
    text,
)
from posfed_pipeline.names import store_name
from posfed_pipeline.packaged import headoffice_example

HEADOFFICE_CONFIG_ENV = "POSFED_HEADOFFICE_CONFIG"
DEFAULT_HEADOFFICE_FILE = "headoffice.toml"
_HH_MM = "%H:%M"


class HeadOfficeTable(BaseModel):
    """``[headoffice]``: the head office's own settings."""

    model_config = ConfigDict(**TABLE, arbitrary_types_allowed=True)

    name: str = Field("head office", description="shown in the Dagster UI")
    timezone: Zone = Field(
        ZoneInfo("UTC"),
        description="the chain's day: its daily partitions and schedules run in this zone, "
        "and it is a store's zone unless the store names its own",
    )
    home: str = Field(
        ".posfed-headoffice",
        description="the head office's state (its Dagster instance), relative to this file",
    )
    partitions_start: date = Field(
        description="the first business day the chain's settlements offer (a backfill reaches "
        "back to it)"
    )
    settlement_days: int = Field(
        7,
        strict=True,
        ge=1,
        le=92,
        description="how many business days back the not-settled list looks, and the daily "
        "chain settlement refreshes (late receipts revise a store's settlement)",
    )
    settled_by: time = Field(
        time(3, 0),
        description="a store's business day must be settled by this local time the day after, "
        'e.g. "03:00" (a store settles at 00:45); the chain settlement runs at this time in '
        "the chain's zone",
    )

    @field_validator("name", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return text(value)

    @field_validator("partitions_start", mode="before")
    @classmethod
    def _day(cls, value: Any) -> Any:
        if type(value) is date:
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError as exc:
            raise ValueError(f"partitions_start: {exc}") from None

    @field_validator("settled_by", mode="before")
    @classmethod
    def _time_of_day(cls, value: Any) -> Any:
        if isinstance(value, time):
            return value.replace(second=0, microsecond=0)
        try:
            return datetime.strptime(str(value), _HH_MM).time()
        except ValueError:
            raise ValueError(f'settled_by must read like "03:00" (got {value!r})') from None


OpeningHours = Annotated[tuple[time, time] | None, BeforeValidator(parse_opening_hours)]
OpenDays = Annotated[tuple[str, ...], BeforeValidator(parse_open_days)]


class StoreRules(BaseModel):
    """``[store_defaults]``: what a ``[[stores]]`` entry says unless it says otherwise."""

    model_config = ConfigDict(**TABLE, arbitrary_types_allowed=True)

    timezone: Zone | None = Field(
        None, description="the store's business day and opening hours (default: the chain's)"
    )
    opening_hours: OpeningHours = Field(
        None,
        description='when the store is open, e.g. "07:00-21:00" (unset or "always": always '
        "open); its silence is judged only then",
    )
    open_days: OpenDays = Field(WEEKDAYS, description="the days the store opens")
    silent_after_minutes: float = Field(
        30.0,
        strict=True,
        ge=1,
        le=7 * 24 * 60,
        description="no new receipt in the central database for this long while the store is "
        "open: its `<store>_is_sending` check fails",
    )
    max_sync_lag_minutes: float = Field(
        15.0,
        strict=True,
        ge=0.1,
        le=24 * 60,
        description="its newest receipts reached the central database more than this after "
        "their .dat was written: its `<store>_sync_is_current` check fails",
    )


class StoreEntry(StoreRules):
    """``[[stores]]``: one store of the chain, by its ``[store] id``. An entry may also set any
    ``[store_defaults]`` key for that store alone."""

    id: str = Field(
        description="the store's `[store] id`, as in every row it writes to the central database"
    )
    name: str | None = Field(None, description="the store's name (default: its id)")

    @field_validator("id", "name", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return text(value)

    @field_validator("id")
    @classmethod
    def _store_id(cls, value: str) -> str:
        if not STORE_ID_PATTERN.match(value):
            raise ValueError(
                f"id {value!r} is not a store id (1-32 letters, digits, '.', '-' or '_', "
                "starting with a letter or digit)"
            )
        return value


class HeadOfficeFile(BaseModel):
    """The head office file: its tables, and the [[stores]] entries."""

    model_config = TABLE

    headoffice: HeadOfficeTable = Field(description=HeadOfficeTable.__doc__)
    store_defaults: StoreRules = Field(
        StoreRules.model_validate({}), description=StoreRules.__doc__
    )
    stores: tuple[StoreEntry, ...] = Field((), description=StoreEntry.__doc__)

    @model_validator(mode="before")
    @classmethod
    def _defaults_under_each_store(cls, data: Any) -> Any:
        defaults, stores = data.get("store_defaults", {}), data.get("stores", [])
        if isinstance(defaults, dict) and isinstance(stores, list):
            merged = [{**defaults, **s} if isinstance(s, dict) else s for s in stores]
            data = {**data, "stores": merged}
        return data

    @model_validator(mode="after")
    def _one_entry_per_store(self) -> HeadOfficeFile:
        seen: dict[str, str] = {}  # the name its checks get -> store id
        for index, entry in enumerate(self.stores):
            check_name = store_name(entry.id)  # its checks' names
            if check_name in seen:
                same = (
                    "appears twice"
                    if seen[check_name] == entry.id
                    else (f"and {seen[check_name]!r} would name the same checks")
                )
                raise ValueError(f"stores[{index}]: store id {entry.id!r} {same}")
            seen[check_name] = entry.id
        return self


@dataclass(frozen=True)
class WatchedStore:
    """A store as the head office judges it."""

    id: str
    name: str
    timezone: ZoneInfo
    hours: HealthRules  # opening_hours and open_days: when its silence means trouble
    silent_after: timedelta
    max_sync_lag: timedelta
    listed: bool = True  # False: found in the central database, not in headoffice.toml

    def local(self, now: datetime) -> datetime:
        return now.astimezone(self.timezone)

    def is_open(self, now: datetime) -> bool:
        return self.hours.is_open(self.local(now))


@dataclass(frozen=True)
class HeadOfficeConfig:
    name: str
    timezone: ZoneInfo
    home: Path
    partitions_start: date
    settlement_days: int
    settled_by: time
    stores: tuple[WatchedStore, ...]
    defaults: StoreRules
    config_path: Path | None = None

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster_home"

    @property
    def store_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.stores)

    def store(self, store_id: str) -> WatchedStore:
        """The store's entry; one not listed gets the defaults (``listed`` False)."""
        for store in self.stores:
            if store.id == store_id:
                return store
        return _watched(self.defaults, store_id, None, self.timezone, listed=False)

    def day_closed(self, store: WatchedStore, business_day: date, now: datetime) -> bool:
        """Whether ``business_day`` should be settled by now: ``settled_by`` the day after,
        in the store's zone."""
        due = datetime.combine(business_day + timedelta(days=1), self.settled_by, store.timezone)
        return now >= due


def resolve_headoffice_path(path: str | os.PathLike[str] | None = None) -> Path:
    candidate = path or os.environ.get(HEADOFFICE_CONFIG_ENV) or DEFAULT_HEADOFFICE_FILE
    return Path(candidate).expanduser().resolve()


def load_headoffice_config(path: str | os.PathLike[str] | None = None) -> HeadOfficeConfig:
    """Read and check the head office file (default: $POSFED_HEADOFFICE_CONFIG or
    ./headoffice.toml); every problem is reported with its place."""
    config_path = resolve_headoffice_path(path)
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"no head office configuration at {config_path}; set {HEADOFFICE_CONFIG_ENV} or "
            f"pass its path (a commented example: {headoffice_example()})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
    return headoffice_config_from_dict(raw, base_dir=config_path.parent, config_path=config_path)


def headoffice_config_from_dict(
    raw: dict, *, base_dir: Path, config_path: Path | None = None
) -> HeadOfficeConfig:
    where = str(config_path or "head office configuration")
    try:
        file = HeadOfficeFile.model_validate(raw)
    except ValidationError as exc:
        raise refused(exc, HeadOfficeFile, where) from None
    office = file.headoffice
    return HeadOfficeConfig(
        name=office.name,
        timezone=office.timezone,
        home=resolve_path(office.home, base_dir),
        partitions_start=office.partitions_start,
        settlement_days=office.settlement_days,
        settled_by=office.settled_by,
        stores=tuple(
            _watched(entry, entry.id, entry.name, office.timezone) for entry in file.stores
        ),
        defaults=file.store_defaults,
        config_path=config_path,
    )


def _watched(
    rules: StoreRules, store_id: str, name: str | None, chain_zone: ZoneInfo, *, listed=True
) -> WatchedStore:
    return WatchedStore(
        id=store_id,
        name=name or store_id,
        timezone=rules.timezone or chain_zone,
        hours=HealthRules(opening_hours=rules.opening_hours, open_days=rules.open_days),
        silent_after=timedelta(minutes=rules.silent_after_minutes),
        max_sync_lag=timedelta(minutes=rules.max_sync_lag_minutes),
        listed=listed,
    )


def headoffice_database_url() -> str:
    """The central database the head office reads: POSFED_DB_URL, else the POSFED_DB_* parts
    (credentials never go in headoffice.toml)."""
    from posfed_pipeline.core.central_db.engines import database_url_from_env

    url = database_url_from_env(default="")
    if not url:
        raise ConfigError(
            "the head office reads the central database named by POSFED_DB_URL (or "
            "POSFED_DB_DIALECT/HOST/PORT/NAME/USER, and POSFED_DB_PASSWORD): set it"
        )
    return url
