"""Date and folder patterns turned into str.format templates, strptime patterns or regexes."""

from __future__ import annotations

import re
from collections.abc import Callable

from posfed_pipeline.core.dat.vocabulary import _TOKEN_RE, _TOKEN_WIDTH


def _translate(
    pattern: str, tokens: re.Pattern, replacements: dict[str, str], literal: Callable[[str], str]
) -> str:
    """``pattern`` with each token replaced and the text between tokens passed to ``literal``.

    Turns a date format or folder pattern into a str.format template, a strptime pattern or a
    regex.
    """
    out, position = [], 0
    for match in tokens.finditer(pattern):
        out.append(literal(pattern[position : match.start()]))
        out.append(replacements[match.group(0)])
        position = match.end()
    out.append(literal(pattern[position:]))
    return "".join(out)


def _brace_escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _date_format_width(fmt: str) -> int:
    return len(_TOKEN_RE.sub(lambda m: "x" * _TOKEN_WIDTH[m.group(0)], fmt))
