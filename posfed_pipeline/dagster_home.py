"""The Dagster instance's home folder: its dagster.yaml, rendered from one of the instance
profiles posfed ships, and the storage created once, before several processes open it."""

from __future__ import annotations

from pathlib import Path

from posfed_pipeline import packaged
from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import PosfedConfig


def render_instance_yaml(dagster_home: Path, profile: str = "dev") -> Path:
    """Write DAGSTER_HOME/dagster.yaml from an instance profile (posfed_pipeline/profiles)."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    target = dagster_home / "dagster.yaml"
    template = packaged.instance_profile(profile)
    target.write_text(template.replace("${DAGSTER_HOME}", str(dagster_home.resolve())))
    return target


def prepare_instance(config: PosfedConfig) -> Path:
    """Folders, schema and Dagster home for the embedded setup; returns DAGSTER_HOME."""
    config.ensure_folders()
    central_db.upgrade_database(central_db.make_engine(config.db_url), store_id=config.store_id)
    dagster_home = config.home / "dagster_home"
    render_instance_yaml(dagster_home)
    # Create Dagster's storage once, before several processes open it at the same moment.
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)):
        pass
    return dagster_home
