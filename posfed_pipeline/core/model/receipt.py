"""The canonical receipt: what every vendor format is turned into before validation.

Money and quantities are ``Decimal`` from the moment they are read; timestamps are
timezone-aware and the business day is the store's local date of the sale.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


def round_cents(value: Decimal) -> Decimal:
    """Half-up to cents, the rounding the central register and the tax authority use."""
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class ReceiptItem:
    barcode: str
    description: str
    price: Decimal
    quantity: Decimal
    # What the barcode's label says (core.barcodes), kept with the line for the central database and
    # the .dat file. Read from the barcode, so not part of the line's identity.
    gtin: str | None = field(default=None, compare=False)
    weight: Decimal | None = field(default=None, compare=False)  # kg
    count: int | None = field(default=None, compare=False)

    @property
    def amount(self) -> Decimal:
        return round_cents(self.price * self.quantity)


@dataclass(frozen=True)
class Receipt:
    receipt_id: str
    terminal_id: str
    department_code: str
    items: tuple[ReceiptItem, ...]
    total: Decimal
    timestamp: datetime  # timezone-aware, in the terminal's timezone
    source_file: str = ""
    content_hash: str = ""

    @property
    def business_day(self) -> date:
        return self.timestamp.date()

    @property
    def lines_total(self) -> Decimal:
        return sum((item.amount for item in self.items), Decimal("0.00"))


def content_hash(data: bytes) -> str:
    """Identity of a delivery: the same bytes re-delivered hash the same."""
    return hashlib.sha256(data).hexdigest()


def _item_document(item: ReceiptItem) -> dict:
    return {
        "barcode": item.barcode,
        "description": item.description,
        "price": str(item.price),
        "quantity": str(item.quantity),
    }


def _label_facts(item: ReceiptItem) -> dict:
    facts: dict[str, str | int] = {}
    if item.gtin is not None:
        facts["gtin"] = item.gtin
    if item.weight is not None:
        facts["weight"] = str(item.weight)
    if item.count is not None:
        facts["count"] = item.count
    return facts


def _as_document(receipt: Receipt) -> dict:
    return {
        "receiptId": receipt.receipt_id,
        "terminalId": receipt.terminal_id,
        "departmentCode": receipt.department_code,
        "items": [_item_document(item) for item in receipt.items],
        "total": str(receipt.total),
        "timestamp": receipt.timestamp.isoformat(),
    }


def canonical_json(receipt: Receipt) -> str:
    """The receipt in the seed's JSON shape, money as strings (exact)."""
    return json.dumps(_as_document(receipt), ensure_ascii=False, indent=2)


def to_payload(receipt: Receipt) -> str:
    """The accepted receipt as the local ledger keeps it for the central database: compact
    JSON, exact (Decimal as strings, the timestamp with its offset), file and hash included."""
    document = _as_document(receipt)
    for line, item in zip(document["items"], receipt.items, strict=True):
        line.update(_label_facts(item))
    document["sourceFile"] = receipt.source_file
    document["contentHash"] = receipt.content_hash
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def from_payload(payload: str) -> Receipt:
    """The inverse of ``to_payload``: the very receipt that was accepted."""
    document = json.loads(payload)
    return Receipt(
        receipt_id=document["receiptId"],
        terminal_id=document["terminalId"],
        department_code=document["departmentCode"],
        items=tuple(
            ReceiptItem(
                barcode=item["barcode"],
                description=item["description"],
                price=Decimal(item["price"]),
                quantity=Decimal(item["quantity"]),
                gtin=item.get("gtin"),
                weight=Decimal(item["weight"]) if "weight" in item else None,
                count=item.get("count"),
            )
            for item in document["items"]
        ),
        total=Decimal(document["total"]),
        timestamp=datetime.fromisoformat(document["timestamp"]),
        source_file=document["sourceFile"],
        content_hash=document["contentHash"],
    )


@dataclass(frozen=True)
class Problem:
    """One failed check, in words an operator understands."""

    field: str
    value: str
    rule: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "value": self.value, "rule": self.rule}

    def __str__(self) -> str:
        return f"{self.field}={self.value!r}: {self.rule}"
