"""Shared fixtures and the suite's pytest hooks; what tests share besides fixtures is in
``posfed_pipeline_tests/support/``."""

from __future__ import annotations

import os
import sys
import time
import uuid

import pytest
from posfed_dev.browser import headless_chromium, missing_browser

from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import PosfedConfig, config_from_dict
from posfed_pipeline_tests.support.databases import PG_SERVER, fresh_databases, throwaway_cluster
from posfed_pipeline_tests.support.mail import local_smtp_server
from posfed_pipeline_tests.support.processes import SESSION_MARKER, kill_marked, processes_marked
from posfed_pipeline_tests.support.stores import store_config_dict

# test_layout.py runs pytest on a module of its own to check the hooks below.
pytest_plugins = ["pytester"]

# The fixtures that give a test PostgreSQL: such a test carries the ``postgres`` marker.
POSTGRES_FIXTURES = frozenset({"pg_database_url", "pg_databases", "pg_cluster"})
# The parameter of the fixtures that run a test on each dialect (``params=["sqlite", ...]``).
POSTGRES_PARAM = "postgresql"


@pytest.fixture(scope="module")
def pg_database_url():
    """A fresh, uniquely named PostgreSQL database for this module, dropped afterwards."""
    name = f"posfed_test_{uuid.uuid4().hex[:10]}"
    with fresh_databases(name):
        yield f"{PG_SERVER}/{name}"


@pytest.fixture
def pg_databases():
    """Two fresh databases, as in production: Dagster's storage and the central database."""
    suffix = uuid.uuid4().hex[:10]
    names = {"dagster": f"posfed_dagster_{suffix}", "register": f"posfed_register_{suffix}"}
    with fresh_databases(*names.values()):
        yield names


@pytest.fixture(scope="module")
def pg_cluster():
    """A throwaway PostgreSQL cluster for this module, which its tests may stop and cut off."""
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def config(tmp_path, monkeypatch) -> PosfedConfig:
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    cfg = config_from_dict(store_config_dict(tmp_path / "posfed"), base_dir=tmp_path)
    cfg.ensure_folders()
    return cfg


@pytest.fixture
def engine(config):
    eng = central_db.make_engine(config.db_url)
    central_db.upgrade_database(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium from the distribution, no downloaded browser or driver."""
    missing = missing_browser()
    if missing:
        message = f"{', '.join(missing)} missing (scripts/install-system-deps.sh installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    driver = headless_chromium(tmp_path / "browser")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def smtp_server():
    """A real SMTP server on 127.0.0.1: (its aiosmtpd controller, what it received)."""
    with local_smtp_server() as server:
        yield server


def pytest_configure(config):
    os.environ.setdefault(SESSION_MARKER, uuid.uuid4().hex)


def pytest_collection_modifyitems(session, config, items):
    """A test that gets PostgreSQL from a fixture must say so with the ``postgres`` marker, so
    that ``-m "not postgres"`` leaves out every one of them: refuse the run if one does not."""
    unmarked = [
        item.nodeid
        for item in items
        if (
            POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ()))
            or POSTGRES_PARAM in getattr(getattr(item, "callspec", None), "params", {}).values()
        )
        and item.get_closest_marker("postgres") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use PostgreSQL but are not marked `postgres` (pytestmark, "
            "@pytest.mark.postgres, or pytest.param(..., marks=pytest.mark.postgres)):\n  "
            + "\n  ".join(unmarked)
        )


def pytest_sessionfinish(session, exitstatus):
    """No process the suite started may outlive it: fail the session if one is left."""
    marker = os.environ[SESSION_MARKER]
    deadline = time.monotonic() + 15  # a service that is still shutting down may finish
    while processes_marked(SESSION_MARKER, marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = kill_marked(SESSION_MARKER, marker)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "processes started by the test suite outlived it (killed now):\n  " + (
            "\n  ".join(left)
        )
        if reporter:
            reporter.write_line(message, red=True)
        else:
            print(message, file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
