"""Alembic environment: runs on the connection posfed hands over (see store.upgrade_database)."""

from alembic import context
from sqlalchemy import create_engine

from posfed_pipeline.core.central_db.models import Base

target_metadata = Base.metadata


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        # Plain `alembic` CLI use: the URL comes from the ini option or POSFED_DB_URL.
        import os

        url = os.environ.get("POSFED_DB_URL") or context.config.get_main_option("sqlalchemy.url")
        if not url:
            raise SystemExit("alembic: set POSFED_DB_URL or sqlalchemy.url")
        with create_engine(url).begin() as own_connection:
            context.configure(connection=own_connection, target_metadata=target_metadata)
            context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata)
    context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations()
