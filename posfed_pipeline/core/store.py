"""The central database: receipts, their lines and an ingest ledger, stored idempotently.

The store server's local ledger (``core.ledger``) decides what was accepted; this module stores
its outbox in the central register's database (``store_deliveries``), as often as needed: a
delivery already held is skipped, a receipt already held with the same content is not inserted
twice, and one held with other content is refused, never overwritten. A receipt is identified by
(terminal, business day, receipt id): many POS reset their counters daily. Every delivery,
whatever its outcome, leaves one row in the ingest ledger (source file, content hash, run id,
when it was detected, stored and written to .dat).

The schema is created and upgraded by Alembic (``posfed db upgrade``), never by ``create_all``.
Dialects: SQLite (embedded default, WAL), PostgreSQL (psycopg 3), SQL Server (mssql+pyodbc).
"""

from __future__ import annotations

import io
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

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
    any_,
    bindparam,
    case,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    true,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import mssql, postgresql
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import Select

from posfed_pipeline.core.barcodes import MAX_SCANNED
from posfed_pipeline.core.db_timeouts import (
    DEFAULT_TIMEOUTS,
    DbTimeouts,
    install_mssql_limits,
    odbc_keepalive,
    postgres_connect_args,
    track_connections,
)
from posfed_pipeline.core.ledger import OutboxEntry, Outcome
from posfed_pipeline.core.receipt import Receipt

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Part of every key in the register: a chain's stores share it (migration 0006).
DEFAULT_STORE_ID = "store"
StoreId = String(32)

# SQL Server compiles a plain Date to DATETIME when it cannot ask the server its version (offline
# migrations); the variant keeps it a DATE everywhere.
BusinessDay = Date().with_variant(mssql.DATE(), "mssql")
Money = Numeric(14, 2)
Quantity = Numeric(14, 3)

# Concurrent loaders of the same key: the loser re-classifies against the winner's rows once.
KEY_RACE_RETRIES = 1
EXISTING_QUERY_CHUNK = 500
ODBC_DRIVER_18 = "ODBC Driver 18 for SQL Server"
FREETDS_DRIVER = "FreeTDS"
_SQLITE_BEGIN_OPTION = "posfed_sqlite_begin"


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


# --- errors ------------------------------------------------------------------------------------


class DatabaseUnavailable(Exception):
    """The central database could not be reached or logged into; the message says where and how.

    ``transient`` is False when retrying cannot help (driver not installed, login refused, no
    such database): the operator has to fix the configuration.
    """

    def __init__(self, message: str, *, transient: bool):
        super().__init__(message)
        self.transient = transient


class DatabaseConfigError(ValueError):
    """The POSFED_DB_* environment variables do not describe a usable database."""


# SQLSTATEs that mean "try again": serialization failure, deadlock, lock/statement timeout,
# server shutting down or not yet accepting connections, too many connections.
_PG_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03", "53300"}
# ODBC SQLSTATEs: connection failure/link failure, timeouts, serialization failure (deadlock).
_ODBC_TRANSIENT_SQLSTATES = {"08001", "08S01", "08004", "08007", "HYT00", "HYT01", "40001"}
# SQL Server native errors: deadlock victim, lock request timeout, Azure SQL busy/unavailable.
_MSSQL_TRANSIENT_ERRORS = ("(1205)", "(1222)", "(40501)", "(40613)", "(49918)", "(49919)")
_PERMANENT_DBAPI_CLASSES = {"IntegrityError", "DataError", "ProgrammingError", "NotSupportedError"}
# Connect failures no retry can fix: wrong database, wrong credentials, missing driver.
_PERMANENT_CONNECT_HINTS = (
    '" does not exist',  # PostgreSQL: database "x" / role "x" does not exist
    "authentication failed",
    "no pg_hba.conf entry",
    "login failed",
    "can't open lib",
    "data source name not found",
    "unable to open database file",
)


