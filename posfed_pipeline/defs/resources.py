"""Resources: the central database, configured from the environment in production."""

import os
from functools import cache

import dagster as dg
from sqlalchemy.engine import Engine, make_url

from posfed_pipeline.core import central_db
from posfed_pipeline.core.central_db.engines import url_without_password
from posfed_pipeline.core.config import PosfedConfig


@cache
def _engine(url: str) -> Engine:
    # One engine (one connection pool) per process and URL, shared by every run in it.
    return central_db.make_engine(url)


class CentralDbResource(dg.ConfigurableResource):
    """The central database (see docs/database.md).

    ``url`` carries no password; ``password`` comes from ``POSFED_DB_PASSWORD`` as an ``EnvVar``,
    so the Dagster UI shows the variable's name, never the secret.
    """

    url: str
    password: str | None = None

    def get_engine(self) -> Engine:
        url = make_url(self.url)
        if self.password and url.password is None:
            url = url.set(password=self.password)
        return _engine(url.render_as_string(hide_password=False))


def central_db_resource(config: PosfedConfig) -> CentralDbResource:
    return central_db_resource_for(config.db_url)


def central_db_resource_for(db_url: str) -> CentralDbResource:
    """The resource for ``db_url`` (built from POSFED_DB_URL or the POSFED_DB_* parts, or the
    embedded default); the UI shows the variables' names, never a password."""
    if "POSFED_DB_URL" in os.environ and "POSFED_DB_PASSWORD" not in os.environ:
        return CentralDbResource(url=dg.EnvVar("POSFED_DB_URL"))
    url = make_url(db_url)
    if "POSFED_DB_PASSWORD" in os.environ:
        return CentralDbResource(
            url=url_without_password(url),
            password=dg.EnvVar("POSFED_DB_PASSWORD"),
        )
    return CentralDbResource(url=db_url)


def central_db_engine(config: PosfedConfig) -> Engine:
    """The engine a run's resource gives, for work done outside a run (the fast path's sync
    passes, a worker's warm-up): Dagster resolves a resource's ``EnvVar`` only inside a run."""
    resource = central_db_resource(config)
    return CentralDbResource(
        url=_resolved(resource.url), password=_resolved(resource.password)
    ).get_engine()


def _resolved(value: str | None) -> str | None:
    return value.get_value() if isinstance(value, dg.EnvVar) else value
