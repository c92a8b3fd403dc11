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

``posfed headoffice`` runs a code server, a webserver and a daemon of its own, on the head
office's code location and instance (``headoffice_services``).
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
    level = "info" if verbose else "warning"
    server, env = code_server(
        dagster_home, env, "posfed_pipeline.definitions", packaged.location_name(), level
    )
    services = [server]
    if fastpath:
        command = [sys.executable, "-m", "posfed_pipeline.cli", "fastpath", "--workers"]
        services.append(Service("fastpath", [*command, str(workers)], env))
    workspace = str(packaged.code_server_workspace_file())
    services += dagster_ui_and_daemon(workspace, env, host=host, port=port, level=level)
    if metrics is not None:
        metrics_host, metrics_port = metrics
        command = [sys.executable, "-m", "posfed_pipeline.cli", "metrics"]
        services.append(
            Service(
                "metrics",
                command,
                env,
                explain_exit=lambda: listen_problem(metrics_host, metrics_port),
            )
        )
    return services


def headoffice_services(
    dagster_home: Path, env: dict[str, str], *, host: str, port: int, verbose: bool = False
) -> list[Service]:
    """``posfed headoffice``: the head office's code server, the webserver on (host, port)
    and the daemon (its schedules); no fast path. ``env`` holds DAGSTER_HOME,
    POSFED_HEADOFFICE_CONFIG and the central database's POSFED_DB_* variables."""
    level = "info" if verbose else "warning"
    module = "posfed_pipeline.headoffice.definitions"
    location = packaged.headoffice_location_name()
    server, env = code_server(dagster_home, env, module, location, level)
    workspace = str(packaged.headoffice_code_server_workspace_file())
    return [server, *dagster_ui_and_daemon(workspace, env, host=host, port=port, level=level)]


def code_server(
    dagster_home: Path, env: dict[str, str], module: str, location: str, level: str
) -> tuple[Service, dict[str, str]]:
    """The code server of ``module`` on a socket under ``dagster_home``, and the environment
    that names that socket for the workspace files (code-server.yaml) of the others."""
    socket_path = code_server_socket_path(dagster_home)
    env = {**env, CODE_SERVER_SOCKET_ENV: str(socket_path)}
    command = [sys.executable, "-m", "dagster", "api", "grpc", "--socket", str(socket_path)]
    command += ["--module-name", module, "--location-name", location, "--log-level", level]
    service = Service("code-server", command, env, ready=lambda: unix_socket_answers(socket_path))
    return service, env


def dagster_ui_and_daemon(
    workspace: str,
    env: dict[str, str],
    *,
    host: str,
    port: int,
    level: str,
    after: tuple[str, ...] = ("code-server",),
) -> list[Service]:
    """The webserver on (host, port) and the daemon, loading ``workspace``, started once the
    services ``after`` are ready."""
    python = [sys.executable, "-m"]
    return [
        Service(
            "webserver",
            [
                *python,
                *("dagster_webserver", "-h", host, "-p", str(port), "-w", workspace),
                *("--dagster-log-level", level),
            ],
            env,
            depends_on=after,
            explain_exit=lambda: listen_problem(host, port),
        ),
        Service(
            "daemon",
            # The module `dagster-daemon` runs, as `dagster dev` starts it.
            [*python, "dagster._daemon", "run", "-w", workspace, "--log-level", level],
            env,
            depends_on=after,
        ),
    ]
