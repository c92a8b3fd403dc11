"""SQL Server, without a SQL Server: what can be verified on a machine that cannot run one.

Verified here: the DDL and the load statements compile to T-SQL (mssql + pyodbc dialect), the
offline Alembic script, the ODBC connection strings for "ODBC Driver 18 for SQL Server" and
FreeTDS, that pyodbc imports with the FreeTDS driver registered, that the FreeTDS driver really
dials the host and port posfed configures, that connection failures come back fast as
``DatabaseUnavailable``, and the transient/permanent verdict on real ``pyodbc.Error`` values.
Not verified: executing anything on a live SQL Server (see docs/database.md).
"""

from __future__ import annotations

import os
import socket
import threading
from datetime import date

import pyodbc
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateIndex, CreateTable

from posfed_pipeline import cli
from posfed_pipeline.core import central_db
from posfed_pipeline.core.central_db import loads as store_loads

SQL_SERVER_URL = "mssql+pyodbc://posfed@sql.example/posfed?driver=FreeTDS"
# The dialect exactly as posfed's engine configures it (pyodbc, qmark parameters).
DIALECT = central_db.make_engine(SQL_SERVER_URL).dialect


def compiled(statement, column_keys=None, **compile_kwargs) -> str:
    options = {"column_keys": column_keys} if column_keys else {}
    return str(statement.compile(dialect=DIALECT, compile_kwargs=compile_kwargs, **options))


# --- DDL and statements ------------------------------------------------------------------------


def test_receipt_table_ddl_is_tsql():
    ddl = compiled(CreateTable(central_db.ReceiptRow.__table__))

    assert "CREATE TABLE pos_receipt (" in ddl
    assert "id INTEGER NOT NULL IDENTITY" in ddl
    assert "business_day DATE NOT NULL" in ddl
    assert "sold_at DATETIMEOFFSET NOT NULL" in ddl  # timezone-aware: the offset is kept
    assert "total NUMERIC(14, 2) NOT NULL" in ddl
    assert "tenant NVARCHAR(128) NOT NULL" in ddl
    assert (
        "CONSTRAINT uq_pos_receipt_key UNIQUE (store_id, terminal_id, business_day, receipt_id)"
        in ddl
    )
    assert "FLOAT" not in ddl and "REAL" not in ddl


def test_line_and_ledger_ddl_is_tsql():
    lines = compiled(CreateTable(central_db.ReceiptLineRow.__table__))
    ledger = compiled(CreateTable(central_db.IngestLedgerRow.__table__))
    key_index = next(i for i in central_db.IngestLedgerRow.__table__.indexes if "key" in i.name)

    assert "price NUMERIC(14, 2) NOT NULL" in lines
    assert "quantity NUMERIC(14, 3) NOT NULL" in lines
    assert "description NVARCHAR(200) NOT NULL" in lines
    assert (
        "CONSTRAINT pk_pos_receipt_line PRIMARY KEY "
        "(store_id, terminal_id, business_day, receipt_id, line_no)" in lines
    )
    assert (
        "FOREIGN KEY(store_id, terminal_id, business_day, receipt_id) REFERENCES pos_receipt"
        in lines
    )
    assert "detected_at DATETIMEOFFSET NULL" in ledger
    assert "dat_written_at DATETIMEOFFSET NULL" in ledger
    assert "run_id VARCHAR(64) NULL" in ledger
    assert compiled(CreateIndex(key_index)) == (
        "CREATE INDEX ix_pos_ingest_ledger_key ON pos_ingest_ledger "
        "(store_id, terminal_id, business_day, receipt_id)"
    )


def test_a_reserved_word_is_bracket_quoted():
    # The T-SQL quoting posfed relies on if a column ever needs it.
    assert DIALECT.identifier_preparer.quote("order") == "[order]"


