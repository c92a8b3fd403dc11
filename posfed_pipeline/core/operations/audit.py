"""Audits of a business day: reconciliation per terminal, settlement per tenant.

*Reconciliation* compares the three places a receipt must be once accepted: its original in the
archive, its rows in the central database and its .dat file on disk (byte-identical to a fresh
render). Any receipt missing from one of them is listed by id. For a terminal whose receipts
are numbered in sequence, the numbers of the day that never arrived are listed too: a receipt
printed at the counter that posfed never saw.

*Settlement* is what the store owes each entrepreneur for the money collected at the central
register on a day: receipts, gross sales, returns and net, per tenant, from the central database.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import cast

from sqlalchemy import (
    Table,
    Unicode,
    bindparam,
    delete,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine

from posfed_pipeline.core.base.fsutil import write_atomic
from posfed_pipeline.core.central_db.models import (
    BusinessDay,
    ReceiptLineRow,
    ReceiptRow,
    SettlementRow,
)
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.dat import DatSpec, render_receipt
from posfed_pipeline.core.intake import parsing
from posfed_pipeline.core.model.receipt import Receipt
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.core.state import inbox, quarantine
from posfed_pipeline.core.state.ledger import Ledger

ZERO = Decimal("0.00")


@dataclass
class Reconciliation:
    terminal_id: str
    business_day: date
    archived: set[str] = field(default_factory=set)
    loaded: set[str] = field(default_factory=set)
    dat_ok: set[str] = field(default_factory=set)
    dat_missing: set[str] = field(default_factory=set)
    dat_differs: set[str] = field(default_factory=set)
    unreadable_archive_files: list[str] = field(default_factory=list)
    # Accepted by the store's ledger and still in its outbox (the central database was out of
    # reach): on their way, not missing.
    pending_sync: set[str] = field(default_factory=set)
    # Receipt numbers missing between the day's first and last (terminals numbered in sequence).
    number_gaps: list[int] = field(default_factory=list)

    @property
    def missing_in_db(self) -> set[str]:
        return self.archived - self.loaded - self.pending_sync

    @property
    def missing_in_archive(self) -> set[str]:
        return self.loaded - self.archived

    @property
    def matches(self) -> bool:
        return not (
            self.missing_in_db
            or self.missing_in_archive
            or self.dat_missing
            or self.dat_differs
            or self.unreadable_archive_files
        )

    def mismatches(self) -> dict[str, list[str]]:
        """Each kind of mismatch with the receipt ids (or files) concerned; empty when clean."""
        found = {
            "in archive, not in database": sorted(self.missing_in_db),
            "in database, not in archive": sorted(self.missing_in_archive),
            ".dat file missing": sorted(self.dat_missing),
            ".dat file differs from its receipt": sorted(self.dat_differs),
            "unreadable archive files": sorted(self.unreadable_archive_files),
        }
        return {kind: ids for kind, ids in found.items() if ids}


def reconcile_terminal_day(
    config: PosfedConfig,
    terminal: Terminal,
    day: date,
    engine: Engine,
    spec: DatSpec,
    ledger: Ledger | None = None,
) -> Reconciliation:
    result = Reconciliation(terminal.id, day)
    if ledger is not None:
        result.pending_sync = ledger.pending_receipt_ids(terminal.id, day)
    receipts: dict[str, Receipt] = {}
    for path in inbox.archived_files(terminal, day):
        try:
            receipt = parsing.read_receipt_file(path, terminal)
        except (parsing.IntakeError, OSError):
            result.unreadable_archive_files.append(path.name)
            continue
        receipts.setdefault(receipt.receipt_id, receipt)
    result.archived = set(receipts)

    header = ReceiptRow.__table__
    with engine.connect() as connection:
        result.loaded = set(
            connection.execute(
                select(header.c.receipt_id).where(
                    header.c.store_id == config.store_id,
                    header.c.terminal_id == terminal.id,
                    header.c.business_day == day,
                )
            ).scalars()
        )

    if terminal.receipt_number_pattern is not None:
        arrived = result.archived | result.loaded | result.pending_sync
        arrived |= quarantine.quarantined_receipt_ids(terminal, day)
        result.number_gaps = number_gaps(terminal.receipt_number_pattern, arrived)

    for receipt_id in (result.loaded | result.pending_sync) & result.archived:
        rendered = render_receipt(receipts[receipt_id], terminal, spec)
        path = config.dat_dir / rendered.relative_path
        try:
            on_disk = path.read_bytes()
        except FileNotFoundError:
            result.dat_missing.add(receipt_id)
            continue
        (result.dat_ok if on_disk == rendered.content else result.dat_differs).add(receipt_id)
    return result


# A day's numbers spanning more than this are not one terminal's sequence (a stray id).
MAX_GAP_SPAN = 100_000


def number_gaps(pattern: re.Pattern[str], receipt_ids: Iterable[str]) -> list[int]:
    """The numbers between the lowest and the highest of ``receipt_ids`` that none carries
    (at most ``MAX_GAP_SPAN`` of them: beyond, the ids are not one sequence)."""
    numbers = set()
    for receipt_id in receipt_ids:
        match = pattern.fullmatch(receipt_id)
        digits = (match.group(1) or "") if match else ""
        if digits.isdigit() and len(digits) <= 18:
            numbers.add(int(digits))
    ordered = sorted(numbers)
    gaps: list[int] = []
    for low, high in zip(ordered, ordered[1:], strict=False):
        if high - low > 1:
            gaps.extend(range(low + 1, min(high, low + 1 + MAX_GAP_SPAN - len(gaps))))
        if len(gaps) >= MAX_GAP_SPAN:
            break
    return gaps


def describe_gaps(numbers: list[int], limit: int = 50) -> str:
    """``[4, 5, 6, 9]`` as ``"4-6, 9"``."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    text = [f"{a}-{b}" if a != b else f"{a}" for a, b in runs[:limit]]
    return ", ".join(text) + (f", ... ({len(runs) - limit} more)" if len(runs) > limit else "")


