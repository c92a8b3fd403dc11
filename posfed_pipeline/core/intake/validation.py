"""Validation: business rules over a batch of receipts, checked by pandera.

Receipts become two frames, headers and items, with money and quantities in integer minor
units computed exactly from ``Decimal`` (NA where a value has more decimals than allowed), so
that every check is vectorised over the whole batch. ``lazy=True`` collects every failure of
every receipt; each is translated back to the receipt, field and value it concerns, in words an
operator understands.

The checkout validates one receipt at a time, so the cost that does not grow with the batch is
kept small: the frames are built with exactly the dtypes the models declare, the schemas depend
only on the terminal's settings (cached), and the checks compute on numpy arrays.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from posfed_pipeline.core.intake.parsing import MAX_MAGNITUDE, RECEIPT_ID_PATTERN
from posfed_pipeline.core.model.barcodes import Label, read_label
from posfed_pipeline.core.model.receipt import Problem, Receipt, ReceiptItem, round_cents
from posfed_pipeline.core.model.terminal import Terminal, VariableMeasureScheme


def _skip_pandera_geopandas_probe() -> None:
    """pandera tries ``from geopandas.array import GeometryDtype`` whenever it resolves a dtype
    its registry lacks (a text column's ``object``, a schema's ``None``): five times a batch.
    A failed import is not remembered, so each try searches sys.path anew (~0.1 ms). Where
    geopandas is not installed, its ``None`` entry in sys.modules (the import system's mark
    for "absent") makes each try fail at once; where it is, nothing changes."""
    if "geopandas" not in sys.modules and importlib.util.find_spec("geopandas") is None:
        sys.modules["geopandas"] = None  # type: ignore[assignment]


_skip_pandera_geopandas_probe()


QUANTITY_DECIMALS = 3  # default for weighed items: kilograms to the gram
MAX_DESCRIPTION = 200
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
RECEIPT_ID_RULE = (
    "must be 1-64 letters, digits, '-' or '_' starting with a letter or digit (nothing path-like)"
)
DESCRIPTION_RULE = f"description must be at most {MAX_DESCRIPTION} characters"


# --- the models ---------------------------------------------------------------------------------


class ReceiptHeaderModel(pa.DataFrameModel):
    """One row per receipt.

    The fields are the columns a rule is about; each costs pandera a pass on every call, so
    the columns that only serve a frame-wide check are not fields. Text columns are
    ``object``: they hold the receipt's ``str`` values, and pandera's ``str`` dtype check
    would test (and format) every element on every call. The frame also holds:

    - ``lines_total_minor`` (Int64): the sum of the line amounts, NA when one is not exact.
    """

    receipt_id: Series[object]
    total_minor: Series[pd.Int64Dtype] = pa.Field(nullable=False)
    item_count: Series[int] = pa.Field(ge=1)
    # How long before the validation's ``now`` the sale was, in microseconds (negative: in the
    # future), so that the age checks do not depend on the clock and the schema is cached.
    age_us: Series[int]

    # Text checks go over the few values in Python: pandas' .str methods cost more per call.
    @pa.check("receipt_id", error=RECEIPT_ID_RULE, ignore_na=False)
    def receipt_id_well_formed(cls, receipt_id: Series[object]) -> Series[bool]:
        return _each(receipt_id, lambda value: RECEIPT_ID_PATTERN.match(value) is not None)

    @pa.dataframe_check(error=TOTAL_RULE, ignore_na=False)
    def total_matches_lines(cls, df: pd.DataFrame) -> Series[bool]:
        # NA: a line's price or quantity is not exact, which is reported on that line.
        return _equal_or_na(df["total_minor"], df["lines_total_minor"])

    class Config:
        strict = False
        coerce = False


class ReceiptItemModel(pa.DataFrameModel):
    """One row per receipt line; as ``ReceiptHeaderModel``, the fields are the columns a rule
    is about. ``quantity_scaled`` is the quantity times 10**quantity_decimals (the terminal's
    setting). The frame also holds:

    - ``receipt_idx``, ``line_no`` (int64): the header row, and the line's number (from 1);
    - ``barcode`` (object): the line's barcode;
    - ``amount_minor`` (Int64): price x quantity in cents, half-up, NA when either is not exact;
    - ``label_amount_minor``, ``weight_amount_minor`` (Int64): the line amount its scale label
      implies, in cents: its amount payable, and its weight x unit price; NA where the label
      carries no such figure.
    """

    # Why biip could not read the barcode (core.barcodes), None when it could.
    barcode_problem: Series[object] = pa.Field(nullable=True)
    description: Series[object]
    price_minor: Series[pd.Int64Dtype] = pa.Field(nullable=False)
    quantity_scaled: Series[pd.Int64Dtype] = pa.Field(nullable=False)

    # An NA price or quantity is not exact, which nullable=False reports; these checks pass it.
    @pa.check("barcode_problem", error=BARCODE_RULE, ignore_na=False)
    def barcode_readable(cls, problem: Series[object]) -> Series[bool]:
        return problem.isna()

    @pa.check("description", error=DESCRIPTION_RULE, ignore_na=False)
    def description_not_too_long(cls, description: Series[object]) -> Series[bool]:
        return _each(description, lambda value: len(value) <= MAX_DESCRIPTION)

    @pa.check("price_minor", error="price must not be negative", ignore_na=False)
    def price_not_negative(cls, price: Series[pd.Int64Dtype]) -> Series[bool]:
        return pd.Series(_ints(price, na=0) >= 0, index=price.index)

    @pa.check("quantity_scaled", error="quantity must not be zero", ignore_na=False)
    def quantity_not_zero(cls, quantity: Series[pd.Int64Dtype]) -> Series[bool]:
        return pd.Series(_ints(quantity, na=1) != 0, index=quantity.index)

    class Config:
        strict = False
        coerce = False


def _each(column: pd.Series, test: Callable[[str], bool]) -> pd.Series:
    """``test`` of each value of a text column."""
    passed = np.fromiter(map(test, column.to_numpy()), dtype=bool, count=len(column))
    return pd.Series(passed, index=column.index)


def _ints(column: pd.Series, *, na: int) -> np.ndarray:
    """An Int64 column as int64 values, NA as ``na`` (a value the check lets pass)."""
    return column.to_numpy(dtype=np.int64, na_value=na)


def _equal_or_na(left: pd.Series, right: pd.Series) -> pd.Series:
    """Row by row, whether two Int64 columns agree; where either is NA, they do."""
    agree = _ints(left, na=0) == _ints(right, na=0)
    return pd.Series(agree | left.array.isna() | right.array.isna(), index=left.index)


_FIELD_NAMES = {
    "receipt_id": "receiptId",
    "total_minor": "total",
    "item_count": "items",
    "age_us": "timestamp",
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


def _int64_array(values: list[int | None]) -> pd.arrays.IntegerArray:
    """Nullable Int64 (None is NA), without pandas' inference over a list of objects."""
    count = len(values)
    mask = np.fromiter((value is None for value in values), dtype=bool, count=count)
    data = np.fromiter((value or 0 for value in values), dtype=np.int64, count=count)
    return pd.arrays.IntegerArray(data, mask)


