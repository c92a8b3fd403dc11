"""Database URLs (from the environment, ODBC for SQL Server) and engines with timeouts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from sqlalchemy import (
    create_engine,
    event,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url

from posfed_pipeline.core.central_db.errors import (
    DatabaseConfigError,
    DatabaseUnavailable,
    classify_dbapi_error,
)
from posfed_pipeline.core.central_db.timeouts import (
    DEFAULT_TIMEOUTS,
    DbTimeouts,
    install_mssql_limits,
    odbc_keepalive,
    postgres_connect_args,
    track_connections,
)

ODBC_DRIVER_18 = "ODBC Driver 18 for SQL Server"
FREETDS_DRIVER = "FreeTDS"
SQLITE_BEGIN_OPTION = "posfed_sqlite_begin"


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


def url_without_password(url: URL) -> str:
    """``url`` as text with its password left out (for a file or the UI that must not hold it).
    ``URL.set(password=None)`` keeps the password (SQLAlchemy 2.1), so the URL is made again."""
    return URL.create(
        url.drivername,
        username=url.username,
        host=url.host,
        port=url.port,
        database=url.database,
        query=url.query,
    ).render_as_string(hide_password=False)


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
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
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
    verdict = classify_dbapi_error(original)
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
