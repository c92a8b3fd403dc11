"""The quarantine: rejected files with their reasons, never lost, and re-queued on request.

A rejected file goes to ``<terminal>/quarantine/`` with a report beside it,
``<file>.error.json``. Neither a file nor a report ever replaces another: a name already taken
by either gets a numbered one (``A~1.json``). Every event (quarantined, retried) is appended to
``<terminal>/quarantine-history.jsonl``, so a file quarantined, retried and quarantined again
shows each attempt.

An operator re-queues files once the cause is fixed (a terminal's clock, a missing mapping):
``retry`` moves a file back into the inbox under its original name, where the sensor and the
trigger take it like any new file. A file that must never be processed (the till sent a
corrected receipt instead) is ``discard``-ed: set aside with its reason, not deleted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from posfed_pipeline.core.base.fsutil import (
    ContentConflict,
    fsync_dir,
    link_no_clobber,
    move_unique,
    unique_destination,
    write_atomic,
    write_once,
)
from posfed_pipeline.core.intake.parsing import Part
from posfed_pipeline.core.model.receipt import Problem, Receipt
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.core.state.inbox import (
    InboxFile,
    mark_ready,
    printable_name,
    put_back,
    release_ready_marker,
    take,
)

REPORT_SUFFIX = ".error.json"
HISTORY_FILE = "quarantine-history.jsonl"
DISCARDED_FOLDER = "discarded"


def report_path(quarantined: Path) -> Path:
    return quarantined.with_name(quarantined.name + REPORT_SUFFIX)


def history_path(terminal: Terminal) -> Path:
    return terminal.folder / HISTORY_FILE


def quarantine_file(
    terminal: Terminal,
    version: InboxFile,
    problems: Iterable[Problem],
    *,
    stage: str,
    receipt: Receipt | None = None,
    business_day: date | None = None,
) -> Path | None:
    """Move the version of a file that was read to quarantine, its reasons written first.

    ``business_day``: for a file that could not be read, the day of the run that took it (its
    terminal-day's check then reports it).

    None if the file changed since it was read: the new version stays in the inbox for a run of
    its own (the reasons were the old version's).
    """
    claimed = take(version)
    if claimed is None:
        return None
    try:
        return _quarantine_claimed(
            terminal, version, claimed, problems, stage, receipt=receipt, business_day=business_day
        )
    except OSError:
        put_back(claimed, version.name)
        raise


def _quarantine_claimed(
    terminal: Terminal,
    version: InboxFile,
    claimed: Path,
    problems: Iterable[Problem],
    stage: str,
    *,
    receipt: Receipt | None,
    business_day: date | None,
) -> Path:
    reasons = [p.as_dict() for p in problems]
    terminal.quarantine.mkdir(parents=True, exist_ok=True)
    while True:
        target = unique_destination(
            terminal.quarantine, version.name, taken=lambda p: report_path(p).exists()
        )
        report = _report(terminal, version.name, target, stage, reasons, receipt, business_day)
        try:
            # Reason first: a file never sits in quarantine without its explanation.
            if not write_once(report_path(target), _json(report)):
                continue  # an identical report is another file's: pick the next name
        except ContentConflict:
            continue  # another report took the name meanwhile: pick the next one
        if not link_no_clobber(claimed, target):  # never over another quarantined file
            report_path(target).unlink()
            continue
        break
    fsync_dir(terminal.quarantine)  # the file is in quarantine before it leaves the inbox
    claimed.unlink()
    release_ready_marker(terminal, version.name)
    _record(terminal, {"event": "quarantined", **report})
    return target


def quarantine_part(
    terminal: Terminal,
    version: InboxFile,
    part: Part,
    problems: Iterable[Problem],
    *,
    stage: str,
    receipt: Receipt | None = None,
    business_day: date | None = None,
) -> Path:
    """Quarantine one transaction of a file of several as a file of its own (the transaction
    alone, in the file's format), its reasons first. The file itself stays where it is: it
    goes to the archive with the transactions that were taken (``processing.archive``).

    Retried, the quarantined file is read like any other file of the terminal's format."""
    terminal.quarantine.mkdir(parents=True, exist_ok=True)
    earlier = terminal.quarantine / part.quarantine_name
    if _holds(earlier, part.document) and report_path(earlier).exists():
        return earlier  # an attempt that stopped before archiving the file put it there
    reasons = [p.as_dict() for p in problems]
    while True:
        target = unique_destination(
            terminal.quarantine, part.quarantine_name, taken=lambda p: report_path(p).exists()
        )
        report = _report(
            terminal,
            part.quarantine_name,
            target,
            stage,
            reasons,
            receipt,
            business_day,
            part_of=version.name,
            transaction=part.name,
        )
        try:
            # Reason first, as for a whole file.
            if not write_once(report_path(target), _json(report)):
                continue
        except ContentConflict:
            continue
        try:
            write_once(target, part.document)  # False: this very transaction is already there
        except ContentConflict:
            report_path(target).unlink()  # another file took the name meanwhile
            continue
        break
    fsync_dir(terminal.quarantine)
    _record(terminal, {"event": "quarantined", **report})
    return target


def _report(
    terminal: Terminal,
    name: str,
    target: Path,
    stage: str,
    problems: list[dict],
    receipt: Receipt | None,
    business_day: date | None,
    **where: str,
) -> dict:
    """The ``.error.json`` of a quarantined file (``where``: the file a transaction came from)."""
    report = {
        "file": name,
        "quarantined_as": target.name,
        **where,
        "terminal": terminal.id,
        "stage": stage,
        "quarantined_at": _now(),
        "problems": problems,
    }
    if receipt is not None:  # it was read: the gap check counts it as arrived
        report["receipt_id"] = receipt.receipt_id
        report["business_day"] = receipt.business_day.isoformat()
    elif business_day is not None:
        report["business_day"] = business_day.isoformat()
    return report


def _holds(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


@dataclass(frozen=True)
class Quarantined:
    terminal: str
    path: Path  # the file in quarantine
    report: dict  # its .error.json ({} if missing or unreadable)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def first_problem(self) -> str:
        problems = self.report.get("problems") or []
        if not problems:
            return "(no report)"
        first = problems[0]
        return f"{first.get('field')}: {first.get('rule')}"


def quarantined_files(terminal: Terminal) -> list[Quarantined]:
    """The terminal's quarantined files, oldest first."""
    if not terminal.quarantine.is_dir():
        return []
    files = [
        p
        for p in terminal.quarantine.iterdir()
        if p.is_file() and not p.name.endswith(REPORT_SUFFIX) and not p.name.startswith(".")
    ]
    # A file named like a report (x.error.json) delivered by a terminal has a report too.
    files += [
        p
        for p in terminal.quarantine.glob(f"*{REPORT_SUFFIX}")
        if report_path(p).exists() and p not in files
    ]
    entries = [Quarantined(terminal.id, p, _read_report(p)) for p in files]
    # Terminals whose inboxes share a folder share it: each sees its own files only.
    entries = [e for e in entries if e.report.get("terminal", terminal.id) == terminal.id]
    return sorted(entries, key=lambda q: (q.report.get("quarantined_at", ""), q.name))


def waiting_for(terminal: Terminal, business_day: date) -> list[Quarantined]:
    """The day's files still in quarantine: an operator has yet to re-queue or discard them.

    A file that could not be read has no business day of its own: it counts on the store-local
    day it was quarantined."""
    day = business_day.isoformat()

    def day_of(entry: Quarantined) -> str | None:
        if entry.report.get("business_day"):
            return entry.report["business_day"]
        try:
            at = datetime.fromisoformat(entry.report["quarantined_at"])
        except (KeyError, TypeError, ValueError):
            return None
        return at.astimezone(terminal.timezone).date().isoformat()

    return [entry for entry in quarantined_files(terminal) if day_of(entry) == day]


def find(terminal: Terminal, name: str) -> Quarantined:
    for entry in quarantined_files(terminal):
        if entry.name == name:
            return entry
    raise FileNotFoundError(f"{name} is not in {terminal.id}'s quarantine")


def retry(terminal: Terminal, name: str, *, by: str = "") -> Path:
    """Put a quarantined file back in the inbox under its original name (a numbered one if a
    file of that name is waiting there); its report moves to the history."""
    entry = find(terminal, name)
    original = entry.report.get("file") or entry.name
    # A new version (mtime now): launchers remember the old one as handled.
    os.utime(entry.path)
    back = move_unique(entry.path, terminal.inbox, name=original)
    mark_ready(terminal, back.name)  # a till that sends "<name>.ok" markers: as it would
    _record(
        terminal,
        {
            "event": "retried",
            "file": original,
            "quarantined_as": entry.name,
            "requeued_as": back.name,
            "terminal": terminal.id,
            "at": _now(),
            "by": by,
        },
    )
    report_path(entry.path).unlink(missing_ok=True)  # kept in the history
    return back


def discard(terminal: Terminal, name: str, *, reason: str, by: str = "") -> Path:
    """Set a quarantined file aside for good (a corrected receipt came instead, a till's test
    file): it and its report move to ``quarantine/discarded/``, the reason to the history.
    Nothing is deleted; its terminal-day's validation check passes again."""
    entry = find(terminal, name)
    moved = move_unique(entry.path, terminal.quarantine / DISCARDED_FOLDER)
    report = report_path(entry.path)
    if report.exists():
        move_unique(report, moved.parent, name=report_path(moved).name)
    _record(
        terminal,
        {
            "event": "discarded",
            "file": entry.report.get("file") or entry.name,
            "quarantined_as": entry.name,
            "discarded_as": moved.name,
            "terminal": terminal.id,
            "reason": reason,
            "at": _now(),
            "by": by,
        },
    )
    return moved


def record_renamed(terminal: Terminal, original: str, renamed: str, reason: str) -> None:
    """A file whose name posfed could not carry was given another (``inbox.safe_name``): the
    history says so, the original shown safely (``quarantine show <new name>`` finds it)."""
    _record(
        terminal,
        {
            "event": "renamed",
            "file": renamed,
            "original_name": printable_name(original),
            "reason": reason,
            "terminal": terminal.id,
            "at": _now(),
        },
    )


def history(terminal: Terminal, name: str | None = None) -> Iterator[dict]:
    """The terminal's quarantine events, oldest first; of one file (by any of its names)."""
    path = history_path(terminal)
    if not path.exists():
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a power cut: the rest still reads
            names = {
                event.get("file"),
                event.get("original_name"),
                event.get("quarantined_as"),
                event.get("requeued_as"),
                event.get("discarded_as"),
            }
            if event.get("terminal", terminal.id) != terminal.id:
                continue
            if name is None or name in names:
                yield event


def quarantined_receipt_ids(terminal: Terminal, business_day: date) -> set[str]:
    """Receipts of the day that arrived and were quarantined (ever, retried ones included)."""
    day = business_day.isoformat()
    return {
        event["receipt_id"]
        for event in history(terminal)
        if event.get("event") == "quarantined"
        and event.get("business_day") == day
        and event.get("receipt_id")
    }


def prune_history(terminal: Terminal, before: date) -> int:
    """Forget the events from before ``before`` (the archive's retention): the history file
    stays bounded. Returns how many were dropped."""
    path = history_path(terminal)
    if not path.exists():
        return 0
    kept: list[str] = []
    dropped = 0
    cutoff = before.isoformat()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        when = str(event.get("quarantined_at") or event.get("at") or "")
        if when[:10] < cutoff:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        write_atomic(path, "".join(f"{line}\n" for line in kept).encode("utf-8"))
    return dropped


def _record(terminal: Terminal, event: dict) -> None:
    line = json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n"
    fd = os.open(history_path(terminal), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_report(path: Path) -> dict:
    try:
        return json.loads(report_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _json(data: dict) -> bytes:
    return json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8")


def _now() -> str:
    # Milliseconds: files quarantined within one second still list in the order they came.
    return datetime.now(UTC).isoformat(timespec="milliseconds")
