"""Intake: turn the bytes a terminal dropped into a canonical ``Receipt``.

Every format is first read into the canonical fields (the posfed JSON as is; other vendors'
JSON and CSV through the terminal's ``[mappings.<name>]``), then checked the same way for shape
and identity: is this a receipt, and from this terminal? The business rules (check digits,
totals, time window) are pandera's job in ``validation``. Every problem found is reported, not
just the first, and nothing here raises anything but ``IntakeError``, whatever the bytes.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from posfed_pipeline.core.base.errors import PosfedError
from posfed_pipeline.core.config import POSLOG_FORMAT
from posfed_pipeline.core.intake import poslog
from posfed_pipeline.core.model.barcodes import read_label
from posfed_pipeline.core.model.input_mapping import (
    FIELDS_FROM_TERMINAL,
    ITEM_FIELDS,
    RECEIPT_FIELDS,
    InputMapping,
    JsonPath,
)
from posfed_pipeline.core.model.receipt import Problem, Receipt, ReceiptItem, content_hash
from posfed_pipeline.core.model.terminal import CANONICAL_FORMAT, Terminal

# Receipt ids end up in file names and database keys: a strict alphabet, nothing path-like.
# \Z, not $: "$" would let a trailing newline through.
RECEIPT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
MAX_FILE_BYTES = 1_000_000
MAX_ITEMS = 1000
# Far beyond any sale, and small enough that exact integer arithmetic stays within int64.
MAX_MAGNITUDE = Decimal("1e7")
# Timestamps outside this span are typos or a dead clock battery, never a sale.
EARLIEST_YEAR, LATEST_YEAR = 2000, 2099
_MISSING = object()


class IntakeError(PosfedError, ValueError):
    """Why a file is not a receipt. ``maybe_incomplete``: the bytes do not form a document at
    all (empty, cut off inside a character or a JSON value), as a file still being written can
    look for a while."""

    def __init__(self, problems: list[Problem], *, maybe_incomplete: bool = False):
        self.problems = problems
        self.maybe_incomplete = maybe_incomplete
        super().__init__("; ".join(str(p) for p in problems))


@dataclass
class _Fields:
    """A file's canonical fields before checking, each with the name an operator sees."""

    values: dict[str, object] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    items: list[tuple[dict[str, object], dict[str, str]]] | None = None
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class Part:
    """One transaction of a file that carries several (ARTS POSLog). It is judged on its own:
    a bad one is quarantined as a file of its own, ``document``, while the others are taken."""

    index: int  # 1-based position in the file
    name: str  # how an operator finds it: "transaction 2 (SequenceNumber 1002)"
    document: bytes  # the transaction alone, as a file of the terminal's format
    quarantine_name: str  # "<stem>.t<index><suffix>"


@dataclass(frozen=True)
class Reading:
    """What one receipt of a file became: a receipt, or the reasons it is not one."""

    part: Part | None  # None: the file is one receipt
    receipt: Receipt | None
    error: IntakeError | None = None


def _read_bytes(path: Path, limit: int) -> bytes:
    # O_NOFOLLOW: a symlink dropped into an inbox must not make posfed read any other file.
    # O_NONBLOCK: a FIFO put where a file was listed must not hang the run that opens it.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IntakeError(
                [Problem("file", "a symbolic link", "never followed: posfed reads regular files")]
            ) from None
        raise
    with os.fdopen(fd, "rb") as handle:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise IntakeError(
                [Problem("file", "not a regular file", "posfed reads regular files only")]
            )
        if status.st_size > limit:
            raise IntakeError(
                [Problem("file", f"{status.st_size} bytes", f"larger than {limit} bytes")]
            )
        return handle.read(limit + 1)


def max_file_bytes(terminal: Terminal) -> int:
    return poslog.MAX_FILE_BYTES if terminal.input_format == POSLOG_FORMAT else MAX_FILE_BYTES


def read_receipt_file(path: Path, terminal: Terminal) -> Receipt:
    """Read one inbox file of one receipt; raises ``IntakeError`` with every reason it is not
    one (a POSLog file of several transactions included: see ``read_receipts``)."""
    return _only_receipt(read_receipts(path, terminal))


def _only_receipt(readings: list[Reading]) -> Receipt:
    if len(readings) > 1:
        raise IntakeError(
            [Problem("file", f"{len(readings)} transactions", "holds more than one receipt")]
        )
    if readings[0].error is not None:
        raise readings[0].error
    assert readings[0].receipt is not None
    return readings[0].receipt


