"""The store's configuration: where state lives and which POS terminals exist.

A store is described by one TOML file (``posfed.toml`` by default). Adding a terminal is a
config change: sensors and partitions are built from the registry loaded here.

In rooms: ``schema`` the file's model (every table and key declared once), ``loading`` read,
validate and build, ``startup`` the checks before posfed starts on it, ``environment`` what the
environment overrides (POSFED_CONFIG, POSFED_HOME, POSFED_DB_URL), ``store_config`` the
``PosfedConfig`` the rest of posfed uses. The terminal itself is the model's
(``core.model.terminal``).
"""

from __future__ import annotations

from posfed_pipeline.core.config.environment import DEFAULT_CONFIG_FILE, resolve_config_path
from posfed_pipeline.core.config.errors import ConfigError
from posfed_pipeline.core.config.first_day import FIRST_DAY_FILE
from posfed_pipeline.core.config.loading import config_from_dict, load_config
from posfed_pipeline.core.config.schema import (
    INPUT_FORMATS,
    MAPPING_KINDS,
    POSLOG_FORMAT,
    STORE_ID_PATTERN,
)
from posfed_pipeline.core.config.startup import check_at_start
from posfed_pipeline.core.config.store_config import PosfedConfig, partition_window_start
from posfed_pipeline.core.model.input_mapping import (
    DEFAULTABLE_FIELDS,
    FIELDS_FROM_TERMINAL,
    ITEM_FIELDS,
    RECEIPT_FIELDS,
    InputMapping,
    JsonPath,
    parse_json_path,
)
from posfed_pipeline.core.model.terminal import (
    CANONICAL_FORMAT,
    DEPARTMENT_PATTERN,
    RECEIPT_ID_PREFIX_PATTERN,
    TERMINAL_ID_PATTERN,
    VARIABLE_MEASURE_PREFIXES,
)

__all__ = [
    "CANONICAL_FORMAT",
    "DEFAULTABLE_FIELDS",
    "DEFAULT_CONFIG_FILE",
    "DEPARTMENT_PATTERN",
    "FIELDS_FROM_TERMINAL",
    "FIRST_DAY_FILE",
    "INPUT_FORMATS",
    "ITEM_FIELDS",
    "MAPPING_KINDS",
    "POSLOG_FORMAT",
    "RECEIPT_FIELDS",
    "RECEIPT_ID_PREFIX_PATTERN",
    "STORE_ID_PATTERN",
    "TERMINAL_ID_PATTERN",
    "VARIABLE_MEASURE_PREFIXES",
    "ConfigError",
    "InputMapping",
    "JsonPath",
    "PosfedConfig",
    "check_at_start",
    "config_from_dict",
    "load_config",
    "parse_json_path",
    "partition_window_start",
    "resolve_config_path",
]
