"""Daily settlement per tenant.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mssql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BUSINESS_DAY = sa.Date().with_variant(mssql.DATE(), "mssql")


def upgrade() -> None:
    op.create_table(
        "pos_settlement",
        sa.Column("business_day", BUSINESS_DAY, primary_key=True),
        sa.Column("tenant", sa.Unicode(128), primary_key=True),
        sa.Column("departments", sa.String(64), nullable=False),
        sa.Column("receipts", sa.Integer(), nullable=False),
        sa.Column("gross_sales", sa.Numeric(14, 2), nullable=False),
        sa.Column("returns", sa.Numeric(14, 2), nullable=False),
        sa.Column("net", sa.Numeric(14, 2), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pos_settlement")