def read_receipts(path: Path, terminal: Terminal) -> list[Reading]:
    """Every receipt of one inbox file. A file that is no document at all raises
    ``IntakeError``; in a file of many transactions, each bad one is a ``Reading`` with its
    error while the others are read. Only ``OSError`` (the file system's) escapes besides."""
    data = _read_bytes(path, max_file_bytes(terminal))
    return parse_receipts(data, terminal, source_file=path.name)


def parse_receipts(data: bytes, terminal: Terminal, *, source_file: str = "") -> list[Reading]:
    """The receipts in ``data``; whatever the bytes, it returns or raises ``IntakeError``."""
    try:
        return _parse_receipts(data, terminal, source_file)
    except IntakeError:
        raise
    except RecursionError:
        raise IntakeError([Problem("file", "", "nested too deeply to be a receipt")]) from None
    except Exception as exc:
        # A case posfed's reading does not foresee must stay this file's verdict, never stop
        # its terminal: the file is quarantined, the error named for whoever looks into it.
        raise IntakeError(
            [Problem("file", type(exc).__name__, f"posfed could not read it: {exc}"[:300])]
        ) from exc


def _parse_receipts(data: bytes, terminal: Terminal, source_file: str) -> list[Reading]:
    if terminal.input_format != POSLOG_FORMAT:
        return [Reading(None, _parse_one(data, terminal, source_file))]
    _check_size(data, poslog.MAX_FILE_BYTES)
    try:
        transactions = poslog.read_poslog(data)
    except poslog.PosLogError as exc:
        raise IntakeError(exc.problems, maybe_incomplete=exc.maybe_incomplete) from None
    stem, dot, suffix = source_file.rpartition(".")
    stem, suffix = (stem, f".{suffix}") if dot else (source_file, "")
    several = len(transactions) > 1
    readings = []
    for transaction in transactions:
        part = (
            Part(
                transaction.index,
                transaction.name,
                transaction.document,
                f"{stem}.t{transaction.index}{suffix}",
            )
            if several
            else None
        )
        fields = _Fields(
            values={k: _MISSING if v is None else v for k, v in transaction.values.items()},
            labels=transaction.labels,
            items=[
                ({k: _MISSING if v is None else v for k, v in values.items()}, labels)
                for values, labels in transaction.items
            ]
            or None,
            problems=transaction.problems,
        )
        if fields.items is None:
            fields.problems.append(Problem("items", "none", "a sale needs at least one item"))
        name = f"{source_file}#{transaction.index}" if several else source_file
        try:
            # Its own bytes identify it: the same transaction in another file is the same sale.
            receipt = _build_receipt(
                fields, terminal, transaction.document, name, terminal_name=terminal.workstation_id
            )
        except IntakeError as exc:
            if part is not None:
                exc = IntakeError(
                    [Problem(f"{part.name}: {p.field}", p.value, p.rule) for p in exc.problems]
                )
            readings.append(Reading(part, None, exc))
            continue
        readings.append(Reading(part, receipt))
    return readings


def _check_size(data: bytes, limit: int) -> None:
    if not data.strip():
        raise IntakeError([Problem("file", "", "file is empty")], maybe_incomplete=True)
    if len(data) > limit:
        raise IntakeError([Problem("file", f"{len(data)} bytes", f"larger than {limit} bytes")])


def parse_receipt(data: bytes, terminal: Terminal, *, source_file: str = "") -> Receipt:
    """The receipt in ``data``, read in the terminal's configured format (one receipt)."""
    return _only_receipt(parse_receipts(data, terminal, source_file=source_file))


def _parse_one(data: bytes, terminal: Terminal, source_file: str) -> Receipt:
    _check_size(data, MAX_FILE_BYTES)
    text = _decode(data, terminal)
    mapping = terminal.mapping
    if mapping is None:
        fields = _canonical_fields(_load_json(text))
    elif mapping.kind == "json":
        fields = _mapped_json_fields(_load_json(text), mapping)
    else:
        fields = _csv_fields(text, mapping)
    return _build_receipt(fields, terminal, data, source_file)


def format_name(terminal: Terminal) -> str:
    return terminal.mapping.name if terminal.mapping else CANONICAL_FORMAT


# --- decoding ---------------------------------------------------------------------------------