def _object_array(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def receipts_to_frames(
    receipts: list[Receipt],
    *,
    quantity_decimals: int = QUANTITY_DECIMALS,
    gs1_region: str | None = None,
    now: datetime | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The header and item frames of a batch, built column by column (no per-row frames).

    Each column has the dtype its model declares, so that pandera's dtype checks are cheap."""
    now = now or datetime.now(UTC)
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
    amount_array = _int64_array(amounts)

    # Sum per receipt; a receipt with any inexact line has no lines total (NA).
    filled = amount_array.to_numpy(dtype=np.int64, na_value=0)
    inexact = amount_array.isna().astype(np.int64)
    running = np.concatenate(([0], np.cumsum(filled)))
    running_inexact = np.concatenate(([0], np.cumsum(inexact)))
    ends = starts + counts
    lines_total = pd.arrays.IntegerArray(
        running[ends] - running[starts], (running_inexact[ends] - running_inexact[starts]) > 0
    )

    headers = pd.DataFrame(
        {
            "receipt_id": _object_array([r.receipt_id for r in receipts]),
            "total_minor": _int64_array([_minor(r.total, 100) for r in receipts]),
            "lines_total_minor": lines_total,
            "item_count": counts,
            "age_us": np.fromiter(
                ((now - r.timestamp) // _ONE_MICROSECOND for r in receipts),
                dtype=np.int64,
                count=len(receipts),
            ),
        }
    )
    item_frame = pd.DataFrame(
        {
            "receipt_idx": receipt_idx,
            "line_no": line_no,
            "barcode": _object_array(barcodes),
            "barcode_problem": _object_array([label.error for label in labels]),
            "description": _object_array([item.description for item in items]),
            "price_minor": _int64_array(prices),
            "quantity_scaled": _int64_array(quantities),
            "amount_minor": amount_array,
            "label_amount_minor": _int64_array(stated),
            "weight_amount_minor": _int64_array(weighed),
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
    headers, items = receipts_to_frames(
        receipts, quantity_decimals=quantity_decimals, gs1_region=gs1_region, now=now
    )
    problems: dict[int, list[Problem]] = {}

    header_schema = _header_schema(max_clock_skew, max_age, receipt_id_prefix)
    item_schema = _item_schema(allow_returns, quantity_decimals, variable_measure, check_labels)
    for schema, frame, kind in ((header_schema, headers, "header"), (item_schema, items, "item")):
        try:
            # In place: the frame is this call's own, and pandera would copy it otherwise.
            schema.validate(frame, lazy=True, inplace=True)
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


@functools.cache
def _header_schema(
    skew: timedelta, max_age: timedelta, receipt_id_prefix: str
) -> pa.DataFrameSchema:
    schema = ReceiptHeaderModel.to_schema().update_column(
        "age_us",
        checks=[
            pa.Check.ge(
                -(skew // _ONE_MICROSECOND),
                error=f"timestamp is more than {_span(skew)} in the future",
            ),
            pa.Check.le(
                max_age // _ONE_MICROSECOND, error=f"timestamp is older than {_span(max_age)}"
            ),
        ],
    )
    if receipt_id_prefix:
        column = schema.columns["receipt_id"]
        schema = schema.update_column(
            "receipt_id",
            checks=[
                *column.checks,
                pa.Check(
                    lambda ids: _each(ids, lambda value: value.startswith(receipt_id_prefix)),
                    ignore_na=False,
                    # Its .dat name would not be this terminal's: see core.dat_names.
                    error=f"must begin with {receipt_id_prefix!r}, this terminal's receipt "
                    "number prefix (receipt_id_prefix in posfed.toml): is the terminal's "
                    "numbering set up as configured?",
                ),
            ],
        )
    return schema


@functools.cache
def _item_schema(
    allow_returns: bool,
    quantity_decimals: int,
    variable_measure: VariableMeasureScheme | None,
    check_labels: bool = False,
) -> pa.DataFrameSchema:
    schema = ReceiptItemModel.to_schema()
    # Every check here passes NA itself (it is reported where it arises). ignore_na=False:
    # pandera need not drop NA first, nor scan every column of the frame for each frame-wide
    # check.
    if not allow_returns:
        column = schema.columns["quantity_scaled"]
        schema = schema.update_column(
            "quantity_scaled",
            checks=[
                *column.checks,
                pa.Check(
                    lambda q: pd.Series(_ints(q, na=0) >= 0, index=q.index),
                    error=RETURNS_RULE,
                    ignore_na=False,
                ),
            ],
        )
    if variable_measure is not None:
        schema = copy.deepcopy(schema)
        schema.checks = [
            *schema.checks,
            pa.Check(
                functools.partial(_embedded_price_ok, variable_measure),
                error=EMBEDDED_PRICE_RULE,
                ignore_na=False,
            ),
        ]
    if check_labels:
        schema = copy.deepcopy(schema)
        schema.checks = [
            *schema.checks,
            pa.Check(
                functools.partial(_label_agrees, "label_amount_minor"),
                error=LABEL_AMOUNT_RULE,
                ignore_na=False,
            ),
            pa.Check(
                functools.partial(_label_agrees, "weight_amount_minor"),
                error=LABEL_WEIGHT_RULE,
                ignore_na=False,
            ),
        ]
    return schema


def _label_agrees(column: str, items: pd.DataFrame) -> pd.Series:
    """The label's figure is the line's amount (a return's by its size); no figure: agrees."""
    figure, amount = items[column], items["amount_minor"]
    agree = _ints(figure, na=0) == np.abs(_ints(amount, na=0))
    return pd.Series(agree | figure.array.isna() | amount.array.isna(), index=items.index)


_THIRTEEN_DIGITS = re.compile(r"[0-9]{13}")


def _embedded_price_ok(scheme: VariableMeasureScheme, items: pd.DataFrame) -> pd.Series:
    """In-store codes of the configured prefixes carry a price: it must be the line's.

    Scales print either the line amount (weighed goods) or the unit price on the label, so
    either matching is accepted; a return's amount is compared by its size.
    """
    ok = np.ones(len(items), dtype=bool)
    rows = [
        row
        for row, code in enumerate(items["barcode"].to_numpy())
        if code[:2] in scheme.price_prefixes and _THIRTEEN_DIGITS.fullmatch(code)
    ]
    if rows:
        codes = items["barcode"].to_numpy()[rows]
        embedded = np.array([int(code[12 - scheme.price_digits : 12]) for code in codes])
        price = items["price_minor"].array[rows]
        amount = items["amount_minor"].array[rows]
        # NA: the price or quantity is not exact, which is reported on the line itself.
        ok[rows] = (
            (embedded == price.to_numpy(dtype=np.int64, na_value=0))
            | (embedded == np.abs(amount.to_numpy(dtype=np.int64, na_value=0)))
            | price.isna()
            | amount.isna()
        )
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
        ("total_minor", "not_nullable"): "total must be below 10 million with at most 2 decimals",
        ("price_minor", "not_nullable"): "price must be below 10 million with at most 2 decimals",
        ("quantity_scaled", "not_nullable"): (
            f"quantity must be below 10 million with at most {quantity_decimals} decimals"
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
