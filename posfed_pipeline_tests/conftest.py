"""Shared fixtures: a small store in a temp folder, and receipts to drop into it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import PosfedConfig, config_from_dict

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO_ROOT / "dat_specs" / "scon_default.json"
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


def store_config_dict(home: Path, **overrides) -> dict:
    raw = {
        "store": {
            "id": "test-store",
            "timezone": "Europe/Amsterdam",
            "partitions_start": "2026-01-01",
        },
        "paths": {"home": str(home)},
        # Fixed past dates in tests must stay acceptable whenever the suite runs.
        # Sensors tick every daemon loop: tests without the fast path wait seconds, not 30.
        "intake": {
            "stability_seconds": 0.2,
            "max_age_days": 36500,
            "catchup_interval_seconds": 4,
        },
        "dat": {"spec": str(DEFAULT_SPEC)},
        "terminals": [
            {"id": "bakery_1", "department": "10", "tenant": "Bakkerij"},
            {"id": "butcher_1", "department": "20", "tenant": "Slagerij", "allow_returns": True},
        ],
    }
    raw.update(overrides)
    return raw


def write_store_config(path: Path, home: Path, **overrides) -> Path:
    """The store TOML a user would write, for tests that run posfed's own processes."""
    raw = store_config_dict(home, **overrides)
    lines = []
    tables = [k for k, v in raw.items() if isinstance(v, dict) and k != "mappings"]
    for table in tables:
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in raw[table].items()]
    for terminal in raw["terminals"]:
        lines.append("[[terminals]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in terminal.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def open_instance_store(root: Path, monkeypatch, **overrides) -> tuple[PosfedConfig, Path]:
    """A store under ``root`` with its own Dagster instance (``root/dh``), set up as a store
    server is: folders made, central database upgraded, POSFED_CONFIG and DAGSTER_HOME set."""
    from posfed_pipeline.core.config import load_config
    from posfed_pipeline.dagster_home import render_instance_yaml

    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    config_path = write_store_config(root / "posfed.toml", root / "s", **overrides)
    monkeypatch.setenv("POSFED_CONFIG", str(config_path))
    dagster_home = root / "dh"
    render_instance_yaml(dagster_home)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    config = load_config(config_path)
    config.ensure_folders()
    central_db.upgrade_database(central_db.make_engine(config.db_url))
    return config, dagster_home


@pytest.fixture(scope="module")
def pg_database_url():
    """A fresh, uniquely named PostgreSQL database for this module, dropped afterwards."""
    import psycopg

    name = f"posfed_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5",
            autocommit=True,
        )
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is required in CI: {exc}")
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 ({exc})")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{PG_SERVER}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


def process_and_sync(config: PosfedConfig, engine, terminal, paths, **options):
    """One batch through production's sequence of stages, then the ledger's outbox into the
    central database, as the receipts run and the sync run do."""
    from posfed_pipeline.core.dat import load_spec
    from posfed_pipeline.core.stages.processing import process_batch
    from posfed_pipeline.core.stages.sync import sync_pending
    from posfed_pipeline.core.state.ledger import open_ledger

    ledger = open_ledger(config.home)
    result = process_batch(
        config, terminal, paths, ledger=ledger, spec=load_spec(config.dat_spec), **options
    )
    sync_pending(ledger, engine, config.sync)
    return result


