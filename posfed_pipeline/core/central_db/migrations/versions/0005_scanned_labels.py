"""What a line's barcode said: the GTIN, and the weight or count on its scale label.

The barcode column holds what was scanned: a GS1 element string from a DataBar or 2D scale
label, or a GS1 Digital Link URI, does not fit 14 characters. 4000 is more than any GS1 symbol
holds (a GS1 DataMatrix: 2,335 characters) and the widest SQL Server NVARCHAR short of MAX,
which pyodbc's fast_executemany would send piecewise. Rows loaded before this revision keep
their values; their new columns stay NULL.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite rebuilds the table (copy and rename) to change a type; the others alter in place.
    with op.batch_alter_table("pos_receipt_line") as batch:
        batch.alter_column(
            "barcode",
            existing_type=sa.String(14),
            type_=sa.Unicode(4000),  # core.barcodes.MAX_SCANNED
            existing_nullable=False,
        )
        batch.add_column(sa.Column("gtin", sa.String(14), nullable=True))
        batch.add_column(sa.Column("net_weight_kg", sa.Numeric(14, 3), nullable=True))
        batch.add_column(sa.Column("unit_count", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pos_receipt_line") as batch:
        batch.drop_column("unit_count")
        batch.drop_column("net_weight_kg")
        batch.drop_column("gtin")
        batch.alter_column(
            "barcode",
            existing_type=sa.Unicode(4000),
            type_=sa.String(14),
            existing_nullable=False,
        )
