"""docs/cli.md, the command-line reference generated from the parser (``make docs``), against
the parser itself: every command has help text and a section there, and the file is current."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from posfed_pipeline.cli import build_parser, reference

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
PARSER, ADDED_BY = build_parser()
COMMANDS = list(reference.commands(PARSER, ADDED_BY))


def test_the_walk_finds_the_commands_and_which_come_from_posfed_dev():
    names = {c.name for c in COMMANDS}
    assert {"posfed demo", "posfed db resync", "posfed quarantine discard"} <= names
    if importlib.util.find_spec("posfed_dev") is not None:
        assert {c.name for c in COMMANDS if c.added_by == "posfed-dev"} == {
            "posfed bench",
            "posfed chaos",
            "posfed simulate",
        }
    assert all(c.added_by is None for c in COMMANDS if c.words[0] in ("db", "demo", "status"))


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_command_has_help_text(command):
    assert command.help, f"{command.name} has no help text (add_parser(..., help=...))"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_command_is_in_the_reference(command):
    headings = re.findall(r"^#+ (posfed(?: \S+)*)$", REFERENCE.read_text(), flags=re.M)
    assert command.name in headings, f"{command.name} is missing from docs/cli.md: make docs"


def test_the_reference_is_current():
    if importlib.util.find_spec("posfed_dev") is None:
        pytest.skip("docs/cli.md includes posfed-dev's commands: install it (make) to compare")
    assert REFERENCE.read_text() == reference.render(PARSER, ADDED_BY), (
        "docs/cli.md is stale: regenerate it with make docs"
    )


def test_options_are_spelled_as_argparse_spells_them_and_markup_is_escaped():
    render = next(c for c in COMMANDS if c.name == "posfed dat render")
    usage = reference._usage(render.parser, render.name)
    assert usage == (
        "posfed dat render --spec SPEC --out DIR [OPTIONS] RECEIPT.json [RECEIPT.json ...]"
    )
    # <date folder> would be read as an HTML tag; `code` spans stay code.
    assert reference._text("to DIR/<date folder>, see `posfed backup create`") == (
        "to DIR/\\<date folder\\>, see `posfed backup create`"
    )
