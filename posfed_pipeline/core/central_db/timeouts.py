"""Every call to the central database is bounded: nothing posfed does can hang on it.

A WAN line that drops silently, a server that stops answering mid-query, a DBA's transaction
holding a lock: each would otherwise block a caller for as long as the operating system keeps a
dead TCP connection (hours). Four layers bound that:

- the driver's own limits: connect/login timeout; PostgreSQL's ``statement_timeout``,
  ``lock_timeout`` and ``idle_in_transaction_session_timeout``; SQL Server's ``LOCK_TIMEOUT``
  and pyodbc's per-statement query timeout;
- the kernel's: TCP keepalive and ``tcp_user_timeout`` (libpq), ``KeepAlive`` (ODBC Driver 18),
  so a connection whose peer vanished is declared dead in seconds;
- the pool's: a checkout waits ``pool_checkout`` seconds at most;
- posfed's own client-side deadline (``call_deadline``) for a whole unit of work: when a
  middlebox keeps acknowledging bytes that never reach the server, no server-side or kernel
  timer fires, so at the deadline posfed shuts the connection's socket down itself (libpq) or
  interrupts it (SQLite). The call fails, is classified transient and is retried.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from posfed_pipeline.core.central_db.errors import CentralDbError


@dataclass(frozen=True)
class DbTimeouts:
    connect: float = 5.0
    statement: float = 10.0
    lock: float = 5.0
    idle_in_transaction: float = 30.0
    keepalive_idle: int = 10  # seconds of silence before the first probe
    keepalive_interval: int = 3
    keepalive_count: int = 3
    # Unacknowledged data for this long: the connection is dead (libpq's tcp_user_timeout).
    tcp_user_timeout: float = 20.0
    pool_checkout: float = 10.0


DEFAULT_TIMEOUTS = DbTimeouts()


class DeadlineExceeded(CentralDbError, TimeoutError):
    """A unit of database work outlived its deadline and was cut off (transient)."""


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def postgres_connect_args(timeouts: DbTimeouts, url: str) -> dict:
    """libpq parameters for psycopg: connect, keepalive and server-side limits."""
    settings = [
        f"-c statement_timeout={_ms(timeouts.statement)}",
        f"-c lock_timeout={_ms(timeouts.lock)}",
        f"-c idle_in_transaction_session_timeout={_ms(timeouts.idle_in_transaction)}",
        # The server's side of a dead link: a backend whose client vanished mid-transaction
        # (its COMMIT or ROLLBACK lost in a partition) goes away in seconds, with its locks.
        f"-c tcp_keepalives_idle={timeouts.keepalive_idle}",
        f"-c tcp_keepalives_interval={timeouts.keepalive_interval}",
        f"-c tcp_keepalives_count={timeouts.keepalive_count}",
    ]
    existing = make_url(url).query.get("options")
    if existing:  # the operator's own options come first and are kept
        settings.insert(0, existing if isinstance(existing, str) else " ".join(existing))
    return {
        "connect_timeout": max(1, int(timeouts.connect)),
        "keepalives": 1,
        "keepalives_idle": timeouts.keepalive_idle,
        "keepalives_interval": timeouts.keepalive_interval,
        "keepalives_count": timeouts.keepalive_count,
        "tcp_user_timeout": _ms(timeouts.tcp_user_timeout),
        "options": " ".join(settings),
    }


def odbc_keepalive(timeouts: DbTimeouts) -> dict[str, str]:
    """Connection-string keywords of Microsoft's ODBC Driver 17.4+/18 (not FreeTDS)."""
    return {
        "KeepAlive": str(timeouts.keepalive_idle),
        "KeepAliveInterval": str(timeouts.keepalive_interval),
    }


def install_mssql_limits(engine: Engine, timeouts: DbTimeouts) -> None:
    @event.listens_for(engine, "connect")
    def apply_mssql_limits(dbapi_connection, _record) -> None:
        # pyodbc: SQL_ATTR_QUERY_TIMEOUT for every statement on this connection (0: none).
        dbapi_connection.timeout = int(timeouts.statement)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET LOCK_TIMEOUT {_ms(timeouts.lock)}")
        cursor.close()


# --- the client-side deadline ------------------------------------------------------------------


class _Connections:
    """The DBAPI connections an engine has open, so a deadline can cut them off."""

    def __init__(self, engine: Engine):
        self._lock = threading.Lock()
        self._open: dict[int, object] = {}
        self.expired_threads: set[int] = set()  # whose unit of work is past its deadline
        event.listen(engine, "connect", self._add)
        for name in ("close", "close_detached", "invalidate"):
            event.listen(engine, name, self._remove)
        event.listen(engine, "do_connect", self._refuse_when_expired)

    def _refuse_when_expired(self, *_args) -> None:
        # Cut off at the deadline, the pool would open a new connection (another connect
        # timeout): a unit past its deadline gets none.
        if threading.get_ident() in self.expired_threads:
            raise DeadlineExceeded("the unit of work is past its deadline; not reconnecting")

    def _add(self, dbapi_connection, *_args) -> None:
        with self._lock:
            self._open[id(dbapi_connection)] = dbapi_connection

    def _remove(self, dbapi_connection, *_args) -> None:
        with self._lock:
            self._open.pop(id(dbapi_connection), None)

    def cut_off(self) -> int:
        with self._lock:
            connections = list(self._open.values())
        for connection in connections:
            _interrupt(connection)
        return len(connections)


def _interrupt(dbapi_connection) -> None:
    """Make a call blocked on this connection return with an error, from another thread."""
    with contextlib.suppress(Exception):
        pgconn = getattr(dbapi_connection, "pgconn", None)  # psycopg 3
        if pgconn is not None:
            # shutdown(), not close(): libpq still owns the descriptor; its blocked read
            # returns at once and it reports the connection lost.
            with socket.fromfd(pgconn.socket, socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.shutdown(socket.SHUT_RDWR)
            return
        interrupt = getattr(dbapi_connection, "interrupt", None)  # sqlite3
        if interrupt is not None:
            interrupt()
        # pyodbc offers no way in from another thread: its query timeout bounds the call.


def track_connections(engine: Engine) -> None:
    engine.posfed_connections = _Connections(engine)  # type: ignore[attr-defined]


@contextmanager
def call_deadline(engine: Engine, seconds: float, what: str) -> Iterator[None]:
    """Bound a unit of work on ``engine`` (checkout, queries, commit) to ``seconds``.

    At the deadline every connection of the engine is cut off: callers that share an engine
    across threads must not use this (posfed's sync uses its engine from one thread at a time).
    """
    connections: _Connections | None = getattr(engine, "posfed_connections", None)
    if connections is None or seconds <= 0:
        yield
        return
    expired = threading.Event()
    caller = threading.get_ident()

    def expire() -> None:
        expired.set()
        connections.expired_threads.add(caller)
        connections.cut_off()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except Exception as exc:
        if expired.is_set():
            raise DeadlineExceeded(
                f"{what}: no answer from the central database within {seconds:g} s; "
                "connection cut off"
            ) from exc
        raise
    finally:
        timer.cancel()
        timer.join()  # an expiry under way finishes before this unit's mark is cleared
        connections.expired_threads.discard(caller)
