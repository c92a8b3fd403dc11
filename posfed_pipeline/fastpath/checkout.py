"""The checkout: a claimed batch of a terminal's files through every stage in a warm worker,
without a Dagster run of its own.

A Dagster run costs 60-100 ms of CPU in bookkeeping (its events, its run record) around a few
milliseconds of work; a run per receipt made that bookkeeping most of what a store server
spends. So the trigger hands a terminal's new files straight to a warm worker, which runs the
very stages a receipts run runs (``core.stages.checkout``), under the id of the terminal-day's
*recording run*, and journals what the batch did. When the terminal has been quiet a while, or
its window is full, the trigger creates that run: it reports the window's batches from the
journal as one run (materializations, checks, rejections; ``defs.receipts``). The .dat is
written in milliseconds; the run appears in the UI within the window (``trigger``).

A batch that fails here (an exception, a worker that died) is handed to a receipts run of its
own, as before the checkout existed: with its retries, its logs and its place in the UI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from posfed_pipeline.core.config import PosfedConfig, load_config
from posfed_pipeline.core.dat import DatSpec, load_spec
from posfed_pipeline.core.stages import checkout
from posfed_pipeline.core.state.checkout_journal import CheckoutJournal, checkout_journal_path
from posfed_pipeline.core.state.ledger import Ledger, open_ledger

JOB_PREFIX = "checkout:"


@dataclass(frozen=True)
class CheckoutBatch:
    """What the trigger hands a worker: a claimed batch and the run that will record it."""

    job_id: str
    terminal_id: str
    business_day: date
    files: tuple[str, ...]
    attempt: int
    run_key: str  # the claims' run key: a relaunch finds the batch by it
    record_run_id: str

    def to_message(self) -> dict:
        return {
            "job_id": self.job_id,
            "terminal_id": self.terminal_id,
            "business_day": self.business_day.isoformat(),
            "files": list(self.files),
            "attempt": self.attempt,
            "run_key": self.run_key,
            "record_run_id": self.record_run_id,
        }

    @classmethod
    def from_message(cls, message: dict) -> CheckoutBatch:
        return cls(
            message["job_id"],
            message["terminal_id"],
            date.fromisoformat(message["business_day"]),
            tuple(message["files"]),
            message["attempt"],
            message["run_key"],
            message["record_run_id"],
        )


def is_checkout_job(job_id: str) -> bool:
    return job_id.startswith(JOB_PREFIX)


class CheckoutWorker:
    """A worker's checkout state: the store's configuration, ledger and journal, opened once."""

    def __init__(self, config: PosfedConfig | None = None):
        self.config = config or load_config()
        self.ledger: Ledger = open_ledger(self.config.home)
        self.journal = CheckoutJournal(checkout_journal_path(self.config.home))
        self._spec: tuple[float, DatSpec] | None = None

    def spec(self) -> DatSpec:
        # Read again when the file changes, as a run would read it.
        path = Path(self.config.dat_spec)
        mtime = os.stat(path).st_mtime if path.exists() else 0.0
        if self._spec is None or self._spec[0] != mtime:
            self._spec = (mtime, load_spec(self.config.dat_spec))
        return self._spec[1]

    def process(self, batch: CheckoutBatch) -> int:
        """Every stage for ``batch``, journaled for its recording run; returns the files done.
        Raises whatever the stages raise: the trigger then hands the batch to a run."""
        terminal = self.config.terminal(batch.terminal_id)
        outcome = checkout.process_inbox_batch(
            self.config,
            terminal,
            list(batch.files),
            day=batch.business_day,
            ledger=self.ledger,
            spec=self.spec(),
            run_id=batch.record_run_id,
            run_key=batch.run_key,
            attempt=batch.attempt,
        )
        summary = outcome.summary
        self.journal.add(
            batch.record_run_id,
            batch.terminal_id,
            batch.business_day,
            summary.to_json(),
            summary.files,
        )
        return summary.files
