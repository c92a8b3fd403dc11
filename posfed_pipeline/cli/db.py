"""``posfed db``: the central database's schema, how far it is behind the store's ledger, and
sync and resync of the outbox by hand."""

from __future__ import annotations

import sys
import time

from posfed_pipeline.cli.common import EXIT_OK, EXIT_USAGE, EXIT_VERDICT, store_config
from posfed_pipeline.core import central_db


def add_parser(commands) -> None:
    db = commands.add_parser("db", help="central database").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    upgrade = db.add_parser("upgrade", help="create or upgrade the schema (Alembic)")
    upgrade.add_argument(
        "--sql",
        action="store_true",
        help="print the upgrade as a SQL script for a DBA instead of running it (no connection)",
    )
    upgrade.set_defaults(handler=_db_upgrade)
    db.add_parser(
        "status",
        help="how far the central database is behind the store's ledger, schema version, "
        "receipts per terminal and day (exit 1 if it is too far behind or out of reach)",
    ).set_defaults(handler=_db_status)
    db.add_parser(
        "sync", help="store the ledger's outbox in the central database now (once, no back-off)"
    ).set_defaults(handler=_db_sync)
    resync = db.add_parser(
        "resync",
        help="send deliveries again (all, a terminal's, a day's), including ones the central "
        "database refused, once their cause is fixed; idempotent",
    )
    resync.add_argument("--terminal", help="only this terminal's")
    resync.add_argument("--day", help="only this business day's (YYYY-MM-DD)")
    resync.set_defaults(handler=_db_resync)


def _db_upgrade(args) -> int:
    config = store_config(args)
    if args.sql:
        print(central_db.upgrade_sql(config.db_url, store_id=config.store_id), end="")
        return EXIT_OK
    engine = central_db.make_engine(config.db_url)
    try:
        central_db.upgrade_database(engine, store_id=config.store_id)
        revision = central_db.schema_revision(engine)
    except central_db.DatabaseUnavailable as exc:
        print(f"db upgrade: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"db upgrade: {engine.url.render_as_string(hide_password=True)} at revision {revision}")
    return EXIT_OK


def _db_status(args) -> int:
    from posfed_pipeline.core.central_db.timeouts import call_deadline
    from posfed_pipeline.core.stages import sync
    from posfed_pipeline.core.state.ledger import open_ledger

    config = store_config(args)
    ledger = open_ledger(config.home)
    lag = ledger.lag()
    level = sync.lag_level(lag, config.sync)
    state = ledger.sync_state()
    print(f"store ledger: {ledger.path}")
    print(f"central database lag: {level.value.upper()}: {sync.describe_lag(lag)}")
    if state.last_attempt_at:
        outcome = f"failed ({state.last_error})" if state.last_error else "succeeded"
        print(f"last sync: {_ago(state.last_attempt_at)}, {outcome}")
    if state.failures:
        wait = max(0.0, state.next_attempt_at - time.time())
        print(f"  {state.failures} failed attempt(s) in a row; next in {wait:.0f} s")
    for terminal_id, day, receipt_id, why in ledger.parked_entries(20):
        print(f"  refused: {terminal_id} {day} {receipt_id}: {why}")
    engine = central_db.make_engine(config.db_url)
    print(f"database: {engine.url.render_as_string(hide_password=True)}")
    try:
        with call_deadline(engine, config.sync.call_timeout_seconds, "db status"):
            revision = central_db.schema_revision(engine)
            rows = central_db.counts_by_terminal_day(engine, config.store_id) if revision else []
            summaries = (
                central_db.ledger_summary(engine, config.store_id)
                if revision and central_db.has_ledger(engine)
                else {}
            )
    except Exception as exc:  # the ledger's view above stands; say why this part is missing
        if not (
            isinstance(exc, central_db.DatabaseUnavailable) or central_db.is_transient_error(exc)
        ):
            raise
        print(f"db status: the central database is out of reach: {exc}", file=sys.stderr)
        return EXIT_VERDICT
    print(f"schema revision: {revision or 'none (run posfed db upgrade)'}")
    if rows:
        print(
            f"{'day':<12}{'terminal':<20}{'receipts':>10}{'total':>14}"
            f"{'deliveries':>12}{'re-sent':>9}{'conflicts':>11}"
        )
        for terminal_id, day, count, total in rows:
            summary = summaries.get((terminal_id, day))
            deliveries, duplicates, conflicts = (
                (summary.deliveries, summary.duplicates, summary.conflicts)
                if summary
                else ("-", "-", "-")
            )
            print(
                f"{day!s:<12}{terminal_id:<20}{count:>10}{total!s:>14}"
                f"{deliveries!s:>12}{duplicates!s:>9}{conflicts!s:>11}"
            )
    return EXIT_VERDICT if level is sync.LagLevel.FAIL else EXIT_OK


def _ago(at: float) -> str:
    seconds = max(0.0, time.time() - at)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _db_sync(args) -> int:
    from posfed_pipeline.core.stages import sync
    from posfed_pipeline.core.state.ledger import open_ledger

    config = store_config(args)
    ledger = open_ledger(config.home)
    engine = central_db.make_engine(config.db_url)
    try:
        sync.check_central_schema(engine, config.sync)
        done = sync.sync_pending(ledger, engine, config.sync)
    except Exception as exc:
        # Recorded like any attempt: `db status` and the lag check show it.
        ledger.finish_sync(None, error=str(exc), backoff=config.sync.backoff_seconds)
        if isinstance(exc, sync.SchemaMissing):
            print(f"db sync: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if not (
            isinstance(exc, central_db.DatabaseUnavailable) or central_db.is_transient_error(exc)
        ):
            raise
        print(f"db sync: the central database is out of reach: {exc}", file=sys.stderr)
        print(f"db sync: {sync.describe_lag(ledger.lag())}; nothing is lost", file=sys.stderr)
        return EXIT_VERDICT
    ledger.finish_sync(None, error=None, backoff=config.sync.backoff_seconds)
    print(
        f"db sync: {done.deliveries} delivery record(s) stored, {done.receipts_inserted} new "
        f"receipt(s), {len(done.refused)} refused, in {done.seconds:.2f} s"
    )
    print(f"db sync: {sync.describe_lag(ledger.lag())}")
    return EXIT_VERDICT if done.refused else EXIT_OK


def _db_resync(args) -> int:
    from datetime import date

    from posfed_pipeline.core.state.ledger import open_ledger

    config = store_config(args)
    if args.terminal:
        config.terminal(args.terminal)  # a ConfigError names the known terminals' problem
    try:
        day = date.fromisoformat(args.day) if args.day else None
    except ValueError:
        print(f"db resync: --day {args.day!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
        return EXIT_USAGE
    count = open_ledger(config.home).resync(terminal_id=args.terminal, business_day=day)
    print(
        f"db resync: {count} delivery record(s) back in the outbox; the next sync sends them "
        "(`posfed db sync`, or the sync sensor within seconds)"
    )
    return EXIT_OK
