"""The fiscal .dat engine: fixed-width files for the legacy central billing software.

Layouts are data (JSON specs in ``dat_specs/``, format in ``dat_specs/README.md``), never code.
A spec holds one or more *versions*, each in force from its ``effective_from`` date, so a
backfill of last month renders last month's layout. A version has an optional ``header``
record, one ``item`` record per receipt line and an optional ``footer`` record; each record is
an ordered list of fixed-width fields.

Rendering is exact: money is ``Decimal`` scaled to minor units half-up, a number that does not
fit its field is an error (never cut), text is transliterated (or refused, per spec version) and
truncated so that every line has the spec's byte width in the target encoding. Dates and times
are rendered in the terminal's timezone. The reverse parser checks a file byte for byte: every
field must be exactly what the renderer would have written for the value it holds.

Each version is compiled once, at load time, into per-field formatter and parser closures; a
receipt's header-level fields are formatted once per receipt, only item fields once per line.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache, lru_cache
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

from posfed_pipeline.core.barcodes import gtin13
from posfed_pipeline.core.fsutil import ContentConflict, fsync_dir, synced_temp_copy, write_once
from posfed_pipeline.core.receipt import Receipt, ReceiptItem

if TYPE_CHECKING:  # the configuration loads specs: the engine needs its Terminal as a type only
    from posfed_pipeline.core.config import Terminal

SPEC_SCHEMA_PATH = Path(__file__).with_name("dat_spec.schema.json")
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


class SpecError(ValueError):
    """A spec that cannot be used; every problem names the file, record and field."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DatRenderError(ValueError):
    """A receipt that cannot be rendered under a spec (e.g. a number too wide for its field)."""


class DatConflictError(DatRenderError):
    """The .dat file name is taken by a file with other content; it is never overwritten."""


class DatFormatError(ValueError):
    """A .dat file that does not conform to its spec version (``problems`` lists every reason)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "; ".join(problems[:5]) + (
            f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        )
        super().__init__(shown)


class _Unfit(Exception):
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


@dataclass(frozen=True)
class LayoutVersion:
    effective_from: date
    encoding: str
    line_ending: bytes
    file_name: str
    date_folder: str
    header: tuple[FieldSpec, ...]
    item: tuple[FieldSpec, ...]
    footer: tuple[FieldSpec, ...]
    transliterate: bool = True

    def __post_init__(self) -> None:
        # Compiled once per version: formatter and parser closures, file-name and folder parts.
        object.__setattr__(
            self,
            "_plans",
            {kind: _RecordPlan(fields, self) for kind, fields in self.records()},
        )
        object.__setattr__(self, "_newline", self.line_ending.decode("ascii"))
        object.__setattr__(self, "_name_parts", _compile_file_name(self.file_name))
        folder = self.date_folder
        templates = {token: template for token, (template, _) in _FOLDER_TOKENS.items()}
        regexes = {token: regex for token, (_, regex) in _FOLDER_TOKENS.items()}
        folder_template = _translate(folder, _FOLDER_TOKEN_RE, templates, _brace_escape)
        folder_regex = _translate(folder, _FOLDER_TOKEN_RE, regexes, re.escape)
        object.__setattr__(self, "_folder_format", folder_template.format)
        object.__setattr__(self, "_folder_regex", re.compile(folder_regex))

    def records(self) -> list[tuple[str, tuple[FieldSpec, ...]]]:
        return [
            (k, v)
            for k, v in (("header", self.header), ("item", self.item), ("footer", self.footer))
            if v
        ]

    def width(self, kind: str) -> int:
        """The byte width of a line of record ``kind`` (line ending excluded)."""
        return self._plans[kind].width

    def day_from_path(self, path: str | Path) -> date | None:
        """The business day a file's date folder names under this version's pattern, if any."""
        folders = Path(path).resolve().parent.parts
        depth = self.date_folder.count("/") + 1
        if len(folders) < depth:
            return None
        match = self._folder_regex.fullmatch("/".join(folders[-depth:]))
        if not match:
            return None
        try:
            return date(int(match["Y"]), int(match["m"]), int(match["d"]))
        except ValueError:  # e.g. 20260231
            return None


@dataclass(frozen=True)
class DatSpec:
    name: str
    path: Path
    versions: tuple[LayoutVersion, ...]  # sorted by effective_from

    def __post_init__(self) -> None:
        object.__setattr__(self, "_days", [v.effective_from for v in self.versions])

    def version_for(self, business_day: date) -> LayoutVersion:
        """The version in force on ``business_day`` (the latest one that started on or before)."""
        index = bisect.bisect_right(self._days, business_day)
        if index == 0:
            raise DatRenderError(
                f"spec {self.name}: no version in force on {business_day.isoformat()} "
                f"(the first starts {self.versions[0].effective_from.isoformat()})"
            )
        return self.versions[index - 1]


@dataclass(frozen=True)
class RenderedDat:
    relative_path: Path  # <date folder>/<file name>
    content: bytes
    version: LayoutVersion | None = field(default=None, compare=False, repr=False)


# --- loading and checking specs ---------------------------------------------------------------


@cache
def _spec_schema() -> dict:
    return json.loads(SPEC_SCHEMA_PATH.read_text(encoding="utf-8"))


def load_spec(path: str | Path) -> DatSpec:
    """Read, schema-check and compile a spec; ``SpecError`` lists every problem found."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: not valid JSON: {exc}") from None
    return spec_from_dict(raw, path)


