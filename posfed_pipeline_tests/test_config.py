"""The store's configuration: a mistake is refused at load, naming the file, the table and the
key, with what would be accepted; nothing starts on a half-understood configuration."""

from __future__ import annotations

import pytest

from posfed_pipeline.core.config import ConfigError, config_from_dict, load_config
from posfed_pipeline.packaged import default_dat_spec
from posfed_pipeline_tests.support.stores import store_config_dict, write_store_config


def _load(tmp_path, **tables):
    raw = store_config_dict(tmp_path / "home")
    for table, settings in tables.items():
        raw.setdefault(table, {}).update(settings)
    path = write_store_config(tmp_path / "posfed.toml", tmp_path / "home")
    return config_from_dict(raw, base_dir=tmp_path, config_path=path)


@pytest.mark.parametrize(
    ("table", "key", "value", "says"),
    [
        ("intake", "max_age_days", 0, "[intake] max_age_days must be a whole number from 1"),
        ("intake", "max_age_days", "45", "[intake] max_age_days must be a whole number"),
        (
            "intake",
            "max_clock_skew_seconds",
            1.5,
            "[intake] max_clock_skew_seconds must be a whole",
        ),
        (
            "intake",
            "catchup_interval_seconds",
            0,
            "[intake] catchup_interval_seconds must be a number from 1 to 600",
        ),
        (
            "intake",
            "incomplete_grace_seconds",
            -1,
            "[intake] incomplete_grace_seconds must be a number from 0",
        ),
        (
            "intake",
            "relaunch_after_seconds",
            True,
            "[intake] relaunch_after_seconds must be a number",
        ),
        # One declaration with [delivery]'s (which it is the store-wide value of): 0 to 600.
        ("intake", "stability_seconds", 601, "[intake] stability_seconds must be a number from 0"),
        (
            "retention",
            "keep_days",
            "90",
            "[retention] keep_days must be a whole number from 1 to 36500",
        ),
        ("store", "partition_window_months", -1, "[store] partition_window_months must be a whole"),
        ("store", "timezone", "Mars/Olympus", "Mars/Olympus"),
        ("store", "partitions_start", "2026-13-01", "[store] partitions_start"),
    ],
)
def test_a_wrong_setting_is_refused_naming_its_place(tmp_path, table, key, value, says):
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path, **{table: {key: value}})
    message = str(refused.value)
    assert says in message
    assert str(tmp_path / "posfed.toml") in message  # which file


def test_an_unknown_key_is_refused_not_ignored(tmp_path):
    """A typo (max_age_day) would otherwise silently keep the default."""
    with pytest.raises(ConfigError, match=r"\[intake\].*max_age_day"):
        _load(tmp_path, intake={"max_age_day": 3})


def test_settings_left_out_take_the_documented_defaults(tmp_path):
    raw = store_config_dict(tmp_path / "home", intake={}, dat={})
    config = config_from_dict(raw, base_dir=tmp_path)
    assert (config.max_age_days, config.max_clock_skew_seconds) == (45, 300)
    assert (config.catchup_interval_seconds, config.stability_seconds) == (30.0, 0.3)
    assert (config.retention_days, config.partition_window_months) == (90, 12)
    assert config.dat_spec == default_dat_spec()  # the spec the package ships


def test_the_demo_configuration_loads(monkeypatch):
    """posfed.toml, what `make demo` runs, is a valid configuration as shipped."""
    from posfed_pipeline_tests.support.repo import REPO_ROOT

    monkeypatch.delenv("POSFED_HOME", raising=False)
    config = load_config(REPO_ROOT / "posfed.toml")
    assert len(config.terminals) == len(set(config.terminal_ids)) >= 20


def test_loading_the_configuration_imports_no_database_library():
    """Every command and process loads the store's configuration first: for an embedded store
    that costs no SQLAlchemy (nor Dagster, nor pandas)."""
    import subprocess
    import sys

    from posfed_pipeline_tests.support.repo import REPO_ROOT

    probe = (
        "import sys\n"
        "from posfed_pipeline.core.config import load_config\n"
        f"load_config({str(REPO_ROOT / 'posfed.toml')!r})\n"
        "print(sorted(m for m in ('sqlalchemy', 'dagster', 'pandas') if m in sys.modules))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "POSFED_HOME": "/tmp/posfed-config-probe"}
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_central_database_comes_from_the_environment(tmp_path, monkeypatch):
    raw = store_config_dict(tmp_path / "home")
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    monkeypatch.delenv("POSFED_DB_DIALECT", raising=False)
    embedded = config_from_dict(raw, base_dir=tmp_path).db_url
    assert embedded == f"sqlite:///{tmp_path / 'home' / 'central.db'}"
    monkeypatch.setenv("POSFED_DB_URL", "postgresql+psycopg://posfed@db.example/register")
    monkeypatch.setenv("POSFED_DB_PASSWORD", "s3cret")
    url = config_from_dict(raw, base_dir=tmp_path).db_url
    assert url == "postgresql+psycopg://posfed:s3cret@db.example/register"
