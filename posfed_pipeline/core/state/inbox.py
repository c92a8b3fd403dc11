"""Terminal inbox handling: which files are ready, and where they go once handled.

A POS terminal drops receipt files into its inbox. A file is *ready* once its size and mtime
have been unchanged for the stability window, so a half-written file is never read, or, for a
terminal with markers (``core.delivery``), once its ``<name>.ok`` or the batch trigger file
that covers it is there. Handled
files are moved, never deleted: to ``archive/YYYYMMDD/`` (business day) when accepted, to
``quarantine/`` when rejected (``core.quarantine``); only the version that was read is moved.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import stat as stat_module
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from posfed_pipeline.core.base.errors import PosfedError
from posfed_pipeline.core.base.fsutil import fsync_dir, link_unique, move_unique
from posfed_pipeline.core.model.terminal import DeliveryRules, Terminal

# Writers that follow the write-then-rename convention use these while a file is in progress.
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
# A file a run is moving out of the inbox, for the milliseconds that takes: no writer uses it.
CLAIM_PREFIX = ".posfed-taking."
# A claim older than this was left by a run that died mid-move: the file goes back.
STALE_CLAIM_SECONDS = 60.0
# One run carries at most this many files; a flooded inbox is worked off a run at a time, in
# runs short enough (well under a second) to let any terminal's next receipt through between.
MAX_FILES_PER_RUN = 50
# A file whose mtime is this far ahead of the server's clock is judged without waiting for it.
FUTURE_MTIME_SECONDS = 60.0


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
class SkippedEntry:
    """An inbox entry posfed does not take: not a regular file (never followed, never opened),
    or a file under a writer's temporary name. Reported, never touched."""

    name: str  # as listed (may hold bytes that are not UTF-8: show it with printable_name)
    kind: str  # "a directory", "a symbolic link", "a FIFO", "a socket", "a device", ...
    mtime_ns: int = 0

    @property
    def not_regular(self) -> bool:
        """Not a regular file (or one that could not even be examined): never taken. False
        for a regular file left for its writer (a temporary or hidden name)."""
        return self.kind not in (TEMPORARY_NAME, HIDDEN_NAME)

    def describe(self) -> str:
        return f"{printable_name(self.name)} ({self.kind})"


TEMPORARY_NAME = "a writer's temporary name"
HIDDEN_NAME = "a hidden name"


@dataclass(frozen=True)
class InboxScan:
    ready: list[InboxFile]
    settling: list[InboxFile]  # still being written, or written too recently to trust
    skipped: list[SkippedEntry] = field(default_factory=list)  # entries never taken


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
    skipped: list[SkippedEntry] = []
    with os.scandir(terminal.inbox) as entries:
        for entry in entries:
            if entry.name.startswith(CLAIM_PREFIX):
                _restore_stale_claim(Path(entry.path), now)
                continue
            if rules.is_ignored(entry.name):
                continue  # configured to be ignored: not for posfed
            try:
                # lstat: a symlink is never followed, a FIFO never opened (opening one blocks).
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # taken by a concurrent run between listing and stat
            except OSError as exc:
                skipped.append(SkippedEntry(entry.name, f"cannot be examined: {exc.strerror}"))
                continue
            hidden = entry.name.startswith(".")
            if not stat_module.S_ISREG(stat.st_mode):
                if not hidden:  # a hidden folder (a NAS's .snapshot) is nobody's business
                    skipped.append(SkippedEntry(entry.name, _kind(stat.st_mode), stat.st_mtime_ns))
                continue
            if not is_candidate(entry.name):
                kind = HIDDEN_NAME if hidden else TEMPORARY_NAME
                skipped.append(SkippedEntry(entry.name, kind, stat.st_mtime_ns))
                continue
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
            # A file dated ahead of this server's clock (a NAS's own clock, `touch -d`) never
            # ages into readiness: its mtime says nothing of when it was written, so it is
            # taken, and a run that cannot read it waits its grace from now.
            ahead = age < -FUTURE_MTIME_SECONDS
            (ready if age >= stability or ahead else settling).append(item)
    ready.sort(key=lambda f: (f.mtime_ns, f.name))
    settling.sort(key=lambda f: (f.mtime_ns, f.name))
    return InboxScan(ready=ready, settling=settling, skipped=skipped)


def _kind(mode: int) -> str:
    if stat_module.S_ISDIR(mode):
        return "a directory"
    if stat_module.S_ISLNK(mode):
        return "a symbolic link"
    if stat_module.S_ISFIFO(mode):
        return "a FIFO"
    if stat_module.S_ISSOCK(mode):
        return "a socket"
    if stat_module.S_ISCHR(mode) or stat_module.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


# --- names ------------------------------------------------------------------------------------

