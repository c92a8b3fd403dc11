"""Terminal inbox handling: which files are ready, and where they go once handled.

A POS terminal drops receipt files into its inbox. A file is *ready* once its size and mtime
have been unchanged for the stability window, so a half-written file is never read, or, for a
terminal with markers (``core.delivery``), once its ``<name>.ok`` or the batch trigger file
that covers it is there. Handled
files are moved, never deleted: to ``archive/YYYYMMDD/`` (business day) when accepted, to
``quarantine/`` when rejected (``core.quarantine``); only the version that was read is moved.
"""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from posfed_pipeline.core.config import Terminal
from posfed_pipeline.core.delivery import DeliveryRules
from posfed_pipeline.core.fsutil import move_unique

# Writers that follow the write-then-rename convention use these while a file is in progress.
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
# A file a run is moving out of the inbox, for the milliseconds that takes: no writer uses it.
CLAIM_PREFIX = ".posfed-taking."
# A claim older than this was left by a run that died mid-move: the file goes back.
STALE_CLAIM_SECONDS = 60.0
# One run carries at most this many files; a flooded inbox is worked off a run at a time, in
# runs short enough (well under a second) to let any terminal's next receipt through between.
MAX_FILES_PER_RUN = 50


@dataclass(frozen=True)
class InboxFile:
    path: Path
    size: int
    mtime_ns: int
    inode: int = 0  # 0: not known

    @property
    def name(self) -> str:
        return self.path.name

    @functools.cached_property  # asked for many times per listing of a big inbox
    def signature(self) -> str:
        """Identifies this version of the file: a re-drop under the same name is a new version."""
        return f"{self.name}:{self.size}:{self.mtime_ns}"


@dataclass(frozen=True)
class InboxScan:
    ready: list[InboxFile]
    settling: list[InboxFile]  # still being written, or written too recently to trust


def is_candidate(name: str, rules: DeliveryRules | None = None) -> bool:
    """Whether ``name`` may be a receipt file (markers and ignored names never are)."""
    if name.startswith(".") or name.lower().endswith(IN_PROGRESS_SUFFIXES):
        return False
    return rules is None or not (rules.is_marker(name) or rules.is_ignored(name))