def spec_from_dict(raw: dict, path: Path) -> DatSpec:
    validator = jsonschema.Draft202012Validator(_spec_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise SpecError(
            [f"{path}: {_schema_place(raw, e.absolute_path)}{e.message}" for e in errors]
        )
    problems: list[str] = []
    versions = []
    for index, raw_version in enumerate(raw["versions"]):
        version = _version(raw_version, f"{path}: versions[{index}]", problems)
        if version is not None:
            versions.append(version)
    days = sorted(str(v.get("effective_from")) for v in raw["versions"])
    for earlier, later in zip(days, days[1:], strict=False):
        if earlier == later:
            problems.append(f"{path}: two versions share effective_from {earlier}")
    if problems:
        raise SpecError(problems)
    versions.sort(key=lambda v: v.effective_from)
    return DatSpec(name=raw["name"], path=path, versions=tuple(versions))


def _schema_place(raw: Any, where) -> str:
    """A JSON-schema error's location in words: ``versions[0], record item, field price: ``."""
    rest = list(where)
    words: list[str] = []
    if rest[:1] == ["versions"] and len(rest) >= 2:
        version, rest = rest[1], rest[2:]
        words.append(f"versions[{version}]")
        if rest[:1] == ["records"] and len(rest) >= 2:
            words.append(f"record {rest[1]}")
            if len(rest) >= 3:
                name = _get(raw, "versions", version, "records", rest[1], rest[2], "name")
                words.append(f"field {name}" if isinstance(name, str) else f"field #{rest[2] + 1}")
            rest = rest[3:]
    place = ": ".join(filter(None, [", ".join(words), "/".join(map(str, rest))]))
    return f"{place}: " if place else ""


def _get(raw: Any, *keys) -> Any:
    for key in keys:
        try:
            raw = raw[key]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def _version(raw: dict, where: str, problems: list[str]) -> LayoutVersion | None:
    found = len(problems)
    try:
        effective = date.fromisoformat(raw["effective_from"])
    except ValueError:
        problems.append(f"{where}: effective_from {raw['effective_from']!r} is not a date")
        effective = date.min
    where = f"{where} (from {raw['effective_from']})"
    encoding = raw.get("encoding", "ascii")
    transliterate = raw.get("transliterate", True)
    records: dict[str, tuple[FieldSpec, ...]] = {}
    for kind in RECORD_KINDS:
        fields = raw["records"].get(kind)
        records[kind] = (
            ()
            if fields is None
            else _fields(fields, f"{where}, record {kind}", kind, encoding, problems)
        )
    file_name = raw.get("file_name", DEFAULT_FILE_NAME)
    date_folder = raw.get("date_folder", DEFAULT_DATE_FOLDER)
    for reason in (_file_name_problem(file_name), _date_folder_problem(date_folder)):
        if reason:
            problems.append(f"{where}: {reason}")
    if len(problems) > found:
        return None
    return LayoutVersion(
        effective_from=effective,
        encoding=encoding,
        line_ending=LINE_ENDINGS[raw.get("line_ending", "CRLF")],
        file_name=file_name,
        date_folder=date_folder,
        header=records["header"],
        item=records["item"],
        footer=records["footer"],
        transliterate=transliterate,
    )


def _fields(
    raw_fields: list[dict], where: str, kind: str, encoding: str, problems: list[str]
) -> tuple[FieldSpec, ...]:
    fields: list[FieldSpec] = []
    position = 1
    names: set[str] = set()
    for raw in raw_fields:
        place = f"{where}, field {raw['name']}"
        spec, reasons = _field(raw, position, kind, encoding)
        if raw["name"] in names:
            reasons.insert(0, "the field name appears twice in this record")
        names.add(raw["name"])
        problems.extend(f"{place}: {reason}" for reason in reasons)
        if spec is not None and not reasons:
            fields.append(spec)
        position += raw["length"]
    return tuple(fields)


def _field(raw: dict, position: int, kind: str, encoding: str) -> tuple[FieldSpec | None, list]:
    """One field's spec and every reason it cannot be used."""
    reasons: list[str] = []
    name, source, ftype, length = raw["name"], raw["source"], raw["type"], raw["length"]
    if name in _RESERVED_FIELD_NAMES:
        reasons.append(f"the name {name!r} is reserved")
    start = raw.get("start")
    if start is not None and start != position:
        relation = "overlaps the previous field" if start < position else "leaves a gap"
        reasons.append(f"starts at {start} but {relation} (expected {position})")
    source_kind = SOURCES.get(source)
    if source_kind is None:
        reasons.append(f"unknown source {source!r} (known: {', '.join(sorted(SOURCES))})")
    elif source_kind not in _ACCEPTS[ftype]:
        if ftype == "constant" or source == "constant":
            reasons.append('a constant field needs both source "constant" and type "constant"')
        else:
            reasons.append(f"a {ftype} field cannot take source {source!r} ({source_kind})")
    if source in ITEM_SOURCES and kind != "item":
        reasons.append(f"source {source!r} exists only on item lines, not in the {kind} record")
    for option in sorted(set(raw) & _TYPE_OPTIONS):
        if option not in _OPTIONS[ftype]:
            reasons.append(f"option {option!r} does not apply to a {ftype} field")

    numeric = ftype in _NUMERIC
    left_default = ftype in ("text", "constant", "date", "time")
    align = raw.get("align", "left" if left_default else "right")
    pad = raw.get("pad", " " if left_default else "0")
    if pad not in _charset(encoding):
        reasons.append(f"pad {pad!r} is not a printable character of {encoding}")
    if numeric and (pad in "+-" or (pad.isdigit() and pad != "0")):
        reasons.append(f"pad {pad!r} would be read as part of the number")
    if numeric and pad == "0" and align == "left":
        reasons.append("a left-aligned number cannot be padded with '0' (it would change value)")
    sign = raw.get("sign", "leading")
    if numeric and sign == "trailing" and length < 2:
        reasons.append("a trailing sign needs a length of at least 2")
    fmt = raw.get("format", "")
    if ftype in ("date", "time"):
        reason = _date_format_problem(fmt, length)
        if reason:
            reasons.append(reason)
    value = raw.get("value", "")
    if ftype == "constant":
        if len(value) > length:
            reasons.append(f"value {value!r} is longer than the field ({length})")
        bad = [ch for ch in value if ch not in _charset(encoding)]
        if bad:
            reasons.append(
                f"value {value!r}: {bad[0]!r} is not a printable character of {encoding}"
            )
    if reasons:
        return None, reasons
    return FieldSpec(
        name=name,
        source=source,
        type=ftype,
        length=length,
        align=align,
        pad=pad,
        value=value,
        decimals=raw.get("decimals", {"money": 2, "quantity": 3}.get(ftype, 0)),
        format=fmt,
        sign=sign,
        truncate=raw.get("truncate", True),
        start=position,
    ), []


def _date_format_problem(fmt: str, length: int) -> str | None:
    if not fmt:
        return "a date or time field needs a format such as ddMMyy, yyyyMMdd or HHmm"
    literal = _TOKEN_RE.sub("", fmt)
    letters = sorted({ch for ch in literal if ch.isascii() and ch.isalpha()})
    if letters:
        return (
            f"format {fmt!r}: {''.join(letters)!r} is not a token "
            f"(use {', '.join(DATE_TOKENS)}; case matters)"
        )
    if not _TOKEN_RE.search(fmt):
        return f"format {fmt!r} has no date or time token"
    if not (literal.isascii() and literal.isprintable()):
        return f"format {fmt!r}: literal characters must be printable ASCII"
    width = _date_format_width(fmt)
    if width > length:
        return f"format {fmt!r} is {width} characters wide, the field only {length}"
    return None


def _date_format_width(fmt: str) -> int:
    return len(_TOKEN_RE.sub(lambda m: "x" * _TOKEN_WIDTH[m.group(0)], fmt))


def _file_name_problem(template: str) -> str | None:
    keys = _PLACEHOLDER_RE.findall(template)
    unknown = [k for k in keys if k not in _NAME_VALUES]
    if unknown:
        return (
            f"file_name {template!r}: unknown placeholder {{{unknown[0]}}} "
            f"(known: {', '.join('{' + k + '}' for k in _NAME_VALUES)})"
        )
    literal = "".join(_PLACEHOLDER_RE.split(template)[::2])
    if not _NAME_LITERAL_OK.match(literal):
        return (
            f"file_name {template!r}: literal text may only use letters, digits, '.', '_' "
            "and '-' (a file name, never a path)"
        )
    if template.startswith("."):
        return f"file_name {template!r} must not start with '.'"
    if not {"receiptId", "receipt_id"} & set(keys):
        return (
            f"file_name {template!r} must contain {{receiptId}} "
            "(otherwise receipts overwrite each other)"
        )
    return None


def _date_folder_problem(pattern: str) -> str | None:
    literal = _FOLDER_TOKEN_RE.sub("", pattern)
    if not _FOLDER_LITERAL_OK.match(literal):
        return (
            f"date_folder {pattern!r}: only YYYY, MM, DD, letters, digits, '_', '-' and "
            "'/' between folders"
        )
    if any(not segment for segment in pattern.split("/")):
        return f"date_folder {pattern!r}: empty folder name (leading, trailing or double '/')"
    if sorted(_FOLDER_TOKEN_RE.findall(pattern)) != ["DD", "MM", "YYYY"]:
        return f"date_folder {pattern!r} must contain YYYY, MM and DD, each once"
    return None


# --- compiled layouts -------------------------------------------------------------------------

_ONE = Decimal(1)
_Part = tuple[int, Callable[..., str]]


class _RecordPlan:
    """One record of one version, compiled: static text, receipt-level and item-level parts."""

    def __init__(self, fields: tuple[FieldSpec, ...], version: LayoutVersion):
        self.width = sum(f.length for f in fields)
        self.static: list[str] = []  # one slot per field; constants filled in now
        self.receipt_parts: list[_Part] = []  # fn(receipt, terminal, local_time) -> str
        self.item_parts: list[_Part] = []  # fn(item, line_number) -> str
        self.parsers: list[tuple[FieldSpec, int, int, Callable[[str], Any]]] = []
        # Integer fields whose value the file itself determines: (field, source).
        self.structural = [
            (f.name, f.source)
            for f in fields
            if f.type == "integer" and f.source in ("computed.line_number", "computed.item_count")
        ]
        for i, f in enumerate(fields):
            fmt, parse = _compile_field(f, version.encoding, version.transliterate)
            self.parsers.append((f, f.start - 1, f.start - 1 + f.length, parse))
            if f.type == "constant":
                self.static.append(fmt(f.value))
            elif f.source in ITEM_SOURCES:
                self.static.append("")
                self.item_parts.append((i, _item_part(f.source, fmt)))
            else:
                self.static.append("")
                self.receipt_parts.append((i, _receipt_part(f.source, fmt)))

    def receipt_level(self, receipt: Receipt, terminal: Terminal, local: datetime) -> list[str]:
        segments = self.static.copy()
        for i, part in self.receipt_parts:
            segments[i] = part(receipt, terminal, local)
        return segments


_RECEIPT_VALUES: dict[str, Callable[[Receipt, Terminal, datetime], Any]] = {
    "receipt.receipt_id": lambda r, t, local: r.receipt_id,
    "receipt.terminal_id": lambda r, t, local: r.terminal_id,
    "receipt.department_code": lambda r, t, local: r.department_code,
    "receipt.total": lambda r, t, local: r.total,
    "receipt.timestamp": lambda r, t, local: local,
    "terminal.id": lambda r, t, local: t.id,
    "terminal.department": lambda r, t, local: t.department,
    "terminal.tenant": lambda r, t, local: t.tenant,
    "computed.item_count": lambda r, t, local: len(r.items),
    "computed.receipt_total": lambda r, t, local: r.lines_total,
}


def _receipt_part(source: str, fmt: Callable[[Any], str]) -> Callable[..., str]:
    get = _RECEIPT_VALUES[source]
    return lambda r, t, local: fmt(get(r, t, local))


# What a line's label said (core.barcodes): empty text or zero where it says nothing.
_LABEL_VALUES: dict[str, Callable[[ReceiptItem], Any]] = {
    "item.gtin": lambda item: item.gtin or "",
    "item.gtin13": lambda item: _gtin13(item),
    "item.weight": lambda item: item.weight if item.weight is not None else _ZERO,
    "item.count": lambda item: item.count if item.count is not None else 0,
}
_ZERO = Decimal(0)


def _gtin13(item: ReceiptItem) -> str:
    code = gtin13(item.barcode, item.gtin)
    if code is None:
        raise DatRenderError(
            f"barcode {item.barcode[:40]!r} has no 13-digit form (a GTIN-14 of a case or "
            "pack, indicator digit not 0)"
        )
    return code


def _item_part(source: str, fmt: Callable[[Any], str]) -> Callable[..., str]:
    if source == "computed.line_number":
        return lambda item, n: fmt(n)
    if source in _LABEL_VALUES:
        label_value = _LABEL_VALUES[source]
        return lambda item, n: fmt(label_value(item))
    get = attrgetter("amount" if source == "computed.line_amount" else source.partition(".")[2])
    return lambda item, n: fmt(get(item))


def _compile_field(
    f: FieldSpec, encoding: str, transliterate: bool
) -> tuple[Callable[[Any], str], Callable[[str], Any]]:
    """The field's formatter (value -> exactly ``f.length`` characters) and parser (inverse)."""
    justify = str.rjust if f.align == "right" else str.ljust
    strip = str.lstrip if f.align == "right" else str.rstrip
    length, pad, name = f.length, f.pad, f.name
    if f.type in _NUMERIC:
        return _compile_number(f)

    if f.type == "constant":
        rendered = justify(f.value, length, pad)

        def parse_constant(raw: str) -> str:
            if raw != rendered:
                raise ValueError(f"{raw!r} is not the constant {rendered!r}")
            return f.value

        return (lambda value: rendered), parse_constant

    if f.type == "text":
        clean = _cleaner(encoding, transliterate, name)
        truncate = f.truncate

        def format_text(value: Any) -> str:
            text = value if type(value) is str else _as_text(value, name)
            if not (text.isascii() and text.isprintable()):
                text = clean(text)
            if len(text) > length:
                if not truncate:
                    raise DatRenderError(
                        f"field {name}: {text!r} is longer than {length} characters "
                        "(the spec does not truncate this field)"
                    )
                text = text[:length]
            return justify(text, length, pad)

        def parse_text(raw: str) -> str:
            value = strip(raw, pad)
            # Printable ASCII is written as is; anything else must be what the engine writes.
            if not (value.isascii() and value.isprintable()) and format_text(value) != raw:
                raise ValueError(f"{raw!r} holds characters the engine never writes")
            return value

        return format_text, parse_text

    # date and time: rendered with str.format (always exactly ``width`` characters), parsed
    # with strptime
    pattern = _translate(f.format, _TOKEN_RE, DATE_TOKENS, lambda text: text.replace("%", "%%"))
    template = _translate(f.format, _TOKEN_RE, _TOKEN_TEMPLATES, _brace_escape).format
    width = _date_format_width(f.format)
    tokens = set(_TOKEN_RE.findall(f.format))

    def format_moment(value: Any) -> str:
        if not isinstance(value, datetime):
            if not isinstance(value, date):
                raise DatRenderError(f"field {name}: {value!r} is not a date or time")
            value = datetime(value.year, value.month, value.day)
        return justify(template(value, value.year % 100), length, pad)

    @lru_cache(maxsize=512)  # a receipt's lines repeat the same date: parse it once
    def parse_moment(raw: str) -> str:
        text = raw[:width] if f.align == "left" else raw[length - width :]
        try:
            moment = datetime.strptime(text, pattern)
        except ValueError:
            raise ValueError(f"{raw!r} does not match {f.format}") from None
        if format_moment(moment) != raw:
            raise ValueError(f"{raw!r} is not the form the engine writes for {f.format}")
        return _iso(moment, tokens, text)

    return format_moment, parse_moment


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


def _iso(moment: datetime, tokens: set[str], raw: str) -> str:
    """A parsed date/time as ISO 8601 where the format holds a whole date and/or time."""
    has_date = {"dd", "MM"} <= tokens and bool({"yyyy", "yy"} & tokens)
    has_time = {"HH", "mm"} <= tokens
    clock = "%H:%M:%S" if "ss" in tokens else "%H:%M"
    if has_date and has_time:
        return moment.strftime(f"%Y-%m-%dT{clock}")
    if has_date:
        return moment.strftime("%Y-%m-%d")
    if has_time:
        return moment.strftime(clock)
    return raw


def _compile_number(f: FieldSpec) -> tuple[Callable[[Any], str], Callable[[str], Any]]:
    number = _number_writer(f)
    read_number = _number_reader(f, number)
    name, exponent = f.name, f.decimals

    if f.type == "integer":

        def format_integer(value: Any) -> str:
            n = value if type(value) is int else _as_integer(value, name)
            try:
                return number(n)
            except _Unfit as exc:
                raise DatRenderError(f"field {name}: value {n} {exc}") from None

        return format_integer, read_number

    def parse_scaled(raw: str) -> str:
        return _major_units(read_number(raw), exponent)

    if f.type == "money":

        def format_money(value: Any) -> str:
            amount = value if type(value) is Decimal else _as_decimal(value, name)
            try:
                minor = int(amount.scaleb(exponent).quantize(_ONE, rounding=ROUND_HALF_UP))
            except (ValueError, ArithmeticError):
                raise DatRenderError(f"field {name}: {value!r} is not a finite amount") from None
            try:
                return number(minor)
            except _Unfit as exc:
                raise DatRenderError(
                    f"field {name}: amount {amount} ({minor} in minor units) {exc}"
                ) from None

        return format_money, parse_scaled

    def format_quantity(value: Any) -> str:
        quantity = value if type(value) is Decimal else _as_decimal(value, name)
        scaled = quantity.scaleb(exponent)
        try:
            n = int(scaled)
        except (ValueError, ArithmeticError):
            raise DatRenderError(f"field {name}: {value!r} is not a finite quantity") from None
        if n != scaled:
            raise DatRenderError(
                f"field {name}: quantity {quantity} has more than {exponent} decimals "
                "(it would be cut)"
            )
        try:
            return number(n)
        except _Unfit as exc:
            raise DatRenderError(f"field {name}: quantity {quantity} {exc}") from None

    return format_quantity, parse_scaled


def _major_units(n: int, exponent: int) -> str:
    """``n`` × 10^-exponent as text, exactly as ``str(Decimal(n).scaleb(-exponent))``."""
    if not exponent:
        return str(n)
    digits = str(-n if n < 0 else n).rjust(exponent + 1, "0")
    return f"{'-' if n < 0 else ''}{digits[:-exponent]}.{digits[-exponent:]}"


def _number_writer(f: FieldSpec) -> Callable[[int], str]:
    """int -> exactly ``f.length`` characters, or ``_Unfit``. Signs: see dat_specs/README.md."""
    length, pad, sign = f.length, f.pad, f.sign
    justify = str.rjust if f.align == "right" else str.ljust
    too_wide = f"does not fit in {length} characters"

    if sign == "trailing":
        width = length - 1

        def trailing(n: int) -> str:
            digits = str(-n) if n < 0 else str(n)
            if len(digits) > width:
                raise _Unfit(too_wide)
            return justify(digits, width, pad) + ("-" if n < 0 else " ")

        return trailing

    if sign == "none":

        def unsigned(n: int) -> str:
            if n < 0:
                raise _Unfit("is negative but the field has no sign (sign: none)")
            digits = str(n)
            if len(digits) > length:
                raise _Unfit(too_wide)
            return justify(digits, length, pad)

        return unsigned

    if pad == "0":  # right-aligned (enforced at load): the sign goes in front of the zeros

        def leading_zeros(n: int) -> str:
            if n < 0:
                digits = str(-n)
                if len(digits) > length - 1:
                    raise _Unfit(too_wide)
                return "-" + digits.rjust(length - 1, "0")
            digits = str(n)
            if len(digits) > length:
                raise _Unfit(too_wide)
            return digits.rjust(length, "0")

        return leading_zeros

    def leading(n: int) -> str:  # the sign sits against the digits: "  -123" or "-123  "
        text = str(n)
        if len(text) > length:
            raise _Unfit(too_wide)
        return justify(text, length, pad)

    return leading


def _number_reader(f: FieldSpec, number: Callable[[int], str]) -> Callable[[str], int]:
    """The inverse of ``_number_writer``: accepts exactly what it writes, nothing else."""
    strip = str.lstrip if f.align == "right" else str.rstrip
    pad, trailing = f.pad, f.sign == "trailing"
    # Right-aligned, zero-padded, no sign position: all digits is always the canonical form.
    digits_are_canonical = pad == "0" and not trailing

    def read(raw: str) -> int:
        if digits_are_canonical and raw.isdigit() and raw.isascii():
            return int(raw)
        if trailing:
            body, mark = raw[:-1], raw[-1:]
            negative = mark == "-"
            body = strip(body, pad)
        else:
            body = strip(raw, pad)
            negative = body.startswith("-")
            if negative:
                body = body[1:].lstrip("0") if pad == "0" else body[1:]
        if body and not (body.isascii() and body.isdigit()):
            raise ValueError(f"{raw!r} is not a number")
        n = -int(body or 0) if negative else int(body or 0)
        try:
            expected = number(n)
        except _Unfit as exc:
            raise ValueError(f"{raw!r}: {n} {exc}") from None
        if expected != raw:
            raise ValueError(f"{raw!r} is not in the form the engine writes ({expected!r})")
        return n

    return read


def _as_text(value: Any, name: str) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int | str) and not isinstance(value, bool):
        return str(value)
    raise DatRenderError(f"field {name}: {value!r} is not text")


