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

from posfed_pipeline.core.intake.parsing import MAX_MAGNITUDE, RECEIPT_ID_PATTERN
from posfed_pipeline.core.model.barcodes import Label, read_label
from posfed_pipeline.core.model.receipt import Problem, Receipt, ReceiptItem, round_cents
from posfed_pipeline.core.model.terminal import Terminal, VariableMeasureScheme

QUANTITY_DECIMALS = 3  # default for weighed items: kilograms to the gram
MAX_DESCRIPTION = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)
_MAX_MINOR = int(MAX_MAGNITUDE) * 10**6  # any magnitude intake accepts, at any scale used here

# Rules whose wording needs the failing row's own values; matched by the check's error text.
BARCODE_RULE = (
    "barcode must be a GTIN-8/12/13/14, an in-store code (RCN) valid in the store's GS1 region, "
    "a GS1 element string or a GS1 Digital Link URI"
)
LABEL_AMOUNT_RULE = "the price or amount payable on this label must equal the line's amount"
LABEL_WEIGHT_RULE = (
    "this label's weight x unit price (half-up to cents) must equal the line's amount"
)
EMBEDDED_PRICE_RULE = "the price in this in-store barcode must equal the line's price or amount"
RETURNS_RULE = "returns (negative quantities) are not allowed on this terminal"
TOTAL_RULE = "total must equal the sum of the line amounts (price x quantity, half-up to cents)"


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
    barcode: Series[str]
    # Why biip could not read the barcode (core.barcodes), None when it could.
    barcode_problem: Series[str] = pa.Field(nullable=True)
    description: Series[str] = pa.Field(str_length={"max_value": MAX_DESCRIPTION})
    price_minor: Series[pd.Int64Dtype] = pa.Field(nullable=False)
    quantity_scaled: Series[pd.Int64Dtype] = pa.Field(nullable=False)
    amount_minor: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    # The line amount its scale label implies, in cents: its amount payable, and its weight x
    # unit price. NA where the label carries no such figure.
    label_amount_minor: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    weight_amount_minor: Series[pd.Int64Dtype] = pa.Field(nullable=True)

    @pa.check("barcode_problem", error=BARCODE_RULE)
    def barcode_readable(cls, problem: Series[str]) -> Series[bool]:
        return problem.isna()

    @pa.check("price_minor", error="price must not be negative")
    def price_not_negative(cls, price: Series[pd.Int64Dtype]) -> Series[bool]:
        return price.ge(0).fillna(True).astype(bool)

    @pa.check("quantity_scaled", error="quantity must not be zero")
    def quantity_not_zero(cls, quantity: Series[pd.Int64Dtype]) -> Series[bool]:
        return quantity.ne(0).fillna(True).astype(bool)

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
    "barcode_problem": "barcode",
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
        if not isinstance(exponent, int):  # 'n', 'N', 'F': NaN and Infinity (not finite)
            return None
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


def _label_amounts(
    items: list[ReceiptItem], labels: list[Label]
) -> tuple[list[int | None], list[int | None]]:
    """Per line, the amount its label states and the amount its weight x unit price makes."""
    stated: list[int | None] = [None] * len(items)
    weighed: list[int | None] = [None] * len(items)
    for row, label in enumerate(labels):
        if not label.carries_figures:
            continue
        if label.amount is not None:
            stated[row] = _minor(label.amount, 100)
        if label.weight is not None:
            unit_price = label.unit_price if label.unit_price is not None else items[row].price
            weighed[row] = _minor(round_cents(label.weight * unit_price), 100)
    return stated, weighed


