"""Receipts and receipt lines.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mssql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# A DATE on SQL Server too (a plain Date becomes DATETIME when compiled offline). Unicode text
# is NVARCHAR on SQL Server and the same VARCHAR as before on SQLite and PostgreSQL.
BUSINESS_DAY = sa.Date().with_variant(mssql.DATE(), "mssql")


def upgrade() -> None:
    op.create_table(
        "pos_receipt",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("terminal_id", sa.String(32), nullable=False),
        sa.Column("business_day", BUSINESS_DAY, nullable=False),
        sa.Column("receipt_id", sa.String(64), nullable=False),
        sa.Column("department_code", sa.String(8), nullable=False),
        sa.Column("tenant", sa.Unicode(128), nullable=False),
        sa.Column("sold_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("total", sa.Numeric(14, 2), nullable=False),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("source_file", sa.Unicode(255), nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("terminal_id", "business_day", "receipt_id", name="uq_pos_receipt_key"),
    )
    op.create_table(
        "pos_receipt_line",
        sa.Column("terminal_id", sa.String(32), primary_key=True),
        sa.Column("business_day", BUSINESS_DAY, primary_key=True),
        sa.Column("receipt_id", sa.String(64), primary_key=True),
        sa.Column("line_no", sa.Integer(), primary_key=True),
        sa.Column("barcode", sa.String(14), nullable=False),
        sa.Column("description", sa.Unicode(200), nullable=False),
        sa.Column("price", sa.Numeric(14, 2), nullable=False),
        sa.Column("quantity", sa.Numeric(14, 3), nullable=False),
        sa.Column("amount", sa.Numeric(14, 2), nullable=False),
        sa.ForeignKeyConstraint(
            ["terminal_id", "business_day", "receipt_id"],
            ["pos_receipt.terminal_id", "pos_receipt.business_day", "pos_receipt.receipt_id"],
            name="fk_pos_receipt_line_receipt",
        ),
    )


def downgrade() -> None:
    op.drop_table("pos_receipt_line")
    op.drop_table("pos_receipt")
