"""Validation throughput: receipts per second through ``validate_batch`` (target >= 20,000).

    .venv/bin/python benchmarks/bench_validation.py [--receipts 20000] [--repeat 3]

Receipts carry 5 items each (weighed and counted, valid EAN-13 codes, exact totals). Three
figures: validation alone, validation with a variable-measure price scheme configured, and
intake + validation from the canonical JSON bytes (as the pipeline reads files, minus disk).
Best of ``--repeat`` runs, so a cold cache or a busy neighbour does not set the figure.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from posfed_pipeline.core.config import Terminal, VariableMeasureScheme
from posfed_pipeline.core.intake import parse_receipt
from posfed_pipeline.core.receipt import Receipt, ReceiptItem, canonical_json, round_cents
from posfed_pipeline.core.simulator import CATALOGUE, ean13
from posfed_pipeline.core.validation import validate_batch

ITEMS_PER_RECEIPT = 5
TERMINAL = Terminal(
    id="butcher_1",
    department="20",
    tenant="Slagerij",
    inbox=Path("/nonexistent/inbox"),
    timezone=ZoneInfo("Europe/Amsterdam"),
    allow_returns=True,
)


def make_receipts(count: int, seed: int = 1) -> list[Receipt]:
    rng = random.Random(seed)
    catalogue = [entry for entries in CATALOGUE.values() for entry in entries]
    now = datetime.now(TERMINAL.timezone).replace(microsecond=0)
    receipts = []
    for n in range(count):
        items = []
        for _ in range(ITEMS_PER_RECEIPT):
            index = rng.randrange(len(catalogue))
            description, price, weighed = catalogue[index]
            quantity = (
                Decimal(rng.randint(80, 1500)) / 1000 if weighed else Decimal(rng.randint(1, 4))
            )
            items.append(ReceiptItem(ean13(index * 7919), description, Decimal(price), quantity))
        receipts.append(
            Receipt(
                receipt_id=f"B{n:09d}",
                terminal_id=TERMINAL.id,
                department_code=TERMINAL.department,
                items=tuple(items),
                total=sum((round_cents(i.price * i.quantity) for i in items), Decimal("0.00")),
                timestamp=now - timedelta(seconds=rng.randint(0, 86400)),
            )
        )
    return receipts


def best_rate(label: str, count: int, repeat: int, work: Callable[[], int]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        valid = work()
        best = min(best, time.perf_counter() - started)
        if valid != count:
            raise SystemExit(
                f"{label}: only {valid} of {count} receipts passed; benchmark is broken"
            )
    rate = count / best
    print(f"{label:<44}{rate:>12,.0f} receipts/s   ({best * 1000:,.0f} ms for {count:,})")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receipts", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    receipts = make_receipts(args.receipts)
    files = [canonical_json(r).encode() for r in receipts]
    now = datetime.now(UTC)
    scheme = VariableMeasureScheme(price_prefixes=("22", "23"), price_digits=5)
    python = platform.python_version()
    print(
        f"{args.receipts:,} receipts x {ITEMS_PER_RECEIPT} items; "
        f"Python {python}, {platform.machine()}"
    )

    def validate(variable_measure=None) -> int:
        report = validate_batch(
            receipts, allow_returns=True, now=now, variable_measure=variable_measure
        )
        return len(report.valid)

    def parse_and_validate() -> int:
        parsed = [parse_receipt(data, TERMINAL) for data in files]
        return len(validate_batch(parsed, allow_returns=True, now=now).valid)

    rate = best_rate("validate_batch", args.receipts, args.repeat, validate)
    best_rate(
        "validate_batch + variable-measure scheme",
        args.receipts,
        args.repeat,
        lambda: validate(scheme),
    )
    best_rate(
        "parse_receipt (JSON bytes) + validate_batch",
        args.receipts,
        args.repeat,
        parse_and_validate,
    )
    print(f"target 20,000 receipts/s for validate_batch: {'met' if rate >= 20_000 else 'MISSED'}")


if __name__ == "__main__":
    main()
