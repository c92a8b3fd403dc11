"""Every inbox's completed files, through one inotify instance (inotify_simple).

inotify reports ``IN_CLOSE_WRITE`` and ``IN_MOVED_TO`` within microseconds of ``close()`` or
``rename()``. One instance holds a watch per inbox: Linux allows 128 inotify *instances* per
user by default (``fs.inotify.max_user_instances``) but 8,192 or more *watches*, and a library
that opens an instance per folder (watchdog does) cannot watch 200 terminals' inboxes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from inotify_simple import INotify, flags

log = logging.getLogger(__name__)

WATCHED = flags.CLOSE_WRITE | flags.MOVED_TO
READ_TIMEOUT_MS = 500  # how soon ``stop`` is noticed


class InboxEvents:
    """``on_file(path)`` for each file written and closed, or moved, into a watched folder;
    ``on_overflow()`` when the kernel dropped events (every inbox must be listed again)."""

    def __init__(self, on_file: Callable[[Path], None], on_overflow: Callable[[], None]):
        self._on_file = on_file
        self._on_overflow = on_overflow
        self._inotify = INotify()
        self._folders: dict[int, str] = {}  # watch descriptor -> folder
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name="inbox-events", daemon=True)

    def watch(self, folder: str) -> None:
        """Raises ``OSError`` for a folder that cannot be watched (missing, or the watch limit)."""
        self._folders[self._inotify.add_watch(folder, WATCHED | flags.ONLYDIR)] = folder

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._inotify.close()

    def _read_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                events = self._inotify.read(timeout=READ_TIMEOUT_MS)
            except OSError as exc:  # closed under us at stop, or the kernel refused
                if not self._stopping.is_set():
                    log.warning("inotify read failed: %s; inboxes are listed instead", exc)
                    self._on_overflow()
                return
            for event in events:
                if event.mask & flags.Q_OVERFLOW:
                    self._on_overflow()
                    continue
                folder = self._folders.get(event.wd)
                if folder is None or not event.name or event.mask & flags.ISDIR:
                    continue
                try:
                    self._on_file(Path(os.path.join(folder, event.name)))
                except Exception:  # one bad event must not end the watching of every inbox
                    log.exception("handling %s/%s failed", folder, event.name)
