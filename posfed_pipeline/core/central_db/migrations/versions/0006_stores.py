"""Stores in the central database: a chain's stores share one central database.

Every key gains the store (``[store] id``), so terminal ids need only be unique within a
store: receipts, their lines, the ingest ledger and settlements (per tenant per store per day).
Rows from before this revision belong to the store that upgrades (``posfed db upgrade`` passes
its id). ``pos_settlement_chain`` is the chain-wide view: per tenant per day across stores.

Unlike the revisions before it, this one does not only add: the keys change, so a store still
on the last release cannot load into an upgraded central database (its rows lack a store):
upgrade the central database and the stores in one window (docs/deployment.md).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import warnings

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import mssql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STORE_ID = sa.String(32)
BUSINESS_DAY = sa.Date().with_variant(mssql.DATE(), "mssql")
TABLES = ("pos_receipt", "pos_receipt_line", "pos_ingest_ledger", "pos_settlement")
RECEIPT_KEY = ["store_id", "terminal_id", "business_day", "receipt_id"]
CHAIN_VIEW = """
CREATE VIEW pos_settlement_chain AS
SELECT business_day, tenant, COUNT(*) AS stores, SUM(receipts) AS receipts,
       SUM(gross_sales) AS gross_sales, SUM(returns) AS returns, SUM(net) AS net
