"""``posfed status``: each terminal's health, as a table (``status_table``) or JSON."""

from __future__ import annotations

import json
import sys

from posfed_pipeline.cli.common import EXIT_OK, EXIT_VERDICT, store_config


def add_parser(commands) -> None:
    status = commands.add_parser(
        "status",
        help="per terminal: last receipt, waiting files, quarantined today, last run, health",
    )
    status.add_argument("--json", action="store_true", help="the same facts as JSON")
    status.add_argument(
        "--check", action="store_true", help="exit 1 when a terminal needs a look (monitoring)"
    )
    status.set_defaults(handler=_status)


def _status(args) -> int:
    from datetime import UTC, datetime

    from posfed_pipeline.cli.status_table import last_run_statuses, print_status
    from posfed_pipeline.core.operations.terminal_health import terminal_health
    from posfed_pipeline.core.state.ledger import open_ledger
    from posfed_pipeline.fastpath import compatibility

    config = store_config(args)
    ledger = open_ledger(config.home)
    now = datetime.now(UTC)
    healths = [terminal_health(t, ledger, now) for t in config.terminals]
    last_runs = last_run_statuses(config.terminal_ids)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "terminal": h.terminal_id,
                        "tenant": h.tenant,
                        "last_receipt_at": h.last_receipt_at.isoformat()
                        if h.last_receipt_at
                        else None,
                        "waiting_files": h.waiting_files,
                        "oldest_waiting_seconds": h.oldest_waiting_seconds,
                        "quarantined_today": h.quarantined_today,
                        "open_now": h.open_now,
                        "last_run": last_runs.get(h.terminal_id),
                        "ok": h.ok,
                        "problems": list(h.problems),
                    }
                    for h in healths
                ],
                indent=2,
                ensure_ascii=False,
            )
        )
        dagster_releases = compatibility.check()
        if not dagster_releases.tested:  # stdout stays the JSON document
            print(f"posfed status: {dagster_releases.message()}", file=sys.stderr)
    else:
        print_status(healths, last_runs, compatibility.check())
    return EXIT_VERDICT if args.check and not all(h.ok for h in healths) else EXIT_OK
