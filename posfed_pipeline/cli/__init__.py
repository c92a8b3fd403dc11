"""The ``posfed`` command line: ``build_parser`` joins the command groups, a module each in this
package (``add_parser(commands)`` and its handlers), and the commands other distributions add
through the ``posfed.commands`` entry points. Every command is listed in the README and in
docs/cli.md, generated from this parser (``make docs``; tests check both).

Exit codes (``common``): 0 success, 1 a verdict against the input, 2 a usage or configuration
error.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points

from posfed_pipeline.cli import (
    backup,
    config,
    dat,
    db,
    demo,
    headoffice,
    metrics,
    quarantine,
    receipt,
    status,
)
from posfed_pipeline.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, load_plugin
from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import ConfigError

# In the order `posfed --help` lists them.
COMMAND_GROUPS = (demo, config, db, dat, receipt, quarantine, status, metrics, backup, headoffice)
PLUGIN_GROUP = "posfed.commands"


def main(argv: list[str] | None = None) -> int:
    parser, _ = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, central_db.DatabaseConfigError) as exc:
        print(f"posfed: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except central_db.DatabaseUnavailable as exc:
        print(f"posfed: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    """The ``posfed`` parser, and which distribution added each command an entry point
    added (command -> distribution name, e.g. posfed-dev's bench)."""
    parser = argparse.ArgumentParser(
        prog="posfed",
        description="Point-of-sale receipts from every terminal's inbox to .dat files for the "
        "billing software and to the central database.",
        epilog="`posfed COMMAND --help` shows a command's options. Exit codes: 0 success, "
        "1 a verdict against the input (invalid receipt, lag too high, damaged backup), "
        "2 a usage or configuration error.",
    )
    parser.add_argument(
        "--config", help="store configuration (default: $POSFED_CONFIG or ./posfed.toml)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_parser(commands)
    # Tools (posfed bench, chaos, simulate) add their commands from their own package, found
    # through its entry points: the product never imports them.
    added_by: dict[str, str] = {}
    for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        add_command = load_plugin(entry)
        if add_command is None:
            continue
        before = set(commands.choices)
        add_command(commands)
        source = entry.dist.name if entry.dist else entry.value
        added_by.update((name, source) for name in commands.choices if name not in before)
    return parser, added_by
