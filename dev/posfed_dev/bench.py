"""``posfed bench``: file close → .dat latency, losses, duplicates and CPU, naive vs posfed.

Each benchmark builds a fresh store in a temp folder (N terminals, embedded SQLite central
database, its own DAGSTER_HOME), starts the real processes and drives them as POS terminals
would: every receipt is written straight into an inbox (open, write, close).

- ``posfed``: the tuned instance (deploy/dagster.dev.yaml: warm-worker run launcher, queued
  coordinator with a per-terminal limit, consolidated event log) with ``dagster-daemon run``
  (sensors = the catch-up path, run monitoring) and ``posfed fastpath`` (inotify trigger and
  warm run workers).
- ``naive``: the plain pattern (dagster-latency notes): sensors only, ``DefaultRunCoordinator``,
  the default run launcher (a fresh process per run), default SQLite storage.

Central database: the embedded SQLite (default) or, with ``--central postgres``, a PostgreSQL
cluster of the benchmark's own (``initdb`` in its temp folder) reached through a TCP fault
proxy. ``--outage SECONDS`` makes that database unreachable for so long, ``--outage-at`` seconds
into the run, in one of three ways (``--outage-kind``: the link goes silent, the server stops,
or another session holds an exclusive lock on the receipt tables); the report gives the .dat
latency before, during and after it, how long the central database took to hold every receipt
once it was back, and what was lost or duplicated in the .dat folder and in the database.

A store that is not alone: ``--load N`` runs N CPU-bound processes beside it (their CPU apart);
``--backlog N`` lands N files at once in the last terminal's inbox while the others sell, and
times their drain; ``--profile DIR`` samples every Python process with py-spy during the
measured window and writes DIR/cpu-table.md.

Latency is measured from the receipt's ``close()`` (``time.time()`` right after it) to the
.dat file's appearance on disk: the .dat is written as temp + fsync + rename, and the rename
stamps the file's ctime, which the harness reads (kernel time, so a busy harness does not
inflate the figure). CPU is the user+sys time of every process the benchmark started and all
their descendants (daemon, code server, run processes, fast-path service and its workers),
start-up and shutdown included; the harness itself (simulator and watcher) is reported apart.
Per receipt it is also given without start-up, and without start-up and shutdown (the steady
cost: a store's services run for days, so both are one-offs).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as dt_time
from pathlib import Path

from posfed_dev.faults import FaultProxy, ThrowawayPostgres, free_port, hold_lock
from posfed_pipeline import names, packaged
from posfed_pipeline.core import central_db, dat
from posfed_pipeline.core.config import PosfedConfig, load_config
from posfed_pipeline.core.model.receipt import Receipt, canonical_json
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.demo.tills import ReceiptSimulator

MODES = ("naive", "posfed")
# (terminal id prefix, department code, tenant), as in the demo store (posfed.toml).
KINDS = [
    ("bakery", "10", "Bakkerij"),
    ("butcher", "20", "Slagerij"),
    ("deli", "30", "Delicatessen"),
    ("fishmonger", "40", "Viswinkel"),
    ("greengrocer", "50", "Groenteboer"),
    ("cheese", "60", "Kaashandel"),
    ("patisserie", "70", "Patisserie"),
    ("wine", "80", "Wijnhandel"),
    ("flowers", "90", "Bloemist"),
    ("coffee", "95", "Koffiebar"),
]
STORE_TOML = """\
[store]
id = "{store_id}"
timezone = "Europe/Amsterdam"
partitions_start = "2026-01-01"

[paths]
home = "{home}"

[intake]
stability_seconds = {stability}
catchup_interval_seconds = {catchup}

[dat]
spec = "{spec}"

# A port of its own: stores of several benchmarks or tests may run at once (posfed demo's
# supervisor starts posfed metrics; the bench's own processes do not).
[metrics]
listen = "127.0.0.1:{metrics_port}"
"""
TERMINAL_TOML = """
[[terminals]]
id = "{id}"
department = "{department}"
tenant = "{tenant}"
receipt_id_prefix = "{prefix}"
"""
# The plain Dagster pattern: sensors only, runs launched at once, a fresh process per run,
# default (per-run) SQLite storage. A benchmark profile, not a deploy profile.
NAIVE_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""
ACTIVE_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
PR_SET_CHILD_SUBREAPER = 36
# The bench's store keeps [intake] max_age_days at its default: older receipts are refused.
MAX_SIMULATED_DAYS = PosfedConfig.max_age_days
RSS_WARM_AFTER_SECONDS = 60.0  # into the load: the memory of processes that have warmed up
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class BenchSettings:
    terminals: int = 20
    rate: float = 1.0
    duration: float = 60.0
    burst: bool = False
    workers: int = 2
    keep: bool = False
    seed: int | None = 1
    stall_timeout: float = 60.0  # stop waiting when no .dat appeared for this long
    drain_timeout: float = 900.0  # and in any case this long after the last drop
    progress: bool = True
    daemon_nice: int = 0  # run the daemon (sensors, catch-up path) at a lower CPU priority
    stability_seconds: float = 0.3  # the store's intake setting (the sensors wait this long)
    instance_yaml: Path | None = None  # posfed mode: this profile instead of dagster.dev.yaml
    # posfed mode: "embedded" (deploy/dagster.dev.yaml, SQLite) or "production"
    # (deploy/dagster.prod.yaml on a PostgreSQL cluster of the benchmark's own, same machine)
    instance: str = "embedded"
    central: str = "sqlite"  # or "postgres": a cluster of the benchmark's own, behind a proxy
    outage: float = 0.0  # seconds the central database is unreachable (postgres only)
    outage_at: float = 60.0  # seconds into the run
    outage_kind: str = "partition"  # partition | stop | lock
    catch_up_timeout: float = 600.0  # how long to wait for the central database afterwards
    delivery: str = "local"  # local | smb | sftp: how the tills write their files
    # One terminal in trouble, the others measured: "flood" (files waiting in its inbox) or
    # "hung" (its inbox on a network mount whose server stops answering).
    isolate: str | None = None
    flood_files: int = 50_000
    watch: str = "events"  # every terminal's [delivery] watch: "poll" as on a network mount
    # Seconds of no receipts at all, once everything is up, before the load: the idle cost.
    idle: float = 0.0
    # Trading days compressed into the run: the receipts' timestamps run from this many days
    # ago to now, so the business day turns (new partitions, .dat folders, ledger days) and
    # memory is sampled at every simulated midnight. 0: every receipt is stamped now.
    days: int = 0
    # CPU-bound processes beside the store at normal priority, as a server's other services;
    # their CPU is reported apart, never in the store's figures.
    load: int = 0
    # Files that land at once in the last terminal's inbox when measuring starts (a share back
    # after an outage), while the others sell at --rate: how long they take to drain.
    backlog: int = 0
    profile: Path | None = None  # py-spy every Python process in the window; a CPU table here


@dataclass
class Sent:
    terminal_id: str
    receipt_id: str
    file_name: str
    dat_path: Path
    closed: float
    dat_at: float | None = None


# --- the store --------------------------------------------------------------------------------


def terminal_specs(count: int) -> list[tuple[str, str, str, str]]:
    """``count`` terminals named like the demo's: bakery_1, bakery_2, butcher_1, ...; with
    their receipt-number prefixes (the number, all of one width, so none starts another)."""
    numbers = [i % 2 + 1 + 2 * (i // (2 * len(KINDS))) for i in range(count)]
    width = len(str(max(numbers, default=1)))
    specs = []
    for i, number in enumerate(numbers):
        kind, department, tenant = KINDS[(i // 2) % len(KINDS)]
        specs.append((f"{kind}_{number}", department, tenant, f"{number:0{width}d}"))
    return specs


OUTAGE_KINDS = ("partition", "stop", "lock")


class BenchCentral:
    """The benchmark's central database: the embedded SQLite, or a PostgreSQL cluster of its
    own that posfed reaches through a fault proxy (the harness itself connects directly)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.cluster: ThrowawayPostgres | None = None
        self.proxy: FaultProxy | None = None
        self.posfed_url: str | None = None  # None: the store's embedded default
        self.direct_url: str | None = None
        self._lock: contextlib.ExitStack | None = None
        if kind == "postgres":
            self.cluster = ThrowawayPostgres(fsync=True)
            self.cluster.create()
            self.cluster.create_database("central")
            self.proxy = FaultProxy("127.0.0.1", self.cluster.port)
            self.proxy.start()
            self.posfed_url = self.cluster.url("central", port=self.proxy.port)
            self.direct_url = self.cluster.url("central")

    def fault(self, kind: str) -> None:
        if kind == "partition":
            self.proxy.partition()
        elif kind == "stop":
            self.cluster.stop("fast")
        else:
            self._lock = contextlib.ExitStack()
            self._lock.enter_context(hold_lock("127.0.0.1", self.cluster.port, "central"))

    def heal(self, kind: str) -> None:
        if kind == "partition":
            self.proxy.heal()
        elif kind == "stop":
            self.cluster.start()
        elif self._lock is not None:
            self._lock.close()
            self._lock = None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
        if self.proxy is not None:
            self.proxy.stop()
        if self.cluster is not None:
            self.cluster.destroy()


INSTANCES = ("embedded", "production")


class BenchDagsterStorage:
    """The production profile's Dagster database: a PostgreSQL cluster of the benchmark's own on
    this machine (fsync on), as a store server with its database beside it."""

    def __init__(self):
        self.cluster = ThrowawayPostgres(fsync=True)
        try:
            self.cluster.create()
            self.cluster.create_database("dagster")
        except BaseException:
            self.cluster.destroy()
            raise

    @property
    def env(self) -> dict[str, str]:
        return {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.cluster.port),
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": "dagster",
        }

    @property
    def server_pid(self) -> int:
        return int((self.cluster.data / "postmaster.pid").read_text().split()[0])

    def close(self) -> None:
        self.cluster.destroy()


DELIVERIES = ("local", "smb", "sftp")
ISOLATIONS = ("flood", "hung")


def make_store(
    root: Path,
    terminals: int,
    stability_seconds: float = 0.3,
    db_url: str | None = None,
    extra: dict[str, dict] | None = None,
    catchup_interval: float = 30.0,
    store_id: str = "bench",
) -> PosfedConfig:
    """``extra``: more settings of some terminals (terminal id -> settings)."""
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "posfed.toml"
    text = STORE_TOML.format(
        store_id=store_id,
        home=root / "state",
        spec=packaged.default_dat_spec(),
        stability=stability_seconds,
        catchup=catchup_interval,
        metrics_port=free_port(),
    )
    for terminal_id, department, tenant, prefix in terminal_specs(terminals):
        text += TERMINAL_TOML.format(
            id=terminal_id, department=department, tenant=tenant, prefix=prefix
        )
        for key, value in (extra or {}).get(terminal_id, {}).items():
            text += f"{key} = {json.dumps(value)}\n"
    config_path.write_text(text)
    config = load_config(config_path)
    config.ensure_folders()
    central_db.upgrade_database(
        central_db.make_engine(db_url or config.db_url), store_id=config.store_id
    )
    return config