def test_load_statements_are_tsql_with_qmark_parameters():
    header_columns = [c.name for c in central_db.ReceiptRow.__table__.columns if c.name != "id"]
    header_insert = compiled(insert(central_db.ReceiptRow.__table__), column_keys=header_columns)
    existing = compiled(
        central_db.existing_hashes_query("bakery_1", date(2026, 3, 14), ["R1", "R2", "R3"]),
        render_postcompile=True,
    )
    ledger = central_db.IngestLedgerRow.__table__
    ledger_columns = [c.name for c in ledger.columns if c.name != "id"]
    ledger_insert = compiled(insert(ledger), column_keys=ledger_columns)
    held = compiled(
        select(ledger.c.delivery_id).where(ledger.c.delivery_id.in_(["a", "b"])),
        render_postcompile=True,
    )

    assert header_insert.startswith("INSERT INTO pos_receipt (store_id, terminal_id, business_day,")
    assert header_insert.endswith("VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    assert existing == (
        "SELECT pos_receipt.receipt_id, pos_receipt.content_hash \n"
        "FROM pos_receipt \n"
        "WHERE pos_receipt.store_id = ? AND pos_receipt.terminal_id = ? "
        "AND pos_receipt.business_day = ? AND pos_receipt.receipt_id IN (?, ?, ?)"
    )
    assert ledger_insert.startswith("INSERT INTO pos_ingest_ledger (store_id, terminal_id,")
    assert "delivery_id" in ledger_insert and ledger_insert.count("?") == len(ledger_columns)
    assert held == (
        "SELECT pos_ingest_ledger.delivery_id \nFROM pos_ingest_ledger \n"
        "WHERE pos_ingest_ledger.delivery_id IN (?, ?)"
    )


def test_the_delivery_id_index_admits_the_rows_from_before_it():
    # SQL Server's unique index allows one NULL unless filtered: rows older than migration 0004
    # have no delivery id.
    index = next(
        i
        for i in central_db.IngestLedgerRow.__table__.indexes
        if i.name == "ux_pos_ingest_ledger_delivery"
    )
    assert compiled(CreateIndex(index)) == (
        "CREATE UNIQUE INDEX ux_pos_ingest_ledger_delivery ON pos_ingest_ledger (delivery_id) "
        "WHERE delivery_id IS NOT NULL"
    )


def test_every_sql_server_call_is_bounded():
    """ODBC Driver 18 gets TCP keepalive in its connection string; every connection gets a
    per-statement query timeout and a lock timeout when it is opened (not run here: no server)."""
    driver18 = central_db.make_engine(
        "mssql+pyodbc://posfed@sql.example/posfed?driver=ODBC+Driver+18+for+SQL+Server"
    )
    connection_string = driver18.dialect.create_connect_args(driver18.url)[0][0]
    assert "KeepAlive=10" in connection_string and "KeepAliveInterval=3" in connection_string
    assert driver18.pool.timeout() == 10  # a pool checkout waits this long at most
    freetds = central_db.make_engine(SQL_SERVER_URL)
    assert "KeepAlive" not in freetds.dialect.create_connect_args(freetds.url)[0][0]
    for engine in (driver18, freetds):
        on_connect = [fn.__name__ for fn in engine.pool.dispatch.connect]
        assert "apply_mssql_limits" in on_connect


def test_existence_queries_stay_under_the_sql_server_parameter_limit():
    ids = [f"R{n}" for n in range(central_db.EXISTING_QUERY_CHUNK)]
    query = central_db.existing_hashes_query("bakery_1", date(2026, 3, 14), ids)
    parameters = query.compile(dialect=DIALECT, compile_kwargs={"render_postcompile": True})
    assert len(parameters.positiontup) < 2100


def test_the_engine_uses_fast_executemany():
    assert DIALECT.fast_executemany is True
    assert DIALECT.paramstyle == "qmark"


