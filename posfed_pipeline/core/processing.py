"""One terminal's batch of receipt files, through every stage: intake, validation, load, .dat.

Each stage is a function so the Dagster layer can report each asset on its own; ``process_batch``
runs them all for the CLI and tests. A file moves exactly when its verdict is final: rejected
files go to quarantine as soon as they are rejected, accepted files go to the archive only once
their rows are committed and their .dat file is written. A retried run therefore finds only the
files still owed work, and repeats nothing but idempotent steps.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy.engine import Engine

from posfed_pipeline.core import inbox, intake, store
from posfed_pipeline.core.config import PosfedConfig, Terminal
from posfed_pipeline.core.dat import DatRenderError, DatSpec, render_receipt, write_dat
from posfed_pipeline.core.receipt import Problem, Receipt
from posfed_pipeline.core.validation import ValidationReport, validate_batch


@dataclass
class IntakeResult:
    receipts: list[Receipt] = field(default_factory=list)
    paths: dict[int, Path] = field(default_factory=dict)  # id(receipt) -> file it came from
    rejected: list[tuple[Path, list[Problem]]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # already handled by an earlier attempt
    deferred: list[str] = field(default_factory=list)  # unreadable yet fresh: left in the inbox

    def path_of(self, receipt: Receipt) -> Path:
        return self.paths[id(receipt)]


@dataclass
class BatchSummary:
    files: int
    receipts_valid: int
    receipts_rejected: int
    inserted: int
    duplicates: int
    conflicts: int
    lines: int
    amount_total: Decimal
    dat_files: list[Path]

    @property
    def rejected_files(self) -> int:
        return self.receipts_rejected + self.conflicts


def read_batch(
    terminal: Terminal,
    paths: list[Path],
    *,
    quarantine: bool = True,
    incomplete_grace_seconds: float = 0.0,
    now: float | None = None,
) -> IntakeResult:
    """Read the files; ``incomplete_grace_seconds``: an unreadable file modified more recently
    than this is left in the inbox (``deferred``), as its writer may not be done with it."""
    result = IntakeResult()
    now = time.time() if now is None else now
    for path in paths:
        try:
            receipt = intake.read_receipt_file(path, terminal)
        except FileNotFoundError:
            result.missing.append(path.name)
            continue
        except intake.IntakeError as exc:
            if exc.maybe_incomplete and _modified_within(path, incomplete_grace_seconds, now):
                result.deferred.append(path.name)
                continue
            result.rejected.append((path, exc.problems))
            if quarantine:
                inbox.quarantine_file(terminal, path, exc.problems, stage="intake")
            continue
        result.receipts.append(receipt)
        result.paths[id(receipt)] = path
    return result


def _modified_within(path: Path, seconds: float, now: float) -> bool:
    try:
        return now - path.stat().st_mtime < seconds
    except OSError:
        return False


def validate(
    config: PosfedConfig,
    terminal: Terminal,
    batch: IntakeResult,
    *,
    quarantine: bool = True,
    now: datetime | None = None,
    check_age: bool = True,
    spec: DatSpec | None = None,
) -> ValidationReport:
    """pandera's rules, then (with ``spec``) that the receipt renders under its .dat layout.

    A receipt the billing layout cannot hold (a number wider than its field) is rejected here,
    before anything is loaded: never rows in the database without their .dat file.
    """
    report = validate_batch(
        batch.receipts,
        allow_returns=terminal.allow_returns,
        quantity_decimals=terminal.quantity_decimals,
        variable_measure=terminal.variable_measure,
        now=now or datetime.now(UTC),
        max_clock_skew=timedelta(seconds=config.max_clock_skew_seconds),
        # A backfill re-validates old receipts: their age was judged when they arrived.
        max_age=timedelta(days=config.max_age_days if check_age else 36500),
    )
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
        for receipt, problems in report.invalid:
            inbox.quarantine_file(terminal, batch.path_of(receipt), problems, stage="validation")
    return report


def load(
    engine: Engine,
    terminal: Terminal,
    batch: IntakeResult,
    receipts: list[Receipt],
    *,
    quarantine: bool = True,
    run_id: str | None = None,
    detected_at: Mapping[str, datetime] | None = None,
) -> store.LoadResult:
    """Load into the central DB; ``detected_at`` (by file name) defaults to the files' mtimes."""
    if detected_at is None:
        detected_at = _file_times(batch, receipts)
    result = store.load_receipts(
        engine, receipts, tenant=terminal.tenant, run_id=run_id, detected_at=detected_at
    )
    if quarantine:
        for receipt in result.conflicts:
            inbox.quarantine_file(
                terminal,
                batch.path_of(receipt),
                [Problem("receiptId", receipt.receipt_id, result.conflict_reason(receipt))],
                stage="load",
            )
    return result


