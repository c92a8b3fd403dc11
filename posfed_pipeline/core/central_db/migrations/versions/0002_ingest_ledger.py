"""Ingest ledger: one row per delivery of a receipt file (outcome, run, timestamps).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mssql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# A DATE on SQL Server too (a plain Date becomes DATETIME when compiled offline).
BUSINESS_DAY = sa.Date().with_variant(mssql.DATE(), "mssql")


def upgrade() -> None:
    op.create_table(
        "pos_ingest_ledger",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("terminal_id", sa.String(32), nullable=False),
        sa.Column("business_day", BUSINESS_DAY, nullable=False),
        sa.Column("receipt_id", sa.String(64), nullable=False),
        sa.Column("source_file", sa.Unicode(255), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Unicode(255), nullable=True),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dat_written_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_pos_ingest_ledger_key",
        "pos_ingest_ledger",
        ["terminal_id", "business_day", "receipt_id"],
    )
    op.create_index("ix_pos_ingest_ledger_run", "pos_ingest_ledger", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_pos_ingest_ledger_run", table_name="pos_ingest_ledger")
    op.drop_index("ix_pos_ingest_ledger_key", table_name="pos_ingest_ledger")
    op.drop_table("pos_ingest_ledger")
