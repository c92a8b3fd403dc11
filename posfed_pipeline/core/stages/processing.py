"""One terminal's batch of receipt files through every stage, in one place.

    read ─▶ validate ─▶ accept (local ledger) ─▶ emit .dat ─▶ archive

``process_batch`` is the sequence; the Dagster asset and the tests both run it. The central
database is not a stage: the ledger's outbox feeds it afterwards (``core.sync``), so a slow or
unreachable central database never delays a .dat file.

A file moves exactly when its verdict is final: rejected files go to quarantine as soon as they
are rejected, accepted files go to the archive only once the ledger has recorded them and their
.dat file is on disk. A retried attempt therefore finds only the files still owed work, and the
ledger remembers what an earlier attempt already decided.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from posfed_pipeline.core.base.clock import SYSTEM_CLOCK, Clock
from posfed_pipeline.core.base.fsutil import fsync_dir, sync_files
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.dat import (
    DatConflictError,
    DatRenderError,
    DatSpec,
    publish_dat,
    render_receipt,
    stage_dat,
    write_dat,
)
from posfed_pipeline.core.intake import parsing
from posfed_pipeline.core.intake.validation import ValidationReport, rules_of, validate_batch
from posfed_pipeline.core.model.receipt import Problem, Receipt
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.core.state import inbox
from posfed_pipeline.core.state.ledger import Acceptance, DeliveredReceipt, Ledger, conflict_reason
from posfed_pipeline.core.state.quarantine import quarantine_file, quarantine_part

log = logging.getLogger("posfed.processing")

# A file the file system will not let posfed read or move (an I/O error on a share) is tried
# again later, 10 s, 20 s, 40 s … apart; at this attempt it is quarantined with the error.
MAX_FILE_ATTEMPTS = 5
# Errors that no second attempt mends: the file is quarantined with the error at once.
_LASTING_ERRORS = {
    errno.EACCES,
    errno.EPERM,
    errno.ELOOP,
    errno.EISDIR,
    errno.ENAMETOOLONG,
    errno.EINVAL,
    errno.ENXIO,
}


@dataclass(frozen=True)
class Deferral:
    """A file left in the inbox to be looked at again: when (a wall-clock time) and why. The
    run records it in the claim table, so that a launcher relaunches the file then."""

    version: inbox.InboxFile
    retry_at: float
    reason: str


@dataclass
class IntakeResult:
    receipts: list[Receipt] = field(default_factory=list)
    files: dict[int, inbox.InboxFile] = field(default_factory=dict)  # id(receipt) -> its file
    # id(receipt) -> its transaction, for files of several (POSLog): judged one by one.
    parts: dict[int, parsing.Part] = field(default_factory=dict)
    # Files of several transactions, by signature: archived once every one is decided.
    several: dict[str, inbox.InboxFile] = field(default_factory=dict)
    # "<file>#<n>" -> "transaction <n> (SequenceNumber ...)": how reports name them.
    transactions: dict[str, str] = field(default_factory=dict)
    rejected: list[tuple[str, list[Problem]]] = field(default_factory=list)  # (name, reasons)
    missing: list[str] = field(default_factory=list)  # already handled by an earlier attempt
    deferred: list[str] = field(default_factory=list)  # unreadable yet fresh: left in the inbox
    quarantined: dict[str, Path] = field(default_factory=dict)  # name -> where it went
    # Files the file system would not let posfed read or move now: (name, why); left in the
    # inbox, tried again later (``deferrals``), never the run's failure.
    held: list[tuple[str, str]] = field(default_factory=list)
    deferrals: list[Deferral] = field(default_factory=list)  # every file left, with when/why
    attempt: int = 0  # how many runs took these files before (a relaunch: > 0)
    retry_base_seconds: float = 10.0
    now: float = field(default_factory=time.time)  # when the batch was read (wall clock)

    def defer(self, version: inbox.InboxFile, retry_at: float, reason: str) -> None:
        self.deferred.append(version.name)
        self.deferrals.append(Deferral(version, retry_at, reason))

    def hold(self, version: inbox.InboxFile | None, name: str, why: str) -> None:
        """Leave a file the file system is in trouble with for a later attempt (``name``: for a
        file that could not even be examined, ``version`` None). Nothing of it is archived in
        this run: a later one decides it whole."""
        log.warning("%s left in the inbox for now: %s", inbox.printable_name(name), why)
        self.held.append((name, why))
        if version is not None:
            delay = inbox.retry_delay_seconds(self.attempt + 1, self.retry_base_seconds)
            self.deferrals.append(Deferral(version, self.now + delay, why))

    @property
    def last_attempt(self) -> bool:
        return self.attempt + 1 >= MAX_FILE_ATTEMPTS

    def quarantine(self, terminal: Terminal, version: inbox.InboxFile, problems, **report):
        try:
            target = quarantine_file(terminal, version, problems, **report)
        except OSError as exc:
            self.hold(version, version.name, f"could not be moved to quarantine: {exc}")
            return
        if target is not None:
            self.quarantined[version.name] = target

    def quarantine_part(
        self,
        terminal: Terminal,
        version: inbox.InboxFile,
        part: parsing.Part,
        problems,
        **report,
    ):
        try:
            target = quarantine_part(terminal, version, part, problems, **report)
        except OSError as exc:
            self.hold(version, version.name, f"could not write to quarantine: {exc}")
            return
        self.quarantined[part_name(version.name, part)] = target

    def quarantine_receipt(self, terminal: Terminal, receipt: Receipt, problems, **report):
        """Its file to quarantine; in a file of several, only its own transaction."""
        part = self.parts.get(id(receipt))
        if part is None:
            self.quarantine(terminal, self.file_of(receipt), problems, receipt=receipt, **report)
        else:
            self.quarantine_part(
                terminal, self.file_of(receipt), part, problems, receipt=receipt, **report
            )

    def path_of(self, receipt: Receipt) -> Path:
        return self.files[id(receipt)].path

    def file_of(self, receipt: Receipt) -> inbox.InboxFile:
        return self.files[id(receipt)]


def part_name(file_name: str, part: parsing.Part) -> str:
    """How a transaction of a file of several is named in reports: ``<file>#<index>``."""
    return f"{file_name}#{part.index}"


