"""Is each terminal delivering? The facts about one terminal, judged by its ``HealthRules``.

A terminal that silently stops sending (unplugged, its share unmounted, a till stuck on an
error dialog) produces no error anywhere: only its silence, the files piling up in its inbox,
or a quarantine that keeps growing tell. ``terminal_health`` gathers those facts (its last
accepted receipt, the files waiting, what was quarantined today) and says what needs a look.
Read by ``posfed status`` and by each terminal's check in the Dagster UI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.core.state import inbox, quarantine

LISTING_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class TerminalHealth:
    terminal_id: str
    tenant: str
    checked_at: datetime
    last_receipt_at: datetime | None  # when its last receipt was accepted
    waiting_files: int | None  # None: the inbox could not be listed
    oldest_waiting_seconds: float | None
    quarantined_today: int
    open_now: bool
    problems: tuple[str, ...]
    # Open, and no receipt for longer than its quiet_after_minutes: one of the problems.
    silent: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


class KnowsLastReceipt(Protocol):
    """What the health check asks the ledger (``Ledger``, or ``posfed metrics``' reading)."""

    def last_accepted_at(self, terminal_id: str) -> float | None: ...


def terminal_health(terminal: Terminal, ledger: KnowsLastReceipt, now: datetime) -> TerminalHealth:
    """``now``: timezone-aware."""
    rules = terminal.health
    local_now = now.astimezone(terminal.timezone)
    problems: list[str] = []

    last_at = ledger.last_accepted_at(terminal.id)
    last_receipt_at = (
        datetime.fromtimestamp(last_at, tz=terminal.timezone) if last_at is not None else None
    )

    waiting: int | None = None
    oldest: float | None = None
    try:
        scan = inbox.scan_inbox_within(terminal, LISTING_TIMEOUT_SECONDS)
        not_taken = entries_not_taken(scan, rules.max_waiting_minutes * 60, now.timestamp())
        if not_taken:
            shown = ", ".join(entry.describe() for entry in not_taken[:3])
            more = f" and {len(not_taken) - 3} more" if len(not_taken) > 3 else ""
            problems.append(
                f"{len(not_taken)} inbox entr{'y' if len(not_taken) == 1 else 'ies'} posfed "
                f"does not take: {shown}{more} (move or delete; never followed or opened)"
            )
        waiting = len(scan.ready) + len(scan.settling)
        # With markers, a file may rightly wait for its till's marker all day: only complete
        # files count as waiting on posfed.
        judged = (
            scan.ready if not terminal.delivery.closes_mean_complete else scan.ready + scan.settling
        )
        if judged:
            oldest = max(0.0, now.timestamp() - min(f.mtime_ns for f in judged) / 1e9)
    except OSError as exc:
        problems.append(f"inbox cannot be listed: {exc}")
    if oldest is not None and oldest > rules.max_waiting_minutes * 60:
        problems.append(
            f"a file has waited {duration_text(oldest)} in the inbox "
            f"(more than {rules.max_waiting_minutes:g} min)"
        )

    today = local_now.date()
    quarantined_today = sum(
        1
        for entry in quarantine.quarantined_files(terminal)
        if _local_day(entry, terminal) == today
    )
    if quarantined_today > rules.max_quarantined_per_day:
        problems.append(
            f"{quarantined_today} file(s) quarantined today "
            f"(more than {rules.max_quarantined_per_day})"
        )

    open_now = rules.is_open(local_now)
    silent = False
    if open_now and rules.quiet_after_minutes is not None:
        quiet_limit = timedelta(minutes=rules.quiet_after_minutes)
        since = rules.silent_since(local_now, last_receipt_at)
        if local_now - since > quiet_limit:
            silent = True
            what = (
                f"no receipt since {last_receipt_at:%Y-%m-%d %H:%M}"
                if last_receipt_at
                else "no receipt yet"
            )
            quiet = duration_text((local_now - since).total_seconds())
            problems.append(
                f"{what}: quiet for {quiet} while open (limit {rules.quiet_after_minutes:g} min)"
            )

    return TerminalHealth(
        terminal_id=terminal.id,
        tenant=terminal.tenant,
        checked_at=now,
        last_receipt_at=last_receipt_at,
        waiting_files=waiting,
        oldest_waiting_seconds=oldest,
        quarantined_today=quarantined_today,
        open_now=open_now,
        problems=tuple(problems),
        silent=silent,
    )


def entries_not_taken(
    scan: inbox.InboxScan, max_waiting_seconds: float, now: float
) -> list[inbox.SkippedEntry]:
    """What in the inbox posfed leaves alone and an operator should see: every entry that is
    not a regular file, and a file under a writer's temporary name left longer than a file
    may wait (a writer that died before its rename)."""
    return [
        entry
        for entry in scan.skipped
        if entry.not_regular or now - entry.mtime_ns / 1e9 > max_waiting_seconds
    ]


def _local_day(entry: quarantine.Quarantined, terminal: Terminal):
    stamp = entry.report.get("quarantined_at")
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp).astimezone(terminal.timezone).date()
    except ValueError:
        return None


def duration_text(seconds: float) -> str:
    """A span as an operator reads it: "45 s", "12 min", "3 h 05 min"."""
    minutes = int(seconds // 60)
    if minutes < 1:
        return f"{seconds:.0f} s"
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"
