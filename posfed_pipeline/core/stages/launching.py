"""What every launcher does with a terminal's ready files before it creates runs.

The event-driven trigger and the terminal's sensor both go through here, so that a file becomes
the same run whichever of them sees it first, and so that nothing one file does can stop its
terminal's launcher:

1. a name posfed cannot carry through a run (not UTF-8, control characters, a backslash, too
   long for what posfed adds while moving it) is given a safe one first, before any claim is
   looked up, and the terminal's history says so (``inbox.safe_name``);
2. each file's business day is found, inside the days that have a partition;
3. the files are claimed, a run's worth per batch (``claims``);
4. files a run left for a later look (written to moments ago, or the file system would not let
   them be read or moved) are handed to a new attempt once due.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import date, datetime

from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.intake import parsing
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.core.state import claims, inbox, quarantine

log = logging.getLogger("posfed.launching")


@dataclass(frozen=True)
class PartitionDays:
    """The first and last business days that have a terminal-day partition."""

    first: date
    last: date

    @classmethod
    def of(cls, config: PosfedConfig, now: float) -> PartitionDays:
        # The partitions end with the store's current day (its local date, not the terminal's).
        return cls(config.terminal_day_start, datetime.fromtimestamp(now, config.timezone).date())

    def day_of(self, terminal: Terminal, item: inbox.InboxFile) -> date:
        return parsing.business_day_of_file(
            item.path, terminal, not_before=self.first, not_after=self.last
        )


def give_safe_names(terminal: Terminal, files: list[inbox.InboxFile]) -> list[inbox.InboxFile]:
    """``files`` as posfed can carry them: each unsafe name renamed (and recorded), or left out
    if renaming it failed (the health check then sees it waiting, the log says why). Call it
    before anything stores or looks up a file's signature (it holds the name)."""
    usable = []
    for item in files:
        problem = inbox.name_problem(item.name)
        if problem is None:
            usable.append(item)
            continue
        try:
            renamed = inbox.give_safe_name(terminal, item)
        except OSError as exc:
            log.warning(
                "%s: cannot rename %s (%s): %s",
                terminal.id,
                inbox.printable_name(item.name),
                problem,
                exc,
            )
            continue
        if renamed is None:
            continue  # another launcher renamed it a moment ago
        log.warning(
            "%s: %s renamed to %s: %s",
            terminal.id,
            inbox.printable_name(item.name),
            renamed.name,
            problem,
        )
        usable.append(renamed)
        try:
            quarantine.record_renamed(terminal, item.name, renamed.name, problem)
        except OSError as exc:  # the history cannot be written (a full disk): the log says it
            log.warning("%s: the rename is not in the history: %s", terminal.id, exc)
    return usable


def claim_ready(
    claim_table: claims.ClaimTable,
    terminal: Terminal,
    files: list[inbox.InboxFile],
    days: PartitionDays,
    *,
    max_files: int = inbox.MAX_FILES_PER_RUN,
) -> list[inbox.PlannedBatch]:
    """Claim ``files`` (ready, unclaimed, safely named: ``give_safe_names`` first) in batches
    of one business day each, at most ``max_files`` each."""
    return claims.claim_batches(
        claim_table, terminal, files, lambda f: days.day_of(terminal, f), max_files=max_files
    )


def relaunch_due(
    claim_table: claims.ClaimTable,
    terminal: Terminal,
    files: list[inbox.InboxFile],
    held: dict[str, claims.Claim],
    days: PartitionDays,
    now: float,
) -> list[inbox.PlannedBatch]:
    """Files still in the inbox whose run left them for a later look that is now due
    (``claims.Claim.retry_at``), handed to a new attempt: one batch per business day, only
    the claims this launcher won (another may have taken some first)."""
    present = {f.signature: f for f in files}
    due = [c for c in held.values() if c.due(now) and c.signature in present]
    batches = []
    for attempt in sorted({c.attempt for c in due}):
        same_attempt = [c for c in due if c.attempt == attempt]
        planned_batches = inbox.plan_batches(
            terminal,
            [present[c.signature] for c in same_attempt],
            lambda f: days.day_of(terminal, f),
            attempt=attempt + 1,
        )
        for planned in planned_batches:
            handed = hand_over(claim_table, terminal, planned, same_attempt)
            if handed is not None:
                batches.append(handed)
    return batches


def hand_over(
    claim_table: claims.ClaimTable,
    terminal: Terminal,
    planned: inbox.PlannedBatch,
    held: list[claims.Claim],
) -> inbox.PlannedBatch | None:
    """Hand the claims of ``planned``'s files (among ``held``) to its run, a new attempt:
    the batch of the files this launcher won (another launcher may have taken some first,
    then the run carries the rest under the key those files give), or None if it won none."""
    signatures = {f.signature for f in planned.files}
    mine = [c for c in held if c.signature in signatures]
    won = set(claim_table.reclaim(terminal.id, mine, planned.run_key, planned.attempt))
    if won == signatures:
        return planned
    if not won:
        return None
    kept = replace(planned, files=tuple(f for f in planned.files if f.signature in won))
    now_held = [claims.Claim(s, planned.run_key, planned.attempt, 0.0) for s in sorted(won)]
    claim_table.reclaim(terminal.id, now_held, kept.run_key, kept.attempt)
    return kept


def next_retry_at(held: dict[str, claims.Claim]) -> float | None:
    """When the earliest file left for a later look is due (wall clock), if any."""
    times = [c.retry_at for c in held.values() if c.retry_at is not None]
    return min(times, default=None)