@dataclass(frozen=True)
class Rejection:
    file: str
    problems: list[Problem]
    quarantined_to: Path | None  # None: not moved (a backfill, or the file changed meanwhile)


@dataclass
class BatchResult:
    """Everything a batch did, for the run's metadata and for the tests."""

    files: int
    intake: IntakeResult
    validation: ValidationReport
    acceptance: Acceptance
    dat_files: list[Path]
    dat_seconds: list[float]  # per .dat written: seconds from the file's arrival (its mtime)
    resynced: int = 0  # a backfill: deliveries of the day put back in the outbox

    @property
    def receipts_rejected(self) -> int:
        # A file of several transactions counts each rejected one.
        return len(self.intake.rejected) + len(self.validation.invalid)

    @property
    def rejected_files(self) -> int:
        return self.receipts_rejected + len(self.acceptance.conflicts)

    def rejections(self) -> list[Rejection]:
        """Every rejected file with its reasons and where it went, in the batch's order."""
        found = list(self.intake.rejected)
        found += [(r.source_file, problems) for r, problems in self.validation.invalid]
        found += [
            (r.source_file, [Problem("receiptId", r.receipt_id, reason)])
            for r, reason in self.acceptance.conflicts
        ]
        return [
            Rejection(name, problems, self.intake.quarantined.get(name)) for name, problems in found
        ]

    @property
    def amount_accepted(self) -> Decimal:
        return sum((r.total for r in self.acceptance.inserted), Decimal("0.00"))