def is_transient_error(exc: BaseException) -> bool:
    """True if retrying the same work later may succeed (lock, deadlock, timeout, network).

    Permanent errors (constraint violations, bad data, bad SQL, bad configuration) return False:
    retrying them only delays the operator's fix.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        verdict = _classify_one(current)
        if verdict is not None:
            return verdict
        current = getattr(current, "orig", None) or current.__cause__ or current.__context__
    return False


def _classify_one(exc: BaseException) -> bool | None:
    """True/False when ``exc`` itself decides; None to look at what it wraps."""
    if isinstance(exc, DatabaseUnavailable):
        return exc.transient
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        orig = exc.orig
        verdict = _classify_dbapi(orig) if orig is not None else None
        if verdict is not None:
            return verdict
        return False if type(exc).__name__ in _PERMANENT_DBAPI_CLASSES else None
    if isinstance(exc, sa_exc.TimeoutError):  # connection pool exhausted for too long
        return True
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return _classify_dbapi(exc)


def _classify_dbapi(exc: BaseException) -> bool | None:
    module = type(exc).__module__ or ""
    name = type(exc).__name__
    message = str(exc).lower()
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in message:
            return True
        return False if isinstance(exc, sqlite3.OperationalError) else None
    if module.startswith("psycopg"):
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate in _PG_TRANSIENT_SQLSTATES or (sqlstate or "").startswith("08"):
            return True
        if sqlstate is None and name == "OperationalError":
            # No SQLSTATE: the connection itself failed (refused, timed out, server gone).
            return not any(hint in message for hint in _PERMANENT_CONNECT_HINTS)
        return False if name in _PERMANENT_DBAPI_CLASSES else None
    if module == "pyodbc":
        sqlstate = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
        detail = exc.args[1] if len(exc.args) > 1 else ""
        # The transient signals win over pyodbc's exception class: drivers disagree on it.
        if sqlstate in _ODBC_TRANSIENT_SQLSTATES or any(
            code in str(detail) for code in _MSSQL_TRANSIENT_ERRORS
        ):
            return True
        return False if name in _PERMANENT_DBAPI_CLASSES or sqlstate else None
    return None


# --- URLs and engines --------------------------------------------------------------------------


_DRIVERNAMES = {
    "sqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "mssql": "mssql+pyodbc",
    "sqlserver": "mssql+pyodbc",
    "mssql+pyodbc": "mssql+pyodbc",
}


def build_database_url(
    dialect: str,
    *,
    host: str | None = None,
    port: int | None = None,
    database: str | None = None,
    user: str | None = None,
    password: str | None = None,
    odbc_driver: str = ODBC_DRIVER_18,
    encrypt: bool = True,
    trust_server_certificate: bool = False,
    tds_version: str = "7.4",
) -> str:
    """A SQLAlchemy URL from its parts, every part escaped (passwords may hold ``@:/%``).

    ``dialect``: sqlite (``database`` is the file), postgresql (psycopg 3) or mssql (pyodbc,
    ``odbc_driver`` "ODBC Driver 18 for SQL Server" or "FreeTDS").
    """
    drivername = _DRIVERNAMES.get(dialect.strip().lower())
    if drivername is None:
        raise DatabaseConfigError(
            f"database dialect {dialect!r} is not one of sqlite, postgresql, mssql"
        )
    if drivername == "sqlite":
        if not database:
            raise DatabaseConfigError("a SQLite database needs a file name (POSFED_DB_NAME)")
        return URL.create("sqlite", database=database).render_as_string(hide_password=False)
    if not host or not database:
        raise DatabaseConfigError(
            f"a {dialect} database needs a host and a database name "
            "(POSFED_DB_HOST, POSFED_DB_NAME)"
        )
    query: dict[str, str] = {}
    if drivername == "mssql+pyodbc":
        query["driver"] = odbc_driver
        if odbc_driver.lower() == FREETDS_DRIVER.lower():
            # FreeTDS speaks SQL Server only with a 7.x protocol; it names encryption differently
            # and checks no certificate unless a CA file is configured in freetds.conf.
            query["TDS_Version"] = tds_version
            query["Encryption"] = "require" if encrypt else "request"
        else:
            query["Encrypt"] = "yes" if encrypt else "no"
            query["TrustServerCertificate"] = "yes" if trust_server_certificate else "no"
    url = URL.create(
        drivername,
        username=user or None,
        password=password or None,
        host=host,
        port=port,
        database=database,
        query=query,
    )
    return url.render_as_string(hide_password=False)


def database_url_from_env(environ: Mapping[str, str] | None = None, *, default: str) -> str:
    """The central database URL: ``POSFED_DB_URL`` wins, else the ``POSFED_DB_*`` parts.

    ``POSFED_DB_PASSWORD`` is added to a ``POSFED_DB_URL`` without one, so the URL can live in a
    config map and the password in a secret store.
    """
    env = os.environ if environ is None else environ
    password = env.get("POSFED_DB_PASSWORD") or None
    if env.get("POSFED_DB_URL"):
        url = make_url(env["POSFED_DB_URL"])
        if password and url.password is None:
            url = url.set(password=password)
        return url.render_as_string(hide_password=False)
    dialect = env.get("POSFED_DB_DIALECT")
    if not dialect:
        return default
    port_text = env.get("POSFED_DB_PORT") or ""
    if port_text and not port_text.isdigit():
        raise DatabaseConfigError(f"POSFED_DB_PORT={port_text!r} is not a port number")
    return build_database_url(
        dialect,
        host=env.get("POSFED_DB_HOST"),
        port=int(port_text) if port_text else None,
        database=env.get("POSFED_DB_NAME"),
        user=env.get("POSFED_DB_USER"),
        password=password,
        odbc_driver=env.get("POSFED_DB_ODBC_DRIVER") or ODBC_DRIVER_18,
        encrypt=_env_flag(env, "POSFED_DB_ENCRYPT", True),
        trust_server_certificate=_env_flag(env, "POSFED_DB_TRUST_SERVER_CERTIFICATE", False),
    )


def _env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise DatabaseConfigError(f"{name}={value!r}: use yes or no")


def make_engine(
    url: str,
    *,
    connect_timeout: float | None = None,
    timeouts: DbTimeouts = DEFAULT_TIMEOUTS,
) -> Engine:
    """An engine tuned per dialect, every call bounded (``core.db_timeouts``); connection
    failures raise ``DatabaseUnavailable``."""
    if connect_timeout is not None:
        timeouts = replace(timeouts, connect=connect_timeout)
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    pool = {"pool_pre_ping": True, "pool_timeout": timeouts.pool_checkout}
    if backend == "sqlite":
        engine = _make_sqlite_engine(url, timeouts)
    elif backend == "postgresql":
        engine = create_engine(
            url, **pool, pool_recycle=1800, connect_args=postgres_connect_args(timeouts, url)
        )
    elif backend == "mssql":
        driver = str(parsed.query.get("driver", ""))
        if driver.lower() != FREETDS_DRIVER.lower():
            keepalive = {k: v for k, v in odbc_keepalive(timeouts).items() if k not in parsed.query}
            parsed = parsed.update_query_dict(keepalive)
        # fast_executemany: pyodbc sends a whole batch of rows in one round trip.
        # timeout: pyodbc's login timeout, so an unreachable server fails in seconds.
        engine = create_engine(
            parsed,
            **pool,
            pool_recycle=1800,
            fast_executemany=True,
            connect_args={"timeout": max(1, int(timeouts.connect))},
        )
        install_mssql_limits(engine, timeouts)
    else:
        engine = create_engine(url, **pool)
    track_connections(engine)
    _explain_connect_failures(engine)
    return engine


def _make_sqlite_engine(url: str, timeouts: DbTimeouts) -> Engine:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        # The embedded default lives in POSFED_HOME, which may not exist yet.
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # timeout: how long a writer waits for another's lock (SQLite's own lock timeout).
    engine = create_engine(url, connect_args={"timeout": timeouts.lock, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        # posfed issues BEGIN itself (below): pysqlite's implicit BEGIN cannot take the write
        # lock up front, and a writer that reads before it writes must hold it from the start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers (the UI, `posfed db status`) never block the writer.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a commit is on disk before the ledger marks its deliveries as stored; with
        # NORMAL a power cut could lose rows the ledger then never sends again.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_SQLITE_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")

    return engine


def _explain_connect_failures(engine: Engine) -> None:
    @event.listens_for(engine, "handle_error")
    def _on_error(context):
        if context.connection is not None or context.is_pre_ping:
            return None  # a failure of a statement, not of connecting
        return _unavailable(engine.url, context.original_exception)


def _unavailable(url: URL, original: BaseException) -> DatabaseUnavailable:
    # pyodbc errors are (SQLSTATE, message) tuples: the message is what an operator reads.
    text = original.args[1] if type(original).__module__ == "pyodbc" else original
    detail = str(text).strip().splitlines()[0] if str(text).strip() else repr(original)
    where = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "mssql":
        driver = url.query.get("driver") or "(no driver= in the URL)"
        where += f" with ODBC driver {driver!r}"
        if "can't open lib" in detail.lower() or "data source name not found" in detail.lower():
            detail += f" (installed ODBC drivers: {', '.join(_odbc_drivers()) or 'none'})"
    verdict = _classify_dbapi(original)
    return DatabaseUnavailable(
        f"cannot connect to the central database {where}: {detail}",
        # Unrecognised connect failures are most likely the network: worth a retry.
        transient=True if verdict is None else verdict,
    )


def _odbc_drivers() -> list[str]:
    try:
        import pyodbc
    except ImportError:
        return []
    return list(pyodbc.drivers())


# --- schema ------------------------------------------------------------------------------------


def _alembic_config(output: io.StringIO | None = None):
    from alembic.config import Config

    config = Config(output_buffer=output) if output is not None else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade_database(
    engine: Engine, revision: str = "head", *, store_id: str = DEFAULT_STORE_ID
) -> None:
    """Bring the schema to ``revision`` with Alembic (idempotent). ``store_id``: the store
    that rows from before migration 0006 (the register of one store) belong to."""
    from alembic import command

    config = _alembic_config()
    config.attributes["store_id"] = store_id
    with engine.begin() as connection, _no_statement_limit(connection):
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


@contextmanager
def _no_statement_limit(connection: Connection) -> Iterator[None]:
    """A migration may build an index on a big table: lift the per-statement limit for it."""
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
        yield
    elif dialect == "mssql":
        dbapi_connection = connection.connection.dbapi_connection
        saved = dbapi_connection.timeout
        dbapi_connection.timeout = 0
        try:
            yield
        finally:
            dbapi_connection.timeout = saved
    else:
        yield


def downgrade_database(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (``"base"``: drop every posfed table)."""
    from alembic import command

    config = _alembic_config()
    with engine.begin() as connection, _no_statement_limit(connection):
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def upgrade_sql(url: str, revision: str = "head", *, store_id: str = DEFAULT_STORE_ID) -> str:
    """The upgrade as a SQL script for ``url``'s dialect, without connecting (for a DBA)."""
    from alembic import command

    output = io.StringIO()
    config = _alembic_config(output)
    config.attributes["store_id"] = store_id
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, revision, sql=True)
    return output.getvalue()


