"""Validation: business rules over a batch of receipts, checked by pandera.

Receipts become two frames, headers and items, with money and quantities in integer minor
units computed exactly from ``Decimal`` (NA where a value has more decimals than allowed), so
that every check is vectorised over the whole batch. ``lazy=True`` collects every failure of
every receipt; each is translated back to the receipt, field and value it concerns, in words an
operator understands.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from posfed_pipeline.core.config import VariableMeasureScheme
from posfed_pipeline.core.intake import MAX_MAGNITUDE, RECEIPT_ID_PATTERN
from posfed_pipeline.core.receipt import Problem, Receipt, ReceiptItem, round_cents

QUANTITY_DECIMALS = 3  # default for weighed items: kilograms to the gram
BARCODE_LENGTHS = (8, 12, 13)  # EAN-8, UPC-A, EAN-13 (in-store variable-measure codes: 20-29)
MAX_DESCRIPTION = 200
DIGITS_ONLY = r"^[0-9]+\Z"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)
_MAX_MINOR = int(MAX_MAGNITUDE) * 10**6  # any magnitude intake accepts, at any scale used here

# Rules whose wording needs the failing row's own values; matched by the check's error text.
BARCODE_LENGTH_RULE = "barcode must be 8 (EAN-8), 12 (UPC-A) or 13 (EAN-13) digits long"
CHECK_DIGIT_RULE = "must be an EAN-13, EAN-8 or UPC-A code with a valid check digit"
EMBEDDED_PRICE_RULE = "the price in this in-store barcode must equal the line's price or amount"
RETURNS_RULE = "returns (negative quantities) are not allowed on this terminal"
TOTAL_RULE = "total must equal the sum of the line amounts (price x quantity, half-up to cents)"


# --- GS1 check digits ---------------------------------------------------------------------------


def gs1_check_digit(body: str) -> str:
    """The check digit that completes ``body`` (used by the simulator and tests)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


def gs1_check_digit_ok(code: str) -> bool:
    """GS1 mod-10: weights 3,1,3,... from the rightmost data digit."""
    if len(code) not in BARCODE_LENGTHS or not code.isascii() or not code.isdigit():
        return False
    return gs1_check_digit(code[:-1]) == code[-1]


def gs1_check_digits_ok(barcodes: pd.Series) -> pd.Series:
    """``gs1_check_digit_ok`` over a whole column at once: numpy over fixed-width digit arrays."""
    values = barcodes.to_numpy(dtype=object)
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    result = np.zeros(len(values), dtype=bool)
    for length in BARCODE_LENGTHS:
        rows = np.flatnonzero(lengths == length)
        if not len(rows):
            continue
        # Code points, one row per barcode; anything but an ASCII digit falls outside 0-9.
        chars = np.array(values[rows].tolist(), dtype=f"U{length}")
        digits = chars.view(np.uint32).reshape(len(rows), length).astype(np.int64) - 48
        all_digits = ((digits >= 0) & (digits <= 9)).all(axis=1)
        weights = np.array([3 if (length - 2 - i) % 2 == 0 else 1 for i in range(length - 1)])
        expected = (10 - (digits[:, :-1] @ weights) % 10) % 10
        result[rows] = all_digits & (expected == digits[:, -1])
    return pd.Series(result, index=barcodes.index)


# --- the models ---------------------------------------------------------------------------------


class ReceiptHeaderModel(pa.DataFrameModel):
    """One row per receipt."""

    receipt_id: Series[str] = pa.Field(str_matches=RECEIPT_ID_PATTERN.pattern)
    total_minor: Series[pd.Int64Dtype] = pa.Field(nullable=False)
    lines_total_minor: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    item_count: Series[int] = pa.Field(ge=1)
    timestamp: Series[Annotated[pd.DatetimeTZDtype, "ns", "UTC"]]

    @pa.dataframe_check(error=TOTAL_RULE)
    def total_matches_lines(cls, df: pd.DataFrame) -> Series[bool]:
        # NA: a line's price or quantity is not exact, which is reported on that line.
        return (df["total_minor"] == df["lines_total_minor"]).fillna(True).astype(bool)

    class Config:
        strict = False
        coerce = False


