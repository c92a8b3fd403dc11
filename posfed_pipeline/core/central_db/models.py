"""The central database's tables, every one of them (the schema itself is Alembic's,
``core/migrations``): receipts, their lines, the ingest ledger, the settlements."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    Date,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Unicode,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import mssql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from posfed_pipeline.core.model.barcodes import MAX_SCANNED

# Part of every key in the central database: a chain's stores share it (migration 0006).
StoreId = String(32)

# SQL Server compiles a plain Date to DATETIME when it cannot ask the server its version (offline
# migrations); the variant keeps it a DATE everywhere.
BusinessDay = Date().with_variant(mssql.DATE(), "mssql")
Money = Numeric(14, 2)
Quantity = Numeric(14, 3)


class Base(DeclarativeBase):
    pass


class ReceiptRow(Base):
    __tablename__ = "pos_receipt"
    __table_args__ = (
        UniqueConstraint(
            "store_id", "terminal_id", "business_day", "receipt_id", name="uq_pos_receipt_key"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    store_id: Mapped[str] = mapped_column(StoreId)
    terminal_id: Mapped[str] = mapped_column(String(32))
    business_day: Mapped[date] = mapped_column(BusinessDay)
    receipt_id: Mapped[str] = mapped_column(String(64))
    department_code: Mapped[str] = mapped_column(String(8))
    tenant: Mapped[str] = mapped_column(Unicode(128))
    sold_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    total: Mapped[Decimal] = mapped_column(Money)
    item_count: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    source_file: Mapped[str] = mapped_column(Unicode(255))
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReceiptLineRow(Base):
    __tablename__ = "pos_receipt_line"
    __table_args__ = (
        PrimaryKeyConstraint(
            "store_id",
            "terminal_id",
            "business_day",
            "receipt_id",
            "line_no",
            name="pk_pos_receipt_line",
        ),
        ForeignKeyConstraint(
            ["store_id", "terminal_id", "business_day", "receipt_id"],
            [
                "pos_receipt.store_id",
                "pos_receipt.terminal_id",
                "pos_receipt.business_day",
                "pos_receipt.receipt_id",
            ],
            name="fk_pos_receipt_line_receipt",
        ),
    )

    store_id: Mapped[str] = mapped_column(StoreId, primary_key=True)
    terminal_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    business_day: Mapped[date] = mapped_column(BusinessDay, primary_key=True)
    receipt_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True)
    barcode: Mapped[str] = mapped_column(Unicode(MAX_SCANNED))  # as scanned (migration 0005)
    description: Mapped[str] = mapped_column(Unicode(200))
    price: Mapped[Decimal] = mapped_column(Money)
    quantity: Mapped[Decimal] = mapped_column(Quantity)
    amount: Mapped[Decimal] = mapped_column(Money)
    # What the barcode said (core.barcodes): the trade item, and the scale label's figures.
    gtin: Mapped[str | None] = mapped_column(String(14), nullable=True)
    net_weight_kg: Mapped[Decimal | None] = mapped_column(Quantity, nullable=True)
    unit_count: Mapped[int | None] = mapped_column(Integer, nullable=True)


class IngestLedgerRow(Base):
    """One row per delivery of a receipt file, whatever became of it."""

    __tablename__ = "pos_ingest_ledger"
    __table_args__ = (
        Index("ix_pos_ingest_ledger_key", "store_id", "terminal_id", "business_day", "receipt_id"),
        Index("ix_pos_ingest_ledger_run", "run_id"),
        Index(
            "ux_pos_ingest_ledger_delivery",
            "delivery_id",
            unique=True,
            mssql_where=text("delivery_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    store_id: Mapped[str] = mapped_column(StoreId)
    terminal_id: Mapped[str] = mapped_column(String(32))
    business_day: Mapped[date] = mapped_column(BusinessDay)
    receipt_id: Mapped[str] = mapped_column(String(64))
    source_file: Mapped[str] = mapped_column(Unicode(255))
    # The store server's ledger names each delivery (migration 0004); older rows have none.
    delivery_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Unicode(255), nullable=True)
    detected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    dat_written_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SettlementRow(Base):
    """One tenant's settlement in one store for one day (migrations 0003, 0006); the chain's,
    across stores, is the view ``pos_settlement_chain``."""

    __tablename__ = "pos_settlement"
    __table_args__ = (
        PrimaryKeyConstraint("store_id", "business_day", "tenant", name="pk_pos_settlement"),
    )

    store_id: Mapped[str] = mapped_column(StoreId, primary_key=True)
    business_day: Mapped[date] = mapped_column(BusinessDay, primary_key=True)
    tenant: Mapped[str] = mapped_column(Unicode(128), primary_key=True)
    departments: Mapped[str] = mapped_column(String(64))
    receipts: Mapped[int] = mapped_column(Integer)
    gross_sales: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    returns: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    net: Mapped[Decimal] = mapped_column(Numeric(14, 2))
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
