"""One 5,000-receipt terminal-day (5 lines each): the store's ledger, then the central database.

    .venv/bin/python dev/benchmarks/bench_store.py [--receipts N] [--pg-url URL]

Prints seconds and receipts/s for accepting the day into the local ledger (what the checkout
waits for) and recording its .dat files, then for syncing the ledger's outbox into SQLite and
PostgreSQL (batches of 500, as the sync run does) and for sending the whole outbox again (an
idempotent no-op, as after a lost acknowledgement). PostgreSQL uses a throw-away database on
the given server (default postgresql+psycopg://postgres@127.0.0.1:5432), skipped with a note if
unreachable.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import create_engine, text

from posfed_pipeline.core import central_db
from posfed_pipeline.core.model.receipt import Receipt, ReceiptItem
from posfed_pipeline.core.stages.sync import sync_pending
from posfed_pipeline.core.state.ledger import DeliveredReceipt, Ledger

DAY = date(2026, 3, 14)
ZONE = ZoneInfo("Europe/Amsterdam")


def terminal_day(receipt_count: int, lines: int = 5) -> list[Receipt]:
    opening = datetime.combine(DAY, datetime.min.time(), ZONE) + timedelta(hours=8)
    receipts = []
    for n in range(receipt_count):
        items = tuple(
            ReceiptItem(
                "8712345678906",
                f"Artikel {line}",
                Decimal(f"{1 + (n + line) % 20}.{(n * 7 + line) % 100:02d}"),
                Decimal("0.125") if line == 3 else Decimal(1 + line % 2),
            )
            for line in range(lines)
        )
        total = sum((item.amount for item in items), Decimal("0.00"))
        receipt_id = f"R{n + 1:06d}"
        receipts.append(
            Receipt(
                receipt_id=receipt_id,
                terminal_id="bakery_1",
                department_code="10",
                items=items,
                total=total,
                timestamp=opening + timedelta(seconds=8 * n),
                source_file=f"{receipt_id}.json",
                content_hash=hashlib.sha256(f"{receipt_id}{items}".encode()).hexdigest(),
            )
        )
    return receipts


def timed(label: str, count: int, action: Callable[[], object]) -> object:
    start = time.perf_counter()
    outcome = action()
    seconds = time.perf_counter() - start
    print(f"  {label:<22}{seconds:>8.2f} s {count / seconds:>10,.0f} receipts/s")
    return outcome


def filled_ledger(folder: Path, receipts: list[Receipt]) -> Ledger:
    ledger = Ledger(folder / "ledger.db")
    deliveries = [
        DeliveredReceipt(r, f"{r.source_file}:1:1", detected_at=time.time()) for r in receipts
    ]
    print(f"store ledger: {len(receipts):,} receipts")
    timed("accept", len(receipts), lambda: ledger.accept(deliveries, tenant="Bakkerij"))
    timed(
        "record .dat written",
        len(receipts),
        lambda: ledger.mark_emitted((r, f"20260314/scon10{r.receipt_id}.dat") for r in receipts),
    )
    return ledger


def bench(name: str, url: str, ledger: Ledger, receipts: list[Receipt]) -> None:
    engine = central_db.make_engine(url)
    central_db.upgrade_database(engine)
    ledger.resync()
    print(f"{name}: {len(receipts):,} receipts, {sum(len(r.items) for r in receipts):,} lines")
    first = timed("sync (500 per batch)", len(receipts), lambda: sync_pending(ledger, engine))
    ledger.resync()
    again = timed("sync again (no-op)", len(receipts), lambda: sync_pending(ledger, engine))
    assert first.receipts_inserted == len(receipts) and again.receipts_inserted == 0
    assert again.already_held == len(receipts)
    assert central_db.count_receipts(engine, "bakery_1", DAY) == len(receipts)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--receipts", type=int, default=5000)
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    args = parser.parse_args()
    receipts = terminal_day(args.receipts)
    scratch = tempfile.TemporaryDirectory()
    folder = Path(scratch.name)
    ledger = filled_ledger(folder, receipts)
    bench("SQLite (WAL)", f"sqlite:///{folder / 'central.db'}", ledger, receipts)

    name = f"posfed_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{args.pg_url}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # the benchmark still reports SQLite without a server
        print(f"PostgreSQL: skipped ({str(exc).splitlines()[0]})")
        return
    try:
        bench("PostgreSQL (psycopg 3)", f"{args.pg_url}/{name}", ledger, receipts)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