def _decode(data: bytes, terminal: Terminal) -> str:
    try:
        # utf-8-sig: a byte-order mark, if any, is dropped rather than read as data.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if not terminal.encoding_fallback:
            raise IntakeError(
                [
                    Problem(
                        "file",
                        f"byte {exc.start} (0x{data[exc.start]:02X})",
                        "not UTF-8 text (this terminal has no encoding_fallback configured)",
                    )
                ],
                maybe_incomplete=True,
            ) from None
        utf8_error = exc
    try:
        return data.decode(terminal.encoding_fallback)
    except UnicodeDecodeError as exc:
        raise IntakeError(
            [
                Problem(
                    "file",
                    f"byte {utf8_error.start} (0x{data[utf8_error.start]:02X})",
                    f"neither UTF-8 nor {terminal.encoding_fallback} text "
                    f"({terminal.encoding_fallback} fails at byte {exc.start})",
                )
            ],
            maybe_incomplete=True,
        ) from None


def _load_json(text: str) -> object:
    try:
        # Money goes straight to Decimal: a float never touches it. Integers too, so that a
        # 5000-digit number is a (too large) value rather than a crash; NaN and Infinity become
        # non-finite Decimals that the field checks reject by name.
        return json.loads(
            text,
            parse_float=Decimal,
            parse_int=Decimal,
            parse_constant=Decimal,
            object_pairs_hook=_object_with_unique_keys,
        )
    except _RepeatedKey as exc:
        raise IntakeError(
            [
                Problem(
                    "file",
                    f'"{_show(exc.key)}" twice in one object',
                    "a JSON key must not repeat (which of its values is meant cannot be told)",
                )
            ]
        ) from None
    except json.JSONDecodeError as exc:
        raise IntakeError(
            [
                Problem(
                    "file", f"line {exc.lineno} column {exc.colno}", f"not valid JSON: {exc.msg}"
                )
            ],
            maybe_incomplete=True,
        ) from None
    except RecursionError:
        raise IntakeError([Problem("file", "", "JSON nested too deeply")]) from None