def receipt_doc(
    receipt_id: str = "R0001",
    terminal_id: str = "bakery_1",
    department: str = "10",
    *,
    timestamp: str | None = None,
    items: list[dict] | None = None,
    total: str | None = None,
) -> dict:
    items = items or [
        {
            "barcode": "8712345678906",
            "description": "Volkorenbrood",
            "price": "2.95",
            "quantity": 1,
        },
        {"barcode": "4006381333931", "description": "Croissant", "price": "1.15", "quantity": 3},
    ]
    if total is None:
        total = str(
            sum(
                (Decimal(str(i["price"])) * Decimal(str(i["quantity"]))).quantize(Decimal("0.01"))
                for i in items
            )
        )
    return {
        "receiptId": receipt_id,
        "terminalId": terminal_id,
        "departmentCode": department,
        "items": items,
        "total": total,
        "timestamp": timestamp or datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def drop_receipt(
    inbox: Path, doc: dict | str | bytes, name: str | None = None, *, age: float = 1.0
) -> Path:
    """Write a receipt file as a POS would, its mtime ``age`` seconds in the past (settled)."""
    if isinstance(doc, dict):
        data = json.dumps(doc).encode()
        name = name or f"{doc['receiptId']}.json"
    else:
        data = doc.encode() if isinstance(doc, str) else doc
    path = inbox / name
    path.write_bytes(data)
    if age:
        past = time.time() - age
        os.utime(path, (past, past))
    return path


# Every process the suite starts inherits this marker from os.environ (tests build their
# subprocesses' environments from it), so the session's end can find what is still running,
# even a grandchild that moved to its own session and lost its parent.
SESSION_MARKER = "POSFED_TEST_SESSION"


# multiprocessing's helpers of this very process: they end with the interpreter, by design.
OWN_HELPERS = (b"multiprocessing.resource_tracker", b"multiprocessing.forkserver")


def processes_marked(name: str, value: str) -> list[int]:
    """Live processes started with ``name=value`` in their environment (never this one, nor
    its own multiprocessing helpers)."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):  # gone already, or a zombie
            continue
        if parent == os.getpid() and any(helper in cmdline for helper in OWN_HELPERS):
            continue
        found.append(int(entry.name))
    return found


def _describe(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        cmdline = "?"
    return f"{pid}: {cmdline.strip()[:200]}"


def kill_marked(name: str, value: str) -> list[str]:
    """SIGKILL every process carrying the marker; returns what was found."""
    found = [_describe(pid) for pid in processes_marked(name, value)]
    for pid in processes_marked(name, value):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found


def pytest_configure(config):
    os.environ.setdefault(SESSION_MARKER, uuid.uuid4().hex)


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


@contextmanager
def dagster_process(args: list[str], *, env: dict, log_path: Path) -> Iterator[subprocess.Popen]:
    """A command of this venv (``dagster-daemon``, ``dagster-webserver``, ``posfed demo``) in
    its own process group, output in ``log_path``; stopped as a service manager would: SIGINT,
    then SIGKILL, and then whatever it started, wherever that went (systemd stops a unit's whole
    control group; a marker in the environment plays that part here)."""
    marker = uuid.uuid4().hex
    env = {**env, "POSFED_TEST_PROCESS": marker}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name(args[0])), *args[1:]],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            deadline = time.monotonic() + 10
            while processes_marked("POSFED_TEST_PROCESS", marker) and time.monotonic() < deadline:
                time.sleep(0.25)
            # For tests that hold the command to stopping everything it started by itself.
            process.outlived = kill_marked("POSFED_TEST_PROCESS", marker)


@contextmanager
def dagster_services(
    config_path: Path, dagster_home: Path, log_dir: Path, *, warm_workers: bool = True
) -> Iterator[str]:
    """What a store server runs (posfed's warm run workers, unless ``warm_workers`` is off and
    runs fall back to fresh processes; the daemon; the webserver on 127.0.0.1 and a free port),
    the event-driven trigger off, so the terminals' sensors deliver. Yields the UI's base URL."""
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "POSFED_CONFIG": str(config_path)}
    env.pop("POSFED_HOME", None)
    env.pop("POSFED_DB_URL", None)
    port = free_port()
    workspace = str(REPO_ROOT / "workspace.yaml")
    base_url = f"http://127.0.0.1:{port}"
    with ExitStack() as stack:
        if warm_workers:
            command = ["posfed", "fastpath", "--no-trigger"]
            stack.enter_context(dagster_process(command, env=env, log_path=log_dir / "fast.log"))
        command = ["dagster-daemon", "run", "-w", workspace]
        stack.enter_context(dagster_process(command, env=env, log_path=log_dir / "daemon.log"))
        server_log = log_dir / "webserver.log"
        command = ["dagster-webserver", "-h", "127.0.0.1", "-p", str(port), "-w", workspace]
        server = stack.enter_context(dagster_process(command, env=env, log_path=server_log))
        wait_until_serving(base_url, server, server_log)
        yield base_url


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(
    base_url: str, server: subprocess.Popen, log: Path, timeout: float = 90
) -> None:
    """Until the webserver answers, or fail with its log's tail (also if it exits first)."""

    def serving():
        if server.poll() is not None:
            pytest.fail(f"the webserver exited\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base_url}/server_info", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(serving, timeout, f"the webserver at {base_url}", log)


def wait_for(predicate, timeout: float, what: str, log: Path):
    """Poll until ``predicate()`` is truthy and return it; fail with the log's tail if not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n--- {log.name} ---\n{tail}")
