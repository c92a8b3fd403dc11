"""The fiscal .dat engine: fixed-width files for the legacy central billing software.

Layouts are data (JSON specs in ``dat_specs/``), never code. A spec holds one or more
*versions*, each in force from its ``effective_from`` date, so a backfill of last month renders
last month's layout. A version has an optional ``header`` record, one ``item`` record per
receipt line and an optional ``footer`` record; each record is an ordered list of fields.

Rendering is exact: money is ``Decimal`` × 100 half-up, a number that does not fit its field is
an error (never cut), text is transliterated and truncated so every line has the spec's byte
width in the target encoding. Written files are re-parsed against the spec before success.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from posfed_pipeline.core.config import Terminal
from posfed_pipeline.core.fsutil import write_atomic
from posfed_pipeline.core.receipt import Receipt, ReceiptItem

SPEC_SCHEMA_PATH = Path(__file__).with_name("dat_spec.schema.json")
LINE_ENDINGS = {"CRLF": b"\r\n", "LF": b"\n", "CR": b"\r"}
# Single-byte encodings only: one character is one byte, so widths are exact.
ENCODINGS = ("ascii", "cp1252", "latin-1", "iso-8859-15", "cp850", "cp437")
DATE_TOKENS = {"yyyy": "%Y", "yy": "%y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M", "ss": "%S"}
_TOKEN_RE = re.compile("|".join(sorted(DATE_TOKENS, key=len, reverse=True)))
SOURCES = {
    "receipt": {"receipt_id", "terminal_id", "department_code", "total", "timestamp"},
    "item": {"barcode", "description", "price", "quantity"},
    "terminal": {"id", "department", "tenant"},
    "computed": {"line_number", "item_count", "receipt_total", "line_amount"},
}
_NAME_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class SpecError(ValueError):
    """A spec that cannot be used; the message names the file, record and field."""


class DatRenderError(ValueError):
    """A receipt that cannot be rendered under a spec (e.g. a number too wide for its field)."""


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

    def records(self) -> list[tuple[str, tuple[FieldSpec, ...]]]:
        return [
            (k, v)
            for k, v in (("header", self.header), ("item", self.item), ("footer", self.footer))
            if v
        ]


@dataclass(frozen=True)
class DatSpec:
    name: str
    path: Path
    versions: tuple[LayoutVersion, ...]  # sorted by effective_from

    def version_for(self, business_day: date) -> LayoutVersion:
        in_force = [v for v in self.versions if v.effective_from <= business_day]
        if not in_force:
            raise DatRenderError(
                f"spec {self.name}: no version in force on {business_day.isoformat()}"
            )
        return in_force[-1]


@dataclass(frozen=True)
class RenderedDat:
    relative_path: Path  # <date folder>/<file name>
    content: bytes


@cache
def _spec_schema() -> dict:
    return json.loads(SPEC_SCHEMA_PATH.read_text(encoding="utf-8"))


def load_spec(path: str | Path) -> DatSpec:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: not valid JSON: {exc}") from None
    return spec_from_dict(raw, path)


def spec_from_dict(raw: dict, path: Path) -> DatSpec:
    validator = jsonschema.Draft202012Validator(_spec_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        reasons = "; ".join(
            f"at {'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
            for e in errors
        )
        raise SpecError(f"{path}: {reasons}")
    versions = [_version(v, path, i) for i, v in enumerate(raw["versions"])]
    versions.sort(key=lambda v: v.effective_from)
    days = [v.effective_from for v in versions]
    if len(set(days)) != len(days):
        raise SpecError(f"{path}: two versions share an effective_from date")
    return DatSpec(name=raw["name"], path=path, versions=tuple(versions))


def _version(raw: dict, path: Path, index: int) -> LayoutVersion:
    where = f"{path}: versions[{index}]"
    try:
        effective = date.fromisoformat(raw["effective_from"])
    except ValueError:
        raise SpecError(
            f"{where}: effective_from {raw['effective_from']!r} is not a date"
        ) from None
    records: dict[str, tuple[FieldSpec, ...]] = {}
    for record in ("header", "item", "footer"):
        fields = raw.get("records", {}).get(record)
        if fields is None:
            records[record] = ()
            continue
        records[record] = _fields(fields, f"{where}, record {record}")
    if not records["item"]:
        raise SpecError(f"{where}: an item record is required")
    encoding = raw.get("encoding", "ascii")
    for record, fields in records.items():
        for f in fields:
            try:
                f.pad.encode(encoding)
            except UnicodeEncodeError:
                raise SpecError(
                    f"{where}, record {record}, field {f.name}: pad {f.pad!r} "
                    f"is not encodable in {encoding}"
                ) from None
    return LayoutVersion(
        effective_from=effective,
        encoding=encoding,
        line_ending=LINE_ENDINGS[raw.get("line_ending", "CRLF")],
        file_name=raw.get("file_name", "scon{department}{receipt_id}.dat"),
        date_folder=raw.get("date_folder", "YYYYMMDD"),
        header=records["header"],
        item=records["item"],
        footer=records["footer"],
    )


def _fields(raw_fields: list[dict], where: str) -> tuple[FieldSpec, ...]:
    fields: list[FieldSpec] = []
    position = 1
    names: set[str] = set()
    for raw in raw_fields:
        place = f"{where}, field {raw.get('name', '?')}"
        if raw["name"] in names:
            raise SpecError(f"{place}: the field name appears twice")
        names.add(raw["name"])
        if raw["length"] < 1:
            raise SpecError(f"{place}: length must be at least 1")
        start = raw.get("start")
        if start is not None and start != position:
            relation = "overlaps the previous field" if start < position else "leaves a gap"
            raise SpecError(f"{place}: starts at {start} but {relation} (expected {position})")
        source = raw["source"]
        if source != "constant":
            group, _, attr = source.partition(".")
            if attr not in SOURCES.get(group, ()):
                raise SpecError(f"{place}: unknown source {source!r}")
        ftype = raw["type"]
        if ftype in ("date", "time") and not raw.get("format"):
            raise SpecError(f"{place}: a {ftype} field needs a format such as ddMMyy or HHmm")
        fields.append(
            FieldSpec(
                name=raw["name"],
                source=source,
                type=ftype,
                length=raw["length"],
                align=raw.get("align", "left" if ftype in ("text", "constant") else "right"),
                pad=raw.get("pad", " " if ftype in ("text", "constant") else "0"),
                value=raw.get("value", ""),
                decimals=raw.get("decimals", 3 if ftype == "quantity" else 0),
                format=raw.get("format", ""),
                sign=raw.get("sign", "leading"),
            )
        )
        position += raw["length"]
    return tuple(fields)


# --- rendering --------------------------------------------------------------------------------


def render_receipt(receipt: Receipt, terminal: Terminal, spec: DatSpec) -> RenderedDat:
    version = spec.version_for(receipt.business_day)
    lines: list[bytes] = []
    if version.header:
        lines.append(_render_record(version, version.header, receipt, terminal, None, 0))
    for n, item in enumerate(receipt.items, start=1):
        lines.append(_render_record(version, version.item, receipt, terminal, item, n))
    if version.footer:
        lines.append(_render_record(version, version.footer, receipt, terminal, None, 0))
    ending = version.line_ending
    content = ending.join(lines) + ending
    return RenderedDat(relative_path=dat_relative_path(receipt, terminal, version), content=content)


def dat_relative_path(receipt: Receipt, terminal: Terminal, version: LayoutVersion) -> Path:
    folder = _date_pattern(version.date_folder, receipt.business_day)
    name = version.file_name.format(
        department=terminal.department,
        receipt_id=receipt.receipt_id,
        terminal=terminal.id,
        date=receipt.business_day.strftime("%Y%m%d"),
    )
    # Nothing from a receipt may steer the path: one plain file name inside the date folder.
    name = _NAME_SAFE.sub("_", name).lstrip(".") or "receipt.dat"
    return Path(folder) / name


def _date_pattern(pattern: str, day: date) -> str:
    return (
        pattern.replace("YYYY", f"{day.year:04d}")
        .replace("MM", f"{day.month:02d}")
        .replace("DD", f"{day.day:02d}")
    )


def _render_record(version, fields, receipt, terminal, item, line_no) -> bytes:
    out = []
    for f in fields:
        value = _source_value(f, receipt, terminal, item, line_no)
        text = _format(f, value, version.encoding)
        out.append(text)
    line = "".join(out)
    return line.encode(version.encoding)


def _source_value(
    f: FieldSpec, receipt: Receipt, terminal: Terminal, item: ReceiptItem | None, line_no: int
) -> Any:
    if f.source == "constant":
        return f.value
    group, _, attr = f.source.partition(".")
    if group == "receipt":
        return getattr(receipt, attr)
    if group == "terminal":
        return getattr(terminal, attr)
    if group == "item":
        if item is None:
            raise DatRenderError(f"field {f.name}: item source used outside the item record")
        return getattr(item, attr)
    # computed
    if attr == "line_number":
        return line_no
    if attr == "item_count":
        return len(receipt.items)
    if attr == "receipt_total":
        return receipt.total
    if item is None:
        raise DatRenderError(f"field {f.name}: line_amount used outside the item record")
    return item.amount


def transliterate(text: str, encoding: str) -> str:
    """Keep what the encoding can hold; strip accents from the rest; '?' for what remains."""
    out = []
    for ch in text:
        if ch in "\r\n\t":
            out.append(" ")
            continue
        try:
            ch.encode(encoding)
            out.append(ch)
            continue
        except UnicodeEncodeError:
            pass
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        try:
            base.encode(encoding)
            out.append(base[:1] or "?")
        except UnicodeEncodeError:
            out.append("?")
    return "".join(out)


def _format(f: FieldSpec, value: Any, encoding: str) -> str:
    if f.type in ("text", "constant"):
        text = transliterate(str(value), encoding)[: f.length]
        return _pad(text, f)
    if f.type == "integer":
        return _number(f, int(value))
    if f.type == "money":
        minor = (Decimal(value) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        return _number(f, int(minor))
    if f.type == "quantity":
        scaled = Decimal(value).scaleb(f.decimals).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        return _number(f, int(scaled))
    if f.type in ("date", "time"):
        moment = value if isinstance(value, datetime | date) else datetime.fromisoformat(value)
        text = _TOKEN_RE.sub(lambda m: moment.strftime(DATE_TOKENS[m.group(0)]), f.format)
        if len(text) > f.length:
            raise DatRenderError(f"field {f.name}: {text!r} is wider than {f.length}")
        return _pad(text, f)
    raise DatRenderError(f"field {f.name}: unknown type {f.type}")


def _number(f: FieldSpec, number: int) -> str:
    digits = str(abs(number))
    if number < 0:
        if f.sign == "none":
            raise DatRenderError(
                f"field {f.name}: negative value {number} but the spec allows none"
            )
        if f.sign == "trailing":
            text = _pad(digits, f, f.length - 1) + "-"
        else:
            text = "-" + _pad(digits, f, f.length - 1)
    else:
        text = _pad(digits, f) if f.sign != "trailing" else _pad(digits, f, f.length - 1) + " "
    if len(text) > f.length or (number < 0 and len(digits) > f.length - 1):
        raise DatRenderError(
            f"field {f.name}: value {number} does not fit in {f.length} characters"
        )
    return text


def _pad(text: str, f: FieldSpec, width: int | None = None) -> str:
    width = f.length if width is None else width
    if len(text) > width:
        return text  # caller decides: text is truncated before, numbers raise
    return text.rjust(width, f.pad) if f.align == "right" else text.ljust(width, f.pad)


# --- writing and parsing ----------------------------------------------------------------------


def write_dat(out_dir: Path, rendered: RenderedDat, spec: DatSpec, business_day: date) -> Path:
    """Write atomically, then re-read and re-parse the file against its spec version."""
    target = (out_dir / rendered.relative_path).resolve()
    if out_dir.resolve() not in target.parents:
        raise DatRenderError(f"refusing to write outside {out_dir}: {target}")
    write_atomic(target, rendered.content)
    problems = check_dat(target.read_bytes(), spec.version_for(business_day))
    if problems:
        raise DatRenderError(f"{target} does not re-parse against {spec.name}: {problems[0]}")
    return target


def _record_kinds(version: LayoutVersion, count: int) -> list[str]:
    kinds = ["item"] * count
    if version.header and count:
        kinds[0] = "header"
    if version.footer and count > (1 if version.header else 0):
        kinds[-1] = "footer"
    return kinds


def _split_lines(content: bytes, version: LayoutVersion) -> list[bytes] | None:
    ending = version.line_ending
    if not content.endswith(ending):
        return None
    return content[: -len(ending)].split(ending)


def check_dat(content: bytes, version: LayoutVersion) -> list[str]:
    """Every way ``content`` departs from ``version``, line and field named; [] if it conforms."""
    lines = _split_lines(content, version)
    if lines is None:
        return [f"file does not end with the spec's line ending {version.line_ending!r}"]
    problems: list[str] = []
    kinds = _record_kinds(version, len(lines))
    for number, (line, kind) in enumerate(zip(lines, kinds, strict=True), start=1):
        fields = dict(version.records())[kind]
        width = sum(f.length for f in fields)
        if len(line) != width:
            problems.append(f"line {number} ({kind}): {len(line)} bytes, expected {width}")
            continue
        if any(b in line for b in (b"\r", b"\n")):
            problems.append(f"line {number} ({kind}): stray line-break byte")
        try:
            _parse_line(line, fields, version.encoding)
        except ValueError as exc:
            problems.append(f"line {number} ({kind}): {exc}")
    return problems


def parse_dat(content: bytes, version: LayoutVersion) -> list[dict[str, Any]]:
    lines = _split_lines(content, version)
    if lines is None:
        raise ValueError("file does not end with the spec's line ending")
    records = dict(version.records())
    return [
        {"record": kind, **_parse_line(line, records[kind], version.encoding)}
        for line, kind in zip(lines, _record_kinds(version, len(lines)), strict=True)
    ]


def _parse_line(line: bytes, fields: tuple[FieldSpec, ...], encoding: str) -> dict[str, Any]:
    try:
        text = line.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(f"byte {exc.start + 1} is not {encoding}") from None
    values: dict[str, Any] = {}
    position = 0
    for f in fields:
        raw = text[position : position + f.length]
        position += f.length
        values[f.name] = _parse_field(f, raw)
    return values


def _parse_field(f: FieldSpec, raw: str) -> Any:
    if f.type in ("text", "constant"):
        stripped = raw.rstrip(f.pad) if f.align == "left" else raw.lstrip(f.pad)
        if f.type == "constant" and stripped != f.value[: f.length].strip(f.pad):
            raise ValueError(f"field {f.name}: {raw!r} is not the constant {f.value!r}")
        return stripped
    if f.type in ("integer", "money", "quantity"):
        body = raw.strip()
        negative = body.startswith("-") or body.endswith("-")
        digits = body.strip("-").lstrip(f.pad if f.pad != "0" else " ")
        digits = digits.strip()
        if not digits.isdigit():
            raise ValueError(f"field {f.name}: {raw!r} is not a number")
        number = -int(digits) if negative else int(digits)
        if f.type == "money":
            return str(Decimal(number).scaleb(-2))
        if f.type == "quantity":
            return str(Decimal(number).scaleb(-f.decimals))
        return number
    if f.type in ("date", "time"):
        stripped = raw.strip(f.pad)
        pattern = _TOKEN_RE.sub(lambda m: DATE_TOKENS[m.group(0)], f.format)
        try:
            datetime.strptime(stripped, pattern)
        except ValueError:
            raise ValueError(f"field {f.name}: {raw!r} does not match {f.format}") from None
        return stripped
    raise ValueError(f"field {f.name}: unknown type {f.type}")
