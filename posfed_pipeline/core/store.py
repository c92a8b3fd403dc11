"""The central database: receipts and their lines, loaded idempotently through SQLAlchemy.

A receipt is identified by (terminal, business day, receipt id): many POS reset their counters
daily. Re-delivering the same receipt (same content hash) is a no-op; the same key with other
content is a *conflict*: it is never overwritten, it goes back to the caller to quarantine.

The schema is created and upgraded by Alembic (``posfed db upgrade``), never by ``create_all``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import (
    Date,
    DateTime,
    ForeignKeyConstraint,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from posfed_pipeline.core.receipt import Receipt

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class Base(DeclarativeBase):
    pass


class ReceiptRow(Base):
    __tablename__ = "pos_receipt"
    __table_args__ = (
        UniqueConstraint("terminal_id", "business_day", "receipt_id", name="uq_pos_receipt_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    terminal_id: Mapped[str] = mapped_column(String(32))
    business_day: Mapped[date] = mapped_column(Date)
    receipt_id: Mapped[str] = mapped_column(String(64))
    department_code: Mapped[str] = mapped_column(String(8))
    tenant: Mapped[str] = mapped_column(String(128))
    sold_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    total: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    item_count: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    source_file: Mapped[str] = mapped_column(String(255))
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReceiptLineRow(Base):
    __tablename__ = "pos_receipt_line"
    __table_args__ = (
        ForeignKeyConstraint(
            ["terminal_id", "business_day", "receipt_id"],
            ["pos_receipt.terminal_id", "pos_receipt.business_day", "pos_receipt.receipt_id"],
            name="fk_pos_receipt_line_receipt",
        ),
    )

    terminal_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    business_day: Mapped[date] = mapped_column(Date, primary_key=True)
    receipt_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    barcode: Mapped[str] = mapped_column(String(14))
    description: Mapped[str] = mapped_column(String(200))
    price: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    quantity: Mapped[Decimal] = mapped_column(Numeric(14, 3))
    amount: Mapped[Decimal] = mapped_column(Numeric(14, 2))


@dataclass
class LoadResult:
    inserted: list[Receipt] = field(default_factory=list)
    duplicates: list[Receipt] = field(default_factory=list)  # same key, same content: no-op
    conflicts: list[Receipt] = field(default_factory=list)  # same key, other content: refused

    @property
    def line_count(self) -> int:
        return sum(len(r.items) for r in self.inserted)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            # WAL: readers (the UI, `posfed db status`) never block the loader.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def schema_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def load_receipts(engine: Engine, receipts: Iterable[Receipt], tenant: str) -> LoadResult:
    """Insert the new receipts of one batch in one transaction; classify the rest."""
    result = LoadResult()
    batch: dict[tuple, Receipt] = {}
    for receipt in receipts:
        key = (receipt.terminal_id, receipt.business_day, receipt.receipt_id)
        earlier = batch.get(key)
        if earlier is None:
            batch[key] = receipt
        elif earlier.content_hash == receipt.content_hash:
            result.duplicates.append(receipt)
        else:
            result.conflicts.append(receipt)
    if not batch:
        return result

    header = ReceiptRow.__table__
    with engine.begin() as connection:
        existing = _existing_hashes(connection, list(batch))
        new: list[Receipt] = []
        for key, receipt in batch.items():
            known = existing.get(key)
            if known is None:
                new.append(receipt)
            elif known == receipt.content_hash:
                result.duplicates.append(receipt)
            else:
                result.conflicts.append(receipt)
        if new:
            loaded_at = datetime.now(UTC)
            connection.execute(insert(header), [_header_row(r, tenant, loaded_at) for r in new])
            connection.execute(
                insert(ReceiptLineRow.__table__),
                [row for r in new for row in _line_rows(r)],
            )
        result.inserted = new
    return result


def _existing_hashes(connection, keys: list[tuple]) -> dict[tuple, str]:
    header = ReceiptRow.__table__
    found: dict[tuple, str] = {}
    # Query per (terminal, day) group with a plain IN on receipt ids: portable to SQL Server,
    # which has no row-value IN.
    groups: dict[tuple[str, date], list[str]] = {}
    for terminal_id, day, receipt_id in keys:
        groups.setdefault((terminal_id, day), []).append(receipt_id)
    for (terminal_id, day), receipt_ids in groups.items():
        for start in range(0, len(receipt_ids), 500):
            chunk = receipt_ids[start : start + 500]
            rows = connection.execute(
                select(header.c.receipt_id, header.c.content_hash).where(
                    header.c.terminal_id == terminal_id,
                    header.c.business_day == day,
                    header.c.receipt_id.in_(chunk),
                )
            )
            for receipt_id, digest in rows:
                found[(terminal_id, day, receipt_id)] = digest
    return found


def _header_row(receipt: Receipt, tenant: str, loaded_at: datetime) -> dict:
    return {
        "terminal_id": receipt.terminal_id,
        "business_day": receipt.business_day,
        "receipt_id": receipt.receipt_id,
        "department_code": receipt.department_code,
        "tenant": tenant,
        "sold_at": receipt.timestamp.astimezone(UTC),
        "total": receipt.total,
        "item_count": len(receipt.items),
        "content_hash": receipt.content_hash,
        "source_file": receipt.source_file,
        "loaded_at": loaded_at,
    }


def _line_rows(receipt: Receipt) -> list[dict]:
    return [
        {
            "terminal_id": receipt.terminal_id,
            "business_day": receipt.business_day,
            "receipt_id": receipt.receipt_id,
            "line_no": n,
            "barcode": item.barcode,
            "description": item.description,
            "price": item.price,
            "quantity": item.quantity,
            "amount": item.amount,
        }
        for n, item in enumerate(receipt.items, start=1)
    ]


def count_receipts(engine: Engine, terminal_id: str, business_day: date) -> int:
    header = ReceiptRow.__table__
    with engine.connect() as connection:
        return connection.execute(
            select(func.count()).where(
                header.c.terminal_id == terminal_id, header.c.business_day == business_day
            )
        ).scalar_one()


def counts_by_terminal_day(engine: Engine) -> list[tuple[str, date, int, Decimal]]:
    header = ReceiptRow.__table__
    with engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                select(
                    header.c.terminal_id,
                    header.c.business_day,
                    func.count(),
                    func.sum(header.c.total),
                )
                .group_by(header.c.terminal_id, header.c.business_day)
                .order_by(header.c.business_day, header.c.terminal_id)
            )
        ]