def revisions_behind_head() -> list[str]:
    """This posfed's migrations older than its newest (head), newest first.

    Migrations only add (tables, nullable columns, indexes): a register at a revision this list
    does not know was upgraded by a newer posfed, and this one still works with it."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    return [s.revision for s in script.walk_revisions()][1:]


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def schema_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def has_ledger(engine: Engine) -> bool:
    return inspect(engine).has_table(IngestLedgerRow.__tablename__)


# --- storing what the local ledger accepted ---------------------------------------------


@dataclass
class CentralWrite:
    """What one batch from the local ledger's outbox did to the central database."""

    stored: list[int] = field(default_factory=list)  # outbox seqs the central side now holds
    receipts_inserted: list[Receipt] = field(default_factory=list)
    already_held: int = 0  # deliveries stored by an earlier attempt (its acknowledgement lost)
    # seq -> why the central database cannot take it (another receipt under the same key).
    refused: dict[int, str] = field(default_factory=dict)
    key_race_retries: int = 0  # another writer inserted one of our keys meanwhile

    @property
    def line_count(self) -> int:
        return sum(len(r.items) for r in self.receipts_inserted)


def store_deliveries(
    engine: Engine, entries: Iterable[OutboxEntry], *, store_id: str = DEFAULT_STORE_ID
) -> CentralWrite:
    """Store a batch of one store's ledger deliveries in one transaction, idempotently.

    Deliveries the central database already holds (by delivery id) are skipped; an accepted
    receipt's rows are inserted unless its key is there already with the same content. A key
    held with *other* content (rows written before the ledger existed, or by another store
    server using the same terminal id) is refused, never overwritten: ``refused`` says why.
    """
    batch = list(entries)
    for attempt in range(KEY_RACE_RETRIES + 1):
        try:
            result = _store_once(engine, batch, store_id)
        except sa_exc.IntegrityError as exc:
            if attempt == KEY_RACE_RETRIES or not _is_lost_race(exc):
                raise
            continue
        result.key_race_retries = attempt
        return result
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def _write_transaction(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection:
        # SQLite: take the write lock before reading, so two writers serialize instead of
        # failing with "database is locked" when the second one tries to write.
        connection.execution_options(**{_SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        with connection.begin():
            yield connection


def _store_once(engine: Engine, batch: list[OutboxEntry], store_id: str) -> CentralWrite:
    result = CentralWrite()
    if not batch:
        return result
    with _write_transaction(engine) as connection:
        held = _existing_delivery_ids(connection, [e.delivery_id for e in batch])
        fresh = [e for e in batch if e.delivery_id not in held]
        result.already_held = len(batch) - len(fresh)
        result.stored = [e.seq for e in batch if e.delivery_id in held]

        # Held deliveries too: a resync after rows were lost here (a restore) puts them back.
        accepted = [e for e in batch if e.receipt is not None]
        keys = list(dict.fromkeys((e.terminal_id, e.business_day, e.receipt_id) for e in accepted))
        central = _existing_hashes(connection, store_id, keys)
        inserting: dict[tuple, OutboxEntry] = {}
        for entry in accepted:
            key = (entry.terminal_id, entry.business_day, entry.receipt_id)
            there = central.get(key)
            if there is not None and there != entry.content_hash and entry.delivery_id in held:
                continue  # stored long ago next to what is there now: not ours to judge again
            if there is not None and there != entry.content_hash:
                result.refused[entry.seq] = (
                    "the central database holds another receipt under this store, terminal, "
                    f"day and receipt id (content hash {there[:12]}, ours "
                    f"{entry.content_hash[:12]}); not overwritten"
                )
            elif there is None:
                inserting.setdefault(key, entry)

        loaded_at = datetime.now(UTC)
        if inserting:
            receipts = [(e.receipt, e.tenant) for e in inserting.values()]
            connection.execute(
                insert(ReceiptRow.__table__),
                [_header_row(r, tenant or "", loaded_at, store_id) for r, tenant in receipts],
            )
            connection.execute(
                insert(ReceiptLineRow.__table__),
                [row for r, _ in receipts for row in _line_rows(r, store_id)],
            )
            result.receipts_inserted = [r for r, _ in receipts]
        ledger_rows = [
            _ledger_row(e, loaded_at, store_id) for e in fresh if e.seq not in result.refused
        ]
        if ledger_rows:
            connection.execute(insert(IngestLedgerRow.__table__), ledger_rows)
        result.stored += [e.seq for e in fresh if e.seq not in result.refused]
    return result


def _is_lost_race(exc: sa_exc.IntegrityError) -> bool:
    """Did another writer store one of our receipt keys or deliveries first?"""
    message = str(exc.orig)
    return any(
        marker in message
        for marker in (
            "uq_pos_receipt_key",
            "UNIQUE constraint failed: pos_receipt.store_id",
            "ux_pos_ingest_ledger_delivery",
            "UNIQUE constraint failed: pos_ingest_ledger.delivery_id",
        )
    )


def _existing_delivery_ids(connection: Connection, delivery_ids: list[str]) -> set[str]:
    ledger = IngestLedgerRow.__table__
    found: set[str] = set()
    for start in range(0, len(delivery_ids), EXISTING_QUERY_CHUNK):
        chunk = delivery_ids[start : start + EXISTING_QUERY_CHUNK]
        found.update(
            connection.execute(
                select(ledger.c.delivery_id).where(ledger.c.delivery_id.in_(chunk))
            ).scalars()
        )
    return found


def _existing_hashes(connection: Connection, store_id: str, keys: list[tuple]) -> dict[tuple, str]:
    found: dict[tuple, str] = {}
    # Query per (terminal, day) group with a plain IN on receipt ids: portable to SQL Server,
    # which has no row-value IN; a chunk stays far below its 2,100-parameter limit.
    groups: dict[tuple[str, date], list[str]] = {}
    for terminal_id, day, receipt_id in keys:
        groups.setdefault((terminal_id, day), []).append(receipt_id)
    for (terminal_id, day), receipt_ids in groups.items():
        for start in range(0, len(receipt_ids), EXISTING_QUERY_CHUNK):
            chunk = receipt_ids[start : start + EXISTING_QUERY_CHUNK]
            query = existing_hashes_query(
                terminal_id, day, chunk, dialect=connection.dialect.name, store_id=store_id
            )
            rows = connection.execute(query)
            for receipt_id, digest in rows:
                found[(terminal_id, day, receipt_id)] = digest
    return found


def existing_hashes_query(
    terminal_id: str,
    business_day: date,
    receipt_ids: list[str],
    *,
    dialect: str = "default",
    store_id: str = DEFAULT_STORE_ID,
) -> Select:
    """Content hashes already stored for some receipt ids of one store's terminal-day."""
    header = ReceiptRow.__table__
    if dialect == "postgresql":
        # One array parameter: measured 30x faster on psycopg 3 than an IN list of 500.
        wanted = header.c.receipt_id == any_(
            bindparam("receipt_ids", receipt_ids, type_=postgresql.ARRAY(String))
        )
    else:
        wanted = header.c.receipt_id.in_(receipt_ids)
    return select(header.c.receipt_id, header.c.content_hash).where(
        header.c.store_id == store_id,
        header.c.terminal_id == terminal_id,
        header.c.business_day == business_day,
        wanted,
    )


def _header_row(
    receipt: Receipt, tenant: str, loaded_at: datetime, store_id: str = DEFAULT_STORE_ID
) -> dict:
    return {
        "store_id": store_id,
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


def _line_rows(receipt: Receipt, store_id: str = DEFAULT_STORE_ID) -> list[dict]:
    return [
        {
            "store_id": store_id,
            "terminal_id": receipt.terminal_id,
            "business_day": receipt.business_day,
            "receipt_id": receipt.receipt_id,
            "line_no": n,
            "barcode": item.barcode,
            "description": item.description,
            "price": item.price,
            "quantity": item.quantity,
            "amount": item.amount,
            "gtin": item.gtin,
            "net_weight_kg": item.weight,
            "unit_count": item.count,
        }
        for n, item in enumerate(receipt.items, start=1)
    ]


def _utc(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


def _ledger_row(entry: OutboxEntry, loaded_at: datetime, store_id: str) -> dict:
    return {
        "delivery_id": entry.delivery_id,
        "store_id": store_id,
        "terminal_id": entry.terminal_id,
        "business_day": entry.business_day,
        "receipt_id": entry.receipt_id,
        "source_file": entry.source_file,
        "content_hash": entry.content_hash,
        "run_id": entry.run_id,
        "outcome": entry.outcome.value,
        # The ledger's reason column holds 255 characters.
        "reason": entry.reason[:255] if entry.reason else None,
        "detected_at": _utc(entry.detected_at),
        "loaded_at": loaded_at,
        "dat_written_at": _utc(entry.dat_written_at),
    }


# --- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerEntry:
    terminal_id: str
    business_day: date
    receipt_id: str
    source_file: str
    content_hash: str
    run_id: str | None
    outcome: str
    reason: str | None
    detected_at: datetime | None
    loaded_at: datetime
    dat_written_at: datetime | None


def ledger_entries(
    engine: Engine,
    *,
    terminal_id: str | None = None,
    business_day: date | None = None,
    run_id: str | None = None,
    outcome: Outcome | str | None = None,
    store_id: str | None = None,
) -> list[LedgerEntry]:
    """Ledger rows, oldest first; timestamps come back timezone-aware (UTC)."""
    ledger = IngestLedgerRow.__table__
    query = select(*(ledger.c[name] for name in LedgerEntry.__dataclass_fields__)).order_by(
        ledger.c.id
    )
    for column, value in (
        (ledger.c.store_id, store_id),
        (ledger.c.terminal_id, terminal_id),
        (ledger.c.business_day, business_day),
        (ledger.c.run_id, run_id),
        (ledger.c.outcome, str(outcome) if outcome is not None else None),
    ):
        if value is not None:
            query = query.where(column == value)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [
        LedgerEntry(
            **{
                **row,
                "detected_at": _aware(row["detected_at"]),
                "loaded_at": _aware(row["loaded_at"]),
                "dat_written_at": _aware(row["dat_written_at"]),
            }
        )
        for row in rows
    ]


def _aware(value: datetime | None) -> datetime | None:
    # SQLite keeps no offset: posfed writes UTC, so a naive value read back is UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class LedgerSummary:
    deliveries: int
    duplicates: int
    conflicts: int
    dat_pending: int  # loaded (or re-delivered) but no .dat recorded yet


def ledger_summary(
    engine: Engine, store_id: str | None = None
) -> dict[tuple[str, date], LedgerSummary]:
    """Deliveries per terminal-day of one store (None: of every store)."""
    ledger = IngestLedgerRow.__table__

    def count_where(condition):
        return func.sum(case((condition, 1), else_=0))

    query = select(
        ledger.c.terminal_id,
        ledger.c.business_day,
        func.count(),
        count_where(ledger.c.outcome == Outcome.DUPLICATE.value),
        count_where(ledger.c.outcome == Outcome.CONFLICT.value),
        count_where(
            (ledger.c.outcome != Outcome.CONFLICT.value) & ledger.c.dat_written_at.is_(None)
        ),
    )
    if store_id is not None:
        query = query.where(ledger.c.store_id == store_id)
    query = query.group_by(ledger.c.terminal_id, ledger.c.business_day)
    with engine.connect() as connection:
        return {
            (terminal_id, day): LedgerSummary(int(total), int(dups), int(conflicts), int(pending))
            for terminal_id, day, total, dups, conflicts, pending in connection.execute(query)
        }


def count_receipts(
    engine: Engine, terminal_id: str, business_day: date, store_id: str | None = None
) -> int:
    """Receipts of a terminal-day in one store (None: in any store)."""
    header = ReceiptRow.__table__
    query = select(func.count()).where(
        header.c.terminal_id == terminal_id, header.c.business_day == business_day
    )
    if store_id is not None:
        query = query.where(header.c.store_id == store_id)
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


def counts_by_terminal_day(
    engine: Engine, store_id: str | None = None
) -> list[tuple[str, date, int, Decimal]]:
    """Receipts and their total per terminal-day of one store (None: of every store)."""
    header = ReceiptRow.__table__
    mine = header.c.store_id == store_id if store_id is not None else true()
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
                .where(mine)
                .group_by(header.c.terminal_id, header.c.business_day)
                .order_by(header.c.business_day, header.c.terminal_id)
            )
        ]
