"""Validation: business rules over a batch of receipts, checked by pandera.

Receipts become two frames, headers and items, with money in integer minor units computed
exactly from ``Decimal`` (NA where a value has more decimals than allowed), so that every
check is vectorised over the whole batch. ``lazy=True`` collects every failure of every
receipt; each is translated back to the receipt, field and value it concerns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from posfed_pipeline.core.receipt import Problem, Receipt

QUANTITY_DECIMALS = 3  # weighed items: kilograms to the gram
BARCODE_LENGTHS = (8, 12, 13)  # EAN-8, UPC-A, EAN-13 (in-store variable-measure codes: 20-29)


def gs1_check_digit_ok(code: str) -> bool:
    """GS1 mod-10: weights 3,1,3,... from the rightmost data digit."""
    if not code.isdigit() or len(code) not in BARCODE_LENGTHS:
        return False
    digits = [ord(c) - 48 for c in code]
    body, check = digits[:-1], digits[-1]
    total = sum(d * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


def gs1_check_digit(body: str) -> str:
    """The check digit that completes ``body`` (used by the simulator and tests)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


class ReceiptHeaderModel(pa.DataFrameModel):
    """One row per receipt."""

    receipt_id: Series[str]
    total_minor: Series[pd.Int64Dtype] = pa.Field(nullable=False)
    lines_total_minor: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    item_count: Series[int] = pa.Field(ge=1)
    timestamp: Series[Annotated[pd.DatetimeTZDtype, "ns", "UTC"]]

    @pa.dataframe_check(error="total must equal the sum of the line amounts (half-up to cents)")
    def total_matches_lines(cls, df: pd.DataFrame) -> Series[bool]:
        return (df["total_minor"] == df["lines_total_minor"]).fillna(True).astype(bool)

    class Config:
        strict = False
        coerce = False


class ReceiptItemModel(pa.DataFrameModel):
    """One row per receipt line; ``receipt_idx`` points at the header row."""

    receipt_idx: Series[int]
    line_no: Series[int]
    barcode: Series[str] = pa.Field(str_matches=r"^[0-9]+$")
    description: Series[str] = pa.Field(str_length={"max_value": 200})
    price_minor: Series[pd.Int64Dtype] = pa.Field(nullable=False)
    quantity_milli: Series[pd.Int64Dtype] = pa.Field(nullable=False)

    @pa.check("barcode", error="must be an EAN-13, EAN-8 or UPC-A code with a valid check digit")
    def barcode_check_digit(cls, barcode: Series[str]) -> Series[bool]:
        return barcode.map(gs1_check_digit_ok)

    @pa.check("price_minor", error="price must not be negative")
    def price_not_negative(cls, price: Series[pd.Int64Dtype]) -> Series[bool]:
        return (price >= 0).fillna(True).astype(bool)

    @pa.check("quantity_milli", error="quantity must not be zero")
    def quantity_not_zero(cls, quantity: Series[pd.Int64Dtype]) -> Series[bool]:
        return (quantity != 0).fillna(True).astype(bool)

    class Config:
        strict = False
        coerce = False


# How pandera's built-in checks read to an operator.
_BUILTIN_RULES = {
    ("total_minor", "not_nullable"): "total must have at most 2 decimals",
    ("price_minor", "not_nullable"): "price must have at most 2 decimals",
    ("quantity_milli", "not_nullable"): f"quantity must have at most {QUANTITY_DECIMALS} decimals",
    ("barcode", "str_matches('^[0-9]+$')"): "barcode must contain digits only",
    ("item_count", "greater_than_or_equal_to(1)"): "a receipt needs at least one item",
}
_FIELD_NAMES = {
    "total_minor": "total",
    "price_minor": "price",
    "quantity_milli": "quantity",
    "timestamp": "timestamp",
}


@dataclass
class ValidationReport:
    valid: list[Receipt] = field(default_factory=list)
    invalid: list[tuple[Receipt, list[Problem]]] = field(default_factory=list)

    @property
    def pass_rate(self) -> float:
        total = len(self.valid) + len(self.invalid)
        return len(self.valid) / total if total else 1.0


def _minor(value: Decimal, places: int) -> int | None:
    scaled = value.scaleb(places)
    return int(scaled) if scaled == scaled.to_integral_value() else None