# Longest name posfed keeps as it is. Every file system it meets allows 255 bytes, and a name
# must fit there with what posfed adds while handling it: the claim's prefix (about 45 bytes),
# a quarantine number and report suffix (~15), a temp file's dot and suffix (~14).
MAX_NAME_BYTES = 200
# Characters that are legal in a Linux name but that a run's file list must never contain
# (a Windows path separator: never part of a name on an SMB share) or an operator cannot type.
_UNSAFE_CHARACTERS = "\\"


def name_problem(name: str) -> str | None:
    """Why posfed cannot carry this name through a run as it is (None: it can)."""
    try:
        length = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "the name is not valid UTF-8 (a till or SMB client with another code page)"
    if any(_is_control(c) for c in name):
        return "the name holds control characters"
    if any(c in _UNSAFE_CHARACTERS for c in name):
        return "the name holds a backslash"
    if length > MAX_NAME_BYTES:
        return f"the name is {length} bytes long (posfed keeps names up to {MAX_NAME_BYTES})"
    return None


def _undecodable_byte(character: str) -> int | None:
    """The byte a name's character stands for when the byte was not UTF-8 (Python lists such
    names with lone surrogates, PEP 383), else None."""
    return ord(character) - 0xDC00 if "\udc80" <= character <= "\udcff" else None


def _is_control(character: str) -> bool:
    return unicodedata.category(character) == "Cc"


def safe_name(name: str) -> str:
    """The name posfed gives a file whose own it cannot carry (``name_problem``): bytes that
    are not UTF-8, control characters and backslashes as ``%XX``; an over-long name cut, with
    a digest of the whole to keep it unique. Deterministic: the same name, the same result."""
    raw = os.fsencode(name)
    text = raw.decode("utf-8", "surrogateescape")
    parts = []
    for character in text:
        if (byte := _undecodable_byte(character)) is not None:
            parts.append(f"%{byte:02X}")
        elif _is_control(character) or character in _UNSAFE_CHARACTERS:
            parts.append("".join(f"%{b:02X}" for b in character.encode("utf-8")))
        else:
            parts.append(character)
    safe = "".join(parts)
    if len(safe.encode("utf-8")) <= MAX_NAME_BYTES:
        return safe
    stem, dot, suffix = safe.rpartition(".")
    if not dot or not stem or len(suffix.encode("utf-8")) > 16:
        stem, suffix = safe, ""
    ending = f"~{hashlib.sha256(raw).hexdigest()[:10]}" + (f".{suffix}" if suffix else "")
    room = MAX_NAME_BYTES - len(ending.encode("utf-8"))
    cut = stem.encode("utf-8")[:room].decode("utf-8", "ignore")  # never half a character
    return cut + ending


def printable_name(name: str) -> str:
    """A name as reports and consoles show it, unambiguously: bytes that are not UTF-8 as
    ``\\xNN``, control and format characters (a right-to-left override that would reorder
    what follows) escaped, a backslash doubled; any other character as it is."""
    if name.isprintable() and "\\" not in name:
        return name  # the common case, at no cost
    shown = []
    for character in name:
        if (byte := _undecodable_byte(character)) is not None:
            shown.append(f"\\x{byte:02x}")
        elif character == "\\":
            shown.append("\\\\")
        elif unicodedata.category(character) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            shown.append(character.encode("unicode_escape").decode("ascii"))
        else:
            shown.append(character)
    return "".join(shown)


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


class InboxNotAnswering(PosfedError, OSError):
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
    """Remove a consumed marker, unless the till has just written it again. Never fails the
    listing it is part of: a marker that cannot be removed now is tried at the next one."""
    if not _fits_a_claim(marker.name):
        # No claim name is short enough (a marker of a 240-byte name): removed as it is.
        with contextlib.suppress(OSError):
            marker.path.unlink()
        return
    with contextlib.suppress(OSError):
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


def give_safe_name(terminal: Terminal, item: InboxFile) -> InboxFile | None:
    """Rename a file whose name posfed cannot carry (``name_problem``) to ``safe_name``'s,
    never over another file, its ready marker with it; the file as it is now, or None if it
    is gone (another launcher renamed it first). ``OSError``: the rename failed."""
    target = safe_name(item.name)
    # First a rename to a claim of the new name: of two launchers renaming one file at once,
    # exactly one wins (a link-then-unlink could leave it under two names); a run that dies
    # in between leaves a claim the next listing puts back, under the new name.
    claimed = _claim_path(item.path.with_name(target))
    try:
        os.rename(item.path, claimed)
    except FileNotFoundError:
        return None
    moved = move_unique(claimed, item.path.parent, name=target)
    marker = terminal.delivery.ready_marker
    if marker:  # the file is complete (it was ready): its marker follows it
        with contextlib.suppress(FileNotFoundError):
            os.rename(item.path.with_name(item.name + marker), moved.with_name(moved.name + marker))
    return InboxFile(moved, item.size, item.mtime_ns, item.inode)