class ReceiptItemModel(pa.DataFrameModel):
    """One row per receipt line; ``receipt_idx`` points at the header row.

    ``quantity_scaled`` is the quantity times 10**quantity_decimals (the terminal's setting);
    ``amount_minor`` is price x quantity in cents, half-up, NA when either is not exact.
    """

    receipt_idx: Series[int]
    line_no: Series[int]
    barcode: Series[str] = pa.Field(str_matches=DIGITS_ONLY)
    description: Series[str] = pa.Field(str_length={"max_value": MAX_DESCRIPTION})
    price_minor: Series[pd.Int64Dtype] = pa.Field(nullable=False)
    quantity_scaled: Series[pd.Int64Dtype] = pa.Field(nullable=False)
    amount_minor: Series[pd.Int64Dtype] = pa.Field(nullable=True)

    @pa.check("barcode", error=BARCODE_LENGTH_RULE)
    def barcode_length(cls, barcode: Series[str]) -> Series[bool]:
        # Non-digit codes already fail "digits only"; one reason per mistake is enough.
        digits = barcode.str.fullmatch(r"[0-9]+", na=False)
        return ~digits | barcode.str.len().isin(BARCODE_LENGTHS)

    @pa.check("barcode", error=CHECK_DIGIT_RULE)
    def barcode_check_digit(cls, barcode: Series[str]) -> Series[bool]:
        well_formed = barcode.str.fullmatch(r"[0-9]+", na=False) & barcode.str.len().isin(
            BARCODE_LENGTHS
        )
        return ~well_formed | gs1_check_digits_ok(barcode)

    @pa.check("price_minor", error="price must not be negative")
    def price_not_negative(cls, price: Series[pd.Int64Dtype]) -> Series[bool]:
        return (price >= 0).fillna(True).astype(bool)

    @pa.check("quantity_scaled", error="quantity must not be zero")
    def quantity_not_zero(cls, quantity: Series[pd.Int64Dtype]) -> Series[bool]:
        return (quantity != 0).fillna(True).astype(bool)

    class Config:
        strict = False
        coerce = False


_FIELD_NAMES = {
    "receipt_id": "receiptId",
    "total_minor": "total",
    "item_count": "items",
    "timestamp": "timestamp",
    "price_minor": "price",
    "quantity_scaled": "quantity",
    "barcode": "barcode",
    "description": "description",
}


@dataclass
class ValidationReport:
    valid: list[Receipt] = field(default_factory=list)
    invalid: list[tuple[Receipt, list[Problem]]] = field(default_factory=list)

    @property
    def pass_rate(self) -> float:
        total = len(self.valid) + len(self.invalid)
        return len(self.valid) / total if total else 1.0


# --- frames -------------------------------------------------------------------------------------