def test_offline_migration_script_is_tsql():
    url = central_db.build_database_url("mssql", host="sql.example", database="posfed", user="u")

    script = central_db.upgrade_sql(url)

    assert script.startswith("BEGIN TRANSACTION;")
    assert "CREATE TABLE alembic_version" in script
    for table in ("pos_receipt", "pos_receipt_line", "pos_ingest_ledger"):
        assert f"CREATE TABLE {table} (" in script
    assert "business_day DATE NOT NULL" in script
    assert "total NUMERIC(14, 2) NOT NULL" in script
    assert "loaded_at DATETIMEOFFSET NOT NULL" in script
    assert "\nGO\n" in script  # batch separators for sqlcmd / SSMS
    assert "UPDATE alembic_version SET version_num='0002'" in script
    # 0005: the barcode column widened in place (no table rebuild), the label's facts added.
    assert "ALTER TABLE pos_receipt_line ALTER COLUMN barcode NVARCHAR(4000) NOT NULL;" in script
    assert "ALTER TABLE pos_receipt_line ADD gtin VARCHAR(14) NULL;" in script
    assert "ALTER TABLE pos_receipt_line ADD net_weight_kg NUMERIC(14, 3) NULL;" in script
    # 0006: the store joins every key; the unnamed primary keys are found by their table.
    assert "UPDATE pos_receipt SET store_id='store';" in script
    assert "OBJECT_ID('pos_receipt_line')" in script
    assert (
        "ALTER TABLE pos_receipt ADD CONSTRAINT uq_pos_receipt_key UNIQUE "
        "(store_id, terminal_id, business_day, receipt_id);" in script
    )
    assert "CREATE VIEW pos_settlement_chain AS" in script
    assert script.rstrip().endswith("COMMIT;\n\nGO")


def test_cli_prints_the_upgrade_script_for_a_dba(tmp_path, monkeypatch, capsys):
    config_file = tmp_path / "posfed.toml"
    config_file.write_text(
        '[store]\nid = "s"\n[[terminals]]\nid = "bakery_1"\ndepartment = "10"\n',
        encoding="utf-8",
    )
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    monkeypatch.setenv("POSFED_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POSFED_DB_DIALECT", "mssql")
    monkeypatch.setenv("POSFED_DB_HOST", "sql.example")
    monkeypatch.setenv("POSFED_DB_NAME", "posfed")

    assert cli.main(["--config", str(config_file), "db", "upgrade", "--sql"]) == 0

    script = capsys.readouterr().out
    assert "CREATE TABLE pos_ingest_ledger (" in script
    assert "DATETIMEOFFSET" in script


# --- URLs --------------------------------------------------------------------------------------


def connection_string(url: str) -> str:
    (odbc,), _kwargs = DIALECT.create_connect_args(make_url(url))
    return odbc


def test_url_for_odbc_driver_18():
    url = central_db.build_database_url(
        "mssql",
        host="sql01.example.com",
        port=1433,
        database="posfed",
        user="posfed_loader",
        password="p@ss;w:rd/%{}",
        trust_server_certificate=True,
    )

    assert make_url(url).password == "p@ss;w:rd/%{}"
    assert connection_string(url) == (
        "DRIVER={ODBC Driver 18 for SQL Server};Server=sql01.example.com,1433;Database=posfed;"
        "UID=posfed_loader;PWD={p@ss;w:rd/%{}}};Encrypt=yes;TrustServerCertificate=yes"
    )


def test_url_for_freetds():
    url = central_db.build_database_url(
        "mssql",
        host="sql01.example.com",
        port=1433,
        database="posfed",
        user="posfed_loader",
        password="secret",
        odbc_driver="FreeTDS",
    )

    assert connection_string(url) == (
        "DRIVER={FreeTDS};Server=sql01.example.com,1433;Database=posfed;"
        "UID=posfed_loader;PWD=secret;Encryption=require;TDS_Version=7.4"
    )


def test_url_from_environment_for_sql_server():
    env = {
        "POSFED_DB_DIALECT": "mssql",
        "POSFED_DB_HOST": "sql01.example.com",
        "POSFED_DB_NAME": "posfed",
        "POSFED_DB_USER": "posfed_loader",
        "POSFED_DB_PASSWORD": "s3cret!",
        "POSFED_DB_ODBC_DRIVER": "FreeTDS",
        "POSFED_DB_ENCRYPT": "no",
    }
    url = central_db.database_url_from_env(env, default="-")
    assert connection_string(url) == (
        "DRIVER={FreeTDS};Server=sql01.example.com;Database=posfed;"
        "UID=posfed_loader;PWD=s3cret!;Encryption=request;TDS_Version=7.4"
    )


# --- the driver and failing fast ---------------------------------------------------------------


