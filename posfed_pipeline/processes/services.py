"""The services of one store server, as ``posfed demo`` runs them under its supervisor
(``posfed_pipeline.processes.supervisor``); the production units in deploy/systemd/ run the same
commands under systemd.

- ``code-server``: serves the code location on a Unix socket; the webserver and the daemon load
  it from there (the packaged workspace.code-server.yaml), so either of them, or the code server
  itself, can restart without the others. Started first; the webserver and daemon once it
  answers.
- ``fastpath``: the inotify trigger and the warm run workers (``posfed fastpath``). It loads the
  code location itself: .dat files keep coming while the others restart.
- ``webserver``: the Dagster UI.
- ``daemon``: the sensors (the catch-up path), the run queue, schedules and run monitoring.
- ``metrics``: the store's figures for Prometheus (``posfed metrics``), if ``[metrics]`` is
  enabled; it only reads, so it starts last and whatever becomes of it touches nothing else.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
from pathlib import Path

from posfed_pipeline import packaged
from posfed_pipeline.processes.supervisor import Service, listen_problem, unix_socket_answers

# The workspace file names the code server's socket through this variable (and the units'
# environment sets it), so one file serves the demo and production.
CODE_SERVER_SOCKET_ENV = "POSFED_CODE_SERVER_SOCKET"
CODE_SERVER_SOCKET_NAME = "posfed-code-server.sock"
STATE_FILE_NAME = "services.json"


def code_server_socket_path(dagster_home: Path) -> Path:
    path = dagster_home.resolve() / CODE_SERVER_SOCKET_NAME
    if len(str(path)) < 100:
        return path
    # Unix socket paths are limited to ~108 bytes: deep homes get a stable short name.
    digest = hashlib.sha1(str(dagster_home.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"posfed-code-server-{digest}.sock"


def state_file(dagster_home: Path) -> Path:
    """Where the supervisor keeps each service's pid, start, restarts and last exit."""
    return dagster_home / STATE_FILE_NAME


def store_services(
    dagster_home: Path,
    env: dict[str, str],
    *,
    host: str,
    port: int,
    verbose: bool = False,
    fastpath: bool = True,
    workers: int = 2,
    metrics: tuple[str, int] | None = None,
) -> list[Service]:
    """The code server, the fast path (unless ``fastpath`` is off), the webserver on
    (host, port) and the daemon, in the order they start. ``env`` holds DAGSTER_HOME and
    POSFED_CONFIG. Dagster's info lines (every sensor tick) only if ``verbose``: the UI shows
    them. ``metrics``: (host, port) of ``posfed metrics``, if it is to run."""
    socket_path = code_server_socket_path(dagster_home)
    env = {**env, CODE_SERVER_SOCKET_ENV: str(socket_path)}
    level = "info" if verbose else "warning"
    workspace = str(packaged.code_server_workspace_file())
    python = [sys.executable, "-m"]
    services = [
        Service(
            "code-server",
            [
                *python,
                *("dagster", "api", "grpc", "--socket", str(socket_path)),
                *("--module-name", "posfed_pipeline.definitions"),
                *("--location-name", packaged.location_name(), "--log-level", level),
            ],
            env,
            ready=lambda: unix_socket_answers(socket_path),
        ),
    ]
    if fastpath:
        command = [*python, "posfed_pipeline.cli", "fastpath", "--workers", str(workers)]
        services.append(Service("fastpath", command, env))
    services += [
        Service(
            "webserver",
            [
                *python,
                *("dagster_webserver", "-h", host, "-p", str(port), "-w", workspace),
                *("--dagster-log-level", level),
            ],
            env,
            depends_on=("code-server",),
            explain_exit=lambda: listen_problem(host, port),
        ),
        Service(
            "daemon",
            # The module `dagster-daemon` runs, as `dagster dev` starts it.
            [*python, "dagster._daemon", "run", "-w", workspace, "--log-level", level],
            env,
            depends_on=("code-server",),
        ),
    ]
    if metrics is not None:
        metrics_host, metrics_port = metrics
        services.append(
            Service(
                "metrics",
                [*python, "posfed_pipeline.cli", "metrics"],
                env,
                explain_exit=lambda: listen_problem(metrics_host, metrics_port),
            )
        )
    return services
