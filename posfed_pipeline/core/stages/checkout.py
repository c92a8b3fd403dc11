"""A launcher's batch of inbox files through every stage: what a receipts run's step does, and
what the fast path's checkout does in a warm worker without a run of its own.

The files are named by the launcher that claimed them; a name that no longer denotes a file
posfed may take (a symlink put in its place, a name edited in the launchpad) is refused, the
rest go on. What the batch leaves in the inbox for a later look is recorded in the claim table
under the batch's run key, so that a launcher relaunches it when due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from posfed_pipeline.core.base.clock import SYSTEM_CLOCK, Clock
from posfed_pipeline.core.base.errors import PosfedError
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.dat import DatSpec
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.core.stages.batch_summary import BatchSummary
from posfed_pipeline.core.stages.processing import BatchResult, process_batch
from posfed_pipeline.core.state import claims, inbox
from posfed_pipeline.core.state.ledger import Ledger


class NothingToTake(PosfedError):
    """None of a batch's names denotes a file posfed may take (each reason is given)."""


@dataclass
class InboxBatchOutcome:
    result: BatchResult
    summary: BatchSummary
    refused: list[str]  # why each name refused was (the batch went on without them)


def process_inbox_batch(
    config: PosfedConfig,
    terminal: Terminal,
    names: list[str],
    *,
    day: date,
    ledger: Ledger,
    spec: DatSpec,
    run_id: str | None,
    run_key: str | None,
    attempt: int = 0,
    clock: Clock = SYSTEM_CLOCK,
) -> InboxBatchOutcome:
    """Raises ``NothingToTake`` when no name may be taken."""
    paths, refused = [], []
    for name in names:
        try:
            paths.append(inbox.inbox_path(terminal, name))
        except ValueError as exc:
            refused.append(str(exc))
    if refused and not paths:
        raise NothingToTake("; ".join(refused))
    result = process_batch(
        config,
        terminal,
        paths,
        ledger=ledger,
        spec=spec,
        run_id=run_id,
        day=day,
        clock=clock,
        attempt=attempt,
    )
    if result.intake.deferrals:
        # When to look at them again: the launchers relaunch them then.
        claims.ClaimTable(claims.claim_table_path(config.home)).defer(
            terminal.id,
            [(d.version.signature, d.retry_at, d.reason) for d in result.intake.deferrals],
            run_key=run_key,
        )
    return InboxBatchOutcome(result, BatchSummary.of(result, spec, day), refused)
