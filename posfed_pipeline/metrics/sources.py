"""What ``posfed metrics`` reads beside the store's own state (``core.operations.store_metrics``):
the Dagster instance's failed runs, and how often each service was restarted.

Both only read: Dagster's public API (``DagsterInstance.get_run_records``) on the instance the
store's processes use, and the supervisor's state file (``posfed demo``) or systemd's
``NRestarts`` (``systemctl show``, production). Each reading is bounded by its caller
(``metrics.service``): a Dagster storage that hangs makes these figures stale, nothing more.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from posfed_pipeline import names
from posfed_pipeline.processes import services
from posfed_pipeline.processes.supervisor import read_state

# Failed runs fetched per query while catching up (a store's history of failures, at start).
RUNS_PAGE = 500
# Runs updated within this much of the cursor are asked for again (two runs may share a
# timestamp at a page's edge); the ones already counted are recognised by id.
RUNS_OVERLAP = timedelta(seconds=2)
# The production units (deploy/systemd/), by the names posfed demo gives the same services.
SYSTEMD_UNITS = {
    "posfed-code-server.service": "code-server",
    "posfed-fastpath.service": "fastpath",
    "posfed-dagster-webserver.service": "webserver",
    "posfed-dagster-daemon.service": "daemon",
    "posfed-metrics.service": "metrics",
}
SYSTEMCTL_TIMEOUT_SECONDS = 5.0
# posfed's jobs that are not a terminal's.
STORE_JOBS = (names.SYNC_JOB, names.RECONCILIATION_JOB, names.SETTLEMENT_JOB, names.RETENTION_JOB)


class FailedRuns:
    """Dagster runs that ended in failure, counted per job and terminal (the run's
    ``posfed/terminal`` tag; empty for store-wide jobs) as they appear: each run once, behind a
    cursor on its last update, so the counts only grow while this process runs. At start, the
    instance's whole history of failed runs is counted, a page at a time.

    posfed's jobs start at 0, receipts_job once per terminal: Prometheus's ``increase()``
    sees a series' first failure only if the series was there before it."""

    def __init__(
        self, dagster_home: Path, terminal_ids: Iterable[str] = (), *, page: int = RUNS_PAGE
    ):
        self.dagster_home = dagster_home
        self.page = page
        self._instance = None
        self._after: datetime | None = None
        self._seen: OrderedDict[str, datetime] = OrderedDict()  # ids counted near the cursor
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, str], int] = {
            (names.RECEIPTS_JOB, terminal_id): 0 for terminal_id in terminal_ids
        }
        for job in STORE_JOBS:
            self._totals[(job, "")] = 0

    def totals(self) -> dict[tuple[str, str], int]:
        """(job, terminal) -> runs failed."""
        with self._lock:
            return dict(self._totals)

    def available(self) -> bool:
        return (self.dagster_home / "dagster.yaml").is_file()

    def read(self) -> None:
        import dagster as dg

        if self._instance is None:
            self._instance = dg.DagsterInstance.from_config(str(self.dagster_home))
        overlap = RUNS_OVERLAP
        while True:
            after = None if self._after is None else self._after - overlap
            records = self._instance.get_run_records(
                filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], updated_after=after),
                order_by="update_timestamp",
                ascending=True,
                limit=self.page,
            )
            new = 0
            for record in records:
                run = record.dagster_run
                updated = record.update_timestamp.astimezone(UTC)
                self._after = updated if self._after is None else max(self._after, updated)
                if run.run_id in self._seen:
                    continue
                self._seen[run.run_id] = updated
                new += 1
                key = (run.job_name, run.tags.get(names.TERMINAL_TAG, ""))
                with self._lock:
                    self._totals[key] = self._totals.get(key, 0) + 1
            self._forget_before(self._after)
            if len(records) < self.page:
                return
            if not new:
                # A whole page of runs already counted, all within the overlap (a burst of
                # failures): asking with the overlap again would return the same page for
                # ever. Ask once past it; a run sharing the page's last instant is the price.
                if not overlap:
                    return
                overlap = timedelta(0)
            else:
                overlap = RUNS_OVERLAP

    def _forget_before(self, cursor: datetime | None) -> None:
        """Only ids within the overlap can be asked for again: the rest are forgotten."""
        if cursor is None:
            return
        while self._seen and next(iter(self._seen.values())) < cursor - RUNS_OVERLAP:
            self._seen.popitem(last=False)

    def close(self) -> None:
        if self._instance is not None:
            self._instance.dispose()
            self._instance = None


@dataclass(frozen=True)
class ServiceState:
    restarts: int
    up: bool


def supervised_services(dagster_home: Path) -> dict[str, ServiceState] | None:
    """Each service's restarts and whether it runs, from ``posfed demo``'s supervisor state
    file (None: no supervisor runs the services of this home)."""
    try:
        state = read_state(services.state_file(dagster_home))
    except (OSError, ValueError):
        return None
    supervisor_pid = (state.get("supervisor") or {}).get("pid")
    if not isinstance(supervisor_pid, int) or not _alive(supervisor_pid):
        return None  # a state file the last demo left behind
    return {
        name: ServiceState(int(service.get("restarts") or 0), service.get("state") == "running")
        for name, service in (state.get("services") or {}).items()
    }


def systemd_services(timeout: float = SYSTEMCTL_TIMEOUT_SECONDS) -> dict[str, ServiceState] | None:
    """Each posfed unit's restarts (systemd's ``NRestarts``) and whether it is active, read with
    ``systemctl show`` (None: systemd does not run this machine, or did not answer in time)."""
    if not Path("/run/systemd/system").is_dir():  # sd_booted(3)'s test
        return None
    try:
        shown = subprocess.run(
            [
                "systemctl",
                "show",
                "--property=Id,NRestarts,ActiveState,LoadState",
                "--",
                *SYSTEMD_UNITS,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if shown.returncode != 0:
        return None
    return parse_systemctl_show(shown.stdout)


def parse_systemctl_show(text: str) -> dict[str, ServiceState]:
    """``systemctl show --property=Id,NRestarts,ActiveState,LoadState`` of several units (a
    block of KEY=value lines per unit, blocks apart by an empty line), by posfed's service
    names; units not installed are left out."""
    found = {}
    for block in text.strip().split("\n\n"):
        properties = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        name = SYSTEMD_UNITS.get(properties.get("Id", ""))
        if name is None or properties.get("LoadState") == "not-found":
            continue
        try:
            restarts = int(properties.get("NRestarts") or 0)
        except ValueError:
            restarts = 0
        found[name] = ServiceState(restarts, properties.get("ActiveState") == "active")
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