def read_batch(
    terminal: Terminal,
    paths: list[Path],
    *,
    quarantine: bool = True,
    incomplete_grace_seconds: float = 0.0,
    now: float | None = None,
    day: date | None = None,
    attempt: int = 0,
    retry_base_seconds: float = 10.0,
) -> IntakeResult:
    """Read the files; ``incomplete_grace_seconds``: an unreadable file modified more recently
    than this is left in the inbox (``deferred``), as its writer may not be done with it.

    Whatever one file does, it becomes that file's verdict: a reason to quarantine it, or, if
    the file system will not let posfed read it now, a later attempt (quarantined with the
    error at ``MAX_FILE_ATTEMPTS``). Nothing raised here comes from a file's content."""
    now = time.time() if now is None else now
    result = IntakeResult(attempt=attempt, retry_base_seconds=retry_base_seconds, now=now)
    for path in paths:
        version: inbox.InboxFile | None = None
        try:
            # The version read (size, mtime) identifies this delivery in the ledger.
            version = inbox.stat_inbox_file(path)
            readings = parsing.read_receipts(path, terminal)
        except FileNotFoundError:
            # Handled by an earlier attempt, or no longer a regular file (a FIFO or symlink in
            # its place since the listing: left alone, and reported by the next listing).
            result.missing.append(path.name)
            continue
        except parsing.IntakeError as exc:
            assert version is not None  # stat came first: only reading raises IntakeError
            # From its last write, but never from a time ahead of ours (a NAS's clock), and a
            # version waits once: the launcher relaunches it when its grace ends.
            written = min(version.mtime_ns / 1e9, now)
            settled_at = written + incomplete_grace_seconds
            if exc.maybe_incomplete and attempt == 0 and now < settled_at:
                result.defer(version, settled_at, "unreadable, and written to moments ago")
                continue
            result.rejected.append((path.name, exc.problems))
            if quarantine:
                result.quarantine(terminal, version, exc.problems, stage="intake", business_day=day)
            continue
        except OSError as exc:
            _file_trouble(result, terminal, path, version, exc, quarantine=quarantine, day=day)
            continue
        if not inbox.is_unchanged(version):
            # Written to while it was read: the version on disk now is read by the next run.
            result.deferred.append(path.name)
            continue
        for reading in readings:
            if reading.part is not None:
                result.several[version.signature] = version
                result.transactions[part_name(path.name, reading.part)] = reading.part.name
            if reading.receipt is None:
                assert reading.error is not None  # a reading is a receipt or its reasons
                problems = reading.error.problems
                if reading.part is None:  # the file's only transaction: the file is rejected
                    result.rejected.append((path.name, problems))
                    if quarantine:
                        result.quarantine(
                            terminal, version, problems, stage="intake", business_day=day
                        )
                    continue
                result.rejected.append((part_name(path.name, reading.part), problems))
                if quarantine:
                    result.quarantine_part(
                        terminal, version, reading.part, problems, stage="intake", business_day=day
                    )
                continue
            result.receipts.append(reading.receipt)
            result.files[id(reading.receipt)] = version
            if reading.part is not None:
                result.parts[id(reading.receipt)] = reading.part
    return result


def _file_trouble(
    result: IntakeResult,
    terminal: Terminal,
    path: Path,
    version: inbox.InboxFile | None,
    exc: OSError,
    *,
    quarantine: bool,
    day: date | None,
) -> None:
    """The file system would not let posfed read one file: a reason to quarantine it if no
    later attempt can help (or none is left), else a later attempt."""
    code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    why = f"cannot be read: {exc.strerror or exc} ({code})"
    lasting = exc.errno in _LASTING_ERRORS
    if version is not None and (lasting or result.last_attempt):
        problems = [Problem("file", code, why)]
        result.rejected.append((path.name, problems))
        if quarantine:
            result.quarantine(terminal, version, problems, stage="intake", business_day=day)
        return
    result.hold(version, path.name, why)


