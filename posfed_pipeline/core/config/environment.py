"""What the environment overrides, since it must not live in a file or differs per machine:
``POSFED_CONFIG`` (the file), ``POSFED_HOME`` (the state folder), ``POSFED_DB_URL`` or the
``POSFED_DB_*`` parts (the central database, credentials included)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CONFIG_FILE = "posfed.toml"


def resolve_config_path(path: str | os.PathLike[str] | None = None) -> Path:
    candidate = path or os.environ.get("POSFED_CONFIG") or DEFAULT_CONFIG_FILE
    # Absolute, but a link stays a link: the paths in the file are relative to the folder the
    # link is in (the checkout's posfed.toml is a link to the packaged demo store's).
    return Path(os.path.abspath(Path(candidate).expanduser()))


def home_folder(setting: str, base_dir: Path) -> Path:
    """POSFED_HOME (relative to the working folder), else ``[paths] home`` (to the file's)."""
    if "POSFED_HOME" in os.environ:
        return resolve_path(os.environ.get("POSFED_HOME") or setting, Path.cwd())
    return resolve_path(setting, base_dir)


def central_database_url(home: Path) -> str:
    """POSFED_DB_URL, else the POSFED_DB_* parts, else the embedded SQLite under ``home``.

    SQLAlchemy builds (and checks) a URL from the environment; it is imported only then, so
    loading the configuration of an embedded store imports no database library."""
    embedded = f"sqlite:///{home / 'central.db'}"
    if not any(os.environ.get(name) for name in ("POSFED_DB_URL", "POSFED_DB_DIALECT")):
        return embedded
    from posfed_pipeline.core.central_db.engines import database_url_from_env

    return database_url_from_env(default=embedded)


def resolve_path(value: str | os.PathLike[str], base: Path) -> Path:
    path = Path(value).expanduser()
    # abspath, not resolve(): resolving stats every component, and an inbox on a network
    # share that hangs would hang whoever loads the configuration (every run, every sensor).
    return Path(os.path.abspath(path if path.is_absolute() else base / path))
