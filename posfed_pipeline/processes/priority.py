"""CPU priority: the cashier's work first on a store server, whatever else runs on it.

A store server also runs the billing software, a virus scanner, backups. The fast path (the
trigger and the checkout workers, which inherit its priority) asks for a higher priority than
a normal process; its background worker stays well below it (``pool.BACKGROUND_NICE``). Raising
a priority needs privilege (root, or CAP_SYS_NICE): a systemd unit gets it with ``Nice=`` and
``CPUWeight=`` (deploy/systemd/posfed-fastpath.service); an unprivileged ``posfed demo`` keeps
the normal priority and says so once.

Linux also shares the CPU between *sessions* first (autogroup, when
``/proc/sys/kernel/sched_autogroup_enabled`` is 1), whatever the niceness within them: so the
session's own share is raised too, where allowed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger("posfed.priority")

CHECKOUT_NICENESS = -5
AUTOGROUP = Path("/proc/self/autogroup")


def favour_checkout(niceness: int = CHECKOUT_NICENESS) -> bool:
    """Run this process (and the workers it starts after) at ``niceness`` if it runs at a
    lower priority now; True when it does (or did already)."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current <= niceness:
        return True
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except PermissionError:
        log.info(
            "the checkout runs at niceness %d: raising it to %d needs root or CAP_SYS_NICE "
            "(a systemd unit: Nice=%d)",
            current,
            niceness,
            niceness,
        )
        return False
    _favour_session(niceness)
    return True


def _favour_session(niceness: int) -> None:
    # Only this session's processes share the group: a supervisor's session (posfed demo) is
    # the store's own. Absent (no autogroup) or refused: nothing more to do.
    with contextlib.suppress(OSError):
        if AUTOGROUP.exists():
            AUTOGROUP.write_text(f"{niceness}\n")