def test_pyodbc_imports_and_freetds_is_registered():
    # make test / .ci/run install unixODBC and tdsodbc: the driver must be there.
    assert "FreeTDS" in pyodbc.drivers()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.timeout(30)
def test_a_refused_connection_fails_fast_with_a_clear_message():
    url = central_db.build_database_url(
        "mssql",
        host="127.0.0.1",
        port=closed_port(),
        database="posfed",
        user="sa",
        password="secret",
        odbc_driver="FreeTDS",
    )
    engine = central_db.make_engine(url, connect_timeout=3)

    with pytest.raises(central_db.DatabaseUnavailable) as unavailable:
        central_db.schema_revision(engine)

    message = str(unavailable.value)
    assert "cannot connect to the central database" in message
    assert "127.0.0.1" in message and "'FreeTDS'" in message
    assert "secret" not in message
    assert central_db.is_transient_error(unavailable.value)


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_a_server_that_never_answers_times_out_at_login():
    """FreeTDS dials the configured host and port, and gives up after the login timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted = threading.Event()
    held: list[socket.socket] = []

    def accept_and_stay_silent() -> None:
        connection, _ = listener.accept()
        held.append(connection)
        accepted.set()

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    url = central_db.build_database_url(
        "mssql",
        host="127.0.0.1",
        port=listener.getsockname()[1],
        database="posfed",
        user="sa",
        password="secret",
        odbc_driver="FreeTDS",
    )
    engine = central_db.make_engine(url, connect_timeout=2)
    try:
        with pytest.raises(central_db.DatabaseUnavailable) as unavailable:
            central_db.schema_revision(engine)
    finally:
        for connection in held:
            connection.close()
        listener.close()

    assert accepted.is_set(), "FreeTDS never dialled the configured host and port"
    assert "127.0.0.1" in str(unavailable.value)
    assert central_db.is_transient_error(unavailable.value)


def test_a_missing_odbc_driver_is_a_permanent_clear_error():
    url = central_db.build_database_url(
        "mssql", host="127.0.0.1", database="posfed", user="sa", odbc_driver="No Such Driver 99"
    )
    engine = central_db.make_engine(url)

    with pytest.raises(central_db.DatabaseUnavailable) as unavailable:
        central_db.schema_revision(engine)

    message = str(unavailable.value)
    assert "'No Such Driver 99'" in message
    assert "installed ODBC drivers: " in message and "FreeTDS" in message
    assert not central_db.is_transient_error(unavailable.value)


# --- transient or permanent, on real pyodbc errors ---------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        pyodbc.OperationalError(
            "08001",
            "[08001] [Microsoft][ODBC Driver 18 for SQL Server]TCP Provider: Error code "
            "0x2749 (10057) (SQLDriverConnect)",
        ),
        pyodbc.OperationalError(
            "08S01",
            "[08S01] [FreeTDS][SQL Server]Unable to connect: Adaptive Server is "
            "unavailable or does not exist (20009) (SQLDriverConnect)",
        ),
        pyodbc.OperationalError("HYT00", "[HYT00] [FreeTDS][SQL Server]Login timeout expired"),
        pyodbc.OperationalError("HYT01", "[HYT01] [Microsoft]Query timeout expired (0)"),
        pyodbc.Error(
            "40001",
            "[40001] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Transaction "
            "(Process ID 52) was deadlocked on lock resources with another process and has been "
            "chosen as the deadlock victim. Rerun the transaction. (1205) (SQLExecDirectW)",
        ),
        # Some drivers report the deadlock victim under another class: the code decides.
        pyodbc.ProgrammingError(
            "40001",
            "[40001] [FreeTDS][SQL Server]Transaction (Process ID 61) was deadlocked "
            "on lock resources with another process (1205) (SQLExecDirectW)",
        ),
    ],
    ids=["08001", "08S01", "HYT00", "HYT01", "1205", "1205-as-programming-error"],
)
def test_pyodbc_transient_errors(error):
    assert central_db.is_transient_error(error)
    wrapped = sa_exc.DBAPIError.instance("INSERT INTO pos_receipt ...", {}, error, pyodbc.Error)
    assert central_db.is_transient_error(wrapped)


@pytest.mark.parametrize(
    "error",
    [
        pyodbc.IntegrityError(
            "23000",
            "[23000] [FreeTDS][SQL Server]Violation of UNIQUE KEY constraint "
            "'uq_pos_receipt_key'. Cannot insert duplicate key in object 'dbo.pos_receipt'. "
            "(2627) (SQLExecDirectW)",
        ),
        pyodbc.DataError(
            "22003",
            "[22003] [FreeTDS][SQL Server]Arithmetic overflow error converting numeric "
            "to data type numeric. (8115) (SQLExecDirectW)",
        ),
        pyodbc.ProgrammingError(
            "42S02",
            "[42S02] [FreeTDS][SQL Server]Invalid object name 'pos_receipt'. (208) "
            "(SQLExecDirectW)",
        ),
        pyodbc.InterfaceError(
            "28000", "[28000] [FreeTDS][SQL Server]Login failed for user 'posfed'. (18456)"
        ),
    ],
    ids=["unique-2627", "overflow-8115", "missing-table-208", "login-failed-18456"],
)
def test_pyodbc_permanent_errors(error):
    assert not central_db.is_transient_error(error)
    wrapped = sa_exc.DBAPIError.instance("INSERT INTO pos_receipt ...", {}, error, pyodbc.Error)
    assert not central_db.is_transient_error(wrapped)


def test_a_sql_server_key_violation_is_recognised_as_a_lost_race():
    violation = sa_exc.DBAPIError.instance(
        "INSERT INTO pos_receipt ...",
        {},
        pyodbc.IntegrityError(
            "23000",
            "[23000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Violation of "
            "UNIQUE KEY constraint 'uq_pos_receipt_key'. Cannot insert duplicate key in object "
            "'dbo.pos_receipt'. (2627) (SQLExecDirectW)",
        ),
        pyodbc.Error,
    )
    assert isinstance(violation, sa_exc.IntegrityError)
    assert store_loads._is_lost_race(violation)
    delivery = sa_exc.DBAPIError.instance(
        "INSERT INTO pos_ingest_ledger ...",
        {},
        pyodbc.IntegrityError(
            "23000",
            "[23000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Cannot insert "
            "duplicate key row in object 'dbo.pos_ingest_ledger' with unique index "
            "'ux_pos_ingest_ledger_delivery'. (2601) (SQLExecDirectW)",
        ),
        pyodbc.Error,
    )
    assert store_loads._is_lost_race(delivery)


# --- a live SQL Server, when one is given ------------------------------------------------------

LIVE_URL = os.environ.get("POSFED_TEST_MSSQL_URL")


@pytest.mark.skipif(
    not LIVE_URL,
    reason="no SQL Server here: set POSFED_TEST_MSSQL_URL to a database the tests may empty "
    "(docs/deployment.md, 'SQL Server')",
)
@pytest.mark.mssql
def test_a_live_sql_server_takes_the_schema_and_loads_receipts_once(config):
    """What the rest of this module cannot: the migrations and the loads, executed."""
    from datetime import datetime

    from posfed_pipeline.core.state.ledger import open_ledger
    from posfed_pipeline_tests.support.pipeline import process_and_sync
    from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc

    engine = central_db.make_engine(LIVE_URL)
    central_db.downgrade_database(engine, "base")  # the database is the tests': start empty
    try:
        central_db.upgrade_database(engine)
        assert central_db.schema_revision(engine) == central_db.head_revision()
        terminal = config.terminal("bakery_1")
        when = datetime.now(terminal.timezone).replace(microsecond=0).isoformat()
        paths = [
            drop_receipt(terminal.inbox, receipt_doc(f"M{n}", timestamp=when)) for n in range(3)
        ]
        process_and_sync(config, engine, terminal, paths)
        # Sent again (a resync after an outage): stored once.
        open_ledger(config.home).resync()
        process_and_sync(config, engine, terminal, [])
        [(terminal_id, _day, count, total)] = central_db.counts_by_terminal_day(engine)
        assert (terminal_id, count, str(total)) == ("bakery_1", 3, "19.20")
    finally:
        central_db.downgrade_database(engine, "base")
        engine.dispose()
