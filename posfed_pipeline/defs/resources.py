"""Resources: the central database, configured from the environment in production."""

from functools import cache

import dagster as dg
from sqlalchemy.engine import Engine

from posfed_pipeline.core import store


@cache
def _engine(url: str) -> Engine:
    # One engine (one connection pool) per process and URL, shared by every run in it.
    return store.make_engine(url)


class CentralDbResource(dg.ConfigurableResource):
    """The central register's database. Set ``POSFED_DB_URL`` to point away from SQLite."""

    url: str

    def get_engine(self) -> Engine:
        return _engine(self.url)

    def check_schema(self) -> None:
        if store.schema_revision(self.get_engine()) is None:
            raise dg.Failure(
                description="the central database has no posfed schema: run `posfed db upgrade`",
                allow_retries=False,
            )
