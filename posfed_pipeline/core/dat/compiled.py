"""Fields compiled into formatter and parser closures: numbers, money, dates, text."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from operator import attrgetter
from typing import Any

from posfed_pipeline.core.dat.patterns import _brace_escape, _date_format_width, _translate
from posfed_pipeline.core.dat.text import _cleaner
from posfed_pipeline.core.dat.vocabulary import (
    _NUMERIC,
    _TOKEN_RE,
    _TOKEN_TEMPLATES,
    DATE_TOKENS,
    ITEM_SOURCES,
    DatRenderError,
    FieldSpec,
    _Unfit,
)
from posfed_pipeline.core.model.barcodes import gtin13
from posfed_pipeline.core.model.receipt import Receipt, ReceiptItem
from posfed_pipeline.core.model.terminal import Terminal

_ONE = Decimal(1)
_ZERO = Decimal(0)
_Part = tuple[int, Callable[..., str]]


class _RecordPlan:
    """One record of one version, compiled: static text, receipt-level and item-level parts."""

    def __init__(self, fields: tuple[FieldSpec, ...], encoding: str, transliterate: bool):
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
            fmt, parse = _compile_field(f, encoding, transliterate)
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
