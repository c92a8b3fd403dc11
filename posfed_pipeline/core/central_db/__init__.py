"""The central database: receipts, their lines and an ingest ledger, stored idempotently.

The store server's local ledger (``core.ledger``) decides what was accepted; this package stores
its outbox in the central database (``load_outbox_rows``), as often as needed: a
delivery already held is skipped, a receipt already held with the same content is not inserted
twice, and one held with other content is refused, never overwritten. A receipt is identified by
(store, terminal, business day, receipt id): many POS reset their counters daily. Every
delivery, whatever its outcome, leaves one row in the ingest ledger (source file, content hash,
run id, when it was detected, stored and written to .dat).

The schema is created and upgraded by Alembic (``posfed db upgrade``), never by ``create_all``.
Dialects: SQLite (embedded default, WAL), PostgreSQL (psycopg 3), SQL Server (mssql+pyodbc).

Rooms: ``models`` (every table), ``errors`` (and which are worth retrying), ``engines`` (URLs,
ODBC, timeouts), ``schema`` (Alembic), ``loads`` (storing deliveries), ``queries`` (reading).
The names below are the package's API, as callers write them: ``store.make_engine(...)``.
"""

from posfed_pipeline.core.central_db.engines import (
    FREETDS_DRIVER,
    ODBC_DRIVER_18,
    build_database_url,
    database_url_from_env,
    make_engine,
)
from posfed_pipeline.core.central_db.errors import (
    DatabaseConfigError,
    DatabaseUnavailable,
    is_transient_error,
)
from posfed_pipeline.core.central_db.loads import (
    EXISTING_QUERY_CHUNK,
    CentralWrite,
    existing_hashes_query,
    load_outbox_rows,
)
from posfed_pipeline.core.central_db.models import (
    Base,
    BusinessDay,
    IngestLedgerRow,
    ReceiptLineRow,
    ReceiptRow,
    SettlementRow,
    StoreId,
)
from posfed_pipeline.core.central_db.queries import (
    LedgerEntry,
    LedgerSummary,
    as_utc,
    count_receipts,
    counts_by_terminal_day,
    ledger_entries,
    ledger_summary,
)
from posfed_pipeline.core.central_db.schema import (
    MIGRATIONS_DIR,
    downgrade_database,
    has_ledger,
    head_revision,
    revisions_behind_head,
    schema_revision,
    upgrade_database,
    upgrade_sql,
)

__all__ = [
    "EXISTING_QUERY_CHUNK",
    "FREETDS_DRIVER",
    "MIGRATIONS_DIR",
    "ODBC_DRIVER_18",
    "Base",
    "BusinessDay",
    "CentralWrite",
    "DatabaseConfigError",
    "DatabaseUnavailable",
    "IngestLedgerRow",
    "LedgerEntry",
    "LedgerSummary",
    "ReceiptLineRow",
    "ReceiptRow",
    "SettlementRow",
    "StoreId",
    "as_utc",
    "build_database_url",
    "count_receipts",
    "counts_by_terminal_day",
    "database_url_from_env",
    "downgrade_database",
    "existing_hashes_query",
    "has_ledger",
    "head_revision",
    "is_transient_error",
    "ledger_entries",
    "ledger_summary",
    "make_engine",
    "revisions_behind_head",
    "schema_revision",
    "load_outbox_rows",
    "upgrade_database",
    "upgrade_sql",
]