def receipts_to_frames(
    receipts: list[Receipt],
    *,
    quantity_decimals: int = QUANTITY_DECIMALS,
    gs1_region: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The header and item frames of a batch, built column by column (no per-row frames)."""
    scale = 10**quantity_decimals
    counts = np.fromiter((len(r.items) for r in receipts), dtype=np.int64, count=len(receipts))
    items = [item for receipt in receipts for item in receipt.items]
    prices = [_minor(item.price, 100) for item in items]
    quantities = [_minor(item.quantity, scale) for item in items]
    amounts = [_amount_minor(p, q, scale) for p, q in zip(prices, quantities, strict=True)]
    barcodes = [item.barcode for item in items]
    # Each distinct code is read once (and cached across batches): a store sells few codes.
    readings = {code: read_label(code, gs1_region) for code in set(barcodes)}
    labels = [readings[code] for code in barcodes]
    stated, weighed = _label_amounts(items, labels)

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
            "barcode": pd.Series(barcodes, dtype=object),
            "barcode_problem": pd.Series([label.error for label in labels], dtype=object),
            "description": pd.Series([item.description for item in items], dtype=object),
            "price_minor": pd.array(prices, dtype="Int64"),
            "quantity_scaled": pd.array(quantities, dtype="Int64"),
            "amount_minor": amount_array,
            "label_amount_minor": pd.array(stated, dtype="Int64"),
            "weight_amount_minor": pd.array(weighed, dtype="Int64"),
        }
    )
    item_frame.attrs["quantity_decimals"] = quantity_decimals
    return headers, item_frame


# --- validation ---------------------------------------------------------------------------------


def rules_of(terminal: Terminal) -> dict:
    """The settings a terminal's receipts are validated with (``validate_batch``'s keywords)."""
    return {
        "allow_returns": terminal.allow_returns,
        "quantity_decimals": terminal.quantity_decimals,
        "variable_measure": terminal.variable_measure,
        "gs1_region": terminal.gs1_region,
        "check_labels": terminal.check_labels,
    }


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
    gs1_region: str | None = None,
    check_labels: bool = False,
) -> ValidationReport:
    """Check a batch of one terminal's receipts; every failure of every receipt is reported.

    ``gs1_region``: how in-store codes read (``core.barcodes``); ``check_labels``: a price,
    amount or weight on a line's label must agree with the line."""
    report = ValidationReport()
    if not receipts:
        return report
    now = now or datetime.now(UTC)
    headers, items = receipts_to_frames(
        receipts, quantity_decimals=quantity_decimals, gs1_region=gs1_region
    )
    problems: dict[int, list[Problem]] = {}

    header_schema = _header_schema(now, max_clock_skew, max_age, receipt_id_prefix)
    item_schema = _item_schema(allow_returns, quantity_decimals, variable_measure, check_labels)
    for schema, frame, kind in ((header_schema, headers, "header"), (item_schema, items, "item")):
        try:
            schema.validate(frame, lazy=True)
        except pa.errors.SchemaErrors as exc:
            explained = _explain(
                exc.failure_cases, frame, receipts, kind, variable_measure, gs1_region
            )
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
    allow_returns: bool,
    quantity_decimals: int,
    variable_measure: VariableMeasureScheme | None,
    check_labels: bool = False,
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
    if check_labels:
        schema = copy.deepcopy(schema)
        schema.checks = [
            *schema.checks,
            pa.Check(
                functools.partial(_label_agrees, "label_amount_minor"), error=LABEL_AMOUNT_RULE
            ),
            pa.Check(
                functools.partial(_label_agrees, "weight_amount_minor"), error=LABEL_WEIGHT_RULE
            ),
        ]
    return schema


def _label_agrees(column: str, items: pd.DataFrame) -> pd.Series:
    """The label's figure is the line's amount (a return's by its size); no figure: agrees."""
    return (items[column] == items["amount_minor"].abs()).fillna(True).astype(bool)


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
    gs1_region: str | None = None,
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
            value = _item_value(rule, item, attr, scheme, gs1_region)
        if (receipt_idx, name, rule) in seen:
            continue
        seen.add((receipt_idx, name, rule))
        yield receipt_idx, Problem(name, value, rule)


def _quantity_decimals(items: pd.DataFrame) -> int:
    return items.attrs.get("quantity_decimals", QUANTITY_DECIMALS)


def _item_value(
    rule: str,
    item: ReceiptItem,
    attr: str,
    scheme: VariableMeasureScheme | None,
    gs1_region: str | None = None,
) -> str:
    """The failing value, with the numbers the operator needs to see why (rules stay fixed)."""
    value = _show(getattr(item, attr, ""))
    if rule == BARCODE_RULE:
        return f"{_show(item.barcode)} ({read_label(item.barcode, gs1_region).error})"
    if rule in (LABEL_AMOUNT_RULE, LABEL_WEIGHT_RULE):
        label = read_label(item.barcode, gs1_region)
        line = f"line: {item.price} x {item.quantity} = {item.amount}"
        if rule == LABEL_AMOUNT_RULE:
            return f"{value} (label: {label.amount}; {line})"
        unit = label.unit_price if label.unit_price is not None else item.price
        implied = round_cents((label.weight or 0) * unit)
        return f"{value} (label: {label.weight} kg x {unit} = {implied}; {line})"
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
