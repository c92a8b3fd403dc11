"""A small service manager: what ``posfed demo`` runs its processes under, as systemd runs the
production units (deploy/systemd/).

A ``Supervisor`` starts its services in order (one that others depend on first, until it
is ready), watches them, and restarts one that dies, after 1 s, 2 s, 4 s ... at most 30 s (the
count starts over once it has run for a minute), saying so on the console in one line; the
others go on meanwhile. It stops them on SIGINT or SIGTERM: SIGINT to each, the ones others
depend on last, then SIGTERM and SIGKILL to whatever is left. It is a child subreaper, so every
descendant, even one that moved to a session of its own or lost its parent, stays its own: it
reaps those as they exit, and none outlives it. Its children get SIGTERM if it dies itself,
even by SIGKILL (``process_ties``). ``<state file>`` (JSON, replaced atomically) says per
service its pid, when it started, how often it was restarted and how it last ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from posfed_pipeline.core.base.clock import SYSTEM_CLOCK, Clock
from posfed_pipeline.core.base.errors import PosfedError
from posfed_pipeline.processes import pid_lock
from posfed_pipeline.processes.process_ties import tie_to_parent

FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
# A service that ran this long before it died is restarted after FIRST_RESTART_DELAY again.
HEALTHY_AFTER_SECONDS = 60.0
POLL_SECONDS = 0.5
# Stopping: each stage (services nothing left running depends on) gets this long for SIGINT,
# then whatever is left gets SIGTERM and, after a moment, SIGKILL. 30 s at most in all.
STOP_STAGE_SECONDS = 10.0
TERM_GRACE_SECONDS = 4.0

PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Service:
    """One long-running process: its command, its environment (None: the supervisor's), the
    services that must be ready before it starts, and how to tell that it is ready."""

    name: str
    command: list[str]
    env: dict[str, str] | None = None
    depends_on: tuple[str, ...] = ()
    ready: Callable[[], bool] | None = None
    ready_timeout: float = 120.0
    # Why it may have died, when its exit status cannot say (e.g. its port taken meanwhile).
    explain_exit: Callable[[], str | None] | None = None


@dataclass
class _Running:
    service: Service
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    failures_in_a_row: int = 0
    last_exit: str | None = None
    restart_at: float | None = None  # set while it waits to be restarted
    stopped: bool = False


class AlreadySupervised(PosfedError, RuntimeError):
    """Another supervisor holds this state folder's lock."""


class Supervisor:
    def __init__(
        self,
        services: list[Service],
        *,
        label: str,
        state_file: Path | None = None,
        say: Callable[[str], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        poll_seconds: float = POLL_SECONDS,
    ):
        names = [s.name for s in services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique: {names}")
        unknown = {d for s in services for d in s.depends_on} - set(names)
        if unknown:
            raise ValueError(f"services depend on unknown services: {sorted(unknown)}")
        self.label = label
        self.state_file = state_file
        self.clock = clock
        self.poll_seconds = poll_seconds
        self._say = say or (lambda line: print(line, flush=True))
        self._services = {s.name: _Running(s) for s in services}
        self._lock: IO[str] | None = None
        self._hurry = threading.Event()
        # Set by SIGCHLD while serving: only then can an orphan be waiting to be reaped (a scan
        # of /proc costs milliseconds; a store server's two cores have better things to do).
        self._child_exited = threading.Event()
        self._watching_children = False
        # Children this process had before the services started (a host's own helpers, e.g.
        # multiprocessing's): never reaped nor stopped here.
        self._not_ours: set[int] = set()

    # --- life cycle ---------------------------------------------------------------------------

    def claim(self) -> None:
        """Hold ``<state file>.lock`` while supervising: a second supervisor of the same state
        folder is refused (``AlreadySupervised``) instead of starting a second set of services."""
        if self.state_file is None or self._lock is not None:
            return
        try:
            self._lock = pid_lock.hold(self.state_file.with_name(self.state_file.name + ".lock"))
        except pid_lock.LockHeld as held:
            raise AlreadySupervised(
                f"another {self.label} (pid {held.holder}) runs the services of "
                f"{self.state_file.parent}; stop it first"
            ) from None

    def serve(self, stop: threading.Event | None = None) -> None:
        """Start the services, keep them running until SIGINT or SIGTERM (or ``stop``), then
        stop them all. Call it from the main thread: it takes over both signals meanwhile, and
        a child's death signal is tied to the thread that started it."""
        stop = stop or threading.Event()
        handlers = {
            signum: signal.signal(signum, lambda *_: stop.set())
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        handlers[signal.SIGCHLD] = signal.signal(
            signal.SIGCHLD, lambda *_: self._child_exited.set()
        )
        self._watching_children = True
        try:
            self.start(stop)
            while not stop.wait(self.poll_seconds):
                self.poll()
        finally:
            # A second Ctrl-C while stopping: SIGKILL what is left, at once.
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: self._hurry.set())
            try:
                self.stop()
            finally:
                for signum, handler in handlers.items():
                    signal.signal(signum, handler)

    def start(self, stop: threading.Event | None = None) -> None:
        """Start every service in order; one that others depend on is waited for until it is
        ready (or has died, or its ``ready_timeout`` passed: the others start regardless and
        say what they miss)."""
        self.claim()
        self._not_ours = descendants(os.getpid())
        _set_child_subreaper(True)
        for running in self._services.values():
            if stop is not None and stop.is_set():
                return
            for dependency in running.service.depends_on:
                self._wait_ready(self._services[dependency], stop)
            self._spawn(running)
        self._write_state()

    def poll(self) -> None:
        """One round: reap orphans, notice services that died, restart those that are due."""
        self.reap_orphans()
        changed = False
        now = self.clock.time()
        for running in self._services.values():
            process = running.process
            if running.stopped:
                continue
            if process is not None and running.restart_at is None and process.poll() is not None:
                self._died(running, process, now)
                changed = True
            elif running.restart_at is not None and now >= running.restart_at:
                self._kill_leftovers(running, signal.SIGKILL)
                process = self._spawn(running)
                self._say(f"{self.label}: {running.service.name} restarted (pid {process.pid})")
                changed = True
        if changed:
            self._write_state()

    def stop(self) -> None:
        """SIGINT to each service, those others depend on after their dependents; then SIGTERM
        and SIGKILL to every process still running below this one, wherever it went."""
        self._say(f"{self.label}: stopping every service (Ctrl-C again: at once)...")
        for running in self._services.values():
            running.stopped = True
        remaining = [r for r in self._services.values() if _alive(r.process)]
        while remaining and not self._hurry.is_set():
            stage = [
                r
                for r in remaining
                if not any(r.service.name in other.service.depends_on for other in remaining)
            ]
            for running in stage:
                if running.process is not None:
                    with contextlib.suppress(ProcessLookupError):
                        running.process.send_signal(signal.SIGINT)
            self._wait_for([r.process for r in stage], STOP_STAGE_SECONDS)
            remaining = [r for r in remaining if r not in stage]
        for signum, grace in ((signal.SIGTERM, TERM_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
            left = self._descendants()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
            # SIGKILL cannot be refused: wait for it to be done, however hurried.
            self._wait_for(
                [r.process for r in self._services.values()],
                grace,
                orphans=True,
                hurried=signum != signal.SIGKILL,
            )
        for running in self._services.values():
            if running.process is not None and running.process.poll() is not None:
                running.last_exit = describe_exit(running.process.returncode)
        self.reap_orphans(force=True)
        _set_child_subreaper(False)
        self._watching_children = False
        self._write_state()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self._say(f"{self.label}: stopped")

    # --- state ---------------------------------------------------------------------------------

    def state(self) -> dict:
        return {
            "supervisor": {"pid": os.getpid(), "label": self.label},
            "services": {
                name: {
                    "pid": running.process.pid if running.process else None,
                    "state": _state_word(running),
                    "started_at": _iso(running.started_at) if running.started_at else None,
                    "restarts": running.restarts,
                    "last_exit": running.last_exit,
                    "command": running.service.command,
                }
                for name, running in self._services.items()
            },
        }

    def _write_state(self) -> None:
        if self.state_file is None:
            return
        temporary = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}")
        temporary.write_text(json.dumps(self.state(), indent=2) + "\n")
        os.replace(temporary, self.state_file)

    # --- internals ----------------------------------------------------------------------------

    def _descendants(self) -> set[int]:
        """Every process below this one that the services started (or that was re-parented
        to us), however far below."""
        return descendants(os.getpid(), leaving_out=self._not_ours)

    def _spawn(self, running: _Running) -> subprocess.Popen:
        # A session of its own: Ctrl-C in the terminal reaches the supervisor alone, which then
        # stops the services in order; the whole group of a dead service can be stopped.
        running.process = subprocess.Popen(
            running.service.command,
            env=running.service.env,
            start_new_session=True,
            preexec_fn=tie_to_parent,
        )
        running.started_at = self.clock.time()
        running.restart_at = None
        return running.process

    def _died(self, running: _Running, process: subprocess.Popen, now: float) -> None:
        why = describe_exit(process.returncode)
        if running.service.explain_exit is not None:
            explanation = running.service.explain_exit()
            if explanation:
                why = f"{why} ({explanation})"
        running.last_exit = why
        if now - running.started_at >= HEALTHY_AFTER_SECONDS:
            running.failures_in_a_row = 0
        delay = min(MAX_RESTART_DELAY, FIRST_RESTART_DELAY * 2**running.failures_in_a_row)
        running.failures_in_a_row += 1
        running.restarts += 1
        running.restart_at = now + delay
        # As systemd does with a unit's control group: what the dead process leaves is stopped.
        self._kill_leftovers(running, signal.SIGTERM)
        self._say(
            f"{self.label}: {running.service.name} (pid {process.pid}) {why}; restarting it in "
            f"{delay:g} s (restart {running.restarts})"
        )

    def _kill_leftovers(self, running: _Running, signum: int) -> None:
        if running.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(running.process.pid, signum)

    def _wait_ready(self, running: _Running, stop: threading.Event | None) -> None:
        check = running.service.ready
        if check is None or running.process is None:
            return
        stop = stop or threading.Event()
        deadline = time.monotonic() + running.service.ready_timeout
        while time.monotonic() < deadline and running.process.poll() is None:
            with contextlib.suppress(Exception):
                if check():
                    return
            if stop.wait(0.2):
                return

    def _wait_for(
        self,
        processes: list[subprocess.Popen | None],
        seconds: float,
        *,
        orphans: bool = False,
        hurried: bool = True,
    ) -> None:
        """Until ``processes`` (and, with ``orphans``, every descendant) have exited, at most
        ``seconds``; a second Ctrl-C cuts it short if ``hurried``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (hurried and self._hurry.is_set()):
            self.reap_orphans(force=True)
            if not any(_alive(p) for p in processes) and not (orphans and self._descendants()):
                return
            time.sleep(0.1)

    def reap_orphans(self, force: bool = False) -> None:
        """Collect the exit status of descendants re-parented to us (we are their subreaper),
        so none stays a zombie; never a service's own (its Popen keeps that)."""
        if self._watching_children and not (force or self._child_exited.is_set()):
            return
        self._child_exited.clear()
        ours = {r.process.pid for r in self._services.values() if r.process is not None}
        for pid in children(os.getpid()) - ours - self._not_ours:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


# --- processes --------------------------------------------------------------------------------


def _set_child_subreaper(on: bool) -> None:
    """Orphaned descendants are re-parented to this process instead of init (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0)


def _alive(process: subprocess.Popen | None) -> bool:
    return process is not None and process.poll() is None


def _parents() -> dict[int, int]:
    """Every live or zombie process on this machine, with its parent's pid."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            # The name in parentheses may hold spaces and parentheses: split after the last.
            parents[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    return parents


def children(pid: int) -> set[int]:
    """The live or zombie children of ``pid``."""
    return {child for child, parent in _parents().items() if parent == pid}


def descendants(pid: int, leaving_out: Collection[int] = ()) -> set[int]:
    """Every process below ``pid``: its children, theirs, and so on (zombies included),
    leaving out the processes in ``leaving_out`` and all below them."""
    by_parent: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        by_parent.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            if child not in found and child not in leaving_out:
                found.add(child)
                todo.append(child)
    return found


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def _state_word(running: _Running) -> str:
    if running.restart_at is not None and not running.stopped:
        return "restarting"
    return "running" if _alive(running.process) else "stopped"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def read_state(state_file: Path) -> dict:
    """The state file a supervisor keeps: {"supervisor": {...}, "services": {name: {...}}}."""
    return json.loads(state_file.read_text())


# --- ports ------------------------------------------------------------------------------------


def listen_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on (host, port) right now, or None if it could. Tested
    as uvicorn binds (SO_REUSEADDR: a port a stopped server left in TIME_WAIT is free)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        return f"{host} is not an address of this machine ({exc.strerror})"
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is already in use"
            return f"cannot listen on {host} port {port}: {exc.strerror}"
    return None


def unix_socket_answers(path: Path) -> bool:
    """Whether a server listens on the Unix socket ``path`` (a stale socket file refuses)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(1.0)
        try:
            client.connect(str(path))
        except OSError:
            return False
    return True


__all__ = [
    "AlreadySupervised",
    "Service",
    "Supervisor",
    "descendants",
    "describe_exit",
    "listen_problem",
    "read_state",
    "unix_socket_answers",
]