class _RepeatedKey(PosfedError, ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _object_with_unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # Python's JSON keeps the last of two equal keys; two totals or two receipt ids in one
    # receipt are a till's bug, and silently billing one of them would hide it.
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return found


# --- reading each format into the canonical fields ---------------------------------------------


def _canonical_fields(doc: object) -> _Fields:
    if not isinstance(doc, dict):
        raise IntakeError([Problem("file", _type_name(doc), "must be a JSON object")])
    fields = _Fields()
    for name in RECEIPT_FIELDS:
        fields.values[name] = doc.get(name, _MISSING)
        fields.labels[name] = name
    fields.items = _item_list(doc.get("items", _MISSING), fields)
    return fields


def _mapped_json_fields(doc: object, mapping: InputMapping) -> _Fields:
    fields = _Fields()
    for name in RECEIPT_FIELDS:
        path = mapping.json_path(name)
        if path is None:
            continue  # terminal and department then come from the terminal itself
        fields.values[name] = _at_path(doc, path)
        fields.labels[name] = f"{name} ({mapping.source(name)})"
    items_path = mapping.json_path("items")
    raw_items = _at_path(doc, items_path) if items_path is not None else _MISSING
    fields.items = _item_list(raw_items, fields, mapping)
    return fields


def _item_list(
    raw_items: object, fields: _Fields, mapping: InputMapping | None = None
) -> list[tuple[dict[str, object], dict[str, str]]] | None:
    """Each item's canonical values; labels carry the vendor's own path, e.g. regels[0].prijs."""
    items_source = mapping.source("items") if mapping else None
    label = f"items ({items_source})" if items_source else "items"
    paths: dict[str, JsonPath | None] = {
        name: mapping.json_path(name) if mapping else (name,) for name in ITEM_FIELDS
    }
    if not isinstance(raw_items, list) or not raw_items:
        fields.problems.append(Problem(label, _show(raw_items), "must be a non-empty list"))
        return None
    if len(raw_items) > MAX_ITEMS:
        fields.problems.append(Problem(label, str(len(raw_items)), f"more than {MAX_ITEMS} items"))
        return None
    items = []
    for n, raw in enumerate(raw_items, start=1):
        vendor_place = f"{items_source}[{n - 1}]" if items_source else None
        if not isinstance(raw, dict):
            where = f"items[{n}]" + (f" ({vendor_place})" if vendor_place else "")
            fields.problems.append(Problem(where, _show(raw), "must be an object"))
            continue
        if mapping is None:
            # The canonical format: the common case, kept free of path and default handling.
            values = {name: raw.get(name, _MISSING) for name in ITEM_FIELDS}
            items.append((values, {name: f"items[{n}].{name}" for name in ITEM_FIELDS}))
            continue
        values = {}
        labels = {}
        for name in ITEM_FIELDS:
            path = paths[name]
            value = _at_path(raw, path) if path is not None else _MISSING
            if _absent(value) and mapping.default(name) is not None:
                value = mapping.default(name)
            values[name] = value
            relative = mapping.source(name)
            labels[name] = f"items[{n}].{name}" + (
                f" ({vendor_place}.{relative})" if vendor_place and relative else ""
            )
        items.append((values, labels))
    return items


def _csv_fields(text: str, mapping: InputMapping) -> _Fields:
    fields = _Fields()
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=mapping.delimiter))
    except csv.Error as exc:
        raise IntakeError(
            [Problem("file", "", f"not valid CSV: {exc}")], maybe_incomplete=True
        ) from None
    header = [cell.strip() for cell in rows[0]] if rows else []
    columns = {}
    missing_columns = []
    for name, column in mapping.fields:
        if header.count(column) > 1:
            raise IntakeError(
                [
                    Problem(
                        "header",
                        column,
                        "column appears more than once in the CSV header (which is meant "
                        "cannot be told)",
                    )
                ]
            )
        if column in header:
            columns[name] = header.index(column)
        else:
            missing_columns.append(column)
    if missing_columns:
        raise IntakeError(
            [
                Problem("header", column, "column missing from the CSV header (line 1)")
                for column in missing_columns
            ],
            maybe_incomplete=len(rows) <= 1,  # only a header, perhaps not even all of it yet
        )
    # Line numbers as an editor shows them: the header is line 1 (quoted newlines aside).
    data_rows = [
        (line, row) for line, row in enumerate(rows[1:], start=2) if any(c.strip() for c in row)
    ]
    if not data_rows:
        raise IntakeError(
            [Problem("items", "no rows", "a CSV receipt needs one row per item")],
            maybe_incomplete=True,
        )
    if len(data_rows) > MAX_ITEMS:
        raise IntakeError([Problem("items", str(len(data_rows)), f"more than {MAX_ITEMS} items")])
    for line, row in data_rows:
        if len(row) != len(header):
            fields.problems.append(
                Problem(
                    f"line {line}",
                    f"{len(row)} cells",
                    f"the header has {len(header)} columns",
                )
            )
    if fields.problems:
        # A ragged last row is what a file cut off mid-row looks like.
        last_cut = len(data_rows[-1][1]) != len(header)
        raise IntakeError(fields.problems, maybe_incomplete=last_cut)

    for name in RECEIPT_FIELDS:
        if name not in columns:
            continue
        source_column = mapping.source(name)
        fields.labels[name] = f"{name} (column {source_column})"
        seen = {row[columns[name]].strip() for _, row in data_rows}
        first = data_rows[0][1][columns[name]].strip()
        if len(seen) > 1:
            fields.problems.append(
                Problem(
                    fields.labels[name],
                    " / ".join(sorted(_show(v) for v in seen)[:5]),
                    "must be the same on every row of a receipt",
                )
            )
        fields.values[name] = first if first else _MISSING

    fields.items = []
    for n, (line, row) in enumerate(data_rows, start=1):
        values: dict[str, object] = {}
        labels: dict[str, str] = {}
        for name in ITEM_FIELDS:
            value = row[columns[name]].strip() if name in columns else ""
            default = mapping.default(name)
            if not value and default is not None:
                value = default
            values[name] = value if value or name == "description" else _MISSING
            source_column = mapping.source(name)
            labels[name] = f"items[{n}].{name}" + (
                f" (line {line}, column {source_column})" if source_column else ""
            )
        fields.items.append((values, labels))
    return fields


def _at_path(doc: object, path: JsonPath) -> object:
    value = doc
    for step in path:
        if isinstance(step, int):
            if not isinstance(value, list) or step >= len(value):
                return _MISSING
            value = value[step]
        elif not isinstance(value, dict) or step not in value:
            return _MISSING
        else:
            value = value[step]
    return value


# --- checking the canonical fields ---------------------------------------------------------------