def validate(
    config: PosfedConfig,
    terminal: Terminal,
    batch: IntakeResult,
    *,
    quarantine: bool = True,
    now: datetime | None = None,
    check_age: bool = True,
    spec: DatSpec | None = None,
    incomplete_grace_seconds: float = 0.0,
) -> ValidationReport:
    """pandera's rules, then (with ``spec``) that the receipt renders under its .dat layout.

    A receipt the billing layout cannot hold (a number wider than its field) is rejected here,
    before it is accepted: never a receipt in the ledger without its .dat file.

    ``incomplete_grace_seconds``: a CSV file that fails and changed more recently than this is
    left in the inbox (``deferred``), not quarantined. A CSV cut at a row boundary parses, and
    fails its total only because its writer is still appending rows.
    """
    now = now or datetime.now(UTC)
    rules = dict(
        rules_of(terminal),
        # A backfill re-reads receipts accepted before the terminal's numbering had a prefix.
        receipt_id_prefix=terminal.receipt_id_prefix if check_age else "",
        now=now,
        max_clock_skew=timedelta(seconds=config.max_clock_skew_seconds),
        # A backfill re-validates old receipts: their age was judged when they arrived.
        max_age=timedelta(days=config.max_age_days if check_age else 36500),
    )
    try:
        report = validate_batch(batch.receipts, **rules)
    except Exception:
        # One receipt validation cannot take: judge them one by one, so that it alone is
        # rejected (with the error) and the rest of the batch goes on.
        log.exception("validating %d receipts of %s failed", len(batch.receipts), terminal.id)
        report = _validate_one_by_one(batch.receipts, rules)
    if spec is not None:
        renderable = []
        for receipt in report.valid:
            problem = _dat_problem(config, terminal, spec, receipt)
            if problem:
                report.invalid.append((receipt, [problem]))
            else:
                renderable.append(receipt)
        report.valid = renderable
    if quarantine:
        growing = [
            (receipt, problems)
            for receipt, problems in report.invalid
            if _may_still_grow(
                terminal,
                batch.file_of(receipt),
                incomplete_grace_seconds,
                now.timestamp(),
                batch.attempt,
            )
        ]
        for receipt, _ in growing:
            version = batch.file_of(receipt)
            batch.defer(
                version,
                min(version.mtime_ns / 1e9, now.timestamp()) + incomplete_grace_seconds,
                "fails validation, and rows were appended moments ago",
            )
        left = {id(receipt) for receipt, _ in growing}
        report.invalid = [entry for entry in report.invalid if id(entry[0]) not in left]
        for receipt, problems in report.invalid:
            batch.quarantine_receipt(terminal, receipt, problems, stage="validation")
    return report


def _validate_one_by_one(receipts: list[Receipt], rules: dict) -> ValidationReport:
    report = ValidationReport()
    for receipt in receipts:
        try:
            alone = validate_batch([receipt], **rules)
        except Exception as exc:
            rule = f"could not be validated (posfed error: {type(exc).__name__}: {exc})"[:300]
            report.invalid.append((receipt, [Problem("receipt", receipt.receipt_id, rule)]))
            continue
        report.valid += alone.valid
        report.invalid += alone.invalid
    return report


def _may_still_grow(
    terminal: Terminal, version: inbox.InboxFile, grace: float, now: float, attempt: int
) -> bool:
    appends_rows = terminal.mapping is not None and terminal.mapping.kind == "csv"
    # Once per version, as for an unreadable file (a time ahead of ours counts as now).
    return appends_rows and attempt == 0 and now - min(version.mtime_ns / 1e9, now) < grace


def _dat_problem(
    config: PosfedConfig, terminal: Terminal, spec: DatSpec, receipt: Receipt
) -> Problem | None:
    try:
        rendered = render_receipt(receipt, terminal, spec)
    except DatRenderError as exc:
        return Problem("receipt", receipt.receipt_id, f"cannot be rendered: {exc}")
    except Exception as exc:  # one receipt the .dat engine does not foresee: its verdict only
        log.exception("rendering %s of %s failed", receipt.receipt_id, terminal.id)
        rule = f"cannot be rendered (posfed error: {type(exc).__name__}: {exc})"[:300]
        return Problem("receipt", receipt.receipt_id, rule)
    existing = config.dat_dir / rendered.relative_path
    if existing.exists() and existing.read_bytes() != rendered.content:
        # Two terminals of one department reusing a receipt id would share a .dat file name.
        return Problem(
            "receiptId",
            receipt.receipt_id,
            "a receipt with this id and different content was already accepted (its .dat file "
            f"{rendered.relative_path} holds it); not overwritten",
        )
    return None


