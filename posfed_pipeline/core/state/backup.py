"""A store server's local state in one file, and back.

The state is the home folder (``[paths] home``): the store's ledger, the claim table, the alert
outbox, the embedded central database and Dagster's embedded storage (all SQLite), and the
terminals' inboxes, quarantines and archives, and the ``.dat`` output. ``create_backup`` copies
every SQLite database with SQLite's online backup API (a consistent copy while posfed writes
to it) and every other file as it is, into a ``.tar.gz`` with a manifest of SHA-256 sums.
Folders are walked inbox first, archive last, so a file that moves on while the backup runs is
found in its next place. ``restore_backup`` checks every sum and every database before the
restored folder takes the home's place; a home already there is moved aside, never deleted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from posfed_pipeline.core.base.errors import PosfedError

MANIFEST = "posfed-backup.json"
FORMAT = 1
# SQLite's side files are folded into the copy by the backup API; a socket is not state.
SKIPPED_SUFFIXES = ("-wal", "-shm", "-journal", ".sock")
# Where files go next: inbox → quarantine or archive. Walking them in this order finds a file
# that moves during the backup in its new place.
WALK_FIRST = {"inbox": 0, "quarantine": 1, "archive": 2}
SQLITE_MAGIC = b"SQLite format 3\x00"


class BackupError(PosfedError):
    pass


class BackupDamaged(BackupError):
    """The file is a posfed backup, but what it holds is not what was written."""


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    files: int
    databases: int
    bytes: int


def create_backup(
    home: Path, target: Path, *, progress: Callable[[int, str], None] | None = None
) -> BackupSummary:
    """Write ``home``'s state to ``target`` (a .tar.gz), atomically: a half-written backup
    never carries the final name."""
    home = home.resolve()
    if not home.is_dir():
        raise BackupError(f"{home} is not a folder: nothing to back up")
    target = target.resolve()
    if target.is_relative_to(home):
        raise BackupError(f"write the backup outside the folder it copies ({home})")
    target.parent.mkdir(parents=True, exist_ok=True)
    sums: dict[str, str] = {}
    databases: list[str] = []
    size = 0
    with tempfile.TemporaryDirectory(prefix="posfed-backup-") as scratch:
        partial = target.with_name(f".{target.name}.partial")
        with tarfile.open(partial, "w:gz") as tar:
            for path in _walk(home):
                name = path.relative_to(home).as_posix()
                if _is_sqlite(path):
                    copy = Path(scratch) / "copy.db"
                    copy.unlink(missing_ok=True)
                    _sqlite_copy(path, copy)
                    source, databases = copy, [*databases, name]
                else:
                    source = path
                try:
                    # The bytes summed are the bytes stored, even if the file grows meanwhile.
                    data = source.read_bytes()
                    info = tar.gettarinfo(source, arcname=name)
                except FileNotFoundError:
                    continue  # moved on meanwhile: the walk finds it in its next folder
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                sums[name] = hashlib.sha256(data).hexdigest()
                size += len(data)
                if progress and len(sums) % 500 == 0:
                    progress(len(sums), name)
            manifest = {
                "format": FORMAT,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "home": str(home),
                "files": sums,
                "databases": databases,
            }
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, target)
    return BackupSummary(target, len(sums), len(databases), size)


@dataclass(frozen=True)
class RestoreSummary:
    home: Path
    files: int
    databases: int
    moved_aside: Path | None  # the home that was there before, kept


def restore_backup(archive: Path, home: Path, *, replace: bool = False) -> RestoreSummary:
    """Restore a backup into ``home``. An existing, non-empty home is refused unless
    ``replace``; then it is renamed to ``<home>.before-restore-<time>``, not deleted."""
    home = home.resolve()
    if home.exists() and any(home.iterdir()) and not replace:
        raise BackupError(
            f"{home} is not empty; stop posfed's services, then pass --replace: the folder "
            "there is kept, renamed, not deleted"
        )
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    staging = home.with_name(f".{home.name}.restoring-{stamp}")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            manifest = _read_manifest(tar, archive)
            # "data": no absolute paths, no links out of the folder, no device files.
            tar.extractall(staging, filter="data")
        (staging / MANIFEST).unlink()
        _verify(staging, manifest)
    except (OSError, tarfile.TarError, BackupError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, BackupError):
            raise
        raise BackupError(f"{archive}: not a readable posfed backup ({exc})") from exc
    moved_aside = None
    if home.exists():
        moved_aside = home.with_name(f"{home.name}.before-restore-{stamp}")
        home.rename(moved_aside)
    staging.rename(home)
    return RestoreSummary(home, len(manifest["files"]), len(manifest["databases"]), moved_aside)


def _walk(folder: Path) -> Iterator[Path]:
    entries = sorted(os.scandir(folder), key=lambda e: (WALK_FIRST.get(e.name, 1), e.name))
    subfolders = []
    for entry in entries:
        if entry.is_symlink():
            continue
        if entry.is_dir():
            subfolders.append(Path(entry.path))
        elif (
            entry.is_file()
            and stat.S_ISREG(entry.stat().st_mode)
            and not entry.name.endswith(SKIPPED_SUFFIXES)
        ):
            yield Path(entry.path)
    for subfolder in subfolders:
        yield from _walk(subfolder)


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def _sqlite_copy(source: Path, target: Path) -> None:
    # Read-only, with a busy timeout: a writer holding the database delays the copy a little.
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(tar: tarfile.TarFile, archive: Path) -> dict:
    try:
        member = tar.extractfile(MANIFEST)
        manifest = json.loads(member.read()) if member else None
    except (KeyError, json.JSONDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{archive}: no posfed backup manifest ({MANIFEST}) in it")
    return manifest


def _verify(folder: Path, manifest: dict) -> None:
    problems = []
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif _sha256(path) != expected:
            problems.append(f"{name}: checksum differs")
    for name in manifest["databases"]:
        try:
            db = sqlite3.connect(folder / name)
            try:
                verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error as exc:
            verdict = str(exc)
        if verdict != "ok":
            problems.append(f"{name}: integrity check: {verdict}")
    if problems:
        raise BackupDamaged("the backup is damaged: " + "; ".join(problems[:10]))