def _build_receipt(
    fields: _Fields,
    terminal: Terminal,
    data: bytes,
    source_file: str,
    *,
    terminal_name: str | None = None,
) -> Receipt:
    """``terminal_name``: the id the file must name, when the till calls itself otherwise
    (a POSLog WorkstationID)."""
    problems = fields.problems
    mapping = terminal.mapping
    decimal_comma = mapping is not None and mapping.decimal_separator == ","
    values, labels = fields.values, fields.labels

    receipt_id = _text(values.get("receiptId", _MISSING), labels["receiptId"], problems)
    if receipt_id is not None and not RECEIPT_ID_PATTERN.match(receipt_id):
        problems.append(
            Problem(
                labels["receiptId"],
                _show(receipt_id),
                "must be 1-64 letters, digits, '-' or '_' starting with a letter or digit "
                "(nothing path-like)",
            )
        )
    # The folder a file arrived in is authoritative: one tenant cannot post as another.
    identity = {
        "terminalId": terminal_name or terminal.id,
        "departmentCode": terminal.department,
    }
    for name in FIELDS_FROM_TERMINAL:
        if name not in values:
            continue  # not sent by this vendor: the terminal's own
        claimed = _text(values[name], labels[name], problems)
        if claimed is not None and claimed != identity[name]:
            rule = (
                f"file arrived from terminal {terminal.id}"
                + (f" (workstation {terminal_name})" if terminal_name else "")
                if name == "terminalId"
                else f"terminal {terminal.id} belongs to department {terminal.department}"
            )
            problems.append(Problem(labels[name], _show(claimed), rule))
    total = _decimal(values.get("total", _MISSING), labels["total"], problems, decimal_comma)
    timestamp = _timestamp(
        values.get("timestamp", _MISSING),
        labels["timestamp"],
        terminal,
        mapping.timestamp_format if mapping else None,
        problems,
    )

    items: list[ReceiptItem] = []
    for item_values, item_labels in fields.items or ():
        barcode = _text(item_values["barcode"], item_labels["barcode"], problems, barcode=True)
        description = _text(
            item_values["description"], item_labels["description"], problems, allow_empty=True
        )
        price = _decimal(item_values["price"], item_labels["price"], problems, decimal_comma)
        quantity = _decimal(
            item_values["quantity"], item_labels["quantity"], problems, decimal_comma
        )
        if (
            barcode is not None
            and description is not None
            and price is not None
            and quantity is not None
        ):
            # What the label says is kept with the line (validation judges it).
            label = read_label(barcode, terminal.gs1_region)
            items.append(
                ReceiptItem(
                    barcode,
                    description,
                    price,
                    quantity,
                    gtin=label.gtin,
                    weight=label.weight,
                    count=label.count,
                )
            )

    if problems:
        raise IntakeError(problems)
    # A field that could not be read is a problem above: none is missing here.
    assert receipt_id is not None and total is not None and timestamp is not None
    return Receipt(
        receipt_id=receipt_id,
        terminal_id=terminal.id,
        department_code=terminal.department,
        items=tuple(items),
        total=total,
        timestamp=timestamp,
        source_file=source_file,
        content_hash=content_hash(data),
    )


def _absent(value: object) -> bool:
    return value is _MISSING or value is None or value == ""