def _as_decimal(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise DatRenderError(f"field {name}: {value!r} is not a number")
    try:
        if isinstance(value, float):
            return Decimal(repr(value))  # 0.29, not 0.28999999999999998002...
        return Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise DatRenderError(f"field {name}: {value!r} is not a number") from None


def _as_integer(value: Any, name: str) -> int:
    if isinstance(value, str):
        text = value[1:] if value.startswith("-") else value
        if text.isascii() and text.isdigit():
            return int(value)
        raise DatRenderError(f"field {name}: {value!r} is not a whole number")
    number = _as_decimal(value, name)
    if not number.is_finite() or number != number.to_integral_value():
        raise DatRenderError(f"field {name}: {value!r} is not a whole number (it would be cut)")
    return int(number)


# --- text: encodable characters and transliteration -------------------------------------------


@cache
def _charset(encoding: str) -> frozenset[str]:
    """The printable characters that ``encoding`` writes as one byte each."""
    chars = set()
    for byte in range(256):
        try:
            ch = bytes([byte]).decode(encoding)
        except UnicodeDecodeError:
            continue
        if ch.isprintable():
            chars.add(ch)
    return frozenset(chars)


def _cleaner(encoding: str, transliterate: bool, name: str) -> Callable[[str], str]:
    """str -> only printable characters of ``encoding`` (one byte each).

    Control characters and line breaks become a space, invisible format characters vanish,
    other whitespace becomes a space. Anything else the encoding lacks is transliterated
    (``transliterate: true``) or refused with an error naming the field.
    """
    charset = _charset(encoding)

    def clean(text: str) -> str:
        out = []
        for ch in unicodedata.normalize("NFC", text):
            if ch in charset:
                out.append(ch)
                continue
            category = unicodedata.category(ch)
            if category in ("Cc", "Zl", "Zp", "Zs"):
                out.append(" ")
            elif category == "Cf" or unicodedata.combining(ch):
                continue
            elif transliterate:
                out.append(_transliterate_char(ch, encoding))
            else:
                raise DatRenderError(
                    f"field {name}: character {ch!r} (U+{ord(ch):04X}) cannot be written in "
                    f"{encoding} and this spec version does not transliterate"
                )
        return "".join(out)

    return clean


@lru_cache(maxsize=8192)
def _transliterate_char(ch: str, encoding: str) -> str:
    if ch in _FALLBACK:
        return _FALLBACK[ch]
    charset = _charset(encoding)
    out = []
    for part in unicodedata.normalize("NFKD", ch):
        if unicodedata.combining(part):
            continue
        if part in charset:
            out.append(part)
        elif part in _FALLBACK:
            out.append(_FALLBACK[part])
        elif unicodedata.category(part) == "Zs":
            out.append(" ")
        else:
            out.append("?")
    return "".join(out) or "?"


def transliterate(text: str, encoding: str) -> str:
    """``text`` in printable characters of ``encoding``: accents stripped, '?' for the rest."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported encoding {encoding!r}")
    return _cleaner(encoding, True, "text")(text)


# --- file names and folders -------------------------------------------------------------------

_NAME_VALUES: dict[str, Callable[[Receipt, Terminal, date], str]] = {
    "department": lambda r, t, day: t.department,
    "receiptId": lambda r, t, day: r.receipt_id,
    "receipt_id": lambda r, t, day: r.receipt_id,
    "terminalId": lambda r, t, day: t.id,
    "terminal_id": lambda r, t, day: t.id,
    "date": lambda r, t, day: f"{day.year:04d}{day.month:02d}{day.day:02d}",
}


def _compile_file_name(template: str) -> list[tuple[str, bool]]:
    pieces = _PLACEHOLDER_RE.split(template)  # literal, key, literal, key, ...
    return [(piece, i % 2 == 1) for i, piece in enumerate(pieces) if piece]


def name_template_parts(version: LayoutVersion) -> list[tuple[str, bool]]:
    """The version's file-name template as (literal text or placeholder name, is placeholder)."""
    return list(version._name_parts)


def dat_relative_path(receipt: Receipt, terminal: Terminal, version: LayoutVersion) -> Path:
    """``<date folder>/<file name>``; nothing from a receipt can steer it elsewhere."""
    day = local_time(receipt.timestamp, terminal.timezone).date()
    return _relative_path(receipt, terminal, version, day)


def _relative_path(receipt: Receipt, terminal: Terminal, version: LayoutVersion, day: date) -> Path:
    name = "".join(
        _NAME_VALUE_UNSAFE.sub("_", _NAME_VALUES[p](receipt, terminal, day)) if is_key else p
        for p, is_key in version._name_parts
    )
    if len(name.encode("utf-8")) > MAX_FILE_NAME_BYTES:
        raise DatRenderError(f"file name {name[:40]}... is longer than {MAX_FILE_NAME_BYTES} bytes")
    return Path(f"{version._folder_format(day)}/{name}")


def local_time(moment: datetime, zone: tzinfo) -> datetime:
    """``moment`` on the terminal's clock (a naive timestamp already is)."""
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment.astimezone(zone)


# --- rendering --------------------------------------------------------------------------------


def render_receipt(receipt: Receipt, terminal: Terminal, spec: DatSpec) -> RenderedDat:
    """The receipt's .dat file under the spec version in force on its business day."""
    local = local_time(receipt.timestamp, terminal.timezone)
    day = local.date()
    version = spec.version_for(day)
    plans = version._plans
    lines: list[str] = []
    line_number = 0  # 0: the header, -1: the footer
    try:
        header = plans.get("header")
        if header is not None:
            lines.append("".join(header.receipt_level(receipt, terminal, local)))
        plan = plans["item"]
        segments = plan.receipt_level(receipt, terminal, local)
        parts = plan.item_parts
        join = "".join
        append = lines.append
        for line_number, item in enumerate(receipt.items, start=1):
            for i, part in parts:
                segments[i] = part(item, line_number)
            append(join(segments))
        line_number = -1
        footer = plans.get("footer")
        if footer is not None:
            lines.append("".join(footer.receipt_level(receipt, terminal, local)))
    except DatRenderError as exc:
        where = {0: "header", -1: "footer"}.get(line_number, f"item line {line_number}")
        raise DatRenderError(
            f"receipt {receipt.receipt_id}, {where} (spec {spec.name}, version from "
            f"{version.effective_from.isoformat()}): {exc}"
        ) from None
    newline = version._newline
    content = (newline.join(lines) + newline).encode(version.encoding)
    return RenderedDat(
        relative_path=_relative_path(receipt, terminal, version, day),
        content=content,
        version=version,
    )


# --- writing, parsing and checking ------------------------------------------------------------


def write_dat(out_dir: Path, rendered: RenderedDat, spec: DatSpec, business_day: date) -> Path:
    """Write atomically (temp + fsync + rename), then re-read and re-parse it against the spec."""
    target = _target(out_dir, rendered)
    version = rendered.version or spec.version_for(business_day)
    try:
        # A written .dat is final for the billing software: re-writing identical bytes is fine
        # (a re-delivery, a backfill), replacing a different file never is.
        write_once(target, rendered.content)
    except ContentConflict:
        raise _conflict(target) from None
    problems = check_dat(target.read_bytes(), version)
    if problems:
        raise DatRenderError(
            f"{target} does not re-parse against {spec.name}: {'; '.join(problems[:3])}"
        )
    return target


def stage_dat(out_dir: Path, rendered: RenderedDat, spec: DatSpec, business_day: date):
    """Write the .dat under a hidden temp name beside its place, on disk (fsynced), checked
    against its spec; ``publish_dat`` renames it into place.

    Returns (target, temp); temp is None if the target already holds exactly these bytes.
    Raises ``DatConflictError`` if it holds other bytes.
    """
    target = _target(out_dir, rendered)
    version = rendered.version or spec.version_for(business_day)
    problems = check_dat(rendered.content, version)
    if problems:
        raise DatRenderError(f"{target} would not parse against {spec.name}: {problems[0]}")
    if _same_or_conflict(target, rendered.content):
        return target, None
    return target, synced_temp_copy(target, rendered.content)


def publish_dat(temp: Path, target: Path) -> None:
    """Rename a staged .dat into place (never over another file), durably."""
    if target.exists():  # staged twice (a retried attempt): the name is this receipt's alone
        temp.unlink(missing_ok=True)
        return
    os.rename(temp, target)
    fsync_dir(target.parent)


def _same_or_conflict(target: Path, content: bytes) -> bool:
    try:
        existing = target.read_bytes()
    except FileNotFoundError:
        return False
    if existing == content:
        return True
    raise _conflict(target)


def _target(out_dir: Path, rendered: RenderedDat) -> Path:
    """Where a .dat goes; nothing from a receipt can steer it out of the .dat folder."""
    out_dir = Path(out_dir)
    target = (out_dir / rendered.relative_path).resolve()
    if out_dir.resolve() not in target.parents:
        raise DatRenderError(f"refusing to write outside {out_dir}: {target}")
    return target


def _conflict(target: Path) -> DatConflictError:
    return DatConflictError(
        f"{target} already exists with other content (another receipt with the same file "
        "name: same department and receipt id?); not overwritten"
    )


def check_dat(content: bytes, version: LayoutVersion) -> list[str]:
    """Every way ``content`` departs from ``version``, line and field named; [] if it conforms."""
    return _scan(content, version)[1]


def parse_dat(content: bytes, version: LayoutVersion) -> list[dict[str, Any]]:
    """The file's records (``record``: header/item/footer, then field name -> value).

    Money and quantities come back as strings in major units ("2.95", "1.500"), integers as
    ints, text as written (pad removed), dates and times as ISO 8601 where the format holds a
    whole date or time. Raises ``DatFormatError`` if the file does not conform.
    """
    records, problems = _scan(content, version)
    if problems:
        raise DatFormatError(problems)
    return records


def _record_kinds(version: LayoutVersion, count: int) -> list[str]:
    kinds = ["item"] * count
    if version.header and count:
        kinds[0] = "header"
    if version.footer and count > (1 if version.header else 0):
        kinds[-1] = "footer"
    return kinds


def _scan(content: bytes, version: LayoutVersion) -> tuple[list[dict[str, Any]], list[str]]:
    ending = version.line_ending
    if not content.endswith(ending):
        return [], [f"file does not end with the spec's line ending {ending!r}"]
    lines = content[: -len(ending)].split(ending)
    kinds = _record_kinds(version, len(lines))
    needed = 1 + bool(version.header) + bool(version.footer)
    problems: list[str] = []
    if len(lines) < needed:
        problems.append(
            f"file has {len(lines)} line(s); this layout needs "
            f"{'a header, ' if version.header else ''}at least one item line"
            f"{' and a footer' if version.footer else ''}"
        )
    records: list[dict[str, Any]] = []
    item_count = kinds.count("item")
    for number, (line, kind) in enumerate(zip(lines, kinds, strict=True), start=1):
        where = f"line {number} ({kind})"
        plan = version._plans[kind]
        if len(line) != plan.width:
            problems.append(f"{where}: {len(line)} bytes, expected {plan.width}")
            continue
        if b"\r" in line or b"\n" in line:
            problems.append(f"{where}: stray line-break byte inside the line")
            continue
        try:
            text = line.decode(version.encoding)
        except UnicodeDecodeError as exc:
            f = next(f for f, a, b, _ in plan.parsers if a <= exc.start < b)
            problems.append(
                f"{where}, field {f.name}: byte {exc.start + 1} "
                f"(0x{line[exc.start]:02X}) is not valid {version.encoding}"
            )
            continue
        values: dict[str, Any] = {"record": kind}
        for f, a, b, parse in plan.parsers:
            try:
                values[f.name] = parse(text[a:b])
            except ValueError as exc:
                problems.append(f"{where}, field {f.name} (bytes {a + 1}-{b}): {exc}")
        for name, source in plan.structural:
            if source == "computed.line_number":
                expected, what = number - bool(version.header), "item line"
            else:
                expected, what = item_count, "item count"
            if name in values and values[name] != expected:
                problems.append(
                    f"{where}, field {name}: {values[name]} but the file's {what} is {expected}"
                )
        records.append(values)
    return records, problems


__all__ = [
    "DatFormatError",
    "DatRenderError",
    "DatSpec",
    "FieldSpec",
    "LayoutVersion",
    "RenderedDat",
    "SpecError",
    "check_dat",
    "dat_relative_path",
    "load_spec",
    "local_time",
    "parse_dat",
    "render_receipt",
    "spec_from_dict",
    "transliterate",
    "write_dat",
]