def _file_times(batch: IntakeResult, receipts: list[Receipt]) -> dict[str, datetime]:
    # A file is taken once it has settled, so its mtime is when it arrived in the inbox.
    times = {}
    for receipt in receipts:
        try:
            mtime = batch.path_of(receipt).stat().st_mtime
        except (KeyError, OSError):
            continue
        times[receipt.source_file] = datetime.fromtimestamp(mtime, UTC)
    return times


def _dat_problem(
    config: PosfedConfig, terminal: Terminal, spec: DatSpec, receipt: Receipt
) -> Problem | None:
    try:
        rendered = render_receipt(receipt, terminal, spec)
    except DatRenderError as exc:
        return Problem("receipt", receipt.receipt_id, f"cannot be rendered: {exc}")
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


def emit(
    config: PosfedConfig,
    terminal: Terminal,
    spec: DatSpec,
    receipts: list[Receipt],
    *,
    engine: Engine | None = None,
    run_id: str | None = None,
) -> list[Path]:
    """Write one .dat per receipt (deterministic: a re-run rewrites identical bytes).

    With ``engine``, the ingest ledger records when each receipt's .dat was written.
    """
    written = []
    for receipt in receipts:
        rendered = render_receipt(receipt, terminal, spec)
        written.append(write_dat(config.dat_dir, rendered, spec, receipt.business_day))
    if engine is not None:
        store.mark_dat_written(engine, receipts, run_id=run_id)
    return written


def archive(terminal: Terminal, batch: IntakeResult, receipts: list[Receipt]) -> None:
    for receipt in receipts:
        inbox.archive_file(terminal, batch.path_of(receipt), receipt.business_day)


def process_batch(
    config: PosfedConfig,
    terminal: Terminal,
    paths: list[Path],
    *,
    engine: Engine,
    spec: DatSpec,
    from_archive: bool = False,
) -> BatchSummary:
    """All stages for one batch. ``from_archive``: a backfill, files stay where they are."""
    move = not from_archive
    grace = config.incomplete_grace_seconds if move else 0.0
    batch = read_batch(terminal, paths, quarantine=move, incomplete_grace_seconds=grace)
    report = validate(config, terminal, batch, quarantine=move, check_age=move, spec=spec)
    loaded = load(engine, terminal, batch, report.valid, quarantine=move)
    accepted = loaded.inserted + loaded.duplicates
    dat_files = emit(config, terminal, spec, accepted, engine=engine)
    if move:
        archive(terminal, batch, accepted)
    return BatchSummary(
        files=len(paths) - len(batch.missing) - len(batch.deferred),
        receipts_valid=len(report.valid),
        receipts_rejected=len(batch.rejected) + len(report.invalid),
        inserted=len(loaded.inserted),
        duplicates=len(loaded.duplicates),
        conflicts=len(loaded.conflicts),
        lines=loaded.line_count,
        amount_total=sum((r.total for r in loaded.inserted), Decimal("0.00")),
        dat_files=dat_files,
    )


__all__ = ["DatRenderError", "process_batch", "read_batch", "validate", "load", "emit", "archive"]
