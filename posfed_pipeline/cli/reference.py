"""docs/cli.md, the command-line reference, generated from the ``posfed`` parser itself: every
command and subcommand with its help text, usage, arguments and options, and the commands an
entry point added (posfed-dev's bench, chaos, simulate) marked as such.

``make docs`` writes it: ``python -m posfed_pipeline.cli.reference docs/cli.md`` (no file:
standard output). test_cli_reference.py fails when docs/cli.md is stale or a command has no
help text. The rendering uses the parser's arguments, not argparse's help formatter, so the file
is the same on every Python version and terminal width.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from posfed_pipeline.cli import PLUGIN_GROUP, build_parser


@dataclass(frozen=True)
class Command:
    """One command or subcommand: its words after ``posfed``, e.g. ("db", "upgrade")."""

    words: tuple[str, ...]
    parser: argparse.ArgumentParser
    help: str | None  # as `posfed --help` lists it under its parent
    added_by: str | None  # the distribution whose entry point added it; None: posfed's own

    @property
    def name(self) -> str:
        return " ".join(("posfed", *self.words))

    @property
    def anchor(self) -> str:
        return self.name.replace(" ", "-")


def commands(parser: argparse.ArgumentParser, added_by: dict[str, str]) -> Iterator[Command]:
    """Every command under ``parser``, depth first, in the order ``--help`` lists them."""
    yield from _below(parser, (), added_by, None)


def _below(parser, words, added_by, source) -> Iterator[Command]:
    for action in parser._actions:  # argparse has no public way to list a parser's arguments
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            origin = source or (added_by.get(name) if not words else None)
            command = Command((*words, name), sub, helps.get(name), origin)
            yield command
            yield from _below(sub, command.words, added_by, origin)


def render(parser: argparse.ArgumentParser, added_by: dict[str, str]) -> str:
    listed = list(commands(parser, added_by))
    plugins = sorted({c.added_by for c in listed if c.added_by})
    lines = [
        "# posfed command-line reference",
        "",
        "<!-- Generated from the parser by `make docs` (python -m posfed_pipeline.cli.reference "
        "docs/cli.md): do not edit by hand; test_cli_reference.py fails when it is stale. -->",
        "",
        "Every `posfed` command with its options, as `posfed COMMAND --help` shows them; "
        "`posfed --config FILE` names the store configuration for any of them.",
    ]
    for source in plugins:
        names = ", ".join(f"`{c.name}`" for c in listed if c.added_by == source and _top(c))
        lines += [
            "",
            f"{names} come from **{source}**, through its `{PLUGIN_GROUP}` entry points: they "
            f"exist only where {source} is installed (`make` installs it in a checkout), "
            "never in posfed's own installation on a store server.",
        ]
    lines += ["", "## Commands", ""]
    for command in listed:
        indent = "  " * (len(command.words) - 1)
        source = f" (from {command.added_by})" if command.added_by and _top(command) else ""
        summary = f": {_text(command.help)}" if command.help else ""
        lines.append(f"{indent}- [{command.name}](#{command.anchor}){source}{summary}")
    lines += ["", *_section(parser, "posfed", 2, None, None)]
    for command in listed:
        level = min(2 + len(command.words) - 1, 4)
        lines += ["", *_section(command.parser, command.name, level, command.help, command)]
    return "\n".join(lines) + "\n"


def _top(command: Command) -> bool:
    return len(command.words) == 1


def _section(parser, name, level, help_text, command: Command | None) -> list[str]:
    lines = [f"{'#' * level} {name}", ""]
    if command is not None and command.added_by and _top(command):
        lines += [f"*From {command.added_by}* (not part of posfed's installation).", ""]
    for text in (help_text, parser.description):
        if text:
            lines += [_text(text), ""]
    lines += ["```", _usage(parser, name), "```"]
    positionals = [a for a in _arguments(parser) if not a.option_strings]
    optionals = [a for a in _arguments(parser) if a.option_strings]
    for title, actions in (("Arguments", positionals), ("Options", optionals)):
        if actions:
            lines += ["", f"{title}:", ""]
            lines += [_item(a, parser.prog) for a in actions]
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subcommands if command is not None else ():  # posfed's: the list above
        lines += ["", "Subcommands:", ""]
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for sub in action.choices:
            words = f"{name} {sub}"
            summary = f": {_text(helps[sub])}" if helps.get(sub) else ""
            lines.append(f"- [{sub}](#{words.replace(' ', '-')}){summary}")
    if parser.epilog:
        lines += ["", _text(parser.epilog)]
    return lines


def _arguments(parser) -> list[argparse.Action]:
    """The parser's arguments a user gives, without -h and the subcommand itself."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and a.help is not argparse.SUPPRESS
    ]


def _usage(parser, name: str) -> str:
    """The command's words, its required options, [OPTIONS] for the others, its arguments."""
    parts = [name]
    arguments = _arguments(parser)
    parts += [_spelled(a) for a in arguments if a.option_strings and a.required]
    if any(a.option_strings and not a.required for a in arguments):
        parts.append("[OPTIONS]")
    parts += [_spelled(a) for a in arguments if not a.option_strings]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parts.append(f"{action.metavar or 'COMMAND'} ...")
    return " ".join(p for p in parts if p)


def _item(action: argparse.Action, prog: str) -> str:
    help_text = _expanded_help(action, prog)
    return f"- `{_spelled(action)}`" + (f": {_text(help_text)}" if help_text else "")


def _spelled(action: argparse.Action) -> str:
    """``--day DAY``, ``FILE [FILE ...]``: the argument as argparse's usage spells it."""
    values = _values(action)
    if not action.option_strings:
        return values
    return ", ".join(action.option_strings) + (f" {values}" if values else "")


def _values(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        metavar = action.metavar
    elif action.choices is not None:
        metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        metavar = action.dest.upper() if action.option_strings else action.dest
    first, *rest = metavar if isinstance(metavar, tuple) else (metavar,)
    nargs = action.nargs
    if nargs is None:
        return first
    if nargs == argparse.OPTIONAL:
        return f"[{first}]"
    if nargs == argparse.ZERO_OR_MORE:
        return f"[{first} ...]"
    if nargs == argparse.ONE_OR_MORE:
        return f"{first} [{first} ...]"
    if nargs in (argparse.REMAINDER, argparse.PARSER):
        return f"{first} ..."
    if isinstance(nargs, int):
        return " ".join((first, *rest) if rest else [first] * nargs)
    return first


def _expanded_help(action: argparse.Action, prog: str) -> str | None:
    """The help text with argparse's %(default)s-style fields filled in, as --help shows it."""
    if not action.help:
        return action.help
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
    params["prog"] = prog
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    return action.help % params


def _text(text: str) -> str:
    """Help text as Markdown: its `code` spans kept, the characters Markdown would read as
    markup (e.g. <store> as an HTML tag) escaped outside them."""
    pieces = text.split("`")
    if len(pieces) % 2 == 0:  # an unpaired backtick: no code spans
        pieces = [text.replace("`", "\\`")]
    for i in range(0, len(pieces), 2):
        for char in "\\*<>[]":
            pieces[i] = pieces[i].replace(char, "\\" + char)
    return "`".join(pieces)


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(
        prog="python -m posfed_pipeline.cli.reference",
        description="Write posfed's command-line reference (Markdown) from its parser.",
    )
    args.add_argument("file", nargs="?", help="where to write it (default: standard output)")
    target = args.parse_args(argv).file
    text = render(*build_parser())
    if target:
        Path(target).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
