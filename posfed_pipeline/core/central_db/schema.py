"""The central database's schema, created and upgraded by Alembic (``posfed db upgrade``)."""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    inspect,
)
from sqlalchemy.engine import Connection, Engine

from posfed_pipeline.core.central_db.models import IngestLedgerRow
from posfed_pipeline.core.model.store import DEFAULT_STORE_ID

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _alembic_config(output: io.StringIO | None = None):
    from alembic.config import Config

    config = Config(output_buffer=output) if output is not None else Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade_database(
    engine: Engine, revision: str = "head", *, store_id: str = DEFAULT_STORE_ID
) -> None:
    """Bring the schema to ``revision`` with Alembic (idempotent). ``store_id``: the store
    that rows from before migration 0006 (the central database of one store) belong to."""
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
        dbapi_connection: Any = connection.connection.dbapi_connection  # pyodbc's: .timeout
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


@functools.cache
def revisions_behind_head() -> tuple[str, ...]:
    """This posfed's migrations older than its newest (head), newest first.

    Migrations only add (tables, nullable columns, indexes): a central database at a revision
    this list does not know was upgraded by a newer posfed, and this one still works with it."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    # Cached: reading the migration scripts cost a sync run ~10 % of its CPU, every run, and
    # they are this installed posfed's, fixed while it runs.
    return tuple(s.revision for s in script.walk_revisions())[1:]


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:  # posfed ships its migrations: there is always a head
        raise RuntimeError("posfed's migrations have no head revision")
    return head


def schema_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def has_ledger(engine: Engine) -> bool:
    return inspect(engine).has_table(IngestLedgerRow.__tablename__)
