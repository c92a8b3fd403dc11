"""The store's configuration: where state lives and which POS terminals exist.

A store is described by one TOML file (``posfed.toml`` by default). Adding a terminal is a
config change: sensors and partitions are built from the registry loaded here.

Environment variables override what must not live in a file or differs per machine:
``POSFED_CONFIG`` (the file), ``POSFED_HOME`` (the state folder), ``POSFED_DB_URL`` (the central
database, credentials included).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DEFAULT_CONFIG_FILE = "posfed.toml"
# Terminal ids become Dagster sensor names and partition keys: keep them to that alphabet.
TERMINAL_ID_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
DEPARTMENT_PATTERN = re.compile(r"^[A-Za-z0-9]{1,8}$")
INPUT_FORMATS = ("posfed-json",)


class ConfigError(ValueError):
    """The configuration file is missing or says something posfed cannot use."""


@dataclass(frozen=True)
class Terminal:
    """One POS terminal of one tenant (the independent business behind a department)."""

    id: str
    department: str
    tenant: str
    inbox: Path
    timezone: ZoneInfo
    input_format: str = "posfed-json"
    allow_returns: bool = False

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
    partitions_start: date
    # A file is taken only once its size and mtime have been unchanged this long.
    stability_seconds: float = 0.3
    max_clock_skew_seconds: int = 300
    max_age_days: int = 45
    config_path: Path | None = None
    _by_id: dict[str, Terminal] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_id.update({t.id: t for t in self.terminals})

    def terminal(self, terminal_id: str) -> Terminal:
        try:
            return self._by_id[terminal_id]
        except KeyError:
            raise ConfigError(f"unknown terminal {terminal_id!r}") from None

    @property
    def terminal_ids(self) -> list[str]:
        return [t.id for t in self.terminals]

    def ensure_folders(self) -> None:
        """Create every folder the pipeline writes to (idempotent)."""
        for terminal in self.terminals:
            for folder in (terminal.inbox, terminal.archive_root, terminal.quarantine):
                folder.mkdir(parents=True, exist_ok=True)
        self.dat_dir.mkdir(parents=True, exist_ok=True)


def resolve_config_path(path: str | os.PathLike[str] | None = None) -> Path:
    candidate = path or os.environ.get("POSFED_CONFIG") or DEFAULT_CONFIG_FILE
    return Path(candidate).expanduser().resolve()


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
    store = raw.get("store", {})
    paths = raw.get("paths", {})
    intake = raw.get("intake", {})
    dat = raw.get("dat", {})

    timezone = _zone(store.get("timezone", "UTC"), f"{where}: [store] timezone")
    home_setting = os.environ.get("POSFED_HOME") or paths.get("home", ".posfed")
    home = _resolve(home_setting, base_dir if "POSFED_HOME" not in os.environ else Path.cwd())
    terminals_root = _resolve(paths.get("terminals", "terminals"), home)

    terminals: list[Terminal] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw.get("terminals", [])):
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
        input_format = entry.get("format", "posfed-json")
        if input_format not in INPUT_FORMATS:
            raise ConfigError(
                f"{place}: format {input_format!r} is not one of {', '.join(INPUT_FORMATS)}"
            )
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
            )
        )
    if not terminals:
        raise ConfigError(f"{where}: no [[terminals]] configured")

    try:
        partitions_start = date.fromisoformat(str(store.get("partitions_start", "2026-01-01")))
    except ValueError as exc:
        raise ConfigError(f"{where}: [store] partitions_start: {exc}") from None

    stability = float(intake.get("stability_seconds", 0.3))
    if not 0 <= stability <= 60:
        raise ConfigError(f"{where}: [intake] stability_seconds must be between 0 and 60")

    return PosfedConfig(
        store_id=str(store.get("id", "store")),
        store_name=str(store.get("name", store.get("id", "store"))),
        timezone=timezone,
        home=home,
        terminals=tuple(terminals),
        dat_spec=_resolve(dat.get("spec", "dat_specs/scon_default.json"), base_dir),
        dat_dir=_resolve(paths.get("dat", "dat"), home),
        db_url=os.environ.get("POSFED_DB_URL") or f"sqlite:///{home / 'central.db'}",
        partitions_start=partitions_start,
        stability_seconds=stability,
        max_clock_skew_seconds=int(intake.get("max_clock_skew_seconds", 300)),
        max_age_days=int(intake.get("max_age_days", 45)),
        config_path=config_path,
    )


def _resolve(value: str | os.PathLike[str], base: Path) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _zone(name: str, place: str) -> ZoneInfo:
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{place}: unknown timezone {name!r}") from None
