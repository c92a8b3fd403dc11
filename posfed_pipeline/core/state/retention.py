"""Retention: old day folders are compressed into per-day archives, never deleted silently.

Archived receipt originals (``terminals/<id>/archive/YYYYMMDD/``) and .dat files
(``dat/YYYYMMDD/``) older than the retention period become ``YYYYMMDD.tar.gz`` beside the folder.
A folder is removed only after its archive has been written, synced, re-read and found to hold
every file with the same bytes. A backfill of a compressed day restores the folder first.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

from posfed_pipeline.core.base.fsutil import unique_destination
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.model.terminal import Terminal


@dataclass(frozen=True)
class CompressedDay:
    folder: Path  # the folder that was compressed (now removed)
    archive: Path
    files: int
    bytes: int


def day_folders_older_than(root: Path, cutoff: date) -> list[Path]:
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        try:
            day = datetime.strptime(entry.name, "%Y%m%d").date()
        except ValueError:
            continue
        if day < cutoff:
            found.append(entry)
    return found


def compress_old_days(config: PosfedConfig, *, keep_days: int, today: date) -> list[CompressedDay]:
    """Compress every day folder older than ``keep_days`` before ``today``."""
    cutoff = today - timedelta(days=keep_days)
    roots = [t.archive_root for t in config.terminals] + [config.dat_dir]
    done = []
    for root in roots:
        for folder in day_folders_older_than(root, cutoff):
            done.append(compress_folder(folder))
    return done


def compress_folder(folder: Path) -> CompressedDay:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digests = {p.relative_to(folder).as_posix(): _sha256(p.read_bytes()) for p in files}
    target = unique_destination(folder.parent, f"{folder.name}.tar.gz")
    fd, tmp_name = tempfile.mkstemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with tarfile.open(tmp_name, "w:gz") as tar:
            for path in files:
                tar.add(path, arcname=f"{folder.name}/{path.relative_to(folder).as_posix()}")
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        _verify(Path(tmp_name), folder.name, digests)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    size = sum(p.stat().st_size for p in files)
    for path in files:
        path.unlink()
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        sub.rmdir()
    folder.rmdir()
    return CompressedDay(folder=folder, archive=target, files=len(files), bytes=size)


def _verify(archive: Path, prefix: str, digests: dict[str, str]) -> None:
    seen = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                data = _member_bytes(tar, member)
                seen[member.name.removeprefix(f"{prefix}/")] = _sha256(data)
    if seen != digests:
        raise OSError(f"{archive}: compressed copy does not match {prefix}; folder kept")


def restore_day(terminal: Terminal, day: date) -> int:
    """Bring a compressed archive day back as a folder (for a backfill); returns files restored."""
    folder = terminal.archive_dir(day)
    restored = 0
    for archive in sorted(terminal.archive_root.glob(f"{folder.name}*.tar.gz")):
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                name = Path(member.name).name  # flat: nothing may escape the folder
                target = folder / name
                if target.exists():
                    continue
                folder.mkdir(parents=True, exist_ok=True)
                target.write_bytes(_member_bytes(tar, member))
                restored += 1
    return restored


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:  # not a regular file: callers only ask for files
        raise ValueError(f"{member.name} is not a regular file in the archive")
    return handle.read()
