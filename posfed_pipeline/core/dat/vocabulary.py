"""What a spec may say: record kinds, field types, sources and options, encodings, date
tokens; the errors of the engine; one field's spec."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from posfed_pipeline.core.base.errors import PosfedError

SPEC_SCHEMA_PATH = Path(__file__).resolve().parent / "dat_spec.schema.json"
LINE_ENDINGS = {"CRLF": b"\r\n", "LF": b"\n", "CR": b"\r"}
# Single-byte encodings only: one character is one byte, so widths are exact.
ENCODINGS = ("ascii", "cp1252", "latin-1", "iso-8859-15", "cp850", "cp437")
RECORD_KINDS = ("header", "item", "footer")
DEFAULT_FILE_NAME = "scon{department}{receiptId}.dat"
DEFAULT_DATE_FOLDER = "YYYYMMDD"

# Date/time field formats: these tokens, case-sensitive; any other ASCII letter is an error.
DATE_TOKENS = {"yyyy": "%Y", "yy": "%y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M", "ss": "%S"}
_TOKEN_WIDTH = {"yyyy": 4, "yy": 2, "MM": 2, "dd": 2, "HH": 2, "mm": 2, "ss": 2}
_TOKEN_RE = re.compile("|".join(sorted(DATE_TOKENS, key=len, reverse=True)))
# Rendering uses str.format on the datetime's attributes (twice as fast as strftime, and
# fixed-width for every year); format argument 1 is the two-digit year.
_TOKEN_TEMPLATES = {
    "yyyy": "{0.year:04d}",
    "yy": "{1:02d}",
    "MM": "{0.month:02d}",
    "dd": "{0.day:02d}",
    "HH": "{0.hour:02d}",
    "mm": "{0.minute:02d}",
    "ss": "{0.second:02d}",
}
# Date-folder patterns (upper case, as in YYYYMMDD): format template, regex to read a day back.
_FOLDER_TOKENS = {
    "YYYY": ("{0.year:04d}", r"(?P<Y>\d{4})"),
    "MM": ("{0.month:02d}", r"(?P<m>\d{2})"),
    "DD": ("{0.day:02d}", r"(?P<d>\d{2})"),
}
_FOLDER_TOKEN_RE = re.compile("YYYY|MM|DD")
_FOLDER_LITERAL_OK = re.compile(r"^[A-Za-z0-9_/-]*$")
# File-name templates: these placeholders; literal text from this alphabet.
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_NAME_LITERAL_OK = re.compile(r"^[A-Za-z0-9_.-]*$")
_NAME_VALUE_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_FILE_NAME_BYTES = 255

# Every source a field can read, and what kind of value it yields.
SOURCES: dict[str, str] = {
    "receipt.receipt_id": "text",
    "receipt.terminal_id": "text",
    "receipt.department_code": "text",
    "receipt.total": "decimal",
    "receipt.timestamp": "datetime",
    "item.barcode": "text",
    "item.gtin": "text",
    "item.gtin13": "text",
    "item.weight": "decimal",
    "item.count": "int",
    "item.description": "text",
    "item.price": "decimal",
    "item.quantity": "decimal",
    "terminal.id": "text",
    "terminal.department": "text",
    "terminal.tenant": "text",
    "computed.line_number": "int",
    "computed.item_count": "int",
    "computed.receipt_total": "decimal",
    "computed.line_amount": "decimal",
    "constant": "constant",
}
# Sources that only exist on an item line (not in a header or footer).
ITEM_SOURCES = frozenset(
    {
        "item.barcode",
        "item.gtin",
        "item.gtin13",
        "item.weight",
        "item.count",
        "item.description",
        "item.price",
        "item.quantity",
        "computed.line_number",
        "computed.line_amount",
    }
)
# Which source kinds each field type accepts.
_ACCEPTS = {
    "text": {"text", "int", "decimal"},
    "integer": {"int", "text", "decimal"},
    "money": {"decimal", "int"},
    "quantity": {"decimal", "int"},
    "date": {"datetime"},
    "time": {"datetime"},
    "constant": {"constant"},
}
# Options that mean something for each type (besides name, description, source, type, length,
# start, align and pad, which every field has).
_OPTIONS = {
    "text": {"truncate"},
    "integer": {"sign"},
    "money": {"sign", "decimals"},
    "quantity": {"sign", "decimals"},
    "date": {"format"},
    "time": {"format"},
    "constant": {"value"},
}
_TYPE_OPTIONS = set().union(*_OPTIONS.values())
_NUMERIC = ("integer", "money", "quantity")
_RESERVED_FIELD_NAMES = {"record"}  # parse output uses it for the record kind

# Transliteration for characters that Unicode decomposition does not reduce to ASCII.
_FALLBACK = {
    "ß": "ss",
    "ẞ": "SS",
    "Æ": "AE",
    "æ": "ae",
    "Œ": "OE",
    "œ": "oe",
    "Ø": "O",
    "ø": "o",
    "Đ": "D",
    "đ": "d",
    "Ð": "D",
    "ð": "d",
    "Ł": "L",
    "ł": "l",
    "Þ": "Th",
    "þ": "th",
    "ı": "i",
    "Ħ": "H",
    "ħ": "h",
    "€": "EUR",
    "£": "GBP",
    "¥": "JPY",
    "¢": "c",
    "‘": "'",
    "’": "'",
    "‚": ",",
    "‛": "'",
    "“": '"',
    "”": '"',
    "„": '"',
    "«": '"',
    "»": '"',
    "‹": "<",
    "›": ">",
    "–": "-",
    "—": "-",
    "‐": "-",
    "‑": "-",
    "−": "-",
    "…": "...",
    "•": "*",
    "·": ".",
    "×": "x",
    "÷": "/",
    "⁄": "/",
    "°": "o",
    "©": "(c)",
    "®": "(R)",
    "¡": "!",
    "¿": "?",
    "§": "S",
    "¶": "P",
    "µ": "u",
    "μ": "u",
}


class SpecError(PosfedError, ValueError):
    """A spec that cannot be used; every problem names the file, record and field."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DatRenderError(PosfedError, ValueError):
    """A receipt that cannot be rendered under a spec (e.g. a number too wide for its field)."""


class DatConflictError(DatRenderError):
    """The .dat file name is taken by a file with other content; it is never overwritten."""


class DatFormatError(PosfedError, ValueError):
    """A .dat file that does not conform to its spec version (``problems`` lists every reason)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "; ".join(problems[:5]) + (
            f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        )
        super().__init__(shown)


class _Unfit(PosfedError):
    """A number that cannot be written into its field (the caller adds the field and value)."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    source: str
    type: str
    length: int
    align: str
    pad: str
    value: str = ""
    decimals: int = 0
    format: str = ""
    sign: str = "leading"
    truncate: bool = True
    start: int = 1  # 1-based byte position in its record
