"""What the command groups share: the exit codes, the store configuration an invocation names,
and loading an entry point's object without letting a broken one take posfed down."""

from __future__ import annotations

import sys

from posfed_pipeline.core.config import PosfedConfig, load_config

EXIT_OK = 0
# A verdict against the input or what was found: an invalid receipt or .dat file, the central
# database too far behind or out of reach, a damaged backup, a file not in the quarantine.
EXIT_VERDICT = 1
EXIT_USAGE = 2  # a usage or configuration error
# `posfed fastpath` on a Dagster release posfed is not tested on: not restarted by systemd
# (RestartPreventExitStatus in deploy/systemd/posfed-fastpath.service); nothing changes until
# the operator does.
EXIT_UNTESTED_DAGSTER = 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports a process SIGINT ended


def store_config(args) -> PosfedConfig:
    """The store configuration ``--config`` names (default: $POSFED_CONFIG or ./posfed.toml)."""
    return load_config(args.config)


def load_plugin(entry):
    """An entry point's object, or None with a warning: a broken or half-removed development
    package must not take the product's own commands down with it."""
    try:
        return entry.load()
    except Exception as exc:
        print(
            f"posfed: skipping {entry.group} {entry.name!r} ({entry.value}): {exc}",
            file=sys.stderr,
        )
        return None