def scan_inbox(
    terminal: Terminal, *, stability_seconds: float | None = None, now: float | None = None
) -> InboxScan:
    """List the inbox, oldest first, split into ready and still-settling files, by the
    terminal's delivery rules (``stability_seconds`` overrides its stability window)."""
    rules = terminal.delivery
    stability = rules.stability_seconds if stability_seconds is None else stability_seconds
    now = time.time() if now is None else now
    files: list[InboxFile] = []
    markers: dict[str, InboxFile] = {}
    with os.scandir(terminal.inbox) as entries:
        for entry in entries:
            if entry.name.startswith(CLAIM_PREFIX):
                _restore_stale_claim(Path(entry.path), now)
                continue
            if not is_candidate(entry.name) or rules.is_ignored(entry.name):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # taken by a concurrent run between listing and stat
            item = InboxFile(Path(entry.path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
            if rules.is_marker(entry.name):
                markers[entry.name] = item
            else:
                files.append(item)
    if rules.ready_marker:
        ready, settling = _split_by_ready_markers(files, markers, rules.ready_marker, now)
    elif rules.batch_marker:
        ready, settling = _split_by_batch_marker(files, markers.get(rules.batch_marker))
    else:
        ready, settling = [], []
        for item in files:
            age = now - item.mtime_ns / 1e9
            (ready if age >= stability else settling).append(item)
    ready.sort(key=lambda f: (f.mtime_ns, f.name))
    settling.sort(key=lambda f: (f.mtime_ns, f.name))
    return InboxScan(ready=ready, settling=settling)


class SettleWatch:
    """Readiness by observation, for an inbox whose mtimes cannot be trusted to the split
    second (a network mount: SFTP keeps whole seconds, a NAS keeps its own clock): a file is
    ready once listings at least ``stability_seconds`` apart saw it the same size and mtime."""

    def __init__(self) -> None:
        self._since: dict[str, tuple[str, float]] = {}  # name -> (signature, first seen)

    def split(self, scan: InboxScan, stability_seconds: float, now: float) -> InboxScan:
        """``now``: a monotonic clock."""
        ready: list[InboxFile] = []
        settling: list[InboxFile] = []
        seen: dict[str, tuple[str, float]] = {}
        for item in sorted(scan.ready + scan.settling, key=lambda f: (f.mtime_ns, f.name)):
            signature, since = self._since.get(item.name, (item.signature, now))
            if signature != item.signature:
                since = now  # changed since the last listing: still being written
            seen[item.name] = (item.signature, since)
            (ready if now - since >= stability_seconds else settling).append(item)
        self._since = seen  # only what the inbox holds now: bounded
        return InboxScan(ready=ready, settling=settling)


class InboxNotAnswering(OSError):
    """Listing the inbox did not finish in time (a share that hangs)."""


@dataclass
class _Listing:
    started: float
    done: threading.Event = field(default_factory=threading.Event)
    scan: InboxScan | None = None
    error: BaseException | None = None


_listings: dict[str, _Listing] = {}  # inbox -> the listing of it under way
_listings_lock = threading.Lock()


def scan_inbox_within(terminal: Terminal, timeout: float, *, now: float | None = None) -> InboxScan:
    """``scan_inbox`` that gives up after ``timeout`` seconds. A listing stuck on a hung share
    cannot be interrupted: it is left to end on its thread, and while it lasts no second
    listing of that inbox starts (a hung inbox holds one thread, never one per attempt);
    callers meanwhile wait for it, so two sensors listing one inbox share one listing."""
    key = str(terminal.inbox)
    with _listings_lock:
        listing = _listings.get(key)
        if listing is None:
            listing = _listings[key] = _Listing(time.time())
            threading.Thread(
                target=_list_into,
                args=(key, listing, terminal, now),
                name=f"list-{terminal.id}",
                daemon=True,
            ).start()
    if not listing.done.wait(timeout):
        raise InboxNotAnswering(
            f"{terminal.inbox} has not answered for {time.time() - listing.started:.0f} s"
        )
    if listing.error is not None:
        raise listing.error
    assert listing.scan is not None
    return listing.scan


def _list_into(key: str, listing: _Listing, terminal: Terminal, now: float | None) -> None:
    try:
        listing.scan = scan_inbox(terminal, now=now)
    except BaseException as exc:  # handed to every waiting caller
        listing.error = exc
    finally:
        with _listings_lock:
            if _listings.get(key) is listing:
                del _listings[key]
        listing.done.set()


def _split_by_ready_markers(
    files: list[InboxFile], markers: dict[str, InboxFile], suffix: str, now: float
) -> tuple[list[InboxFile], list[InboxFile]]:
    ready: list[InboxFile] = []
    settling: list[InboxFile] = []
    for item in files:
        marker = markers.pop(item.name + suffix, None)
        # A marker older than the file is an earlier delivery's: this one is not done yet.
        complete = marker is not None and marker.mtime_ns >= item.mtime_ns
        (ready if complete else settling).append(item)
    for marker in markers.values():  # its file was handled, or never came
        if now - marker.mtime_ns / 1e9 > STALE_CLAIM_SECONDS:
            _remove_marker(marker)
    return ready, settling


def _split_by_batch_marker(
    files: list[InboxFile], marker: InboxFile | None
) -> tuple[list[InboxFile], list[InboxFile]]:
    if marker is None:
        return [], list(files)
    ready = [f for f in files if f.mtime_ns <= marker.mtime_ns]
    if not ready:
        _remove_marker(marker)  # every file it announced is handled: the next batch needs its own
    return ready, [f for f in files if f.mtime_ns > marker.mtime_ns]


def _remove_marker(marker: InboxFile) -> None:
    """Remove a consumed marker, unless the till has just written it again."""
    claimed = take(marker)
    if claimed is not None:
        claimed.unlink(missing_ok=True)


def release_ready_marker(terminal: Terminal, name: str) -> None:
    """A handled file's ``<name>.ok`` goes with it: the next file of that name needs its own.
    Kept if the till has meanwhile written that next file and its marker."""
    suffix = terminal.delivery.ready_marker
    if not suffix:
        return
    marker = terminal.inbox / f"{name}{suffix}"
    try:
        marker_mtime = marker.lstat().st_mtime_ns
    except FileNotFoundError:
        return
    try:
        if marker_mtime >= (terminal.inbox / name).lstat().st_mtime_ns:
            return  # the marker of a new file under the same name
    except FileNotFoundError:
        pass
    marker.unlink(missing_ok=True)


def mark_ready(terminal: Terminal, name: str) -> None:
    """Say a file put back by an operator is complete, as its till would have."""
    if terminal.delivery.ready_marker:
        (terminal.inbox / f"{name}{terminal.delivery.ready_marker}").touch()


def inbox_path(terminal: Terminal, name: str) -> Path:
    """The inbox path of a file name given to a run (its config can be edited in the UI):
    a plain name only, so nothing can reach outside the terminal's inbox."""
    bad = not name or name in (".", "..") or any(c in name for c in "/\\\0")
    if bad or not is_candidate(name, terminal.delivery):
        raise ValueError(f"{name!r} is not a receipt file name in {terminal.id}'s inbox")
    path = terminal.inbox / name
    if path.is_symlink():
        raise ValueError(f"{name!r} in {terminal.id}'s inbox is a symlink, never followed")
    return path


def stat_inbox_file(path: Path) -> InboxFile:
    stat = path.lstat()
    return InboxFile(path, stat.st_size, stat.st_mtime_ns, stat.st_ino)


def is_unchanged(version: InboxFile) -> bool:
    """Whether the inbox still holds exactly this version (a writer may have replaced or
    rewritten it since it was read)."""
    try:
        return _same_version(version, stat_inbox_file(version.path))
    except FileNotFoundError:
        return False


def _same_version(version: InboxFile, now: InboxFile) -> bool:
    same_file = not version.inode or now.inode == version.inode
    return same_file and (now.size, now.mtime_ns) == (version.size, version.mtime_ns)


def local_day_of_mtime(item: InboxFile, terminal: Terminal) -> date:
    return datetime.fromtimestamp(item.mtime_ns / 1e9, tz=terminal.timezone).date()


def take(version: InboxFile) -> Path | None:
    """Claim exactly the version of a file that was read, to move it out of the inbox.

    The file is renamed to a hidden name of its own (atomic: a writer replacing the file now
    replaces nothing of ours), then checked. None if it is gone, or if a writer had replaced
    or rewritten it since it was read: that newer version is put back under its name (never
    over a yet newer one) for a run of its own.
    """
    claimed = version.path.with_name(
        # The claim's own time in its name: a rename does not refresh every file system's
        # ctime (sshfs reports the mtime), and a fresh claim must never look stale.
        f"{CLAIM_PREFIX}{os.getpid()}.{time.time_ns()}.{version.name}"
    )
    try:
        os.rename(version.path, claimed)
    except FileNotFoundError:
        return None
    if _same_version(version, stat_inbox_file(claimed)):
        return claimed
    move_unique(claimed, claimed.parent, name=version.name)
    return None


def _restore_stale_claim(claimed: Path, now: float) -> None:
    try:
        _, stamp, name = claimed.name.removeprefix(CLAIM_PREFIX).split(".", 2)
        claimed_at = int(stamp) / 1e9
        if claimed_at < 1e9:  # an older posfed's claim (a monotonic clock): its ctime
            claimed_at = claimed.lstat().st_ctime
        if now - claimed_at < STALE_CLAIM_SECONDS:
            return  # a run is moving it right now
        move_unique(claimed, claimed.parent, name=name)
    except (FileNotFoundError, ValueError):
        return


def archive_file(terminal: Terminal, version: InboxFile, business_day: date) -> Path | None:
    """Move the version that was read to the day's archive; None if the file changed since
    (the new version stays in the inbox for a run of its own)."""
    claimed = take(version)
    if claimed is None:
        return None
    archived = move_unique(claimed, terminal.archive_dir(business_day), name=version.name)
    release_ready_marker(terminal, version.name)
    return archived


def archived_files(terminal: Terminal, business_day: date) -> list[Path]:
    folder = terminal.archive_dir(business_day)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_candidate(p.name))


@dataclass(frozen=True)
class PlannedBatch:
    """The files one run will carry: one terminal, one business day."""

    terminal_id: str
    business_day: date
    files: tuple[InboxFile, ...]
    attempt: int = 0  # > 0: these files' earlier run failed and they are being retried

    @property
    def run_key(self) -> str:
        # Deterministic from the file versions, so every launcher (sensor or event trigger)
        # derives the same key for the same files.
        digest = hashlib.sha256("\n".join(f.signature for f in self.files).encode()).hexdigest()
        key = f"{self.terminal_id}:{self.business_day:%Y%m%d}:{digest[:20]}"
        return f"{key}:retry{self.attempt}" if self.attempt else key

    @property
    def file_names(self) -> list[str]:
        return [f.name for f in self.files]


def plan_batches(
    terminal: Terminal,
    ready: Iterable[InboxFile],
    day_of: Callable[[InboxFile], date],
    *,
    attempt: int = 0,
    max_files_per_run: int = MAX_FILES_PER_RUN,
) -> list[PlannedBatch]:
    """Group ready files into at most one batch per business day (more only past the cap)."""
    by_day: dict[date, list[InboxFile]] = {}
    for item in ready:
        by_day.setdefault(day_of(item), []).append(item)
    batches = []
    for day in sorted(by_day):
        files = by_day[day]
        for start in range(0, len(files), max_files_per_run):
            chunk = tuple(files[start : start + max_files_per_run])
            batches.append(PlannedBatch(terminal.id, day, chunk, attempt))
    return batches


def retry_delay_seconds(attempt: int, base: float) -> float:
    """Wait before re-launching files whose run failed: base, 2×base, 4×base … capped at 5 min."""
    return min(base * 2 ** max(attempt - 1, 0), 300.0)
