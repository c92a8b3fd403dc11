"""Receipts for tests: as a till writes them (``receipt_doc``, ``drop_receipt``) and as intake
builds them (``make_receipt``)."""

from __future__ import annotations

import json
import os
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from posfed_pipeline.core.model.receipt import Receipt, ReceiptItem, content_hash

AMSTERDAM = ZoneInfo("Europe/Amsterdam")
# make_receipt's business day unless a test gives one.
RECEIPT_DAY = date(2026, 3, 14)


def receipt_doc(
    receipt_id: str = "R0001",
    terminal_id: str = "bakery_1",
    department: str = "10",
    *,
    timestamp: str | None = None,
    items: list[dict] | None = None,
    total: str | None = None,
) -> dict:
    items = items or [
        {
            "barcode": "8712345678906",
            "description": "Volkorenbrood",
            "price": "2.95",
            "quantity": 1,
        },
        {"barcode": "4006381333931", "description": "Croissant", "price": "1.15", "quantity": 3},
    ]
    if total is None:
        total = str(
            sum(
                (Decimal(str(i["price"])) * Decimal(str(i["quantity"]))).quantize(Decimal("0.01"))
                for i in items
            )
        )
    return {
        "receiptId": receipt_id,
        "terminalId": terminal_id,
        "departmentCode": department,
        "items": items,
        "total": total,
        "timestamp": timestamp or datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def drop_receipt(
    inbox: Path, doc: dict | str | bytes, name: str | None = None, *, age: float = 1.0
) -> Path:
    """Write a receipt file as a POS would, its mtime ``age`` seconds in the past (settled)."""
    if isinstance(doc, dict):
        data = json.dumps(doc).encode()
        name = name or f"{doc['receiptId']}.json"
    else:
        data = doc.encode() if isinstance(doc, str) else doc
    path = inbox / name
    path.write_bytes(data)
    if age:
        past = time.time() - age
        os.utime(path, (past, past))
    return path


def make_receipt(
    receipt_id: str = "R0001",
    *,
    terminal_id: str = "bakery_1",
    day: date = RECEIPT_DAY,
    lines: list[tuple[str, str]] | None = None,
    source_file: str | None = None,
) -> Receipt:
    """A receipt as intake builds it; the content hash follows the content."""
    items = tuple(
        ReceiptItem("8712345678906", f"Artikel {n} — brød", Decimal(price), Decimal(quantity))
        for n, (price, quantity) in enumerate(lines or [("2.95", "1"), ("1.15", "3")], start=1)
    )
    total = sum((item.amount for item in items), Decimal("0.00"))
    timestamp = datetime.combine(day, datetime.min.time(), AMSTERDAM) + timedelta(hours=10)
    digest = content_hash(f"{terminal_id}|{day}|{receipt_id}|{items}|{total}".encode())
    return Receipt(
        receipt_id=receipt_id,
        terminal_id=terminal_id,
        department_code="10",
        items=items,
        total=total,
        timestamp=timestamp,
        source_file=source_file or f"{receipt_id}.json",
        content_hash=digest,
    )
