"""What can go wrong with the central database, and whether trying again may help."""

from __future__ import annotations

import sqlite3

from sqlalchemy import exc as sa_exc

from posfed_pipeline.core.base.errors import PosfedError


class CentralDbError(PosfedError):
    """Something posfed refuses or cannot do with the central database (not the store's own
    ledger): unreachable, misconfigured, too slow, or without posfed's schema."""


class DatabaseUnavailable(CentralDbError):
    """The central database could not be reached or logged into; the message says where and how.

    ``transient`` is False when retrying cannot help (driver not installed, login refused, no
    such database): the operator has to fix the configuration.
    """

    def __init__(self, message: str, *, transient: bool):
        super().__init__(message)
        self.transient = transient


class DatabaseConfigError(CentralDbError, ValueError):
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
        verdict = classify_dbapi_error(orig) if orig is not None else None
        if verdict is not None:
            return verdict
        return False if type(exc).__name__ in _PERMANENT_DBAPI_CLASSES else None
    if isinstance(exc, sa_exc.TimeoutError):  # connection pool exhausted for too long
        return True
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    return classify_dbapi_error(exc)


def classify_dbapi_error(exc: BaseException) -> bool | None:
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