@dataclass(frozen=True)
class TenantSettlement:
    business_day: date
    tenant: str
    departments: str
    receipts: int
    gross_sales: Decimal
    returns: Decimal

    @property
    def net(self) -> Decimal:
        return self.gross_sales - self.returns

    def as_row(self) -> dict[str, str]:
        return {
            "business_day": self.business_day.isoformat(),
            "tenant": self.tenant,
            "departments": self.departments,
            "receipts": str(self.receipts),
            "gross_sales": str(self.gross_sales),
            "returns": str(self.returns),
            "net": str(self.net),
        }


def settle_day(config: PosfedConfig, engine: Engine, day: date) -> list[TenantSettlement]:
    """This store's line per configured tenant (zero when it sold nothing), exact to the cent."""
    header = ReceiptRow.__table__
    lines = ReceiptLineRow.__table__
    receipts: dict[str, int] = defaultdict(int)
    gross: dict[str, Decimal] = defaultdict(lambda: ZERO)
    returns: dict[str, Decimal] = defaultdict(lambda: ZERO)
    with engine.connect() as connection:
        for (tenant,) in connection.execute(
            select(header.c.tenant).where(
                header.c.store_id == config.store_id, header.c.business_day == day
            )
        ).all():
            receipts[tenant] += 1
        # Summed in Python: exact Decimal arithmetic whatever the database's SUM does.
        for tenant, amount in connection.execute(
            select(header.c.tenant, lines.c.amount)
            .join(
                lines,
                (lines.c.store_id == header.c.store_id)
                & (lines.c.terminal_id == header.c.terminal_id)
                & (lines.c.business_day == header.c.business_day)
                & (lines.c.receipt_id == header.c.receipt_id),
            )
            .where(header.c.store_id == config.store_id, header.c.business_day == day)
        ).all():
            amount = Decimal(amount)
            if amount >= 0:
                gross[tenant] += amount
            else:
                returns[tenant] -= amount

    departments: dict[str, set[str]] = defaultdict(set)
    for terminal in config.terminals:
        departments[terminal.tenant].add(terminal.department)
    tenants = sorted(set(departments) | set(receipts))
    return [
        TenantSettlement(
            business_day=day,
            tenant=tenant,
            departments=" ".join(sorted(departments.get(tenant, ()))),
            receipts=receipts[tenant],
            gross_sales=gross[tenant],
            returns=returns[tenant],
        )
        for tenant in tenants
    ]


SETTLEMENT_COLUMNS = [
    "business_day",
    "tenant",
    "departments",
    "receipts",
    "gross_sales",
    "returns",
    "net",
]


def settlement_csv_path(config: PosfedConfig, day: date) -> Path:
    return config.home / "settlements" / f"{day:%Y%m%d}" / f"settlement_{day:%Y%m%d}.csv"


def write_settlement_csv(
    config: PosfedConfig, settlements: list[TenantSettlement], day: date
) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SETTLEMENT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for settlement in settlements:
        writer.writerow(settlement.as_row())
    path = settlement_csv_path(config, day)
    write_atomic(path, buffer.getvalue().encode("utf-8"))
    return path


def store_settlements(
    engine: Engine,
    day: date,
    settlements: list[TenantSettlement],
    store_id: str,
) -> int:
    """Replace this store's settlement rows of the day in one transaction (a re-run
    recomputes, never adds; other stores' rows are theirs)."""
    table = cast(Table, SettlementRow.__table__)
    computed_at = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            delete(table).where(table.c.store_id == store_id, table.c.business_day == day)
        )
        if settlements:
            connection.execute(
                insert(table),
                [
                    {
                        "store_id": store_id,
                        "business_day": s.business_day,
                        "tenant": s.tenant,
                        "departments": s.departments,
                        "receipts": s.receipts,
                        "gross_sales": s.gross_sales,
                        "returns": s.returns,
                        "net": s.net,
                        "computed_at": computed_at,
                    }
                    for s in settlements
                ],
            )
    return len(settlements)


def stored_settlements(engine: Engine, day: date, store_id: str | None) -> list[dict]:
    """One store's settlement rows of a day (``store_id=None``: every store's)."""
    table = SettlementRow.__table__
    query = select(table).where(table.c.business_day == day)
    if store_id is not None:
        query = query.where(table.c.store_id == store_id)
    with engine.connect() as connection:
        return [
            dict(row)
            for row in connection.execute(
                query.order_by(table.c.store_id, table.c.tenant)
            ).mappings()
        ]


def chain_settlements(engine: Engine, day: date) -> list[dict]:
    """The chain's settlement of a day, per tenant across its stores (the view
    ``pos_settlement_chain``); money comes back as Decimal."""
    # A view's columns carry no types on SQLite: say what they are.
    query = (
        text(
            "SELECT business_day, tenant, stores, receipts, gross_sales, returns, net "
            "FROM pos_settlement_chain WHERE business_day = :day ORDER BY tenant"
        )
        .bindparams(bindparam("day", day, type_=BusinessDay))
        .columns(business_day=BusinessDay, tenant=Unicode(128))
    )
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    money = ("gross_sales", "returns", "net")
    return [
        {
            **row,
            "stores": int(row["stores"]),
            "receipts": int(row["receipts"]),
            **{k: Decimal(str(row[k])).quantize(Decimal("0.01")) for k in money},
        }
        for row in rows
    ]
