"""Intake: turn the bytes a terminal dropped into a canonical ``Receipt``.

Intake checks shape and identity (is this a receipt, from this terminal?); the business rules
(check digits, totals, time window) are pandera's job in ``validation``. Every problem found is
reported, not just the first, and nothing here raises anything but ``IntakeError``.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from posfed_pipeline.core.config import Terminal
from posfed_pipeline.core.receipt import Problem, Receipt, ReceiptItem, content_hash

# Receipt ids end up in file names and database keys: a strict alphabet, nothing path-like.
RECEIPT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MAX_FILE_BYTES = 1_000_000
MAX_ITEMS = 1000


class IntakeError(ValueError):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def read_receipt_file(path: Path, terminal: Terminal) -> Receipt:
    """Read one inbox file; raises ``IntakeError`` with every reason it is not a receipt."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise IntakeError([Problem("file", f"{size} bytes", f"larger than {MAX_FILE_BYTES} bytes")])
    data = path.read_bytes()
    return parse_receipt(data, terminal, source_file=path.name)


def parse_receipt(data: bytes, terminal: Terminal, *, source_file: str = "") -> Receipt:
    if not data.strip():
        raise IntakeError([Problem("file", "", "file is empty")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IntakeError([Problem("file", f"byte {exc.start}", "not UTF-8 text")]) from None
    try:
        # Money goes straight to Decimal: a float never touches it.
        doc = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        raise IntakeError(
            [Problem("file", f"line {exc.lineno} column {exc.colno}", f"not valid JSON: {exc.msg}")]
        ) from None
    except RecursionError:
        raise IntakeError([Problem("file", "", "JSON nested too deeply")]) from None
    if not isinstance(doc, dict):
        raise IntakeError([Problem("file", type(doc).__name__, "must be a JSON object")])

    problems: list[Problem] = []
    receipt_id = _text(doc, "receiptId", problems)
    if receipt_id is not None and not RECEIPT_ID_PATTERN.match(receipt_id):
        problems.append(
            Problem(
                "receiptId",
                receipt_id,
                "must be 1-64 letters, digits, '-' or '_' (nothing path-like)",
            )
        )
    terminal_id = _text(doc, "terminalId", problems)
    if terminal_id is not None and terminal_id != terminal.id:
        problems.append(
            Problem("terminalId", terminal_id, f"file arrived from terminal {terminal.id}")
        )
    department = _text(doc, "departmentCode", problems)
    if department is not None and department != terminal.department:
        problems.append(
            Problem(
                "departmentCode",
                department,
                f"terminal {terminal.id} belongs to department {terminal.department}",
            )
        )
    total = _decimal(doc.get("total"), "total", problems)
    timestamp = _timestamp(doc.get("timestamp"), terminal, problems)

    items: list[ReceiptItem] = []
    raw_items = doc.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        problems.append(Problem("items", _show(raw_items), "must be a non-empty list"))
    elif len(raw_items) > MAX_ITEMS:
        problems.append(Problem("items", str(len(raw_items)), f"more than {MAX_ITEMS} items"))
    else:
        for n, raw in enumerate(raw_items, start=1):
            where = f"items[{n}]"
            if not isinstance(raw, dict):
                problems.append(Problem(where, _show(raw), "must be an object"))
                continue
            barcode = _text(raw, "barcode", problems, where)
            description = _text(raw, "description", problems, where, allow_empty=True)
            price = _decimal(raw.get("price"), f"{where}.price", problems)
            quantity = _decimal(raw.get("quantity"), f"{where}.quantity", problems)
            if None not in (barcode, description, price, quantity):
                items.append(ReceiptItem(barcode, description, price, quantity))

    if problems:
        raise IntakeError(problems)
    return Receipt(
        receipt_id=receipt_id,
        terminal_id=terminal_id,
        department_code=department,
        items=tuple(items),
        total=total,
        timestamp=timestamp,
        source_file=source_file,
        content_hash=content_hash(data),
    )


def _show(value: object) -> str:
    text = json.dumps(value, default=str) if value is not None else "missing"
    return text if len(text) <= 60 else text[:57] + "..."


def _text(
    doc: dict, key: str, problems: list[Problem], where: str = "", *, allow_empty: bool = False
) -> str | None:
    name = f"{where}.{key}" if where else key
    value = doc.get(key)
    if isinstance(value, int | Decimal) and not isinstance(value, bool) and key == "barcode":
        problems.append(Problem(name, str(value), "must be a string (leading zeros matter)"))
        return None
    if not isinstance(value, str) or (not value and not allow_empty):
        problems.append(Problem(name, _show(value), "must be a non-empty string"))
        return None
    if "\x00" in value:
        problems.append(Problem(name, value.replace("\x00", "\\0"), "must not contain NUL"))
        return None
    return value


def _decimal(value: object, name: str, problems: list[Problem]) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        problems.append(Problem(name, _show(value), "must be a number"))
        return None
    try:
        number = Decimal(value) if isinstance(value, int | str) else value
    except InvalidOperation:
        problems.append(Problem(name, _show(value), "must be a number"))
        return None
    if not isinstance(number, Decimal) or not number.is_finite():
        problems.append(Problem(name, _show(value), "must be a finite number"))
        return None
    if abs(number) >= Decimal("1e9"):
        problems.append(Problem(name, str(number), "is implausibly large"))
        return None
    return number


def _timestamp(value: object, terminal: Terminal, problems: list[Problem]) -> datetime | None:
    if not isinstance(value, str):
        problems.append(Problem("timestamp", _show(value), "must be an ISO 8601 string"))
        return None
    try:
        parsed = datetime.fromisoformat(
            value.replace("Z", "+00:00") if value.endswith("Z") else value
        )
    except ValueError:
        problems.append(Problem("timestamp", value, "is not an ISO 8601 date-time"))
        return None
    if parsed.tzinfo is None:
        # A naive timestamp is the terminal's wall clock.
        return parsed.replace(tzinfo=terminal.timezone)
    return parsed.astimezone(terminal.timezone)


def business_day_of_file(path: Path, terminal: Terminal) -> date:
    """The business day a file belongs to: its receipt's local date, else the day it arrived."""
    try:
        return read_receipt_file(path, terminal).business_day
    except (IntakeError, OSError):
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = datetime.now().timestamp()
        return datetime.fromtimestamp(mtime, tz=terminal.timezone).date()
