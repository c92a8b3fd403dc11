"""The store file's model: each key declared once (type, default, range, doc line), the
reference document generated from it, and the start-up checks as their own step."""

from __future__ import annotations

import subprocess
import sys

import pytest

from posfed_pipeline.core.base.errors import PosfedError
from posfed_pipeline.core.config import ConfigError, check_at_start, config_from_dict, load_config
from posfed_pipeline.core.config.reference import configuration_reference
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.stores import store_config_dict, write_store_config


def test_the_configuration_reference_is_the_models(tmp_path):
    """docs/configuration.md is generated from core/config/schema.py: a key added, a default or
    a range changed there without regenerating it fails here."""
    written = (REPO_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert written == configuration_reference(), (
        "docs/configuration.md is stale: python -m posfed_pipeline.core.config.reference "
        "> docs/configuration.md"
    )


def test_a_misspelt_key_is_refused_with_the_key_meant(tmp_path):
    raw = store_config_dict(tmp_path / "home")
    raw["terminals"][0]["quiet_after_minute"] = 30
    with pytest.raises(ConfigError) as refused:
        config_from_dict(raw, base_dir=tmp_path)
    message = str(refused.value)
    assert "terminals[0]: unknown setting(s) quiet_after_minute" in message
    assert "did you mean quiet_after_minutes?" in message
    # A terminal's known keys are its own and the [delivery]/[health] ones.
    assert "ready_marker" in message and "receipt_id_prefix" in message


def test_a_terminal_override_is_checked_by_the_store_wide_declaration(tmp_path):
    for place, raw in (
        ("[delivery]", store_config_dict(tmp_path / "home", delivery={"stability_seconds": 601})),
        ("terminals[0]:", store_config_dict(tmp_path / "home")),
    ):
        if place.startswith("terminals"):
            raw["terminals"][0]["stability_seconds"] = 601
        with pytest.raises(ConfigError, match="stability_seconds must be a number from 0 to 600"):
            config_from_dict(raw, base_dir=tmp_path)
    raw = store_config_dict(tmp_path / "home", delivery={"watch": "poll"})
    raw["terminals"][0]["poll_interval_seconds"] = 5
    config = config_from_dict(raw, base_dir=tmp_path)
    bakery, butcher = config.terminal("bakery_1").delivery, config.terminal("butcher_1").delivery
    assert (bakery.watch, bakery.poll_interval_seconds) == ("poll", 5.0)
    assert (butcher.watch, butcher.poll_interval_seconds, butcher.stability_seconds) == (
        "poll",
        1.0,
        0.2,  # [intake] stability_seconds: the store-wide value
    )


def test_a_config_error_is_a_posfed_error_and_a_value_error(tmp_path):
    raw = store_config_dict(tmp_path / "home", retention={"keep_days": 0})
    with pytest.raises(ConfigError) as refused:
        config_from_dict(raw, base_dir=tmp_path)
    assert isinstance(refused.value, PosfedError) and isinstance(refused.value, ValueError)


def test_the_start_up_checks_are_a_step_after_validation(tmp_path):
    """Validating builds the configuration; the .dat-name clash check (which loads the spec)
    comes after, and load_config runs both."""
    twins = [
        {"id": "bakery_1", "department": "10"},
        {"id": "bakery_2", "department": "10"},
    ]
    config = config_from_dict(
        store_config_dict(tmp_path / "home", terminals=twins), base_dir=tmp_path
    )
    with pytest.raises(ConfigError, match="could write the same .dat file"):
        check_at_start(config)
    path = write_store_config(tmp_path / "posfed.toml", tmp_path / "home", terminals=twins)
    with pytest.raises(ConfigError, match=f"{path}: these terminals could write the same"):
        load_config(path)


def test_the_file_model_imports_no_dat_engine():
    probe = (
        "import sys\n"
        "import posfed_pipeline.core.config.schema\n"
        "import posfed_pipeline.core.model.terminal\n"
        "print(sorted(m for m in sys.modules if m.startswith('posfed_pipeline.core.dat')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