def write_instance_yaml(dagster_home: Path, mode: str, profile: Path | None = None) -> None:
    from posfed_pipeline.dagster_home import render_instance_yaml

    if mode == "posfed" and profile is not None:
        dagster_home.mkdir(parents=True, exist_ok=True)
        text = profile.read_text().replace("${DAGSTER_HOME}", str(dagster_home.resolve()))
        (dagster_home / "dagster.yaml").write_text(text)
    elif mode == "posfed":
        render_instance_yaml(dagster_home)
    else:
        dagster_home.mkdir(parents=True, exist_ok=True)
        (dagster_home / "dagster.yaml").write_text(NAIVE_YAML)


# --- processes and their CPU --------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, str, int, float] | None:
    """(parent pid, state, session id, CPU seconds of the process and its reaped children)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return int(fields[1]), fields[0], int(fields[3]), ticks / CLOCK_TICKS


def _rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def _role(pid: int) -> str:
    """What a process is, from its command line, in a few words."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    line = " ".join(words)
    for marker, role in (
        ("multiprocessing.spawn", "run worker"),
        ("multiprocessing.resource_tracker", "resource tracker"),
        ("posfed demo", "supervisor"),
        ("posfed_pipeline.cli demo", "supervisor"),
        ("api grpc", "code server"),
        ("dagster-daemon", "daemon"),
        ("dagster._daemon", "daemon"),
        ("fastpath", "fast path"),
        ("dagster-webserver", "webserver"),
        ("dagster_webserver", "webserver"),
    ):
        if marker in line:
            return role
    return Path(words[0]).name if words and words[0] else "?"


def _all_procs() -> dict[int, tuple[int, str, int, float]]:
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat:
                procs[int(entry)] = stat
    return procs


