"""A store's configuration as tests write it: the dict, the TOML file, a store set up with its
own Dagster instance, and the mappings the shipped ``posfed.toml`` holds."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline_tests.support.repo import DEFAULT_SPEC, REPO_ROOT

SHIPPED_MAPPINGS = tomllib.loads((REPO_ROOT / "posfed.toml").read_text())["mappings"]


def store_config_dict(home: Path, **overrides) -> dict:
    raw = {
        "store": {
            "id": "test-store",
            "timezone": "Europe/Amsterdam",
            "partitions_start": "2026-01-01",
        },
        "paths": {"home": str(home)},
        # Fixed past dates in tests must stay acceptable whenever the suite runs.
        # Sensors tick every daemon loop: tests without the fast path wait seconds, not 30.
        "intake": {
            "stability_seconds": 0.2,
            "max_age_days": 36500,
            "catchup_interval_seconds": 4,
        },
        "dat": {"spec": str(DEFAULT_SPEC)},
        "terminals": [
            {"id": "bakery_1", "department": "10", "tenant": "Bakkerij"},
            {"id": "butcher_1", "department": "20", "tenant": "Slagerij", "allow_returns": True},
        ],
    }
    raw.update(overrides)
    return raw


def write_store_config(path: Path, home: Path, **overrides) -> Path:
    """The store TOML a user would write, for tests that run posfed's own processes."""
    raw = store_config_dict(home, **overrides)
    lines = []
    tables = [k for k, v in raw.items() if isinstance(v, dict) and k != "mappings"]
    for table in tables:
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in raw[table].items()]
    for terminal in raw["terminals"]:
        lines.append("[[terminals]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in terminal.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def open_instance_store(root: Path, monkeypatch, **overrides) -> tuple[PosfedConfig, Path]:
    """A store under ``root`` with its own Dagster instance (``root/dh``), set up as a store
    server is: folders made, central database upgraded, POSFED_CONFIG and DAGSTER_HOME set."""
    from posfed_pipeline.core.config import load_config
    from posfed_pipeline.dagster_home import render_instance_yaml

    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    config_path = write_store_config(root / "posfed.toml", root / "s", **overrides)
    monkeypatch.setenv("POSFED_CONFIG", str(config_path))
    dagster_home = root / "dh"
    render_instance_yaml(dagster_home)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    config = load_config(config_path)
    config.ensure_folders()
    central_db.upgrade_database(central_db.make_engine(config.db_url))
    return config, dagster_home