def accept(
    ledger: Ledger,
    terminal: Terminal,
    batch: IntakeResult,
    receipts: list[Receipt],
    *,
    quarantine: bool = True,
    run_id: str | None = None,
) -> Acceptance:
    """Record the valid receipts in the local ledger: new, re-delivered or in conflict.

    A conflict (the same receipt id, day and terminal with other content) is never overwritten:
    its file goes to quarantine with the reason.
    """
    deliveries = [
        DeliveredReceipt(
            receipt,
            batch.file_of(receipt).signature,
            # A file is taken once it has settled, so its mtime is when it arrived.
            detected_at=batch.file_of(receipt).mtime_ns / 1e9,
        )
        for receipt in receipts
    ]
    acceptance = ledger.accept(deliveries, tenant=terminal.tenant, run_id=run_id)
    if quarantine:
        for receipt, reason in acceptance.conflicts:
            batch.quarantine_receipt(
                terminal,
                receipt,
                [Problem("receiptId", receipt.receipt_id, reason)],
                stage="accept",
            )
    return acceptance


def reaccept_archived(
    ledger: Ledger, terminal: Terminal, receipts: list[Receipt], *, redeliver: bool = False
) -> Acceptance:
    """A backfill of archived receipts. Any the ledger does not know yet (it was lost, or
    predates them) are recorded and go to the outbox. A receipt whose .dat was written is not
    written again (the billing software may have imported and moved it) unless ``redeliver``:
    re-delivering a day's .dat files is an operator's explicit act."""
    known: dict[tuple, tuple[str, bool]] = {}
    for terminal_id, day in {(r.terminal_id, r.business_day) for r in receipts}:
        for receipt_id, held in ledger.day_state(terminal_id, day).items():
            known[(day, receipt_id)] = held
    unknown = [r for r in receipts if (r.business_day, r.receipt_id) not in known]
    ledger.adopt(unknown, tenant=terminal.tenant)
    acceptance = Acceptance(inserted=unknown)
    for receipt in receipts:
        state = known.get((receipt.business_day, receipt.receipt_id))
        if state is None:
            continue
        digest, written = state
        if digest != receipt.content_hash:
            acceptance.conflicts.append(
                (receipt, "the ledger holds other content for this receipt id; not re-emitted")
            )
        elif written and not redeliver:
            acceptance.redelivered.append(receipt)
        else:
            acceptance.owed_dat.append(receipt)
    return acceptance


@dataclass
class Emission:
    written: list[Path] = field(default_factory=list)
    # Accepted, but their .dat file name is taken by another terminal's receipt: withdrawn
    # from the ledger, never billed, quarantined (two terminals of one department, one id).
    refused: list[tuple[Receipt, str]] = field(default_factory=list)