def _descendants(roots: list[int], procs: dict[int, tuple[int, str, int, float]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _children_rusage() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _set_subreaper(on: bool) -> None:
    """Orphaned descendants are re-parented to us (not init), so their CPU is still counted."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _child_setup(nice: int) -> None:
    # A harness started in the background (``cmd &``) ignores SIGINT, and its children would
    # inherit that: give them back the default, so SIGINT stops them cleanly.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if nice:
        os.nice(nice)


class Processes:
    """The processes one benchmark started, each in its own process group."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root = root
        self.env = env
        self.started: dict[str, subprocess.Popen] = {}
        # Processes counted but not started (nor stopped) here: a database server (name -> pid).
        self.tracked: dict[str, int] = {}
        self._logs = []
        self.cpu_before = _children_rusage()
        # CPU of children that are not the store's (co-located load, py-spy), reaped by us: the
        # kernel adds it to our children's total, which the store's figures are taken from.
        self.cpu_apart = 0.0

    def start(self, name: str, command: list[str], nice: int = 0) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("ab")  # a restarted process appends
        self._logs.append(log)
        process = subprocess.Popen(
            command,
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: _child_setup(nice),
        )
        self.started[name] = process
        return process

    def dead(self) -> list[str]:
        return [name for name, p in self.started.items() if p.poll() is not None]

    def _tree(self, procs: dict[int, tuple[int, str, int, float]]) -> set[int]:
        """Our processes: those started, their sessions, and all their descendants."""
        sessions = {p.pid for p in self.started.values()}
        roots = [pid for pid, (_, _, sid, _) in procs.items() if sid in sessions]
        return (set(roots) | _descendants(roots, procs)) & set(procs)

    def track(self, name: str, pid: int) -> None:
        self.tracked[name] = pid

    def _tracked_cpu(self, procs: dict[int, tuple[int, str, int, float]]) -> float:
        return sum(
            procs[pid][3]
            for name in self.tracked
            for pid in self.session_pids(name, procs)
            if pid in procs
        )

    def tree_cpu(self) -> float:
        """CPU seconds so far of everything started (live, zombie and reaped descendants) and
        of the tracked processes."""
        procs = _all_procs()
        live = sum(procs[pid][3] for pid in self._tree(procs))
        reaped = _children_rusage() - self.cpu_before - self.cpu_apart
        return live + self._tracked_cpu(procs) + reaped

    def reap_apart(self, process: subprocess.Popen) -> float:
        """Wait for a child that is not the store's; its CPU seconds, kept out of the store's."""
        if process.returncode is not None:
            return 0.0
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except ChildProcessError:  # reaped already: nothing more to learn
            process.returncode = -1
            return 0.0
        process.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime
        self.cpu_apart += cpu
        return cpu

    def pids(self) -> dict[int, str]:
        """Every live process started or tracked (sessions and descendants): pid -> name."""
        procs = _all_procs()
        return {
            pid: name
            for name in [*self.started, *self.tracked]
            for pid in self.session_pids(name, procs)
        }

    def session_pids(self, name: str, procs: dict | None = None) -> set[int]:
        """The live processes of one started process's session, and all their descendants."""
        procs = _all_procs() if procs is None else procs
        if name in self.tracked:
            root = self.tracked[name]
            return ({root} & set(procs)) | _descendants([root], procs)
        process = self.started.get(name)
        if process is None:
            return set()
        tree = {pid for pid, (_, _, sid, _) in procs.items() if sid == process.pid}
        return tree | _descendants(list(tree), procs)

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds so far per started process (its session: itself and its descendants)."""
        procs = _all_procs()
        return {
            name: sum(procs[pid][3] for pid in self.session_pids(name, procs) if pid in procs)
            for name in [*self.started, *self.tracked]
        }

    def rss_by_process(self) -> dict[str, float]:
        """Resident memory in MB per started process (its session, descendants included)."""
        procs = _all_procs()
        return {
            name: sum(_rss_bytes(pid) for pid in self.session_pids(name, procs)) / 2**20
            for name in [*self.started, *self.tracked]
        }

    def rss_by_pid(self) -> dict[str, float]:
        """Resident memory in MB of every process started, one by one ("name/role/pid")."""
        procs = _all_procs()
        return {
            f"{name}/{_role(pid)}/{pid}": _rss_bytes(pid) / 2**20
            for name in [*self.started, *self.tracked]
            for pid in sorted(self.session_pids(name, procs))
        }

    def reap_orphans(self) -> None:
        """Reap descendants re-parented to us (we are their subreaper) once they exit."""
        ours = {p.pid for p in self.started.values()}
        me = os.getpid()
        procs = _all_procs()
        for pid in self._tree(procs):
            ppid, state, _, _ = procs[pid]
            if ppid == me and pid not in ours and state == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def stop(self) -> float:
        """Stop everything started (SIGINT to each group, SIGKILL after a timeout); total CPU
        seconds, the tracked processes' so far included."""
        tracked_cpu = self._tracked_cpu(_all_procs())
        for process in self.started.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        for process in self.started.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # What is left (a worker that ignored SIGINT, a process in a group of its own): by id.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.reap_orphans()
            left = self._tree(_all_procs())
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM if deadline - time.monotonic() > 5 else 9)
            time.sleep(0.2)
        self.reap_orphans()
        for log in self._logs:
            log.close()
        return _children_rusage() - self.cpu_before - self.cpu_apart + tracked_cpu

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# A busy loop that ends with the harness: were the harness killed outright (SIGKILL), no orphan
# would go on burning the machine's CPU.
BUSY_LOOP = """\
import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""


class CoLocatedLoad:
    """``--load N``: CPU-bound processes beside the store at normal priority, each in a session
    of its own, as a store server's other services. Not among the store's processes: their CPU
    is measured apart."""

    def __init__(self, count: int, processes: Processes):
        self.processes = processes
        self.started = time.monotonic()
        self.stopped: float | None = None
        self.cpu_seconds: float | None = None
        self.busy: list[subprocess.Popen] = []
        for _ in range(count):
            self.busy.append(
                subprocess.Popen(
                    [sys.executable, "-c", BUSY_LOOP],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                    preexec_fn=lambda: _child_setup(0),
                )
            )

    def stop(self) -> float:
        """Stop them all; their CPU seconds."""
        if self.cpu_seconds is None:
            for process in self.busy:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            self.cpu_seconds = sum(self.processes.reap_apart(p) for p in self.busy)
            self.stopped = time.monotonic()
        return self.cpu_seconds

    @property
    def seconds(self) -> float:
        return (self.stopped or time.monotonic()) - self.started


# Frames every stack of a thread or a spawned process begins with: 100 % each, saying nothing.
GENERIC_FRAME_FILES = (
    "threading.py",
    "runpy.py",
    "multiprocessing/spawn.py",
    "multiprocessing/process.py",
    "concurrent/futures/thread.py",
)
TOP_FUNCTIONS = 15
PROFILE_TABLE = "cpu-table.md"
PROFILE_RATE = 50  # samples per second


def _frame_key(frame: str) -> tuple[str, str]:
    """(function, file) of a py-spy frame ``function (file:line)``."""
    name, _, where = frame.rpartition(" (")
    if not name:
        return frame, ""
    return name, where.rstrip(")").rsplit(":", 1)[0]


def _generic(function: str, file: str) -> bool:
    return function == "<module>" or file.endswith(GENERIC_FRAME_FILES)


def top_functions(raw: str, top: int = TOP_FUNCTIONS) -> tuple[int, list[tuple[float, str, str]]]:
    """py-spy's collapsed stacks (``--format raw``): the samples, and the ``top`` functions by
    inclusive share (of all samples, a function counted once per stack it is in)."""
    total = 0
    inclusive: dict[tuple[str, str], int] = {}
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        # Once per stack, outermost first (dict, not set: equal shares rank callers first).
        for key in dict.fromkeys(_frame_key(frame) for frame in stack.split(";")):
            if not _generic(*key):
                inclusive[key] = inclusive.get(key, 0) + int(count)
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    return total, [(n / total, function, file) for (function, file), n in ranked]


def _is_python(pid: int) -> bool:
    try:
        return Path(os.readlink(f"/proc/{pid}/exe")).name.startswith("python")
    except OSError:
        return False


class Profiler:
    """``--profile DIR``: py-spy on every Python process the benchmark started, for the measured
    window; then DIR/cpu-table.md, their CPU in the window and where it went."""

    def __init__(self, folder: Path, processes: Processes, log_folder: Path, seconds: float):
        self.folder = folder
        self.processes = processes
        self.started = time.monotonic()
        self.elapsed: float | None = None
        self.cpu_seconds = 0.0  # py-spy's own
        procs = _all_procs()
        # pid -> (role, CPU seconds at the window's start)
        self.targets = {
            pid: (_role(pid), procs[pid][3])
            for pid in sorted(processes.pids())
            if pid in procs and _is_python(pid)
        }
        self.cpu_after: dict[int, float] = {}
        self.said: dict[int, str] = {}  # py-spy's last word on each (its log goes with the run)
        self.logs = log_folder
        log_folder.mkdir(parents=True, exist_ok=True)
        py_spy = _py_spy()
        self.spies: dict[int, subprocess.Popen] = {}
        for pid, (role, _) in self.targets.items():
            with (log_folder / f"py-spy-{pid}.log").open("wb") as log:
                self.spies[pid] = subprocess.Popen(
                    [
                        py_spy,
                        "record",
                        "--format",
                        "raw",
                        "--rate",
                        str(PROFILE_RATE),
                        "--nonblocking",  # never pauses the process it samples
                        # An upper bound: the window's end stops it (SIGINT: it writes what it has).
                        "-d",
                        str(int(seconds) + 1),
                        "-p",
                        str(pid),
                        "-o",
                        str(self.output(pid, role)),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def output(self, pid: int, role: str) -> Path:
        return self.folder / f"{role.replace(' ', '-')}-{pid}.txt"

    def stop(self) -> None:
        """The window's end: each process's CPU so far; py-spy stopped (it writes its file)."""
        if self.elapsed is not None:
            return
        self.elapsed = time.monotonic() - self.started
        procs = _all_procs()
        self.cpu_after = {pid: procs[pid][3] for pid in self.targets if pid in procs}
        for spy in self.spies.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(spy.pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        for spy in self.spies.values():
            while (stat := _proc_stat(spy.pid)) is not None and stat[1] != "Z":
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(spy.pid, signal.SIGKILL)
                    break
                time.sleep(0.05)
            self.cpu_seconds += self.processes.reap_apart(spy)
        for pid in self.spies:
            log = self.logs / f"py-spy-{pid}.log"
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            said = [line for line in lines if line.startswith("Error") or "Samples:" in line]
            self.said[pid] = (said or ["no output"])[0].removeprefix("py-spy> ")

    def table(self, title: str) -> str:
        """The markdown section of one run: each process's CPU in the window, its top functions."""
        rows = []
        for pid, (role, before) in self.targets.items():
            path = self.output(pid, role)
            raw = path.read_text(errors="replace") if path.exists() else ""
            samples, top = top_functions(raw)
            cpu = self.cpu_after[pid] - before if pid in self.cpu_after else None
            rows.append((cpu if cpu is not None else -1.0, pid, role, samples, top, path))
        rows.sort(key=lambda r: -r[0])
        lines = [
            f"## {title}",
            "",
            f"Window {self.elapsed:.1f} s (from the first receipt of the measurement to the last "
            f".dat waited for); py-spy at {PROFILE_RATE} Hz, non-blocking, on every Python "
            f"process the benchmark started; py-spy's own CPU, {self.cpu_seconds:.1f} s, is not "
            "counted. CPU is user+sys from /proc (a process's reaped children included). A "
            "sample is a thread py-spy found busy: on a CPU, or waiting on the disk (an fsync in "
            "a commit), so shares are of busy time, not of CPU alone.",
            "",
            "| process | pid | CPU s in window | cores | py-spy samples | raw stacks |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for cpu, pid, role, samples, _, path in rows:
            figures = f"{cpu:.2f} | {cpu / self.elapsed:.3f}" if cpu >= 0 else "- | -"
            lines.append(f"| {role} | {pid} | {figures} | {samples} | {path.name} |")
        for _, pid, role, samples, top, _ in rows:
            lines += ["", f"### {role} (pid {pid})", ""]
            if not samples:
                lines.append(f"No samples (py-spy: {self.said.get(pid, 'not run')}).")
                continue
            lines += ["| inclusive share | function | file |", "|---:|---|---|"]
            lines += [f"| {share:.1%} | `{fn}` | {file} |" for share, fn, file in top]
        return "\n".join(lines) + "\n"


def _py_spy() -> str:
    """py-spy beside this Python (the dev extra installs it there), or on the PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    found = shutil.which("py-spy")
    if found is None:
        raise FileNotFoundError("py-spy not found: pip install 'py-spy>=0.3' (make installs it)")
    return found


# --- measuring --------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: list[float]) -> dict:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "mean": statistics.fmean(values) if values else None,
    }


class DatWatcher:
    """Finds each expected .dat file; its ctime (set by the rename) is its time on disk."""

    def __init__(self):
        self._lock = threading.Lock()
        self.sent: list[Sent] = []
        self._pending: list[Sent] = []
        self.last_found = time.monotonic()

    def expect(self, item: Sent) -> None:
        with self._lock:
            self.sent.append(item)
            self._pending.append(item)

    def poll(self) -> int:
        with self._lock:
            pending = list(self._pending)
        found = []
        for item in pending:
            try:
                stat = os.stat(item.dat_path)
            except FileNotFoundError:
                continue
            item.dat_at = stat.st_ctime_ns / 1e9
            found.append(item)
        return self._found(found)

    def poll_listed(self) -> int:
        """As ``poll``, for thousands of files pending at once: each .dat folder is listed, and
        only the files now in it are stat-ed (a stat per pending file, ten times a second,
        would take the harness a core the store needs)."""
        with self._lock:
            pending = list(self._pending)
        by_folder: dict[Path, list[Sent]] = {}
        for item in pending:
            by_folder.setdefault(item.dat_path.parent, []).append(item)
        found = []
        for folder, items in by_folder.items():
            try:
                present = set(os.listdir(folder))
            except FileNotFoundError:
                continue
            for item in items:
                if item.dat_path.name in present:
                    with contextlib.suppress(FileNotFoundError):
                        item.dat_at = os.stat(item.dat_path).st_ctime_ns / 1e9
                        found.append(item)
        return self._found(found)

    def _found(self, found: list[Sent]) -> int:
        if found:
            self.last_found = time.monotonic()
            with self._lock:
                done = {id(i) for i in found}
                self._pending = [i for i in self._pending if id(i) not in done]
        return len(found)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def latencies(self) -> list[float]:
        with self._lock:
            return [i.dat_at - i.closed for i in self.sent if i.dat_at is not None]


def write_receipt(terminal: Terminal, receipt: Receipt) -> tuple[str, float]:
    """Write as a POS does: open, write, close; returns (file name, time right after close)."""
    name = f"{receipt.receipt_id}.json"
    fd = os.open(terminal.inbox / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, canonical_json(receipt).encode("utf-8"))
    finally:
        os.close(fd)
    return name, time.time()


class Run:
    """One benchmark of one mode in its own temp store."""

    def __init__(self, mode: str, settings: BenchSettings):
        self.mode = mode
        self.settings = settings
        self.root = Path(tempfile.mkdtemp(prefix="pfb-", dir="/tmp"))
        self.central = BenchCentral(settings.central)
        self.dagster_storage: BenchDagsterStorage | None = None
        self.servers = contextlib.ExitStack()  # the tills' SMB/SFTP server, a hung share
        try:
            self._prepare(mode, settings)
        except BaseException:  # nothing started here outlives a failed set-up
            self.servers.close()
            self.central.close()
            if self.dagster_storage is not None:
                self.dagster_storage.close()
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _prepare(self, mode: str, settings: BenchSettings) -> None:
        self.hung_proxy: FaultProxy | None = None
        extra = {t[0]: {"watch": settings.watch} for t in terminal_specs(settings.terminals)}
        if settings.isolate == "hung":
            extra.update(self._hung_share())
        self.config = make_store(
            self.root,
            settings.terminals,
            settings.stability_seconds,
            self.central.posfed_url,
            extra=extra,
            # naive: the plain pattern, a sensor per terminal ticking every daemon loop; posfed:
            # the product's default, the sensors only catching what the trigger left.
            catchup_interval=4 if mode == "naive" else 30.0,
        )
        # The terminal in trouble (the last one) is not driven: the others are measured. So is
        # the one whose backlog drains (the last one too; --backlog goes without --isolate).
        self.isolated = self.config.terminals[-1] if settings.isolate else None
        self.backlog_terminal = self.config.terminals[-1] if settings.backlog else None
        self.driven = [
            t for t in self.config.terminals if t not in (self.isolated, self.backlog_terminal)
        ]
        self.central_url = self.central.direct_url or self.config.db_url
        self.outage_window: tuple[float, float] | None = None  # (start, end), time.time()
        self.central_complete_at: float | None = None
        self.spec = dat.load_spec(self.config.dat_spec)
        self.dagster_home = self.dagster_home_of(self.config)
        profile = settings.instance_yaml
        if mode == "posfed" and profile is None and settings.instance == "production":
            self.dagster_storage = BenchDagsterStorage()
            profile = packaged.instance_profile_file("prod")
        write_instance_yaml(self.dagster_home, mode, profile)
        env = {
            **os.environ,
            "DAGSTER_HOME": str(self.dagster_home),
            "POSFED_CONFIG": str(self.config.config_path),
        }
        if self.dagster_storage is not None:
            env.update(self.dagster_storage.env)
            os.environ.update(self.dagster_storage.env)  # this process reads the instance too
        for name in ("POSFED_HOME", "POSFED_DB_URL", "POSFED_DB_PASSWORD"):
            env.pop(name, None)
        if self.central.posfed_url:
            env["POSFED_DB_URL"] = self.central.posfed_url
        self.processes = Processes(self.root, env)
        if self.dagster_storage is not None:
            self.processes.track("dagster-pg", self.dagster_storage.server_pid)
        self.simulator = ReceiptSimulator(self.driven, seed=settings.seed)
        self.deliver = self._start_delivery(settings.delivery)
        self.watcher = DatWatcher()
        self.backlog_watcher: DatWatcher | None = None
        self.backlog_landed: float | None = None  # time.time() of its first file in the inbox
        self.selling_ended: float | None = None  # time.time()
        self.load: CoLocatedLoad | None = None
        self.profiler: Profiler | None = None
        self.instance = None
        self.pending_max = 0
        self.pool_queue_max = 0
        self.rss_warm: dict[str, float] | None = None
        self.rss_by_simulated_day: list[dict] = []
        self.idle_report: dict | None = None
        self.report: dict = {}

    # --- set-up -----------------------------------------------------------------------------

    def _hung_share(self) -> dict[str, dict]:
        """The last terminal's inbox: a folder of an SFTP server, mounted with sshfs through a
        fault proxy (partitioned once measuring starts), listed by polling."""
        from posfed_dev.terminal_servers import SftpServer, SshfsMount

        terminal_id = terminal_specs(self.settings.terminals)[-1][0]
        nas = self.root / "nas" / terminal_id
        nas.mkdir(parents=True)
        server = self.servers.enter_context(SftpServer(None, start="/"))
        self.hung_proxy = self.servers.enter_context(FaultProxy("127.0.0.1", server.port))
        mount = self.root / "mnt" / terminal_id / "inbox"
        # It stays hung for the whole run (sshfs would otherwise give up after 15 s and
        # answer with errors, an easier case).
        self.servers.enter_context(
            SshfsMount(server, str(nas), mount, port=self.hung_proxy.port, give_up_after=3600)
        )
        return {terminal_id: {"inbox": str(mount), "watch": "poll"}}

    def _start_delivery(self, delivery: str):
        """How a receipt reaches the inbox: (terminal, name, bytes) -> the moment it was
        complete (after close, or rename)."""
        from posfed_dev import terminal_servers as ts

        if delivery == "smb":
            samba = self.servers.enter_context(ts.SambaServer({t.id: t.inbox for t in self.driven}))
            caches: dict[str, dict] = {}  # one SMB connection per till
            return lambda t, name, data: ts.smb_deliver(
                samba, t.id, name, data, "plain", connection_cache=caches.setdefault(t.id, {})
            )
        if delivery == "sftp":
            server = self.servers.enter_context(ts.SftpServer(None, start="/"))
            sessions: dict[str, object] = {}  # one SFTP session per till

            def upload(terminal: Terminal, name: str, data: bytes) -> float:
                if terminal.id not in sessions:
                    sftp = self.servers.enter_context(server.client())
                    sftp.chdir(str(terminal.inbox))
                    sessions[terminal.id] = sftp
                return ts.sftp_deliver(sessions[terminal.id], name, data, "plain")

            return upload
        return None  # local: write_receipt

    def _write_waiting_files(
        self, folder: Path, terminal: Terminal, count: int, prefix: str
    ) -> list[tuple[Path, Receipt]]:
        """``count`` valid receipt files of ``terminal`` in ``folder``, written a minute ago (as
        files a till wrote while nobody took them): their paths and receipts."""
        old = time.time() - 60
        written = []
        for n in range(count):
            path = folder / f"{prefix}{n:06d}.json"
            receipt = self.simulator.make_receipt(terminal)
            path.write_text(canonical_json(receipt))
            os.utime(path, (old, old))
            written.append((path, receipt))
        return written

    def _stage_backlog(self) -> list[tuple[Path, Sent]]:
        """The backlog's files, written beside the inbox (same file system) before measuring,
        each with the .dat it is to become."""
        terminal = self.backlog_terminal
        staging = self.root / "backlog" / terminal.id
        staging.mkdir(parents=True)
        staged = []
        for path, receipt in self._write_waiting_files(
            staging, terminal, self.settings.backlog, "backlog"
        ):
            dat_path = self.config.dat_dir / (
                dat.render_receipt(receipt, terminal, self.spec).relative_path
            )
            staged.append((path, Sent(terminal.id, receipt.receipt_id, path.name, dat_path, 0.0)))
        self.backlog_watcher = DatWatcher()
        return staged

    def _land_backlog(self, staged: list[tuple[Path, Sent]]) -> None:
        """The backlog lands: every file renamed into the inbox at once, as a share whose
        files waited (or a till that stored them while the link was down) delivers them. Each
        rename is an IN_MOVED_TO, as a till's own rename; the drain is timed from the first."""
        inbox = self.backlog_terminal.inbox
        self.backlog_landed = time.time()
        for path, item in staged:
            os.rename(path, inbox / path.name)
            item.closed = time.time()
            self.backlog_watcher.expect(item)
        self.backlog_watcher.last_found = time.monotonic()
        self._say(f"{len(staged)} files landed in {self.backlog_terminal.id}'s inbox (backlog)")

    def _trouble(self) -> None:
        """Put the isolated terminal in trouble, right before measuring."""
        if self.settings.isolate == "flood":
            self._write_waiting_files(
                self.isolated.inbox, self.isolated, self.settings.flood_files, "flood"
            )
            self._say(f"{self.settings.flood_files} files waiting in {self.isolated.id}'s inbox")
        elif self.settings.isolate == "hung":
            self.hung_proxy.partition()
            self._say(f"{self.isolated.id}'s share stopped answering")

    def socket_path(self) -> Path:
        from posfed_pipeline.fastpath import launcher

        saved = os.environ.get("DAGSTER_HOME")
        os.environ["DAGSTER_HOME"] = str(self.dagster_home)
        try:
            return launcher.default_socket_path()
        finally:
            if saved is None:
                os.environ.pop("DAGSTER_HOME", None)
            else:
                os.environ["DAGSTER_HOME"] = saved

    def pool_stats(self) -> dict | None:
        from posfed_pipeline.fastpath import launcher

        try:
            return launcher.ask_pool({"op": "stats"}, self._socket, timeout=1.0)
        except launcher.PoolDidNotAnswer:
            return None

    def start(self) -> None:
        import dagster as dg

        self._socket = self.socket_path()
        # Create the instance's storage before the processes start: two processes creating a
        # fresh SQLite storage at once stamp its schema twice (alembic: "more than one head").
        self.instance = dg.DagsterInstance.from_config(str(self.dagster_home))
        self.instance.get_runs_count()
        self.start_processes()
        self._wait(self._sensors_ticking, 180, "every terminal's sensor to tick")
        if self.mode == "posfed":
            workers = self.settings.workers
            self._wait(
                lambda: (self.pool_stats() or {}).get("ready") == workers,
                120,
                f"{workers} warm run workers",
            )
        # One receipt end to end before measuring: the whole path is up (not counted).
        terminal = self.config.terminals[0]
        receipt = self.simulator.make_receipt(terminal)
        self._send(terminal, receipt)
        self.watcher = DatWatcher()  # not counted
        warm_dat = (
            self.config.dat_dir / dat.render_receipt(receipt, terminal, self.spec).relative_path
        )
        self._wait(warm_dat.exists, 180, f"the warm-up receipt's .dat {warm_dat}")
        self._wait(
            lambda: (terminal.id, receipt.receipt_id) in self._central_times(),
            180,
            "the warm-up receipt in the central database",
        )
        self._wait(lambda: self.active_runs() == 0, 60, "the warm-up runs to finish")
        self.runs_before = {r.run_id for r in self.instance.get_runs()}
        self.cpu_ready = self.processes.tree_cpu()

    def dagster_home_of(self, config: PosfedConfig) -> Path:
        """The Dagster instance's home folder: one of the run's own."""
        return self.root / "dh"

    def start_processes(self) -> None:
        """The store's processes: the daemon and, for posfed, the fast path."""
        self.start_daemon()
        if self.mode == "posfed":
            self.start_fastpath()

    def start_daemon(self) -> None:
        daemon = str(Path(sys.executable).with_name("dagster-daemon"))
        workspace = packaged.workspace_file()
        if self.mode == "posfed":
            # As a store server runs it (posfed demo, the systemd units): a code server of its
            # own, which the daemon loads over its socket. (With the plain workspace the
            # daemon starts a code server itself, and a fresh one every 60 s.)
            from posfed_pipeline.processes import services

            server, env = services.code_server(
                self.dagster_home,
                dict(self.processes.env),
                "posfed_pipeline.definitions",
                packaged.location_name(),
                "warning",
            )
            self.processes.env.update(env)
            self.processes.start("code server", server.command)
            self._wait(server.ready, 120, "the code server")
            workspace = packaged.code_server_workspace_file()
        self.processes.start(
            "daemon", [daemon, "run", "-w", str(workspace)], nice=self.settings.daemon_nice
        )

    def start_fastpath(self) -> None:
        """The inotify trigger and the warm run workers (one process and its workers)."""
        self.processes.start(
            "fastpath",
            [
                sys.executable,
                "-m",
                "posfed_pipeline.cli",
                "fastpath",
                "--workers",
                str(self.settings.workers),
            ],
        )

    def _sensors_ticking(self) -> bool:
        from posfed_pipeline.fastpath.dagster_internals import InstigatorType

        states = self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        ticked = sum(
            1
            for s in states
            if self.instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=1)
        )
        return ticked >= len(self.config.terminals)

    def active_runs(self) -> int:
        import dagster as dg

        statuses = [dg.DagsterRunStatus(s) for s in ACTIVE_STATUSES]
        return self.instance.get_runs_count(filters=dg.RunsFilter(statuses=statuses))

    def _wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = self.processes.dead()
            if dead:
                raise RuntimeError(
                    f"{', '.join(dead)} exited while waiting for {what}:\n"
                    + "\n".join(self.processes.log_tail(n) for n in dead)
                )
            try:
                if predicate():
                    return
            except Exception:  # the instance or socket is not there yet
                pass
            time.sleep(0.25)
        raise RuntimeError(
            f"timed out after {timeout:.0f}s waiting for {what} ({self.mode}; logs in "
            f"{self.root})\n{self.processes.log_tail(next(iter(self.processes.started)))}"
        )

    # --- driving ----------------------------------------------------------------------------

    def _send(self, terminal: Terminal, receipt: Receipt) -> None:
        if self.deliver is None:
            name, closed = write_receipt(terminal, receipt)
        else:
            name = f"{receipt.receipt_id}.json"
            closed = self.deliver(terminal, name, canonical_json(receipt).encode("utf-8"))
        rendered = dat.render_receipt(receipt, terminal, self.spec)
        self.watcher.expect(
            Sent(
                terminal.id,
                receipt.receipt_id,
                name,
                self.config.dat_dir / rendered.relative_path,
                closed,
            )
        )

    def drive_rate(self) -> None:
        rate, duration = self.settings.rate, self.settings.duration
        count = max(1, round(rate * duration))
        start = time.monotonic()
        stamp = self._simulated_moments(count)
        i = 0
        while i < count or self._backlog_draining(start + count / rate):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            terminal = self.simulator.random.choice(self.simulator.terminals)
            when = stamp(i) if stamp and i < count else None
            if when is not None:
                self._sample_at_midnight(when, i)
            self._send(terminal, self.simulator.make_receipt(terminal, when))
            i += 1

    def _backlog_draining(self, planned_end: float) -> bool:
        """``--backlog``: the others sell on past --duration until it is drained, while its
        .dat files keep coming (--stall-timeout), for at most --drain-timeout more."""
        backlog = self.backlog_watcher
        if backlog is None or not backlog.pending or self.processes.dead():
            return False
        now = time.monotonic()
        return (
            now - backlog.last_found <= self.settings.stall_timeout
            and now - planned_end <= self.settings.drain_timeout
        )

    def _simulated_moments(self, count: int):
        """``--days``: receipt i's timestamp, from ``days`` days ago (midnight) to now."""
        if not self.settings.days:
            return None
        now = datetime.now(self.config.timezone)
        first = datetime.combine(
            now.date() - timedelta(days=self.settings.days), dt_time(), self.config.timezone
        )
        span = now - first
        return lambda i: first + span * (i / count)

    def _sample_at_midnight(self, when: datetime, sent: int) -> None:
        day = when.date().isoformat()
        if not self.rss_by_simulated_day or self.rss_by_simulated_day[-1]["day"] != day:
            self.rss_by_simulated_day.append(
                {
                    "day": day,
                    "sent": sent,
                    "rss_mb": self.processes.rss_by_process(),
                    "rss_mb_by_pid": self.processes.rss_by_pid(),
                }
            )

    def drive_burst(self) -> None:
        terminals = list(self.driven)
        receipts = [self.simulator.make_receipt(t) for t in terminals]
        barrier = threading.Barrier(len(terminals))

        def one(terminal: Terminal, receipt: Receipt) -> None:
            barrier.wait()
            self._send(terminal, receipt)

        threads = [
            threading.Thread(target=one, args=pair)
            for pair in zip(terminals, receipts, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _progress_loop(self, stop: threading.Event, started: float) -> None:
        tty = sys.stdout.isatty()
        last_line = last_sample = last_backlog = 0.0
        while not stop.wait(0.1):
            self.watcher.poll()
            if self.backlog_watcher is not None and time.monotonic() - last_backlog >= 0.5:
                last_backlog = time.monotonic()
                self.backlog_watcher.poll_listed()
            pending = self.watcher.pending
            self.pending_max = max(self.pending_max, pending)
            now = time.monotonic()
            if self.mode == "posfed" and now - last_sample >= 0.25:
                last_sample = now
                stats = self.pool_stats() or {}
                self.pool_queue_max = max(self.pool_queue_max, stats.get("queued", 0))
            if self.rss_warm is None and now - started >= RSS_WARM_AFTER_SECONDS:
                # Every process has run receipts by now (imports done, pools filled): growth
                # from here to the end is what a day of trading would add.
                self.rss_warm = self.processes.rss_by_process()
            if now - last_line < (0.5 if tty else 10.0):
                continue
            last_line = now
            self.processes.reap_orphans()
            if self.settings.progress:
                lat = self.watcher.latencies()
                p50 = percentile(lat, 50)
                p95 = percentile(lat, 95)
                line = (
                    f"[{self.mode}] {now - started:5.0f}s sent {len(self.watcher.sent)} "
                    f"done {len(lat)} pending {pending}"
                    + (f" p50 {p50:.2f}s p95 {p95:.2f}s" if lat else "")
                    + self._backlog_progress()
                )
                print(("\r" + line.ljust(78)) if tty else line, end="" if tty else "\n", flush=True)
        self.watcher.poll()
        if self.backlog_watcher is not None:
            self.backlog_watcher.poll_listed()

    def _backlog_progress(self) -> str:
        if self.backlog_watcher is None:
            return ""
        total = self.settings.backlog
        return f" backlog {total - self.backlog_watcher.pending}/{total}"

    def measure_idle(self, seconds: float) -> dict:
        """CPU (in cores) and memory of every process while no receipt arrives at all."""
        self._say(f"idle: {seconds:g} s without receipts")
        before, started = self.processes.cpu_by_process(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = self.processes.cpu_by_process(), time.monotonic() - started
        cores = {name: (after[name] - before.get(name, 0.0)) / elapsed for name in after}
        return {
            "seconds": elapsed,
            "cores": sum(cores.values()),
            "cores_by_process": cores,
            "rss_mb_by_process": self.processes.rss_by_process(),
        }

    def measure(self) -> None:
        if self.settings.isolate:
            self._trouble()
        staged = self._stage_backlog() if self.settings.backlog else []
        if self.settings.profile is not None:
            # Its window: from here to the last .dat waited for (stragglers included).
            self.profiler = Profiler(
                self.settings.profile,
                self.processes,
                self.root / "py-spy",
                (0 if self.settings.burst else self.settings.duration)
                + self.settings.drain_timeout
                + self.settings.stall_timeout,
            )
        self.load_start = os.getloadavg()
        self.cpu_harness_start = time.process_time()
        started = time.monotonic()
        stop = threading.Event()
        progress = threading.Thread(target=self._progress_loop, args=(stop, started), daemon=True)
        progress.start()
        outage = None
        if self.settings.outage:
            outage = threading.Thread(target=self._outage, args=(started,), daemon=True)
            outage.start()
        try:
            if staged:
                self._land_backlog(staged)
            if self.settings.burst:
                self.drive_burst()
            else:
                self.drive_rate()
            self.last_drop = time.monotonic()
            self.selling_ended = time.time()
            # Stragglers: until all are in, no .dat appeared for stall_timeout, or drain_timeout.
            self.watcher.last_found = time.monotonic()
            while self.watcher.pending or (self.backlog_watcher and self.backlog_watcher.pending):
                now = time.monotonic()
                last_found = max(
                    self.watcher.last_found,
                    self.backlog_watcher.last_found if self.backlog_watcher else 0.0,
                )
                if now - last_found > self.settings.stall_timeout:
                    break
                if now - self.last_drop > self.settings.drain_timeout:
                    break
                if self.processes.dead():
                    break
                time.sleep(0.2)
        finally:
            stop.set()
            progress.join()
            if self.profiler is not None:
                self.profiler.stop()
            if self.settings.progress and sys.stdout.isatty():
                print()
        if outage is not None:
            outage.join()
        self._wait_for_central()
        self.load_end = os.getloadavg()
        self.elapsed = time.monotonic() - started
        # Let the runs finish (the .dat is written before the run reports success), and the
        # checkout's recording runs come and finish: their CPU is the receipts' too.
        self._wait_for_recording()
        deadline = time.monotonic() + 60
        while self.active_runs() and time.monotonic() < deadline:
            time.sleep(0.5)

    def _wait_for_recording(self) -> None:
        if self.mode != "posfed":
            return
        try:
            from posfed_pipeline.core.state.checkout_journal import (
                CheckoutJournal,
                checkout_journal_path,
            )
        except ImportError:  # a posfed from before the checkout (a "before" measurement)
            return
        path = checkout_journal_path(self.config.home)
        if not path.exists():
            return
        journal = CheckoutJournal(path)
        deadline = time.monotonic() + self.config.record_window_seconds + 60
        while time.monotonic() < deadline and (journal.windows() or self.active_runs()):
            time.sleep(0.5)

    def _outage(self, started: float) -> None:
        kind = self.settings.outage_kind
        time.sleep(max(0.0, started + self.settings.outage_at - time.monotonic()))
        self.central.fault(kind)
        begin = time.time()
        self._say(f"central database out of reach ({kind}) for {self.settings.outage:g} s")
        time.sleep(self.settings.outage)
        self.central.heal(kind)
        self.outage_window = (begin, time.time())
        self._say("central database back")

    def _say(self, text: str) -> None:
        if self.settings.progress:
            print(f"\n[{self.mode}] {text}", flush=True)

    def _wait_for_central(self) -> None:
        """Until the central database holds every receipt whose .dat was written."""
        sent = self.watcher.sent + (self.backlog_watcher.sent if self.backlog_watcher else [])
        accepted = sum(1 for i in sent if i.dat_at is not None)
        keys = {(i.terminal_id, i.receipt_id) for i in sent}
        deadline = time.monotonic() + self.settings.catch_up_timeout
        while time.monotonic() < deadline:
            rows, _ = self._db_counts(keys)
            if rows >= accepted:
                self.central_complete_at = time.time()
                return
            time.sleep(0.25)

    # --- the report -------------------------------------------------------------------------

    def collect(self, cpu_total: float) -> dict:
        import dagster as dg

        sent = self.watcher.sent
        latencies = self.watcher.latencies()
        carried: dict[tuple[str, str], list[str]] = {}  # (terminal, file) -> SUCCESS run ids
        runs = self.instance.get_run_records()
        new_runs = [r for r in runs if r.dagster_run.run_id not in self.runs_before]
        by_status: dict[str, int] = {}
        files_per_run = []
        run_of: dict[tuple[str, str], dg.RunRecord] = {}
        sync_by_status: dict[str, int] = {}
        record_by_status: dict[str, int] = {}
        for record in runs:
            run = record.dagster_run
            if run.job_name == names.SYNC_JOB:
                if run.run_id not in self.runs_before:
                    sync_by_status[run.status.value] = sync_by_status.get(run.status.value, 0) + 1
                continue
            if run.tags.get(getattr(names, "CHECKOUT_RECORD_TAG", "")) == "true":
                # The terminal-day's run recording the checkout's batches: it carries no files.
                if run.run_id not in self.runs_before:
                    status = run.status.value
                    record_by_status[status] = record_by_status.get(status, 0) + 1
                continue
            files = (
                run.run_config.get("ops", {})
                .get(names.RECEIPT_PIPELINE_OP, {})
                .get("config", {})
                .get("files", [])
            )
            terminal = run.tags.get(names.TERMINAL_TAG)
            if run.run_id not in self.runs_before:
                by_status[run.status.value] = by_status.get(run.status.value, 0) + 1
                files_per_run.append(len(files))
            if run.status == dg.DagsterRunStatus.SUCCESS:
                for name in files:
                    carried.setdefault((terminal, name), []).append(run.run_id)
                    run_of[(terminal, name)] = record
        dup_runs = sum(1 for ids in carried.values() if len(ids) > 1)
        by_sensor_daemon = len(self._sensor_daemon_runs() - self.runs_before)
        db_rows, db_dups = self._db_counts()
        central_at = self._central_times()
        breakdown = self._breakdown(sent, run_of)
        thirds = [sent[: len(sent) // 3], sent[-(len(sent) // 3) :]] if len(sent) >= 9 else []
        n = len(sent)
        report = {
            "mode": self.mode,
            "terminals": self.settings.terminals,
            "rate": None if self.settings.burst else self.settings.rate,
            "duration": None if self.settings.burst else self.settings.duration,
            "burst": self.settings.burst,
            "workers": self.settings.workers if self.mode == "posfed" else None,
            "daemon_nice": self.settings.daemon_nice,
            "stability_seconds": self.settings.stability_seconds,
            "delivery": self.settings.delivery
            + (f", watch {self.settings.watch}" if self.settings.watch != "events" else ""),
            "isolated": self._isolated_label(),
            "instance_yaml": str(self.settings.instance_yaml or "") or None,
            "instance": (
                self.settings.instance
                if self.mode == "posfed" and not self.settings.instance_yaml
                else None
            ),
            "sent": n,
            "dat_files": len(latencies),
            "lost": n - len(latencies),
            "central": self.settings.central,
            "db_rows": db_rows,
            "db_missing": len(latencies) - db_rows,
            "duplicated": dup_runs + db_dups,
            "duplicated_in_runs": dup_runs,
            "duplicated_in_db": db_dups,
            "runs": len(new_runs) - sum(sync_by_status.values()) - sum(record_by_status.values()),
            "recording_runs_by_status": record_by_status,
            "runs_by_status": by_status,
            "sync_runs_by_status": sync_by_status,
            "runs_by_sensor_daemon": by_sensor_daemon,
            "files_per_run": statistics.fmean(files_per_run) if files_per_run else None,
            "latency": summary(latencies),
            "central_latency": summary(
                [
                    central_at[k] - i.closed
                    for i in sent
                    if (k := (i.terminal_id, i.receipt_id)) in central_at
                ]
            ),
            **self._outage_report(sent, central_at),
            **self._backlog_report(sent, carried),
            "latency_p95_first_third": percentile(_lat(thirds[0]), 95) if thirds else None,
            "latency_p95_last_third": percentile(_lat(thirds[1]), 95) if thirds else None,
            "pending_max": self.pending_max,
            "pool_queue_max": self.pool_queue_max if self.mode == "posfed" else None,
            "breakdown": breakdown,
            "cpu_seconds": cpu_total,
            "cpu_seconds_startup": self.cpu_ready,
            "load_processes": self.settings.load,
            "load_cpu_seconds": None,  # once the load is stopped (execute)
            "load_seconds": None,
            "profile_table": None,  # once written (execute)
            "profiler_cpu_seconds": self.profiler.cpu_seconds if self.profiler else None,
            "idle": self.idle_report,
            "rss_mb_by_process_warm": self.rss_warm,
            "rss_mb_by_process_end": self.processes.rss_by_process(),
            "rss_mb_by_pid_end": self.processes.rss_by_pid(),
            "days": self.settings.days,
            "rss_mb_by_simulated_day": self.rss_by_simulated_day,
            "cpu_seconds_by_process": self.cpu_by_process,
            "cpu_per_receipt": cpu_total / n if n else None,
            "cpu_per_receipt_after_startup": (cpu_total - self.cpu_ready) / n if n else None,
            "cpu_harness_seconds": time.process_time() - self.cpu_harness_start,
            "load_average_start": list(self.load_start),
            "load_average_end": list(self.load_end),
            "elapsed_seconds": self.elapsed,
            "folder": str(self.root) if self.settings.keep else None,
        }
        if report["lost"]:
            report["lost_examples"] = [
                f"{i.terminal_id}/{i.file_name}" for i in sent if i.dat_at is None
            ][:10]
        return report

    def _backlog_report(self, sent: list[Sent], carried: dict) -> dict:
        """``--backlog``: how long it took to drain, what of it was lost or duplicated, and the
        other terminals' latency meanwhile."""
        watcher = self.backlog_watcher
        if watcher is None or self.backlog_landed is None:
            return {
                "backlog_files": self.settings.backlog or None,
                "backlog_drain_seconds": None,
                "backlog_files_per_second": None,
                "others_latency_during_drain": None,
            }
        landed = self.backlog_landed
        done = [i.dat_at for i in watcher.sent if i.dat_at is not None]
        drained = len(done) == len(watcher.sent)
        last = max(done) if done else None
        keys = {(i.terminal_id, i.receipt_id) for i in watcher.sent}
        dup_runs = sum(
            1 for i in watcher.sent if len(carried.get((i.terminal_id, i.file_name), [])) > 1
        )
        _, dup_rows = self._db_counts(keys)
        # The others' receipts closed while it drained (until selling stopped, if it never did).
        until = last if drained else self.selling_ended
        during = [i for i in sent if landed <= i.closed <= (until or landed)]
        return {
            "backlog_files": len(watcher.sent),
            "backlog_terminal": self.backlog_terminal.id,
            "backlog_dat_files": len(done),
            "backlog_lost": len(watcher.sent) - len(done),
            "backlog_duplicated": dup_runs + dup_rows,
            "backlog_drain_seconds": last - landed if drained else None,
            "backlog_files_per_second": len(done) / (last - landed) if done else None,
            "backlog_latency": summary(_lat(watcher.sent)),
            "others_latency_during_drain": {
                "receipts": len(during),
                "until": "drained" if drained else "selling stopped (not drained)",
                **summary(_lat(during)),
            },
        }

    def _isolated_label(self) -> str | None:
        if self.isolated is None:
            return None
        if self.settings.isolate == "flood":
            return f"{self.isolated.id}: {self.settings.flood_files} files waiting"
        return f"{self.isolated.id}: its share hangs"

    def _sensor_daemon_runs(self) -> set[str]:
        """Runs the sensor daemon launched (its ticks name them); the rest came from the trigger."""
        from posfed_pipeline.fastpath.dagster_internals import InstigatorType

        run_ids: set[str] = set()
        for state in self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR):
            for tick in self.instance.get_ticks(state.instigator_origin_id, state.selector_id):
                run_ids.update(tick.run_ids)
        return run_ids

    def _db_counts(self, keys: set[tuple[str, str]] | None = None) -> tuple[int, int]:
        """(rows, receipts in more than one row) of these receipts (default: those sent)."""
        import sqlalchemy as sa

        engine = central_db.make_engine(self.central_url)
        if keys is None:
            keys = {(i.terminal_id, i.receipt_id) for i in self.watcher.sent}
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT terminal_id, receipt_id, COUNT(*) FROM pos_receipt "
                    "GROUP BY terminal_id, business_day, receipt_id"
                )
            ).all()
        engine.dispose()
        ours = [(t, r, c) for t, r, c in rows if (t, r) in keys]
        return sum(c for _, _, c in ours), sum(1 for _, _, c in ours if c > 1)

    def _central_times(self) -> dict[tuple[str, str], float]:
        """When each receipt reached the central database (its ingest-ledger row)."""
        ledger = central_db.IngestLedgerRow.__table__
        engine = central_db.make_engine(self.central_url)
        import sqlalchemy as sa

        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(ledger.c.terminal_id, ledger.c.receipt_id, ledger.c.loaded_at).where(
                    ledger.c.outcome == "inserted"
                )
            ).all()
        engine.dispose()
        return {(t, r): central_db.as_utc(at).timestamp() for t, r, at in rows}

    def _outage_report(self, sent: list[Sent], central_at: dict) -> dict:
        if not self.settings.outage:
            return {"outage": None}
        begin, end = self.outage_window or (None, None)
        phases = {"before": [], "during": [], "after": []}
        for item in sent:
            if begin is None or item.closed < begin:
                phases["before"].append(item)
            elif item.closed < end:
                phases["during"].append(item)
            else:
                phases["after"].append(item)
        return {
            "outage": {
                "kind": self.settings.outage_kind,
                "seconds": self.settings.outage,
                "at": self.settings.outage_at,
                # From the end of the outage until the central database held every receipt
                # sent before it (the backlog), by the rows' own stored-at times.
                "catch_up_seconds": _catch_up(sent, central_at, end),
                "phases": {
                    name: {"receipts": len(items), **summary(_lat(items))}
                    for name, items in phases.items()
                },
            }
        }

    def _breakdown(self, sent: list[Sent], run_of: dict) -> dict:
        """Where the time goes: close → run launched → run started → .dat → run ended."""
        import dagster as dg

        launched_at: dict[str, float] = {}
        kinds = {dg.DagsterEventType.RUN_ENQUEUED, dg.DagsterEventType.RUN_STARTING}
        for record in {id(r): r for r in run_of.values()}.values():
            run_id = record.dagster_run.run_id
            if run_id in self.runs_before:
                continue
            times = [e.timestamp for e in self.instance.all_logs(run_id, of_type=kinds)]
            if times:
                launched_at[run_id] = min(times)
        parts: dict[str, list[float]] = {
            "close_to_launch": [],
            "launch_to_start": [],
            "start_to_dat": [],
            "dat_to_end": [],
        }
        for item in sent:
            record = run_of.get((item.terminal_id, item.file_name))
            if record is None or item.dat_at is None:
                continue
            launch = launched_at.get(record.dagster_run.run_id)
            start, end = record.start_time, record.end_time
            if launch is None or start is None or end is None:
                continue
            parts["close_to_launch"].append(launch - item.closed)
            parts["launch_to_start"].append(start - launch)
            parts["start_to_dat"].append(item.dat_at - start)
            parts["dat_to_end"].append(end - item.dat_at)
        return {
            name: {"p50": percentile(v, 50), "p95": percentile(v, 95)} for name, v in parts.items()
        }

    # --- all of it --------------------------------------------------------------------------

    def execute(self) -> dict:
        _set_subreaper(True)
        cpu_total = 0.0
        try:
            if self.settings.load:
                # Before the store starts: a server's other services were running already.
                self.load = CoLocatedLoad(self.settings.load, self.processes)
            self.start()
            if self.settings.idle > 0:
                self.idle_report = self.measure_idle(self.settings.idle)
            self.measure()
            cpu_total = self.processes.tree_cpu()
            self.cpu_by_process = self.processes.cpu_by_process()
            report = self.collect(cpu_total)
        finally:
            if self.profiler is not None:
                self.profiler.stop()  # (stopped already, unless measuring failed)
            if self.load is not None:
                self.load.stop()
            if self.instance is not None:
                self.instance.dispose()
            if self.hung_proxy is not None:
                self.hung_proxy.heal()  # let the mount answer again, so it unmounts
            final = self.processes.stop()
            _set_subreaper(False)
            self.servers.close()
            self.central.close()
            if self.dagster_storage is not None:
                self.dagster_storage.close()
            if not self.settings.keep:
                shutil.rmtree(self.root, ignore_errors=True)
        # After stopping, everything is reaped: the exact total (shutdown included).
        report["cpu_seconds"] = max(cpu_total, final)
        report["cpu_per_receipt"] = report["cpu_seconds"] / report["sent"]
        report["cpu_per_receipt_after_startup"] = (
            report["cpu_seconds"] - report["cpu_seconds_startup"]
        ) / report["sent"]
        # Stopping the services (their last writes, the workers' exits) is a one-off, as
        # start-up is: the steady figure leaves both out, so a short run's share of them does
        # not pass for a cost per receipt.
        report["cpu_seconds_shutdown"] = max(0.0, final - cpu_total)
        report["cpu_per_receipt_steady"] = (cpu_total - report["cpu_seconds_startup"]) / report[
            "sent"
        ]
        if self.load is not None:
            report["load_cpu_seconds"] = self.load.cpu_seconds
            report["load_seconds"] = self.load.seconds
        if self.profiler is not None:
            report["profiler_cpu_seconds"] = self.profiler.cpu_seconds
            report["profile_table"] = str(self._write_profile_table())
        return report

    def _write_profile_table(self) -> Path:
        """This run's section of DIR/cpu-table.md (run_bench starts the file)."""
        what = (
            f"burst of {self.settings.terminals}"
            if self.settings.burst
            else f"{self.settings.rate:g} receipts/s for {self.settings.duration:g} s"
        )
        instance = f" ({self.settings.instance})" if self.mode == "posfed" else ""
        title = f"{self.mode}{instance}: {self.settings.terminals} terminals, {what}"
        if self.settings.load:
            title += f", co-located load: {self.settings.load} busy processes"
        if self.settings.backlog:
            title += f", backlog of {self.settings.backlog} files"
        table = self.settings.profile / PROFILE_TABLE
        with table.open("a") as out:
            out.write("\n" + self.profiler.table(title))
        return table


def _catch_up(sent: list[Sent], central_at: dict, end: float | None) -> float | None:
    if end is None:
        return None
    backlog = [(i.terminal_id, i.receipt_id) for i in sent if i.closed < end]
    if not backlog or any(key not in central_at for key in backlog):
        return None
    return max(0.0, max(central_at[key] for key in backlog) - end)


def _lat(items: list[Sent]) -> list[float]:
    return [i.dat_at - i.closed for i in items if i.dat_at is not None]


# --- printing ---------------------------------------------------------------------------------


def _fmt(value, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}{unit}" if abs(value) < 10 else f"{value:.1f}{unit}"
    return f"{value}{unit}"


def format_reports(reports: list[dict]) -> str:
    rows: list[tuple[str, list[str]]] = [
        ("mode", [r["mode"] for r in reports]),
        ("Dagster instance", [r.get("instance") or "-" for r in reports]),
        (
            "scenario",
            [
                f"burst x{r['terminals']}"
                if r["burst"]
                else f"{r['rate']:g}/s for {r['duration']:g}s"
                for r in reports
            ],
        ),
        ("terminals", [_fmt(r["terminals"]) for r in reports]),
        ("delivery", [r.get("delivery", "local") for r in reports]),
        ("terminal in trouble", [r.get("isolated") or "-" for r in reports]),
        *(
            [("co-located load", [_load_label(r) for r in reports])]
            if any(r.get("load_processes") for r in reports)
            else []
        ),
        (
            "settings",
            [
                f"stab {r['stability_seconds']:g}s nice {r['daemon_nice']}"
                + (f" {Path(r['instance_yaml']).name}" if r["instance_yaml"] else "")
                for r in reports
            ],
        ),
        ("receipts sent", [_fmt(r["sent"]) for r in reports]),
        (".dat files", [_fmt(r["dat_files"]) for r in reports]),
        ("lost", [_fmt(r["lost"]) for r in reports]),
        ("duplicated", [_fmt(r["duplicated"]) for r in reports]),
        ("central database", [_central_label(r) for r in reports]),
        ("DB rows", [_fmt(r["db_rows"]) for r in reports]),
        ("DB missing", [_fmt(r["db_missing"]) for r in reports]),
        (
            "sync runs by status",
            [
                ",".join(f"{k}:{v}" for k, v in sorted(r["sync_runs_by_status"].items())) or "-"
                for r in reports
            ],
        ),
        ("runs launched (a batch each)", [_fmt(r["runs"]) for r in reports]),
        (
            "recording runs by status",
            [
                ",".join(
                    f"{k}:{v}" for k, v in sorted(r.get("recording_runs_by_status", {}).items())
                )
                or "-"
                for r in reports
            ],
        ),
        (
            "runs by status",
            [
                ",".join(f"{k}:{v}" for k, v in sorted(r["runs_by_status"].items())) or "-"
                for r in reports
            ],
        ),
        ("runs by sensor daemon", [_fmt(r["runs_by_sensor_daemon"]) for r in reports]),
        ("files per run", [_fmt(r["files_per_run"]) for r in reports]),
    ]
    for q in ("p50", "p95", "p99", "max"):
        rows.append((f"latency {q}", [_fmt(r["latency"][q], " s") for r in reports]))
    rows.append(
        (
            "close to central p50/p95",
            [
                f"{_fmt(r['central_latency']['p50'])}/{_fmt(r['central_latency']['p95'])} s"
                for r in reports
            ],
        )
    )
    if any(r["outage"] for r in reports):
        for phase in ("before", "during", "after"):
            rows.append(
                (
                    f"{phase} outage: n p50/p95/max",
                    [_phase(r, phase) for r in reports],
                )
            )
        rows.append(
            (
                "central caught up after",
                [_fmt((r["outage"] or {}).get("catch_up_seconds"), " s") for r in reports],
            )
        )
    if any(r.get("backlog_files") for r in reports):
        rows += _backlog_rows(reports)
    rows += [
        (
            "p95 first/last third",
            [
                f"{_fmt(r['latency_p95_first_third'])}/{_fmt(r['latency_p95_last_third'])} s"
                for r in reports
            ],
        ),
        ("max pending .dat", [_fmt(r["pending_max"]) for r in reports]),
        ("max pool queue", [_fmt(r["pool_queue_max"]) for r in reports]),
    ]
    for part in ("close_to_launch", "launch_to_start", "start_to_dat", "dat_to_end"):
        rows.append(
            (
                f"{part.replace('_', ' ')} p50/p95",
                [
                    f"{_fmt(r['breakdown'][part]['p50'])}/{_fmt(r['breakdown'][part]['p95'])} s"
                    for r in reports
                ],
            )
        )
    rows += [
        ("CPU s total", [_fmt(r["cpu_seconds"]) for r in reports]),
        *(
            [("load CPU s", [_load_cpu(r) for r in reports])]
            if any(r.get("load_processes") for r in reports)
            else []
        ),
        *(
            [("profiler CPU s", [_fmt(r.get("profiler_cpu_seconds")) for r in reports])]
            if any(r.get("profile_table") for r in reports)
            else []
        ),
        (
            "CPU s by process",
            [
                " ".join(f"{k}:{v:.0f}" for k, v in r["cpu_seconds_by_process"].items())
                for r in reports
            ],
        ),
        ("CPU s at start-up", [_fmt(r["cpu_seconds_startup"]) for r in reports]),
        (
            "idle cores (all)",
            [f"{r['idle']['cores']:.3f}" if r.get("idle") else "-" for r in reports],
        ),
        (
            "  by process",
            [
                " ".join(f"{k}:{v:.3f}" for k, v in r["idle"]["cores_by_process"].items())
                if r.get("idle")
                else "-"
                for r in reports
            ],
        ),
        (
            "RSS MB idle",
            [
                " ".join(f"{k}:{v:.0f}" for k, v in r["idle"]["rss_mb_by_process"].items())
                if r.get("idle")
                else "-"
                for r in reports
            ],
        ),
        (
            f"RSS MB at {RSS_WARM_AFTER_SECONDS:.0f} s",
            [
                " ".join(f"{k}:{v:.0f}" for k, v in r["rss_mb_by_process_warm"].items())
                if r.get("rss_mb_by_process_warm")
                else "-"
                for r in reports
            ],
        ),
        *(
            (
                f"RSS MB day {n + 1}",
                [
                    " ".join(f"{k}:{v:.0f}" for k, v in days[n]["rss_mb"].items())
                    if n < len(days := r.get("rss_mb_by_simulated_day") or [])
                    else "-"
                    for r in reports
                ],
            )
            for n in range(max(len(r.get("rss_mb_by_simulated_day") or []) for r in reports))
        ),
        (
            "RSS MB at end",
            [
                " ".join(f"{k}:{v:.0f}" for k, v in r["rss_mb_by_process_end"].items())
                for r in reports
            ],
        ),
        ("CPU s per receipt", [_fmt(r["cpu_per_receipt"]) for r in reports]),
        ("  excl. start-up", [_fmt(r["cpu_per_receipt_after_startup"]) for r in reports]),
        (
            "  excl. start-up and shutdown",
            [_fmt(r.get("cpu_per_receipt_steady")) for r in reports],
        ),
        ("CPU s at shutdown", [_fmt(r.get("cpu_seconds_shutdown")) for r in reports]),
        ("harness CPU s", [_fmt(r["cpu_harness_seconds"]) for r in reports]),
        (
            "load avg start",
            [" ".join(f"{x:.2f}" for x in r["load_average_start"]) for r in reports],
        ),
        ("load avg end", [" ".join(f"{x:.2f}" for x in r["load_average_end"]) for r in reports]),
    ]
    width = max(len(name) for name, _ in rows) + 2
    col = max(16, *(len(v) + 2 for _, values in rows for v in values))
    lines = [f"{name:<{width}}" + "".join(f"{v:>{col}}" for v in values) for name, values in rows]
    lines.append(
        "CPU: user+sys of every process the benchmark started and all their descendants "
        "(daemon, code server, run processes, fast path and its workers), start-up and "
        "shutdown included; the harness itself is shown apart."
        + (
            " Co-located load and py-spy are not counted in it."
            if any(r.get("load_processes") or r.get("profile_table") for r in reports)
            else ""
        )
    )
    if any(r.get("backlog_files") for r in reports):
        lines.append(BACKLOG_DEFINITION)
    return "\n".join(lines)


BACKLOG_DEFINITION = (
    "Backlog drain: from the first of its files renamed into the last terminal's inbox (the "
    "store up and warm, measuring starting, the other terminals selling at --rate) to the last "
    "of their .dat files on disk (its ctime); files/s: .dat files over that time. Others during "
    "drain: the other terminals' receipts closed within it."
)


def _load_cpu(report: dict) -> str:
    cpu, seconds = report.get("load_cpu_seconds"), report.get("load_seconds")
    return f"{cpu:.1f} ({cpu / seconds:.2f} cores)" if cpu is not None and seconds else "-"


def _load_label(report: dict) -> str:
    count = report.get("load_processes") or 0
    return f"{count} busy processes" if count else "-"


def _backlog_rows(reports: list[dict]) -> list[tuple[str, list[str]]]:
    def during(r: dict) -> str:
        figures = r.get("others_latency_during_drain")
        if not figures:
            return "-"
        return (
            f"{figures['receipts']} {_fmt(figures['p50'])}/{_fmt(figures['p95'])}/"
            f"{_fmt(figures['max'])} s"
        )

    def drained(r: dict) -> str:
        if not r.get("backlog_files"):
            return "-"
        if r.get("backlog_drain_seconds") is None:
            return f"not drained ({r.get('backlog_dat_files', 0)} done)"
        return _fmt(r["backlog_drain_seconds"], " s")

    return [
        (
            "backlog",
            [
                f"{r['backlog_files']} files, {r['backlog_terminal']}"
                if r.get("backlog_files")
                else "-"
                for r in reports
            ],
        ),
        ("backlog drained in", [drained(r) for r in reports]),
        ("backlog files/s", [_fmt(r.get("backlog_files_per_second")) for r in reports]),
        (
            "backlog lost/duplicated",
            [
                f"{r['backlog_lost']}/{r['backlog_duplicated']}" if r.get("backlog_files") else "-"
                for r in reports
            ],
        ),
        ("others during drain: n p50/p95/max", [during(r) for r in reports]),
    ]


def _central_label(report: dict) -> str:
    outage = report.get("outage")
    if not outage:
        return report["central"]
    return f"{report['central']}, {outage['kind']} {outage['seconds']:g}s at {outage['at']:g}s"


def _phase(report: dict, phase: str) -> str:
    figures = ((report.get("outage") or {}).get("phases") or {}).get(phase)
    if not figures:
        return "-"
    return (
        f"{figures['receipts']} {_fmt(figures['p50'])}/{_fmt(figures['p95'])}/"
        f"{_fmt(figures['max'])} s"
    )


def run_bench(
    settings: BenchSettings, modes: list[str], instances: tuple[str, ...] = ("embedded",)
) -> list[dict]:
    """One run per mode; posfed mode once per Dagster instance profile, side by side."""
    if settings.profile is not None:
        settings.profile.mkdir(parents=True, exist_ok=True)
        (settings.profile / PROFILE_TABLE).write_text(
            "# CPU by process in the measured window (posfed bench --profile)\n\n"
            "Written by `posfed bench`; each run's section gives every Python process it "
            "started, its CPU in the window and the functions its samples were in (inclusive: "
            "a function with its callees; frames every thread or process starts with left "
            "out). The raw collapsed stacks are beside this file.\n"
        )
    reports = []
    for mode in modes:
        for instance in instances if mode == "posfed" else ("embedded",):
            what = (
                f"burst of {settings.terminals}"
                if settings.burst
                else (f"{settings.rate:g} receipts/s for {settings.duration:g} s")
            )
            label = f"{mode} ({instance})" if mode == "posfed" else mode
            print(f"posfed bench: {label}: {settings.terminals} terminals, {what}", flush=True)
            run_settings = dataclasses.replace(settings, instance=instance)
            reports.append(Run(mode, run_settings).execute())
    return reports


def main(args) -> int:
    if args.outage and args.central != "postgres":
        print("posfed bench: --outage needs --central postgres", file=sys.stderr)
        return 2
    if args.outage < 0 or args.outage_at < 0:
        print("posfed bench: --outage and --outage-at must not be negative", file=sys.stderr)
        return 2
    if args.duration is None:
        # With an outage: a minute up, the outage, a minute after it.
        args.duration = args.outage_at + args.outage + 60.0 if args.outage else 60.0
    if not args.burst and (args.rate <= 0 or args.duration <= 0):
        print("posfed bench: --rate and --duration must be positive", file=sys.stderr)
        return 2
    if args.isolate and args.terminals < 2:
        print("posfed bench: --isolate needs at least 2 terminals", file=sys.stderr)
        return 2
    if args.instance != "embedded" and (args.instance_yaml or args.mode == "naive"):
        print("posfed bench: --instance is for posfed mode (no --instance-yaml)", file=sys.stderr)
        return 2
    if args.idle < 0:
        print("posfed bench: --idle must not be negative", file=sys.stderr)
        return 2
    if args.terminals < 1 or args.workers < 1:
        print("posfed bench: --terminals and --workers must be at least 1", file=sys.stderr)
        return 2
    if args.load < 0 or args.backlog < 0:
        print("posfed bench: --load and --backlog must not be negative", file=sys.stderr)
        return 2
    if args.backlog and (args.isolate or args.burst or args.terminals < 2):
        print(
            "posfed bench: --backlog goes with --rate, at least 2 terminals and no --isolate "
            "(the last terminal is the one whose backlog drains)",
            file=sys.stderr,
        )
        return 2
    if args.profile:
        try:
            _py_spy()
        except FileNotFoundError as error:
            print(f"posfed bench: --profile: {error}", file=sys.stderr)
            return 2
    if args.days and (args.burst or not 0 < args.days < MAX_SIMULATED_DAYS):
        print(
            f"posfed bench: --days is 1 to {MAX_SIMULATED_DAYS - 1}, with --rate (receipts "
            f"older than the store's max_age_days are refused)",
            file=sys.stderr,
        )
        return 2
    settings = BenchSettings(
        terminals=args.terminals,
        rate=args.rate,
        duration=args.duration,
        burst=args.burst,
        workers=args.workers,
        keep=args.keep,
        seed=args.seed,
        stall_timeout=args.stall_timeout,
        drain_timeout=args.drain_timeout,
        progress=not args.quiet,
        daemon_nice=args.daemon_nice,
        stability_seconds=args.stability_seconds,
        instance_yaml=Path(args.instance_yaml) if args.instance_yaml else None,
        central=args.central,
        outage=args.outage,
        outage_at=args.outage_at,
        outage_kind=args.outage_kind,
        delivery=args.delivery,
        isolate=args.isolate,
        flood_files=args.flood_files,
        watch=args.watch,
        idle=args.idle,
        days=args.days,
        load=args.load,
        backlog=args.backlog,
        profile=Path(args.profile).resolve() if args.profile else None,
    )
    # A service manager's (or `timeout`'s) SIGTERM stops the benchmark as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    modes = list(MODES) if args.mode == "both" else [args.mode]
    instances = INSTANCES if args.instance == "both" else (args.instance,)
    reports = run_bench(settings, modes, instances)
    print(format_reports(reports))
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2) + "\n")
    if settings.profile is not None:
        print(f"CPU table by process (py-spy): {settings.profile / PROFILE_TABLE}")
    return 0


