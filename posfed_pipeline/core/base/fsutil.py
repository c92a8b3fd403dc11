"""Small file-system primitives shared by the inbox and the .dat writer."""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from posfed_pipeline.core.base.errors import PosfedError


def _umask() -> int:
    # Read once at import (single-threaded then): os.umask can only be read by setting it.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Files other users may need to read (the billing software), as far as the umask allows.
FILE_MODE = 0o666 & ~_umask()


def synced_temp_copy(path: Path, data: bytes, *, sync: bool = True) -> Path:
    """``data`` in a hidden temp file beside ``path``, on disk (written, flushed, fsynced;
    ``sync`` False: not fsynced, the caller makes a batch of them durable with ``sync_files``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = _new_temp(path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        Path(tmp_name).unlink(missing_ok=True)
        raise
    os.close(fd)
    return Path(tmp_name)


_temp_numbers = itertools.count()


def _new_temp(path: Path) -> tuple[int, str]:
    """A new file beside ``path`` under a name no other file has (O_EXCL), with the mode a
    plain open() gives: readers such as the billing software may run as another user. (As
    tempfile.mkstemp, but a name from this process's id and a counter: a backlog writes
    thousands a second, and mkstemp's random names and fchmod were a tenth of each .dat.)"""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    while True:
        name = str(path.with_name(f".{path.name}.{os.getpid()}-{next(_temp_numbers)}.tmp"))
        try:
            return os.open(name, flags, FILE_MODE), name
        except FileExistsError:  # left by a process that had this id before: the next number
            continue


# A batch of at least this many files is flushed with one syncfs(2) (every dirty page of the
# file system, in one journal commit) rather than an fsync each (a commit each: ~0.5-4 ms).
SYNCFS_FROM = 4
_syncfs_call: list = []  # [libc's syncfs, or None where there is none], once looked up


def _syncfs(fd: int) -> bool:
    if not _syncfs_call:
        try:
            _syncfs_call.append(ctypes.CDLL(None, use_errno=True).syncfs)
        except (OSError, AttributeError):  # not Linux
            _syncfs_call.append(None)
    call = _syncfs_call[0]
    return call is not None and call(fd) == 0


def sync_files(paths: list[Path]) -> None:
    """Make the data of files written without fsync durable: one syncfs(2) per file system for
    a batch (Linux), else an fsync each."""
    if len(paths) >= SYNCFS_FROM:
        done: set[int] = set()
        for path in paths:
            device = os.stat(path).st_dev
            if device in done:
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                if not _syncfs(fd):
                    break
            finally:
                os.close(fd)
            done.add(device)
        else:
            return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write so readers see nothing or the whole file (temp + fsync + rename)."""
    tmp = synced_temp_copy(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def move_unique(source: Path, folder: Path, *, name: str | None = None) -> Path:
    """Move ``source`` into ``folder`` (as ``name``, default its own) without ever overwriting:
    a clash gets a numbered name, even when another file takes the name meanwhile. The new
    name is on disk before the old one goes."""
    target = link_unique(source, folder, name=name)
    fsync_dir(folder)
    source.unlink(missing_ok=True)
    return target


def link_unique(source: Path, folder: Path, *, name: str | None = None) -> Path:
    """``move_unique``'s first half: ``source`` also under a free name in ``folder``, not yet
    durable; the caller fsyncs the folder, then removes ``source`` (for many files at once:
    one fsync per folder). Where hard links cannot be made, ``source`` is renamed (gone)."""
    name = name or source.name
    target = folder / name
    while True:
        try:
            # The name itself first, no look before: the link fails if it is taken (a backlog
            # archives thousands a second; a stat and a mkdir each were a tenth of the move).
            if link_no_clobber(source, target):
                return target
        except FileNotFoundError:
            if folder.is_dir():
                raise  # the source is gone
            folder.mkdir(parents=True, exist_ok=True)
            continue
        except NoHardLinks:
            # A file system without hard links: rename, with the (tiny) race that leaves.
            target = unique_destination(folder, name)
            os.replace(source, target)
            return target
        target = unique_destination(folder, name)


class NoHardLinks(PosfedError, OSError):
    """The file system cannot hard-link (some FUSE and network file systems)."""


_NO_HARD_LINK_ERRORS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def link_no_clobber(source: Path, target: Path) -> bool:
    """``target`` becomes ``source``'s content, never over an existing file (False then). A
    hard link; across file systems (an inbox on a network mount, its archive on the local
    disk) a copy whose data is on disk before it appears; the caller fsyncs the folder before
    removing the source. ``NoHardLinks`` where links cannot be made; any other error (a full
    disk) is raised as it is."""
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            return _copy_across(source, target)
        if exc.errno in _NO_HARD_LINK_ERRORS:
            raise NoHardLinks(exc.errno, exc.strerror, str(target)) from exc
        raise
    return True


def _copy_across(source: Path, target: Path) -> bool:
    """Copy ``source`` to ``target`` on another file system, its data on disk before its name
    appears; False if ``target`` was taken meanwhile. Never through a symlink, never blocking
    on a FIFO that took the file's place meanwhile (FileNotFoundError: it is no file now)."""
    source_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(source_fd, "rb") as reader:
        if not stat.S_ISREG(os.fstat(source_fd).st_mode):
            raise FileNotFoundError(errno.ENOENT, "no longer a regular file", str(source))
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
                writer.flush()
                os.fsync(writer.fileno())
            shutil.copystat(source, tmp, follow_symlinks=False)
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            return True
        finally:
            tmp.unlink(missing_ok=True)


def unique_destination(
    folder: Path, name: str, taken: Callable[[Path], bool] | None = None
) -> Path:
    """``folder/name``, or ``folder/<stem>~<n>.<suffix>`` for the first free n; ``taken`` tells
    of names in use in other ways (a quarantined file's report)."""
    target = folder / name
    n = 1
    while target.exists() or (taken is not None and taken(target)):
        stem, dot, suffix = name.partition(".")
        target = folder / f"{stem}~{n}{dot}{suffix}"
        n += 1
    return target


def fsync_dir(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ContentConflict(PosfedError, FileExistsError):
    """A different file already exists where an immutable one is to be written."""


def write_once(path: Path, data: bytes) -> bool:
    """Create ``path`` atomically, never replacing different content.

    Returns True if written, False if an identical file was already there (an idempotent
    re-write); raises ``ContentConflict`` if a file with other bytes is there. The new file
    appears whole (temp + fsync + link), and two writers racing for one name cannot both win.
    """
    tmp = synced_temp_copy(path, data)
    try:
        os.link(tmp, path)  # fails if the name exists: no clobbering, even in a race
    except FileExistsError:
        if path.read_bytes() == data:
            return False
        raise ContentConflict(f"{path} already exists with other content") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return True