def emit(
    config: PosfedConfig,
    terminal: Terminal,
    spec: DatSpec,
    receipts: list[Receipt],
    *,
    ledger: Ledger | None = None,
) -> Emission:
    """Write one .dat per receipt (deterministic: a re-run rewrites identical bytes).

    With ``ledger``, each .dat is recorded there as soon as it is on disk, so that an attempt
    that stops half-way leaves nothing written-but-unrecorded for the next one to write again.
    """
    emission = Emission()
    if ledger is None:
        for receipt in receipts:
            rendered = render_receipt(receipt, terminal, spec)
            emission.written.append(write_dat(config.dat_dir, rendered, spec, receipt.business_day))
        return emission
    staged: list[tuple[Receipt, str, Path, Path | None]] = []
    for receipt in receipts:
        rendered = render_receipt(receipt, terminal, spec)
        try:
            path, temp = stage_dat(config.dat_dir, rendered, spec, receipt.business_day, sync=False)
        except DatConflictError as exc:
            reason = f"its .dat file is another receipt's: {exc}"
            ledger.withdraw(receipt, reason)
            emission.refused.append((receipt, reason))
            continue
        staged.append((receipt, rendered.relative_path.as_posix(), path, temp))
    # The batch's files on disk in one flush (a commit per file would cap a backlog's drain
    # at a few hundred files a second), before the ledger records them...
    sync_files([temp for *_, temp in staged if temp is not None])
    # ...and recorded, in one transaction, before their renames: an attempt stopped in between
    # leaves staged files, which the next one renames (publish_staged); never a second .dat
    # after the billing software took the first.
    ledger.mark_emitted(
        [(receipt, relative, temp.name if temp else None) for receipt, relative, _, temp in staged]
    )
    published: list[str] = []
    folders: set[Path] = set()
    for _, relative, path, temp in staged:
        if temp is not None:
            publish_dat(temp, path, sync_folder=False)
            published.append(relative)
            folders.add(path.parent)
        emission.written.append(path)
    for folder in folders:  # the renames on disk: one fsync per day's folder
        fsync_dir(folder)
    ledger.clear_staged(published)
    return emission


def publish_staged(config: PosfedConfig, terminal: Terminal, ledger: Ledger) -> int:
    """Finish the renames an attempt that stopped after recording its .dat files left undone;
    a staged file already gone was renamed (and maybe imported): nothing to do."""
    staged = ledger.staged_dat(terminal.id)
    for relative, temp_name in staged:
        target = config.dat_dir / relative
        temp = target.with_name(temp_name)
        if temp.exists():
            publish_dat(temp, target)
    ledger.clear_staged(relative for relative, _ in staged)
    return len(staged)


def archive(
    terminal: Terminal, batch: IntakeResult, receipts: list[Receipt], *, day: date | None = None
) -> None:
    """Each accepted receipt's file to the archive of its business day. A file of several
    transactions goes once all are decided, taken or quarantined one by one: with its first
    taken one's day, or ``day`` when none was taken."""
    # A file left for a later attempt (one of its sales could not be quarantined, say) stays
    # whole: its accepted sales are known to the ledger then, the rest decided again.
    archived: set[str] = {deferral.version.signature for deferral in batch.deferrals}
    moves: list[tuple[inbox.InboxFile, date]] = []
    for receipt in receipts:
        version = batch.file_of(receipt)
        if version.signature not in archived:
            archived.add(version.signature)
            moves.append((version, receipt.business_day))
    for signature, version in batch.several.items():
        if signature not in archived:
            moves.append((version, day or datetime.now(terminal.timezone).date()))
    for version, exc in inbox.archive_files(terminal, moves):
        # Its .dat is written and the ledger knows it: a later attempt only moves it (the
        # ledger tells a re-delivery), never bills it twice.
        batch.hold(version, version.name, f"accepted, but could not be archived: {exc}")