def inbox_path(terminal: Terminal, name: str) -> Path:
    """The inbox path of a file name given to a run (its config can be edited in the UI):
    a plain name only, so nothing can reach outside the terminal's inbox."""
    bad = not name or name in (".", "..") or any(c in name for c in "/\\\0")
    if bad or name_problem(name) or not is_candidate(name, terminal.delivery):
        raise ValueError(f"{name!r} is not a receipt file name in {terminal.id}'s inbox")
    path = terminal.inbox / name
    if path.is_symlink():
        raise ValueError(f"{name!r} in {terminal.id}'s inbox is a symlink, never followed")
    return path


class NotARegularFile(PosfedError, FileNotFoundError):
    """The regular file listed is gone: something else (a FIFO, a symlink, a directory) has
    taken its name. A FileNotFoundError, so that everything that handles a file gone treats
    it so; the listing reports the new entry."""


def stat_inbox_file(path: Path) -> InboxFile:
    status = path.lstat()
    if not stat_module.S_ISREG(status.st_mode):
        raise NotARegularFile(f"{path} is {_kind(status.st_mode)}, not a regular file")
    return InboxFile(path, status.st_size, status.st_mtime_ns, status.st_ino)


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
    claimed = _claim_path(version.path)
    try:
        os.rename(version.path, claimed)
    except FileNotFoundError:
        return None
    try:
        if _same_version(version, stat_inbox_file(claimed)):
            return claimed
    except FileNotFoundError:  # no longer a regular file: left as it is, under its name
        pass
    move_unique(claimed, claimed.parent, name=version.name)
    return None


def _claim_path(path: Path) -> Path:
    # The claim's own time in its name: a rename does not refresh every file system's ctime
    # (sshfs reports the mtime), and a fresh claim must never look stale. The name follows,
    # for a claim left by a run that died to go back under it (names posfed carries are short
    # enough: MAX_NAME_BYTES).
    return path.with_name(f"{CLAIM_PREFIX}{os.getpid()}.{time.time_ns()}.{path.name}")


def _fits_a_claim(name: str) -> bool:
    return len(os.fsencode(_claim_path(Path(name)).name)) <= 255


def _restore_stale_claim(claimed: Path, now: float) -> None:
    try:
        _, stamp, name = claimed.name.removeprefix(CLAIM_PREFIX).split(".", 2)
        claimed_at = int(stamp) / 1e9
        if claimed_at < 1e9:  # an older posfed's claim (a monotonic clock): its ctime
            claimed_at = claimed.lstat().st_ctime
        if now - claimed_at < STALE_CLAIM_SECONDS:
            return  # a run is moving it right now
        move_unique(claimed, claimed.parent, name=name)
    except (OSError, ValueError):
        # Gone already, not a claim of ours, or one that cannot go back now (a read-only
        # share): never a reason to stop the listing of the whole inbox; tried again next time.
        return


def archive_file(terminal: Terminal, version: InboxFile, business_day: date) -> Path | None:
    """Move the version that was read to the day's archive; None if the file changed since
    (the new version stays in the inbox for a run of its own)."""
    claimed = take(version)
    if claimed is None:
        return None
    try:
        archived = move_unique(claimed, terminal.archive_dir(business_day), name=version.name)
    except OSError:
        put_back(claimed, version.name)
        raise
    release_ready_marker(terminal, version.name)
    return archived


def archive_files(
    terminal: Terminal, items: list[tuple[InboxFile, date]]
) -> list[tuple[InboxFile, OSError]]:
    """``archive_file`` for many files at once: each new name is on disk (one fsync per
    archive folder, not one per file) before any old one goes. Returns the files that could
    not be moved, with why (each put back under its name, for a later attempt)."""
    linked: list[tuple[InboxFile, Path]] = []
    failed: list[tuple[InboxFile, OSError]] = []
    folders: set[Path] = set()
    for version, business_day in items:
        try:
            claimed = take(version)
            if claimed is None:
                continue  # gone, or a newer version: that one stays for a run of its own
            folder = terminal.archive_dir(business_day)
            try:
                link_unique(claimed, folder, name=version.name)
            except OSError:
                put_back(claimed, version.name)
                raise
        except OSError as exc:
            failed.append((version, exc))
            continue
        linked.append((version, claimed))
        folders.add(folder)
    for folder in folders:
        fsync_dir(folder)
    for version, claimed in linked:
        claimed.unlink(missing_ok=True)
        release_ready_marker(terminal, version.name)
    return failed


def put_back(claimed: Path, name: str) -> None:
    """A claimed file whose move failed goes back under its name at once (not a minute later,
    as a stale claim would), for a later attempt."""
    with contextlib.suppress(OSError):  # then the stale-claim rule brings it back
        move_unique(claimed, claimed.parent, name=name)


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
