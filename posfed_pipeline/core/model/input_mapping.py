"""How one vendor's receipt files map onto the canonical receipt (``[mappings.<name>]``); the
table's keys are declared in ``core.config.schema``."""

from __future__ import annotations

import re
from dataclasses import dataclass

# The canonical receipt's fields, named as in the posfed JSON; mappings say where each one is.
RECEIPT_FIELDS = ("receiptId", "terminalId", "departmentCode", "timestamp", "total")
ITEM_FIELDS = ("barcode", "description", "price", "quantity")
# Unmapped, these come from the terminal the file arrived from (which is authoritative anyway).
FIELDS_FROM_TERMINAL = ("terminalId", "departmentCode")
# Only these may fall back to a constant when a vendor does not send them.
DEFAULTABLE_FIELDS = ("description", "quantity")
_JSON_PATH_TOKEN = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class InputMapping:
    """How one vendor's receipt files map onto the canonical receipt (``[mappings.<name>]``).

    ``kind = "json"``: ``fields`` holds a path per canonical field (``a.b[0].c``); item fields
    are paths inside each element of the ``items`` list. ``kind = "csv"``: one row per item,
    ``fields`` holds a header column per canonical field, receipt fields repeated on every row.
    Built from a validated ``MappingTable`` (its defaults are declared there).
    """

    name: str
    kind: str
    fields: tuple[tuple[str, str], ...]
    defaults: tuple[tuple[str, str], ...]
    delimiter: str
    decimal_separator: str
    timestamp_format: str | None  # strptime format; ISO 8601 when unset
    encoding_fallback: str | None

    def source(self, canonical: str) -> str | None:
        return dict(self.fields).get(canonical)

    def default(self, canonical: str) -> str | None:
        return dict(self.defaults).get(canonical)

    def json_path(self, canonical: str) -> JsonPath | None:
        source = self.source(canonical)
        return parse_json_path(source) if source is not None else None


def parse_json_path(text: str) -> JsonPath:
    """``"header.lines[0].id"`` -> ``("header", "lines", 0, "id")``; ValueError if malformed."""
    steps: list[str | int] = []
    position = 0
    while position < len(text):
        match = _JSON_PATH_TOKEN.match(text, position)
        if not match or (match.group(0).startswith(".") and not steps):
            raise ValueError(f"path {text!r} is malformed at character {position + 1}")
        key, index = match.groups()
        steps.append(int(index) if index is not None else key)
        position = match.end()
    if not steps:
        raise ValueError("path is empty")
    return tuple(steps)
