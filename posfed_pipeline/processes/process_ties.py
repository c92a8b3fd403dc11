"""Child processes that stop with the process that started them, however it ends.

A parent started in the background (``cmd &``, nohup) ignores SIGINT, and its children would
inherit that (Dagster's ``dagster dev`` then ignores SIGTERM too: it gives SIGTERM SIGINT's
handler). And a parent killed with SIGKILL cannot stop anything: Linux's ``PR_SET_PDEATHSIG``
makes the kernel send the child SIGTERM when its parent dies.
"""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1
# Loaded before any fork: the child runs only the prctl call between fork and exec.
_LIBC = ctypes.CDLL(None, use_errno=True)


def tie_to_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: default SIGINT and SIGTERM, and SIGTERM when
    the parent dies. (The death signal follows the parent thread that started the child: start
    long-lived children from the main thread.)"""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