FROM pos_settlement
GROUP BY business_day, tenant
"""


def upgrade() -> None:
    store_id = context.config.attributes.get("store_id", "store")
    dialect = op.get_context().dialect.name
    for table in TABLES:
        op.add_column(table, sa.Column("store_id", STORE_ID, nullable=True))
        rows = sa.table(table, sa.column("store_id", STORE_ID))
        op.execute(rows.update().values(store_id=store_id))
    if dialect == "sqlite":
        _rebuild_sqlite()
    else:
        _rekey_in_place(dialect)
    op.create_index(
        "ix_pos_ingest_ledger_key",
        "pos_ingest_ledger",
        ["store_id", "terminal_id", "business_day", "receipt_id"],
    )
    op.execute(CHAIN_VIEW)


def _rekey_in_place(dialect: str) -> None:
    """PostgreSQL, SQL Server: the old keys go, store_id becomes NOT NULL, the new keys come."""
    op.drop_constraint("fk_pos_receipt_line_receipt", "pos_receipt_line", type_="foreignkey")
    op.drop_constraint("uq_pos_receipt_key", "pos_receipt", type_="unique")
    for table in ("pos_receipt_line", "pos_settlement"):
        _drop_primary_key(table, dialect)
    op.drop_index("ix_pos_ingest_ledger_key", table_name="pos_ingest_ledger")
    for table in TABLES:
        op.alter_column(table, "store_id", existing_type=STORE_ID, nullable=False)
    op.create_unique_constraint("uq_pos_receipt_key", "pos_receipt", RECEIPT_KEY)
    op.create_primary_key("pk_pos_receipt_line", "pos_receipt_line", [*RECEIPT_KEY, "line_no"])
    op.create_primary_key(
        "pk_pos_settlement", "pos_settlement", ["store_id", "business_day", "tenant"]
    )
    op.create_foreign_key(
        "fk_pos_receipt_line_receipt",
        "pos_receipt_line",
        "pos_receipt",
        RECEIPT_KEY,
        RECEIPT_KEY,
    )


def _drop_primary_key(table: str, dialect: str) -> None:
    if dialect == "mssql":
        # Created without a name: SQL Server named it PK__<table>__<hash>.
        op.execute(
            f"DECLARE @pk sysname = (SELECT name FROM sys.key_constraints WHERE type = 'PK' "
            f"AND parent_object_id = OBJECT_ID('{table}')); "
            f"EXEC('ALTER TABLE {table} DROP CONSTRAINT ' + QUOTENAME(@pk))"
        )
    else:
        op.drop_constraint(f"{table}_pkey", table, type_="primary")


def _rebuild_sqlite() -> None:
    """SQLite changes keys by copying a table. The lines lose their foreign key first, so the
    receipts can be rebuilt under them, then get it back on the new key."""
    with warnings.catch_warnings():
        # The copy's primary key is the new one; SQLAlchemy notes it differs from the
        # reflected columns' flags, which is the point.
        warnings.filterwarnings("ignore", "Table '_alembic_tmp_", sa.exc.SAWarning)
        _copy_sqlite_tables()


def _copy_sqlite_tables() -> None:
    with op.batch_alter_table("pos_receipt_line", recreate="always") as batch:
        batch.drop_constraint("fk_pos_receipt_line_receipt", type_="foreignkey")
    with op.batch_alter_table("pos_receipt", recreate="always") as batch:
        batch.alter_column("store_id", existing_type=STORE_ID, nullable=False)
        batch.drop_constraint("uq_pos_receipt_key", type_="unique")
        batch.create_unique_constraint("uq_pos_receipt_key", RECEIPT_KEY)
    with op.batch_alter_table("pos_receipt_line", recreate="always") as batch:
        batch.alter_column("store_id", existing_type=STORE_ID, nullable=False)
        batch.create_primary_key("pk_pos_receipt_line", [*RECEIPT_KEY, "line_no"])
        batch.create_foreign_key(
            "fk_pos_receipt_line_receipt", "pos_receipt", RECEIPT_KEY, RECEIPT_KEY
        )
    with op.batch_alter_table("pos_settlement", recreate="always") as batch:
        batch.alter_column("store_id", existing_type=STORE_ID, nullable=False)
        batch.create_primary_key("pk_pos_settlement", ["store_id", "business_day", "tenant"])
    op.drop_index("ix_pos_ingest_ledger_key", table_name="pos_ingest_ledger")
    with op.batch_alter_table("pos_ingest_ledger") as batch:
        batch.alter_column("store_id", existing_type=STORE_ID, nullable=False)


def downgrade() -> None:
    """Back to one store's central database: only possible while it holds one store's rows."""
    op.execute("DROP VIEW pos_settlement_chain")
    op.drop_index("ix_pos_ingest_ledger_key", table_name="pos_ingest_ledger")
    dialect = op.get_context().dialect.name
    if dialect == "sqlite":
        with op.batch_alter_table("pos_receipt_line", recreate="always") as batch:
            batch.drop_constraint("fk_pos_receipt_line_receipt", type_="foreignkey")
    else:
        op.drop_constraint("fk_pos_receipt_line_receipt", "pos_receipt_line", type_="foreignkey")
    old_key = RECEIPT_KEY[1:]
    with op.batch_alter_table("pos_receipt", recreate="auto") as batch:
        batch.drop_constraint("uq_pos_receipt_key", type_="unique")
        batch.drop_column("store_id")
        batch.create_unique_constraint("uq_pos_receipt_key", old_key)
    with op.batch_alter_table("pos_receipt_line", recreate="auto") as batch:
        batch.drop_constraint("pk_pos_receipt_line", type_="primary")
        batch.drop_column("store_id")
        batch.create_primary_key("pk_pos_receipt_line", [*old_key, "line_no"])
        batch.create_foreign_key("fk_pos_receipt_line_receipt", "pos_receipt", old_key, old_key)
    with op.batch_alter_table("pos_settlement", recreate="auto") as batch:
        batch.drop_constraint("pk_pos_settlement", type_="primary")
        batch.drop_column("store_id")
        batch.create_primary_key("pk_pos_settlement", ["business_day", "tenant"])
    with op.batch_alter_table("pos_ingest_ledger") as batch:
        batch.drop_column("store_id")
    op.create_index(
        "ix_pos_ingest_ledger_key",
        "pos_ingest_ledger",
        ["terminal_id", "business_day", "receipt_id"],
    )
