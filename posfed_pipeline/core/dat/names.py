"""Two terminals never share a .dat file: a store whose file names cannot tell two terminals
apart is refused before anything runs.

The billing software treats one .dat file as one sale. If two terminals can render the same
path (the seed's ``scon{department}{receiptId}.dat`` for two tills of one department that both
number their receipts C0001, C0002, ...), two customers become one sale, or the second one's
receipt is refused. Whether that can happen is decided here, once, from the configuration and
every version of the spec, not by the first unlucky pair of receipts.

Each terminal's file names form a pattern: the template's literal text and the terminal's own
values (department, terminal id, receipt-id prefix), with the rest of the receipt id as a run of
receipt-id characters. Two terminals clash when their patterns can produce the same name; that
is decided exactly, by walking both patterns side by side. Names are compared ignoring case,
because the billing software's import folder is often a Windows share.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterable, Sequence

from posfed_pipeline.core.dat import DatSpec, LayoutVersion, name_template_parts
from posfed_pipeline.core.model.terminal import Terminal

# What a receipt id can hold (core.receipt's RECEIPT_ID_PATTERN), lower-cased: it starts with
# a letter or digit.
_FIRST_ID_CHARS = frozenset(string.ascii_lowercase + string.digits)
_ID_CHARS = _FIRST_ID_CHARS | {"-", "_"}
# Pattern tokens: a frozenset is one character out of it; None is a run of id characters,
# possibly empty.
_ANY_ID_CHARS = None
Token = frozenset[str] | None
_END: frozenset[str] = frozenset({"<past the last token>"})  # not a token: compared by identity
_SAMPLE_DAY = "20260101"  # {date} renders the same for both terminals of one date folder

HOW_TO_TELL_APART = (
    "Tell them apart: give each terminal of a department its own receipt_id_prefix in its "
    '[[terminals]] entry (what its receipt numbers begin with, e.g. "1" and "2", none the '
    "start of another), or put {terminalId} in the spec's file_name. See dat_specs/README.md, "
    '"One sale, one file".'
)


def name_pattern(version: LayoutVersion, terminal: Terminal) -> tuple[Token, ...]:
    """The terminal's file names under ``version``: one token per character, and None for the
    rest of the receipt id."""
    tokens: list[Token] = []

    def text(value: str) -> None:
        tokens.extend(frozenset({c}) for c in value.lower())

    for piece, is_key in name_template_parts(version):
        if not is_key:
            text(piece)
        elif piece in ("receiptId", "receipt_id"):
            prefix = terminal.receipt_id_prefix
            text(prefix)
            if not prefix:
                tokens.append(_FIRST_ID_CHARS)  # an id is never empty
            tokens.append(_ANY_ID_CHARS)
        elif piece in ("terminalId", "terminal_id"):
            text(terminal.id)
        elif piece == "department":
            text(terminal.department)
        elif piece == "date":
            text(_SAMPLE_DAY)
        else:  # the spec loader refuses unknown placeholders; a new one must be added here
            raise ValueError(f"file_name placeholder {{{piece}}} is not known to dat_names")
    return tuple(tokens)


def patterns_overlap(first: Sequence[Token], second: Sequence[Token]) -> bool:
    """Whether some file name matches both patterns (a product automaton, walked breadth-first)."""
    start = (0, 0)
    seen = {start}
    frontier = [start]
    while frontier:
        following: list[tuple[int, int]] = []
        for i, j in frontier:
            a = first[i] if i < len(first) else _END
            b = second[j] if j < len(second) else _END
            if a is _END and b is _END:
                return True  # both patterns ended on the same name
            steps: list[tuple[int, int]] = []
            # A run of id characters may be empty: skip it without reading anything.
            if a is _ANY_ID_CHARS:
                steps.append((i + 1, j))
            if b is _ANY_ID_CHARS:
                steps.append((i, j + 1))
            # Read one character that both patterns accept here.
            if a is _END or b is _END:
                pass  # one name is complete, the other needs more: only skips remain
            elif a is _ANY_ID_CHARS and b is _ANY_ID_CHARS:
                steps.append((i, j))  # any id character keeps both inside their runs
            elif a is None:  # a run of id characters (_ANY_ID_CHARS), b one character
                if b is not None and b & _ID_CHARS:
                    steps.append((i, j + 1))
            elif b is None:
                if a & _ID_CHARS:
                    steps.append((i + 1, j))
            elif a & b:
                steps.append((i + 1, j + 1))
            for step in steps:
                if step not in seen:
                    seen.add(step)
                    following.append(step)
        frontier = following
    return False


def dat_name_clashes(terminals: Iterable[Terminal], spec: DatSpec) -> list[str]:
    """Every pair of terminals that could write the same .dat file, one line each."""
    clashes: list[str] = []
    terminals = list(terminals)
    for version in spec.versions:
        patterns = {t.id: name_pattern(version, t) for t in terminals}
        for one, other in itertools.combinations(terminals, 2):
            if patterns_overlap(patterns[one.id], patterns[other.id]):
                same = (
                    f", both department {one.department}"
                    if one.department == other.department
                    else ""
                )
                clashes.append(
                    f"{one.id} and {other.id}{same}: spec {spec.name}, version from "
                    f"{version.effective_from.isoformat()}, file_name {version.file_name!r}"
                )
    return clashes