def _raise_keyboard_interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def add_arguments(parser) -> None:
    parser.add_argument("--terminals", type=int, default=20, help="terminals (default 20)")
    parser.add_argument(
        "--stores",
        type=int,
        default=0,
        metavar="K",
        help="instead: K stores (--terminals each, --rate receipts/s each) load one "
        "PostgreSQL central database at once; its lag, errors and settlements",
    )
    parser.add_argument(
        "--central-url",
        metavar="URL",
        help="with --stores: load this PostgreSQL database (which must exist; it is kept, "
        "e.g. for `posfed headoffice`) instead of a throwaway cluster of the benchmark's own",
    )
    parser.add_argument("--rate", type=float, default=1.0, help="receipts per second (default 1)")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds (default 60; with --outage: outage-at + outage + 60)",
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="instead: one receipt on every terminal at the same instant",
    )
    parser.add_argument("--mode", choices=["naive", "posfed", "both"], default="posfed")
    parser.add_argument(
        "--instance",
        choices=[*INSTANCES, "both"],
        default="embedded",
        help="posfed mode's Dagster instance: embedded (deploy/dagster.dev.yaml, SQLite), "
        "production (deploy/dagster.prod.yaml on a PostgreSQL cluster of the benchmark's own, "
        "on this machine; its CPU is counted), or both, one after the other",
    )
    parser.add_argument("--workers", type=int, default=2, help="warm run workers (posfed)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, state)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--seed", type=int, default=1, help="simulator seed (default 1)")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        help="stop waiting for stragglers after this long without a new .dat",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=900.0,
        help="stop waiting for stragglers this long after the last drop",
    )
    parser.add_argument(
        "--daemon-nice",
        type=int,
        default=0,
        metavar="N",
        help="start dagster-daemon with nice N (the sensors are the catch-up path)",
    )
    parser.add_argument(
        "--stability-seconds",
        type=float,
        default=0.3,
        help="the store's intake stability_seconds: how long the sensors leave a new file "
        "alone (default 0.3, as the demo store)",
    )
    parser.add_argument(
        "--instance-yaml",
        metavar="FILE",
        help="posfed mode: this Dagster instance profile instead of deploy/dagster.dev.yaml",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    parser.add_argument(
        "--idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first measure this long with no receipts: CPU (cores) and memory per process",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=0,
        metavar="N",
        help="compress N trading days into the run: receipts are stamped from N days ago to "
        "now (the business day turns N times); memory per process at each simulated midnight",
    )
    parser.add_argument(
        "--delivery",
        choices=DELIVERIES,
        default="local",
        help="how the tills write: local files, through a real Samba server (smb), or "
        "uploads to a real OpenSSH SFTP server (sftp)",
    )
    parser.add_argument(
        "--isolate",
        choices=ISOLATIONS,
        help="put the last terminal in trouble and measure the others: flood (files waiting "
        "in its inbox, --flood-files) or hung (its inbox on an sshfs mount whose server stops "
        "answering)",
    )
    parser.add_argument(
        "--flood-files", type=int, default=50_000, help="files for --isolate flood (50000)"
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=0,
        metavar="N",
        help="N receipt files land at once in the last terminal's inbox as measuring starts "
        "while the others sell at --rate (on past --duration until it is drained): drain time, "
        "files/s, lost/duplicated, the others' latency meanwhile",
    )
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="N",
        help="N CPU-bound busy processes beside the store (normal priority, from before it "
        "starts): a server's other services; their CPU is reported apart",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy every Python process the benchmark started during the measured window; "
        "DIR/cpu-table.md: CPU per process and its top functions (raw stacks beside it)",
    )
    parser.add_argument(
        "--watch",
        choices=("events", "poll"),
        default="events",
        help='every terminal\'s [delivery] watch: "poll" lists the inboxes, as for inboxes on '
        "a network mount",
    )
    parser.add_argument(
        "--central",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="central database: the embedded SQLite, or a PostgreSQL cluster of the "
        "benchmark's own behind a fault proxy (needs the machine's PostgreSQL binaries)",
    )
    parser.add_argument(
        "--outage",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="make the central database unreachable this long (with --central postgres)",
    )
    parser.add_argument(
        "--outage-at", type=float, default=60.0, metavar="SECONDS", help="when (default 60)"
    )
    parser.add_argument(
        "--outage-kind",
        choices=OUTAGE_KINDS,
        default="partition",
        help="partition: the link drops every packet (no reset); stop: the server stops; "
        "lock: another session holds an exclusive lock on the receipt tables",
    )
