"""What a batch did, in the form its run reports: counts, rejections, .dat files, timings.

A ``BatchSummary`` is taken from a ``BatchResult`` the moment a batch is processed. The Dagster
step builds its metadata and checks from it, whether it processed the batch itself or records
batches the fast path's checkout processed earlier under its run id (``checkout_journal``): the
summaries of such batches are stored as JSON and merged, so one run reports a terminal-day's
window of them exactly as it would report one batch.

Lists are bounded (a 50,000-file backlog recorded by one run must not make its metadata, or its
journal row, grow without end): the first ``KEPT`` rejections and files left, and an evenly
thinned sample of the arrival-to-.dat seconds; the counts stay exact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import date
from decimal import Decimal

from posfed_pipeline.core.dat import DatSpec, check_dat
from posfed_pipeline.core.model.receipt import Problem
from posfed_pipeline.core.stages.processing import BatchResult

KEPT = 50  # rejections, files left for later, .dat re-parse failures
SECONDS_KEPT = 1_000  # arrival-to-.dat samples


@dataclass(frozen=True)
class RejectedFile:
    file: str
    problems: tuple[Problem, ...]
    quarantined_to: str | None  # None: not moved (a backfill, or the file changed meanwhile)


@dataclass
class BatchSummary:
    files: int = 0
    receipts_valid: int = 0
    receipts_rejected: int = 0  # a file of several transactions counts each rejected one
    rejected_files: int = 0  # rejected receipts and conflicts (refused after validation)
    receipts_accepted: int = 0
    redeliveries: int = 0
    conflicts: int = 0
    already_handled: int = 0
    still_being_written: int = 0
    left_for_later: int = 0
    amount_accepted: Decimal = Decimal("0.00")
    dat_files: int = 0
    resynced: int = 0
    rejections: list[RejectedFile] = field(default_factory=list)
    rejections_total: int = 0
    deferred: list[str] = field(default_factory=list)  # still being written: left in the inbox
    held: list[tuple[str, str]] = field(default_factory=list)  # (file, why) left for later
    dat_seconds: list[float] = field(default_factory=list)  # sorted
    dat_failures: list[str] = field(default_factory=list)  # "<file>: <first problem>"
    dat_failures_total: int = 0
    batches: int = 1

    @property
    def checked(self) -> int:
        return self.receipts_valid + self.receipts_rejected

    @classmethod
    def of(cls, result: BatchResult, spec: DatSpec, day: date) -> BatchSummary:
        """``result``'s summary; its .dat files re-parsed against ``spec``'s version of ``day``
        now, while they are certainly on disk (the billing software may take them any moment)."""
        rejections = result.rejections()
        failures = []
        version = spec.version_for(day)
        for path in result.dat_files:
            problems = check_dat(path.read_bytes(), version)
            if problems:
                failures.append(f"{path.name}: {problems[0]}")
        acceptance = result.acceptance
        return cls(
            files=result.files,
            receipts_valid=len(result.validation.valid),
            receipts_rejected=result.receipts_rejected,
            rejected_files=result.rejected_files,
            receipts_accepted=len(acceptance.inserted),
            redeliveries=len(acceptance.redelivered),
            conflicts=len(acceptance.conflicts),
            already_handled=len(result.intake.missing),
            still_being_written=len(result.intake.deferred),
            left_for_later=len(result.intake.held),
            amount_accepted=result.amount_accepted,
            dat_files=len(result.dat_files),
            resynced=result.resynced,
            rejections=[
                RejectedFile(
                    r.file,
                    tuple(r.problems),
                    str(r.quarantined_to) if r.quarantined_to is not None else None,
                )
                for r in rejections[:KEPT]
            ],
            rejections_total=len(rejections),
            deferred=list(result.intake.deferred[:KEPT]),
            held=list(result.intake.held[:KEPT]),
            dat_seconds=_thinned(sorted(result.dat_seconds)),
            dat_failures=failures[:KEPT],
            dat_failures_total=len(failures),
        )

    @classmethod
    def merged(cls, summaries: list[BatchSummary]) -> BatchSummary:
        """One summary of several batches, in their order."""
        total = cls(batches=0)
        for s in summaries:
            for name in _COUNTS:
                setattr(total, name, getattr(total, name) + getattr(s, name))
            total.amount_accepted += s.amount_accepted
            total.rejections = (total.rejections + s.rejections)[:KEPT]
            total.deferred = (total.deferred + s.deferred)[:KEPT]
            total.held = (total.held + s.held)[:KEPT]
            total.dat_failures = (total.dat_failures + s.dat_failures)[:KEPT]
            total.dat_seconds = _thinned(sorted(total.dat_seconds + s.dat_seconds))
        return total

    def to_json(self) -> str:
        data = asdict(self)
        data["amount_accepted"] = str(self.amount_accepted)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BatchSummary:
        data = json.loads(text)
        data["amount_accepted"] = Decimal(data["amount_accepted"])
        data["rejections"] = [
            RejectedFile(r["file"], tuple(Problem(**p) for p in r["problems"]), r["quarantined_to"])
            for r in data["rejections"]
        ]
        data["held"] = [tuple(h) for h in data["held"]]
        return cls(**data)


_COUNTS = (
    "files",
    "receipts_valid",
    "receipts_rejected",
    "rejected_files",
    "receipts_accepted",
    "redeliveries",
    "conflicts",
    "already_handled",
    "still_being_written",
    "left_for_later",
    "dat_files",
    "resynced",
    "rejections_total",
    "dat_failures_total",
    "batches",
)


def _thinned(values: list[float]) -> list[float]:
    """At most SECONDS_KEPT of the sorted ``values``, evenly spaced, the largest kept: the
    median and the maximum stay what they were (the median to within the thinning)."""
    if len(values) <= SECONDS_KEPT:
        return values
    step = len(values) / SECONDS_KEPT
    kept = [values[int(i * step)] for i in range(SECONDS_KEPT - 1)]
    return [*kept, values[-1]]
