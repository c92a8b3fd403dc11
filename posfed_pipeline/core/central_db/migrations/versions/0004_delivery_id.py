"""Delivery ids: each ingest-ledger row names the store-side delivery it records.

The store server's local ledger feeds the central database asynchronously (store-and-forward).
A batch re-sent after a lost acknowledgement must not add its rows twice: the delivery id the
local ledger gave each delivery is unique here.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("pos_ingest_ledger", sa.Column("delivery_id", sa.String(32), nullable=True))
    # Rows from before this revision have none; SQL Server's unique indexes admit one NULL
    # only, unless filtered.
    op.create_index(
        "ux_pos_ingest_ledger_delivery",
        "pos_ingest_ledger",
        ["delivery_id"],
        unique=True,
        mssql_where=sa.text("delivery_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ux_pos_ingest_ledger_delivery", table_name="pos_ingest_ledger")
    with op.batch_alter_table("pos_ingest_ledger") as batch:
        batch.drop_column("delivery_id")