def process_batch(
    config: PosfedConfig,
    terminal: Terminal,
    paths: list[Path],
    *,
    ledger: Ledger,
    spec: DatSpec,
    from_archive: bool = False,
    run_id: str | None = None,
    day: date | None = None,
    redeliver_dat: bool = False,
    clock: Clock = SYSTEM_CLOCK,
    attempt: int = 0,
) -> BatchResult:
    """Every stage for one batch of one terminal's files.

    ``from_archive``: a backfill of ``day``; the files stay where they are, a .dat the ledger
    has no record of is written (every .dat of the day again, byte-identical, with
    ``redeliver_dat``), and the day's deliveries go back to the outbox, so the central database
    is brought up to date too.
    """
    move = not from_archive
    grace = config.incomplete_grace_seconds if move else 0.0
    now = clock.time()
    batch = read_batch(
        terminal,
        paths,
        quarantine=move,
        incomplete_grace_seconds=grace,
        now=now,
        day=day,
        attempt=attempt,
        retry_base_seconds=config.relaunch_after_seconds,
    )
    report = validate(
        config,
        terminal,
        batch,
        quarantine=move,
        now=datetime.fromtimestamp(now, UTC),
        check_age=move,
        spec=spec,
        incomplete_grace_seconds=grace,
    )
    if move:
        acceptance = accept(ledger, terminal, batch, report.valid, run_id=run_id)
    else:
        acceptance = reaccept_archived(ledger, terminal, report.valid, redeliver=redeliver_dat)
    to_emit = acceptance.to_emit
    emission = emit(config, terminal, spec, to_emit, ledger=ledger)
    written_at = time.time()
    publish_staged(config, terminal, ledger)
    # Receipts an earlier attempt accepted whose file went away before their .dat was written.
    in_batch = {_key(r) for r in to_emit}
    stranded = [r for r in ledger.owed_dat(terminal.id) if _key(r) not in in_batch]
    stranded_emission = emit(config, terminal, spec, stranded, ledger=ledger)
    acceptance.conflicts += emission.refused + stranded_emission.refused
    resynced = 0
    if move:
        for receipt, reason in emission.refused:
            batch.quarantine_receipt(
                terminal, receipt, [Problem("receiptId", receipt.receipt_id, reason)], stage="emit"
            )
        withdrawn = {id(r) for r, _ in emission.refused}
        archive(
            terminal,
            batch,
            [r for r in acceptance.accepted if id(r) not in withdrawn],
            day=day,
        )
    elif day is not None:
        resynced = ledger.resync(terminal_id=terminal.id, business_day=day)
    emitted = {id(r) for r in to_emit} - {id(r) for r, _ in emission.refused}
    return BatchResult(
        files=len(paths) - len(batch.missing) - len(batch.deferred),
        intake=batch,
        validation=report,
        acceptance=acceptance,
        dat_files=emission.written + stranded_emission.written,
        dat_seconds=sorted(
            max(0.0, written_at - batch.file_of(r).mtime_ns / 1e9)
            for r in to_emit
            if id(r) in emitted
        ),
        resynced=resynced,
    )


@dataclass
class Judgement:
    """What the pipeline would make of some files, without moving or recording anything."""

    intake: IntakeResult
    validation: ValidationReport
    conflicts: list[tuple[Receipt, str]]  # valid, but the ledger holds other content


def judge(
    config: PosfedConfig,
    terminal: Terminal,
    paths: list[Path],
    *,
    spec: DatSpec,
    ledger: Ledger | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Judgement:
    """The pipeline's own verdict on files (``posfed receipt validate``): the same stages as
    ``process_batch`` (the .dat layout's limits and, given the store's ledger, its conflicts
    included), with nothing moved, quarantined or recorded."""
    now = clock.time()
    batch = read_batch(terminal, paths, quarantine=False, now=now)
    report = validate(
        config, terminal, batch, quarantine=False, now=datetime.fromtimestamp(now, UTC), spec=spec
    )
    conflicts = ledger.conflicts(report.valid) if ledger is not None else []
    # Two files of the batch with one receipt id and other content: the ledger would take
    # the first and refuse the second, as if the first were stored.
    first_of: dict[tuple, str] = {}
    for receipt in report.valid:
        first = first_of.setdefault(_key(receipt), receipt.content_hash)
        if first != receipt.content_hash:
            conflicts.append((receipt, conflict_reason(first)))
    refused = {id(receipt) for receipt, _ in conflicts}
    report.valid = [r for r in report.valid if id(r) not in refused]
    return Judgement(batch, report, conflicts)


def _key(receipt: Receipt) -> tuple:
    return (receipt.terminal_id, receipt.business_day, receipt.receipt_id)


__all__ = [
    "BatchResult",
    "DatRenderError",
    "Deferral",
    "Emission",
    "IntakeResult",
    "Judgement",
    "Rejection",
    "accept",
    "archive",
    "emit",
    "judge",
    "process_batch",
    "read_batch",
    "reaccept_archived",
    "validate",
]