def _minor(value: Decimal, scale: int) -> int | None:
    """``value * scale`` as an int if that is exact (and plausible), else None."""
    if value.is_finite() and value:
        # Bounds first: as_integer_ratio() of 9e-999999999 builds a billion-digit integer.
        # (By the digits, not normalize(): the context would round that to zero.)
        _, digits, exponent = value.as_tuple()
        trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
        if exponent + trailing_zeros < -18 or value.adjusted() > 18:
            return None
    try:
        numerator, denominator = value.as_integer_ratio()
    except (ValueError, OverflowError):  # NaN, Infinity
        return None
    if scale % denominator:
        return None
    minor = numerator * (scale // denominator)
    return minor if -_MAX_MINOR < minor < _MAX_MINOR else None


def _amount_minor(price: int | None, quantity: int | None, scale: int) -> int | None:
    """price (cents) x quantity (1/scale units) in cents, half-up: exactly ``round_cents``."""
    if price is None or quantity is None:
        return None
    exact = price * quantity
    half = scale // 2
    return (exact + half) // scale if exact >= 0 else -((-exact + half) // scale)


def receipts_to_frames(
    receipts: list[Receipt], *, quantity_decimals: int = QUANTITY_DECIMALS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The header and item frames of a batch, built column by column (no per-row frames)."""
    scale = 10**quantity_decimals
    counts = np.fromiter((len(r.items) for r in receipts), dtype=np.int64, count=len(receipts))
    items = [item for receipt in receipts for item in receipt.items]
    prices = [_minor(item.price, 100) for item in items]
    quantities = [_minor(item.quantity, scale) for item in items]
    amounts = [_amount_minor(p, q, scale) for p, q in zip(prices, quantities, strict=True)]

    starts = np.concatenate(([0], np.cumsum(counts)[:-1])) if len(receipts) else counts
    receipt_idx = np.repeat(np.arange(len(receipts), dtype=np.int64), counts)
    line_no = np.arange(len(items), dtype=np.int64) - np.repeat(starts, counts) + 1
    amount_array = pd.array(amounts, dtype="Int64")

    # Sum per receipt; a receipt with any inexact line has no lines total (NA).
    filled = amount_array.to_numpy(dtype=np.int64, na_value=0)
    inexact = amount_array.isna().astype(np.int64)
    running = np.concatenate(([0], np.cumsum(filled)))
    running_inexact = np.concatenate(([0], np.cumsum(inexact)))
    ends = starts + counts
    lines_total = pd.array(running[ends] - running[starts], dtype="Int64")
    lines_total[(running_inexact[ends] - running_inexact[starts]) > 0] = pd.NA

    timestamps_us = np.fromiter(
        ((r.timestamp - _EPOCH) // _ONE_MICROSECOND for r in receipts),
        dtype=np.int64,
        count=len(receipts),
    )
    headers = pd.DataFrame(
        {
            "receipt_id": pd.Series([r.receipt_id for r in receipts], dtype=object),
            "total_minor": pd.array([_minor(r.total, 100) for r in receipts], dtype="Int64"),
            "lines_total_minor": lines_total,
            "item_count": counts,
            "timestamp": pd.to_datetime(timestamps_us, unit="us", utc=True).as_unit("ns"),
        }
    )
    item_frame = pd.DataFrame(
        {
            "receipt_idx": receipt_idx,
            "line_no": line_no,
            "barcode": pd.Series([item.barcode for item in items], dtype=object),
            "description": pd.Series([item.description for item in items], dtype=object),
            "price_minor": pd.array(prices, dtype="Int64"),
            "quantity_scaled": pd.array(quantities, dtype="Int64"),
            "amount_minor": amount_array,
        }
    )
    item_frame.attrs["quantity_decimals"] = quantity_decimals
    return headers, item_frame


# --- validation ---------------------------------------------------------------------------------


def validate_batch(
    receipts: list[Receipt],
    *,
    allow_returns: bool = False,
    now: datetime | None = None,
    max_clock_skew: timedelta = timedelta(minutes=5),
    max_age: timedelta = timedelta(days=45),
    quantity_decimals: int = QUANTITY_DECIMALS,
    variable_measure: VariableMeasureScheme | None = None,
    receipt_id_prefix: str = "",
) -> ValidationReport:
    """Check a batch of one terminal's receipts; every failure of every receipt is reported."""
    report = ValidationReport()
    if not receipts:
        return report
    now = now or datetime.now(UTC)
    headers, items = receipts_to_frames(receipts, quantity_decimals=quantity_decimals)
    problems: dict[int, list[Problem]] = {}

    header_schema = _header_schema(now, max_clock_skew, max_age, receipt_id_prefix)
    item_schema = _item_schema(allow_returns, quantity_decimals, variable_measure)
    for schema, frame, kind in ((header_schema, headers, "header"), (item_schema, items, "item")):
        try:
            schema.validate(frame, lazy=True)
        except pa.errors.SchemaErrors as exc:
            explained = _explain(exc.failure_cases, frame, receipts, kind, variable_measure)
            for receipt_idx, problem in explained:
                problems.setdefault(receipt_idx, []).append(problem)

    for idx, receipt in enumerate(receipts):
        if idx in problems:
            report.invalid.append((receipt, problems[idx]))
        else:
            report.valid.append(receipt)
    return report


def _header_schema(
    now: datetime, skew: timedelta, max_age: timedelta, receipt_id_prefix: str
) -> pa.DataFrameSchema:
    latest = pd.Timestamp(now + skew)
    earliest = pd.Timestamp(now - max_age)
    schema = _base_header_schema().update_column(
        "timestamp",
        checks=[
            pa.Check.le(latest, error=f"timestamp is more than {_span(skew)} in the future"),
            pa.Check.ge(earliest, error=f"timestamp is older than {_span(max_age)}"),
        ],
    )
    if receipt_id_prefix:
        column = schema.columns["receipt_id"]
        schema = schema.update_column(
            "receipt_id",
            checks=[
                *column.checks,
                pa.Check.str_startswith(
                    receipt_id_prefix,
                    # Its .dat name would not be this terminal's: see core.dat_names.
                    error=f"must begin with {receipt_id_prefix!r}, this terminal's receipt "
                    "number prefix (receipt_id_prefix in posfed.toml): is the terminal's "
                    "numbering set up as configured?",
                ),
            ],
        )
    return schema


@functools.cache
def _base_header_schema() -> pa.DataFrameSchema:
    return ReceiptHeaderModel.to_schema()


@functools.cache
def _item_schema(
    allow_returns: bool, quantity_decimals: int, variable_measure: VariableMeasureScheme | None
) -> pa.DataFrameSchema:
    schema = ReceiptItemModel.to_schema()
    if not allow_returns:
        column = schema.columns["quantity_scaled"]
        schema = schema.update_column(
            "quantity_scaled",
            checks=[
                *column.checks,
                pa.Check(lambda q: (q >= 0).fillna(True).astype(bool), error=RETURNS_RULE),
            ],
        )
    if variable_measure is not None:
        schema = copy.deepcopy(schema)
        schema.checks = [
            *schema.checks,
            pa.Check(
                functools.partial(_embedded_price_ok, variable_measure), error=EMBEDDED_PRICE_RULE
            ),
        ]
    return schema


def _embedded_price_ok(scheme: VariableMeasureScheme, items: pd.DataFrame) -> pd.Series:
    """In-store codes of the configured prefixes carry a price: it must be the line's.

    Scales print either the line amount (weighed goods) or the unit price on the label, so
    either matching is accepted; a return's amount is compared by its size.
    """
    barcode = items["barcode"]
    carries_price = barcode.str.fullmatch(r"[0-9]{13}", na=False) & barcode.str.slice(0, 2).isin(
        scheme.price_prefixes
    )
    mask = carries_price.to_numpy(dtype=bool)
    ok = np.ones(len(items), dtype=bool)
    if mask.any():
        rows = items[mask]
        embedded = rows["barcode"].str.slice(12 - scheme.price_digits, 12).astype(np.int64)
        matches = (embedded == rows["price_minor"]) | (embedded == rows["amount_minor"].abs())
        ok[mask] = matches.fillna(True).to_numpy(dtype=bool)
    return pd.Series(ok, index=items.index)


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


# --- explaining failures ------------------------------------------------------------------------


def _builtin_rule(column: str, check: str, quantity_decimals: int) -> str | None:
    """How pandera's built-in checks read to an operator."""
    return {
        ("receipt_id", f"str_matches('{RECEIPT_ID_PATTERN.pattern}')"): (
            "must be 1-64 letters, digits, '-' or '_' starting with a letter or digit "
            "(nothing path-like)"
        ),
        ("total_minor", "not_nullable"): "total must be below 10 million with at most 2 decimals",
        ("price_minor", "not_nullable"): "price must be below 10 million with at most 2 decimals",
        ("quantity_scaled", "not_nullable"): (
            f"quantity must be below 10 million with at most {quantity_decimals} decimals"
        ),
        ("barcode", f"str_matches('{DIGITS_ONLY}')"): "barcode must contain digits only",
        ("description", f"str_length(None, {MAX_DESCRIPTION})"): (
            f"description must be at most {MAX_DESCRIPTION} characters"
        ),
        ("item_count", "greater_than_or_equal_to(1)"): "a receipt needs at least one item",
    }.get((column, check))


def _explain(
    failures: pd.DataFrame,
    frame: pd.DataFrame,
    receipts: list[Receipt],
    kind: str,
    scheme: VariableMeasureScheme | None,
) -> Iterator[tuple[int, Problem]]:
    """Translate pandera's failure cases into (receipt index, Problem) pairs."""
    quantity_decimals = _quantity_decimals(frame) if kind == "item" else QUANTITY_DECIMALS
    seen: set[tuple[int, str, str]] = set()
    for row in failures.itertuples(index=False):
        index = row.index
        if index is None or (isinstance(index, float) and pd.isna(index)):
            # A schema-level failure (wrong dtype): a bug in frame building, not in the data.
            raise RuntimeError(f"validation frame is malformed: {row.column}: {row.check}")
        index = int(index)
        column = str(row.column)
        check = str(row.check)
        # A dataframe-level check lists every column of a failing row: report it once.
        frame_check = row.schema_context == "DataFrameSchema"
        rule = _builtin_rule(column, check, quantity_decimals) or check
        if kind == "header":
            receipt_idx = index
            receipt = receipts[receipt_idx]
            name = "total" if frame_check else _FIELD_NAMES.get(column, column)
            value = _header_value(receipt, name)
        else:
            receipt_idx = int(frame.at[index, "receipt_idx"])
            line_no = int(frame.at[index, "line_no"])
            item = receipts[receipt_idx].items[line_no - 1]
            attr = "barcode" if frame_check else _FIELD_NAMES.get(column, column)
            name = f"items[{line_no}].{attr}"
            value = _item_value(rule, item, attr, scheme)
        if (receipt_idx, name, rule) in seen:
            continue
        seen.add((receipt_idx, name, rule))
        yield receipt_idx, Problem(name, value, rule)


def _quantity_decimals(items: pd.DataFrame) -> int:
    return items.attrs.get("quantity_decimals", QUANTITY_DECIMALS)


def _item_value(
    rule: str, item: ReceiptItem, attr: str, scheme: VariableMeasureScheme | None
) -> str:
    """The failing value, with the numbers the operator needs to see why (rules stay fixed)."""
    value = _show(getattr(item, attr, ""))
    if rule == CHECK_DIGIT_RULE:
        expected = gs1_check_digit(item.barcode[:-1])
        return f"{value} (check digit {item.barcode[-1]}, expected {expected})"
    if rule == EMBEDDED_PRICE_RULE and scheme is not None:
        embedded = Decimal(int(item.barcode[12 - scheme.price_digits : 12])).scaleb(-2)
        amount = round_cents(item.price * item.quantity)
        return f"{value} (carries {embedded}; line price {item.price}, amount {amount})"
    return value


def _show(value: object, limit: int = 60) -> str:
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _header_value(receipt: Receipt, name: str) -> str:
    if name == "total":
        return f"{receipt.total} (lines sum to {receipt.lines_total})"
    if name == "timestamp":
        return receipt.timestamp.isoformat()
    if name == "items":
        return str(len(receipt.items))
    return _show(getattr(receipt, _ATTRIBUTES.get(name, name), ""))


_ATTRIBUTES = {"receiptId": "receipt_id"}
