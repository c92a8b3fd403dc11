"""posfed's and Dagster's long-running commands (daemon, webserver, warm run workers), started
and stopped as a store server's service manager does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from posfed_pipeline_tests.support.processes import (
    free_port,
    kill_marked,
    processes_marked,
    wait_for,
)
from posfed_pipeline_tests.support.repo import REPO_ROOT


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
