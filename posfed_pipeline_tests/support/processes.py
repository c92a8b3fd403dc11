"""Processes the suite starts: a free port, waiting for a condition, and finding (and killing)
every process that carries a marker in its environment."""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from pathlib import Path

import pytest
from posfed_dev.faults import free_port as free_port  # one helper for tests and tools

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