def receipts_to_frames(receipts: list[Receipt]) -> tuple[pd.DataFrame, pd.DataFrame]:
    header_rows = []
    item_cols: dict[str, list] = {
        k: []
        for k in (
            "receipt_idx",
            "line_no",
            "barcode",
            "description",
            "price_minor",
            "quantity_milli",
        )
    }
    for idx, receipt in enumerate(receipts):
        lines_total = 0
        lines_exact = True
        for line_no, item in enumerate(receipt.items, start=1):
            price = _minor(item.price, 2)
            quantity = _minor(item.quantity, QUANTITY_DECIMALS)
            item_cols["receipt_idx"].append(idx)
            item_cols["line_no"].append(line_no)
            item_cols["barcode"].append(item.barcode)
            item_cols["description"].append(item.description)
            item_cols["price_minor"].append(price)
            item_cols["quantity_milli"].append(quantity)
            if price is None or quantity is None:
                lines_exact = False
            else:
                lines_total += _minor(item.amount, 2)
        header_rows.append(
            {
                "receipt_id": receipt.receipt_id,
                "total_minor": _minor(receipt.total, 2),
                "lines_total_minor": lines_total if lines_exact else None,
                "item_count": len(receipt.items),
                "timestamp": receipt.timestamp,
            }
        )
    headers = pd.DataFrame(header_rows, columns=list(ReceiptHeaderModel.to_schema().columns))
    headers["total_minor"] = headers["total_minor"].astype("Int64")
    headers["lines_total_minor"] = headers["lines_total_minor"].astype("Int64")
    headers["item_count"] = headers["item_count"].astype("int64")
    headers["timestamp"] = pd.to_datetime(headers["timestamp"], utc=True).astype(
        "datetime64[ns, UTC]"
    )
    items = pd.DataFrame(item_cols)
    for column in ("price_minor", "quantity_milli"):
        items[column] = items[column].astype("Int64")
    for column in ("receipt_idx", "line_no"):
        items[column] = items[column].astype("int64")
    for column in ("barcode", "description"):
        items[column] = items[column].astype(object)
    return headers, items


def validate_batch(
    receipts: list[Receipt],
    *,
    allow_returns: bool = False,
    now: datetime | None = None,
    max_clock_skew: timedelta = timedelta(minutes=5),
    max_age: timedelta = timedelta(days=45),
) -> ValidationReport:
    """Check a batch of one terminal's receipts; every failure of every receipt is reported."""
    report = ValidationReport()
    if not receipts:
        return report
    now = now or datetime.now(UTC)
    headers, items = receipts_to_frames(receipts)
    problems: dict[int, list[Problem]] = {}

    header_schema = _header_schema(now, max_clock_skew, max_age)
    item_schema = _item_schema(allow_returns)
    for schema, frame, kind in ((header_schema, headers, "header"), (item_schema, items, "item")):
        try:
            schema.validate(frame, lazy=True)
        except pa.errors.SchemaErrors as exc:
            for receipt_idx, problem in _explain(exc.failure_cases, frame, receipts, kind):
                problems.setdefault(receipt_idx, []).append(problem)

    for idx, receipt in enumerate(receipts):
        if idx in problems:
            report.invalid.append((receipt, problems[idx]))
        else:
            report.valid.append(receipt)
    return report


def _header_schema(now: datetime, skew: timedelta, max_age: timedelta) -> pa.DataFrameSchema:
    latest = pd.Timestamp(now + skew)
    earliest = pd.Timestamp(now - max_age)
    return ReceiptHeaderModel.to_schema().update_column(
        "timestamp",
        checks=[
            pa.Check.le(latest, error=f"timestamp is in the future (clock skew allowed: {skew})"),
            pa.Check.ge(earliest, error=f"timestamp is older than {max_age.days} days"),
        ],
    )


def _item_schema(allow_returns: bool) -> pa.DataFrameSchema:
    schema = ReceiptItemModel.to_schema()
    if allow_returns:
        return schema
    column = schema.columns["quantity_milli"]
    return schema.update_column(
        "quantity_milli",
        checks=[
            *column.checks,
            pa.Check(
                lambda q: (q > 0).fillna(True).astype(bool),
                error="returns (negative quantities) are not allowed on this terminal",
            ),
        ],
    )


def _explain(failures: pd.DataFrame, frame: pd.DataFrame, receipts: list[Receipt], kind: str):
    """Translate pandera's failure cases into (receipt index, Problem) pairs."""
    seen: set[tuple[int, str, str]] = set()
    for row in failures.itertuples(index=False):
        index = row.index
        if index is None or (isinstance(index, float) and pd.isna(index)):
            # A schema-level failure (wrong dtype): a bug in frame building, not in the data.
            raise RuntimeError(f"validation frame is malformed: {row.column}: {row.check}")
        index = int(index)
        column = str(row.column)
        rule = _BUILTIN_RULES.get((column, str(row.check)), str(row.check))
        if kind == "header":
            receipt_idx = index
            receipt = receipts[receipt_idx]
            # A dataframe-level check lists every column of a failing row: report it once.
            frame_check = row.schema_context == "DataFrameSchema"
            name = "total" if frame_check else _FIELD_NAMES.get(column, column)
            value = _header_value(receipt, name)
        else:
            receipt_idx = int(frame.at[index, "receipt_idx"])
            line_no = int(frame.at[index, "line_no"])
            item = receipts[receipt_idx].items[line_no - 1]
            attr = _FIELD_NAMES.get(column, column)
            name = f"items[{line_no}].{attr}"
            value = str(getattr(item, attr, row.failure_case))
        if (receipt_idx, name, rule) in seen:
            continue
        seen.add((receipt_idx, name, rule))
        yield receipt_idx, Problem(name, value, rule)


def _header_value(receipt: Receipt, name: str) -> str:
    if name == "total":
        return f"{receipt.total} (lines sum to {receipt.lines_total})"
    if name == "timestamp":
        return receipt.timestamp.isoformat()
    return str(getattr(receipt, name, ""))
