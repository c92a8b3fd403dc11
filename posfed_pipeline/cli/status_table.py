"""``posfed status``'s table: one line per terminal, as an operator reads it (``rich``; the
command imports this module only when it runs, so no other command loads rich).

The facts and the verdict come from ``core.terminal_health`` (what the UI's checks show); the
last run's status from the Dagster instance, when ``DAGSTER_HOME`` names one.
"""

from __future__ import annotations

import os
from datetime import datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from posfed_pipeline.core.operations.terminal_health import TerminalHealth
from posfed_pipeline.fastpath.compatibility import DagsterCompatibility


def last_run_statuses(terminal_ids: list[str]) -> dict[str, str]:
    """terminal -> its latest receipts run's status; {} without a Dagster instance."""
    if not os.environ.get("DAGSTER_HOME"):
        return {}
    import dagster as dg

    from posfed_pipeline.names import TERMINAL_TAG

    statuses = {}
    with dg.DagsterInstance.get() as instance:
        for terminal_id in terminal_ids:
            runs = instance.get_runs(
                filters=dg.RunsFilter(tags={TERMINAL_TAG: terminal_id}), limit=1
            )
            if runs:
                statuses[terminal_id] = runs[0].status.value
    return statuses


def status_table(healths: list[TerminalHealth], last_runs: dict[str, str]) -> Table:
    table = Table(title="posfed: terminals", title_justify="left")
    for header, justify in (
        ("Terminal", "left"),
        ("Tenant", "left"),
        ("Last receipt", "left"),
        ("Waiting", "right"),
        ("Oldest waiting", "right"),
        ("Quarantined today", "right"),
        ("Last run", "left"),
        ("Health", "left"),
    ):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for health in healths:
        table.add_row(
            # Text(): names and reasons are shown as they are, never read as rich markup.
            Text(health.terminal_id),
            Text(health.tenant),
            Text(_ago(health.last_receipt_at, health.checked_at)),
            Text("?" if health.waiting_files is None else str(health.waiting_files)),
            Text(_seconds(health.oldest_waiting_seconds)),
            Text(str(health.quarantined_today)),
            Text(last_runs.get(health.terminal_id, "—")),
            Text("ok", style="green")
            if health.ok
            else Text("; ".join(health.problems), style="bold red"),
        )
    return table


def print_status(
    healths: list[TerminalHealth],
    last_runs: dict[str, str],
    dagster_releases: DagsterCompatibility | None = None,
) -> None:
    # Wide enough for the reasons when the output is a file or a pipe, not a terminal.
    console = Console(width=None if os.isatty(1) else 200)
    console.print(status_table(healths, last_runs))
    bad = [h.terminal_id for h in healths if not h.ok]
    console.print(
        Text(
            f"{len(bad)} of {len(healths)} terminal(s) need a look: {', '.join(bad)}"
            if bad
            else f"all {len(healths)} terminal(s) delivering"
        )
    )
    if dagster_releases is not None:
        # The releases found, and on an untested one what the fast path does and why.
        style = "" if dagster_releases.tested else "bold yellow"
        console.print(Text(dagster_releases.message(), style=style))


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    return f"{moment:%Y-%m-%d %H:%M} ({_seconds((now - moment).total_seconds())} ago)"


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"
