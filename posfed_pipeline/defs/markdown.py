"""Markdown tables for run metadata, with every cell shown as the text it is.

File names, receipt ids, descriptions and database messages come from terminals and receipts:
a receipt id ``[Pay](https://x)`` or a description ``<img src=x onerror=...>`` must read as
text in the Dagster UI, never become a link, an image or a broken table.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence

# CommonMark's backslash-escapable punctuation that could start markup in a table cell, with
# ':', '/', '@' and '.' so that no URL or address becomes a link (GFM autolinks).
_MARKUP = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>:/@])")
MAX_CELL = 200


def md_text(value: object, limit: int = MAX_CELL) -> str:
    """``value`` as inert Markdown: one line, HTML-escaped, markup characters backslashed."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _MARKUP.sub(r"\\\1", html.escape(text, quote=False))


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, align: str = "") -> str:
    """A GFM table of inert cells; ``align`` gives each column's ``l`` or ``r`` (default l)."""
    rule = ["---:" if a == "r" else "---" for a in align.ljust(len(headers), "l")]
    lines = ["| " + " | ".join(md_text(h) for h in headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(md_text(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