def _type_name(value: object) -> str:
    if isinstance(value, Decimal):
        return "number"
    return {list: "list", str: "string", bool: "true/false", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _show(value: object, limit: int = 60) -> str:
    """A short, printable rendering of any value, safe to write into the error report."""
    if value is _MISSING:
        return "missing"
    if isinstance(value, str):
        text = value
    elif isinstance(value, Decimal):
        text = str(value) if len(value.as_tuple().digits) <= limit else "a very long number"
    elif isinstance(value, dict | list):
        text = f"a {_type_name(value)} of {len(value)} entries"
    elif value is None or isinstance(value, bool):
        text = "null" if value is None else str(value).lower()
    else:
        text = _type_name(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\0")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(
    value: object,
    name: str,
    problems: list[Problem],
    *,
    allow_empty: bool = False,
    barcode: bool = False,
) -> str | None:
    if barcode and isinstance(value, Decimal):
        problems.append(Problem(name, _show(value), "must be a string (leading zeros matter)"))
        return None
    if not isinstance(value, str):
        problems.append(
            Problem(name, _show(value), f"must be a string, not {_type_name(value)}")
            if value is not _MISSING
            else Problem(name, "missing", "is required")
        )
        return None
    if not value and not allow_empty:
        problems.append(Problem(name, "", "must not be empty"))
        return None
    if "\x00" in value:
        problems.append(Problem(name, _show(value), "must not contain NUL"))
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        problems.append(
            Problem(name, _show(value), "contains an invalid character (lone surrogate)")
        )
        return None
    return value


def _decimal(
    value: object, name: str, problems: list[Problem], decimal_comma: bool = False
) -> Decimal | None:
    if value is _MISSING:
        problems.append(Problem(name, "missing", "is required"))
        return None
    if isinstance(value, str):
        text = value.strip()
        if decimal_comma:
            if "." in text:
                problems.append(
                    Problem(name, _show(value), "must use ',' as the decimal separator")
                )
                return None
            text = text.replace(",", ".")
        try:
            number = Decimal(text)
        except (InvalidOperation, ValueError):
            problems.append(Problem(name, _show(value), "must be a number"))
            return None
    elif isinstance(value, Decimal):
        number = value
    else:
        problems.append(Problem(name, _show(value), f"must be a number, not {_type_name(value)}"))
        return None
    if not number.is_finite():
        problems.append(Problem(name, _show(value), "must be a finite number"))
        return None
    # By exponent, not abs(): 1e999999999 would overflow Decimal's context instead.
    if number and number.adjusted() >= MAX_MAGNITUDE.adjusted():
        problems.append(Problem(name, _show(value), "is implausibly large (10 million or more)"))
        return None
    return number


def _timestamp(
    value: object,
    name: str,
    terminal: Terminal,
    timestamp_format: str | None,
    problems: list[Problem],
) -> datetime | None:
    if not isinstance(value, str):
        expected = f"a date-time like {timestamp_format}" if timestamp_format else "ISO 8601"
        problems.append(Problem(name, _show(value), f"must be a string ({expected})"))
        return None
    try:
        if timestamp_format:
            parsed = datetime.strptime(value.strip(), timestamp_format)
        else:
            text = value.strip()
            parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        expected = f"the format {timestamp_format}" if timestamp_format else "ISO 8601"
        problems.append(Problem(name, _show(value), f"is not a date-time in {expected}"))
        return None
    if not EARLIEST_YEAR <= parsed.year <= LATEST_YEAR:
        problems.append(
            Problem(name, _show(value), f"must be in the years {EARLIEST_YEAR}-{LATEST_YEAR}")
        )
        return None
    if parsed.tzinfo is None:
        # A naive timestamp is the terminal's wall clock.
        return parsed.replace(tzinfo=terminal.timezone)
    return parsed.astimezone(terminal.timezone)


def claimed_terminal_id(data: bytes, mapping: InputMapping | None) -> str | None:
    """The terminal id a file claims when read in the given format, if it gets that far.

    Only for tools that must guess which terminal a loose file came from; the pipeline knows.
    """
    try:
        text = data.decode("utf-8-sig", errors="replace")
        if mapping is None or mapping.kind == "json":
            path = mapping.json_path("terminalId") if mapping else ("terminalId",)
            value = _at_path(_load_json(text), path) if path else None
        else:
            column = mapping.source("terminalId")
            reader = csv.reader(io.StringIO(text, newline=""), delimiter=mapping.delimiter)
            header = [cell.strip() for cell in next(reader)]
            value = next(reader)[header.index(column)] if column else None
    except (IntakeError, csv.Error, StopIteration, ValueError, IndexError):
        return None
    return value.strip() if isinstance(value, str) else None


def business_day_of_file(
    path: Path,
    terminal: Terminal,
    not_before: date | None = None,
    not_after: date | None = None,
) -> date:
    """The business day a file belongs to: its receipt's local date, else the day it arrived.
    Never raises: the day is only where its run goes, and the run gives the file its verdict.

    ``not_before`` and ``not_after``: the first and last days with a partition. A receipt
    dated outside them (an old one, a till whose clock runs a day ahead) is run in the nearest
    day's partition and judged there by the age and clock-skew rules: a day without a partition
    would fail its terminal's sensor at every tick."""
    try:
        day = read_receipt_file(path, terminal).business_day
    except Exception:  # unreadable, not a receipt, several: the day it arrived
        try:
            mtime = path.lstat().st_mtime
        except OSError:
            mtime = datetime.now().timestamp()
        day = datetime.fromtimestamp(mtime, tz=terminal.timezone).date()
    if not_before is not None:
        day = max(day, not_before)
    if not_after is not None:
        day = min(day, not_after)
    return day
