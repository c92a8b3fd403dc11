"""One process at a time: a lock file that holds its owner's pid.

``<something>.lock`` is locked (``flock``) for the owner's life, and the kernel lets go when the
owner dies, however it dies: no stale lock to clean up after a crash. The pid written in it
tells a refused second process whom to stop. The fast path holds one beside its launcher
socket, the demo's supervisor one beside its services.json.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from posfed_pipeline.core.base.errors import PosfedError


class LockHeld(PosfedError, RuntimeError):
    """Another live process holds the lock."""

    def __init__(self, holder: str):
        super().__init__(f"held by pid {holder}")
        self.holder = holder  # its pid as written, "?" if it wrote none yet


def hold(lock_path: Path) -> IO[str]:
    """Lock ``lock_path`` (made if need be) and write this process's pid in it; keep the
    returned handle open as long as the lock is to be held. ``LockHeld`` if another has it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise LockHeld(holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
