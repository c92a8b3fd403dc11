"""PostgreSQL for tests: fresh databases on the local server (127.0.0.1:5432, user postgres) and
throwaway clusters of their own. Without PostgreSQL a test skips, except in CI (``CI=true``),
where it fails: the PostgreSQL tests must never silently disappear."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from posfed_dev.faults import ThrowawayPostgres

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"


@contextmanager
def fresh_databases(*names: str) -> Iterator[None]:
    """The databases ``names`` on the local server, created empty and dropped afterwards
    (their open connections too)."""
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is required in CI: {exc}")
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 ({exc})")
    with admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield
        finally:
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def throwaway_cluster() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL cluster of the test's own (``initdb`` + ``pg_ctl`` in a temp folder, on a
    free port): one a test may stop, restart or cut off; the shared server never is."""
    try:
        cluster = ThrowawayPostgres()
    except (FileNotFoundError, KeyError) as exc:  # no PostgreSQL binaries, no postgres user
        if os.environ.get("CI") == "true":
            pytest.fail(f"a throwaway PostgreSQL cluster is required in CI: {exc}")
        pytest.skip(f"cannot start a throwaway PostgreSQL cluster: {exc}")
    with cluster:
        yield cluster
