"""The ``posfed`` command line: each command group registers itself in its own ``_add_*``
function below, and every command is listed in the README (a test checks it).

Exit codes: 0 success, 1 a verdict against the input, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from importlib.metadata import entry_points
from pathlib import Path

from posfed_pipeline.core import central_db, dat
from posfed_pipeline.core.config import ConfigError, PosfedConfig, load_config
from posfed_pipeline.core.intake import parsing
from posfed_pipeline.dagster_home import prepare_instance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="posfed",
        description="Point-of-sale receipts from every terminal's inbox to .dat files for the "
        "billing software and to the central register.",
        epilog="`posfed COMMAND --help` shows a command's options. Exit codes: 0 success, "
        "1 a verdict against the input (invalid receipt, lag too high, damaged backup), "
        "2 a usage or configuration error.",
    )
    parser.add_argument(
        "--config", help="store configuration (default: $POSFED_CONFIG or ./posfed.toml)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_db(commands)
    _add_spec_and_dat(commands)
    _add_receipt(commands)
    _add_quarantine(commands)
    _add_status(commands)
    _add_backup(commands)
    # Tools (posfed bench, chaos, simulate) add their commands from their own package, found
    # through its entry points: the product never imports them.
    for entry in sorted(entry_points(group="posfed.commands"), key=lambda e: e.name):
        add_command = _load_plugin(entry)
        if add_command is not None:
            add_command(commands)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, central_db.DatabaseConfigError) as exc:
        print(f"posfed: configuration error: {exc}", file=sys.stderr)
        return 2
    except central_db.DatabaseUnavailable as exc:
        print(f"posfed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _load_plugin(entry):
    """An entry point's object, or None with a warning: a broken or half-removed development
    package must not take the product's own commands down with it."""
    try:
        return entry.load()
    except Exception as exc:
        print(
            f"posfed: skipping {entry.group} {entry.name!r} ({entry.value}): {exc}",
            file=sys.stderr,
        )
        return None


def _config(args) -> PosfedConfig:
    return load_config(args.config)


# --- demo -------------------------------------------------------------------------------------


def _add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the embedded demo (UI, daemon, fast path, simulator), restarting what dies",
    )
    demo.add_argument("--host", default="127.0.0.1", help="webserver address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=3000, help="webserver port (default 3000)")
    demo.add_argument("--rate", type=float, default=0.2, help="simulated receipts per second")
    demo.add_argument("--no-simulator", action="store_true", help="only watch the inboxes")
    demo.add_argument(
        "--verbose", action="store_true", help="Dagster's info lines too (every sensor tick)"
    )
    demo.add_argument(
        "--no-fastpath",
        action="store_true",
        help="plain Dagster: sensors and a fresh process per run",
    )
    demo.add_argument(
        "--workers", type=int, default=2, help="the fast path's warm run worker processes"
    )
    demo.set_defaults(handler=_demo)

    fast = commands.add_parser("fastpath", help="the event-driven trigger and warm run workers")
    fast.add_argument("--workers", type=int, default=2, help="warm run worker processes")
    fast.add_argument(
        "--background-workers",
        type=int,
        default=1,
        help="warm workers of their own, at a lower CPU priority, for the central database "
        "sync (0: it shares the others)",
    )
    fast.add_argument("--no-trigger", action="store_true", help="only serve the run workers")
    fast.set_defaults(handler=_fastpath)


def _demo(args) -> int:
    from posfed_pipeline import services
    from posfed_pipeline.supervisor import AlreadySupervised, Supervisor, listen_problem

    # Before anything starts: a demo whose UI cannot listen would run without one.
    problem = listen_problem(args.host, args.port)
    if problem:
        hint = " (another posfed demo or Dagster UI?)" if problem.endswith("in use") else ""
        print(
            f"posfed demo: {problem}{hint}; start with --port N to use another port",
            file=sys.stderr,
        )
        return 2
    config = _config(args)
    dagster_home = prepare_instance(config)
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home))
    if config.config_path:
        env["POSFED_CONFIG"] = str(config.config_path)
    supervisor = Supervisor(
        services.store_services(
            dagster_home,
            env,
            host=args.host,
            port=args.port,
            verbose=args.verbose,
            fastpath=not args.no_fastpath,
            workers=args.workers,
        ),
        label="posfed demo",
        state_file=services.state_file(dagster_home),
    )
    try:
        supervisor.claim()
    except AlreadySupervised as refused:
        print(f"posfed demo: {refused}", file=sys.stderr)
        return 2
    print(f"posfed demo: {len(config.terminals)} terminals, state in {config.home}")
    print(f"posfed demo: open http://{args.host}:{args.port} (Ctrl-C stops everything)")
    stop = threading.Event()
    if not args.no_simulator:
        _start_demo_tills(config, args.rate, stop)
    try:
        # Until Ctrl-C or SIGTERM (also when started in the background, which ignores SIGINT);
        # a service that dies meanwhile is restarted, the others go on.
        supervisor.serve()
    finally:
        stop.set()
    return 0


def _fastpath(args) -> int:
    import logging

    from posfed_pipeline.fastpath.pool import AlreadyServing
    from posfed_pipeline.fastpath.service import serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl SQLiteImpl." etc.
    config = _config(args)
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or prepare_instance(config))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        serve_forever(
            config,
            dagster_home,
            workers=args.workers,
            trigger=not args.no_trigger,
            stop=stop,
            background_workers=args.background_workers,
        )
    except AlreadyServing as refused:
        print(f"posfed fastpath: {refused}", file=sys.stderr)
        return 1
    return 0


def _start_demo_tills(config: PosfedConfig, rate: float, stop: threading.Event) -> None:
    """The simulated tills come from the development package (posfed-dev), found through its
    ``posfed.demo_tills`` entry point: the product never imports it."""
    tills = entry_points(group="posfed.demo_tills")
    if not tills:
        inbox = config.terminals[0].inbox if config.terminals else config.home
        print(
            "posfed demo: no simulated tills (they come with posfed-dev: `make demo` in a "
            f"checkout); drop receipt files into an inbox such as {inbox}"
        )
        return
    drop_until = _load_plugin(next(iter(tills)))
    if drop_until is None:
        return
    threading.Thread(target=drop_until, args=(config, rate, stop), daemon=True).start()


# --- db ---------------------------------------------------------------------------------------


def _add_db(commands) -> None:
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
    config = _config(args)
    if args.sql:
        print(central_db.upgrade_sql(config.db_url, store_id=config.store_id), end="")
        return 0
    engine = central_db.make_engine(config.db_url)
    try:
        central_db.upgrade_database(engine, store_id=config.store_id)
        revision = central_db.schema_revision(engine)
    except central_db.DatabaseUnavailable as exc:
        print(f"db upgrade: {exc}", file=sys.stderr)
        return 2
    print(f"db upgrade: {engine.url.render_as_string(hide_password=True)} at revision {revision}")
    return 0


def _db_status(args) -> int:
    from posfed_pipeline.core.central_db.timeouts import call_deadline
    from posfed_pipeline.core.stages import sync
    from posfed_pipeline.core.state.ledger import open_ledger

    config = _config(args)
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
        return 1
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
    return 1 if level is sync.LagLevel.FAIL else 0


def _ago(at: float) -> str:
    seconds = max(0.0, time.time() - at)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


def _db_sync(args) -> int:
    from posfed_pipeline.core.stages import sync
    from posfed_pipeline.core.state.ledger import open_ledger

    config = _config(args)
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
            return 2
        if not (
            isinstance(exc, central_db.DatabaseUnavailable) or central_db.is_transient_error(exc)
        ):
            raise
        print(f"db sync: the central database is out of reach: {exc}", file=sys.stderr)
        print(f"db sync: {sync.describe_lag(ledger.lag())}; nothing is lost", file=sys.stderr)
        return 1
    ledger.finish_sync(None, error=None, backoff=config.sync.backoff_seconds)
    print(
        f"db sync: {done.deliveries} delivery record(s) stored, {done.receipts_inserted} new "
        f"receipt(s), {len(done.refused)} refused, in {done.seconds:.2f} s"
    )
    print(f"db sync: {sync.describe_lag(ledger.lag())}")
    return 1 if done.refused else 0


def _db_resync(args) -> int:
    from datetime import date

    from posfed_pipeline.core.state.ledger import open_ledger

    config = _config(args)
    if args.terminal:
        config.terminal(args.terminal)  # a ConfigError names the known terminals' problem
    try:
        day = date.fromisoformat(args.day) if args.day else None
    except ValueError:
        print(f"db resync: --day {args.day!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
        return 2
    count = open_ledger(config.home).resync(terminal_id=args.terminal, business_day=day)
    print(
        f"db resync: {count} delivery record(s) back in the outbox; the next sync sends them "
        "(`posfed db sync`, or the sync sensor within seconds)"
    )
    return 0


# --- spec and dat -----------------------------------------------------------------------------


def _add_spec_and_dat(commands) -> None:
    spec = commands.add_parser("spec", help=".dat layout specs").add_subparsers(
        dest="spec_command", required=True, metavar="ACTION"
    )
    check = spec.add_parser("check", help="validate a spec; exit 1 with the reasons")
    check.add_argument("spec", help="the spec file (JSON, format in dat_specs/README.md)")
    check.set_defaults(handler=_spec_check)

    datp = commands.add_parser("dat", help="render, parse and check .dat files").add_subparsers(
        dest="dat_command", required=True, metavar="ACTION"
    )
    render = datp.add_parser(
        "render", help="render receipts to DIR/<date folder>/<file name>, printing each path"
    )
    render.add_argument("--spec", required=True)
    render.add_argument("--out", required=True, metavar="DIR")
    render.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="store configuration naming the terminals and their department codes "
        "(default: $POSFED_CONFIG or ./posfed.toml)",
    )
    render.add_argument("--terminal", help="terminal id (default: the receipt's terminalId)")
    render.add_argument("receipts", nargs="+", metavar="RECEIPT.json")
    render.set_defaults(handler=_dat_render)
    version_help = (
        "business day YYYY-MM-DD selecting the spec version "
        "(default: the file's date folder, else the newest version)"
    )
    parse = datp.add_parser("parse", help="print a .dat file's records as JSON")
    parse.add_argument("--spec", required=True)
    parse.add_argument("--date", help=version_help)
    parse.add_argument("file")
    parse.set_defaults(handler=_dat_parse)
    dcheck = datp.add_parser("check", help="exit 0 if a .dat file conforms byte for byte")
    dcheck.add_argument("--spec", required=True)
    dcheck.add_argument("--date", help=version_help)
    dcheck.add_argument("file")
    dcheck.set_defaults(handler=_dat_check)


def _spec_check(args) -> int:
    try:
        spec = dat.load_spec(args.spec)
    except dat.SpecError as exc:
        print(f"spec check: INVALID: {args.spec} ({len(exc.problems)} problem(s))", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    for version in spec.versions:
        widths = ", ".join(f"{kind} {version.width(kind)} bytes" for kind, _ in version.records())
        print(
            f"spec check: {spec.name} version from {version.effective_from}: {widths}, "
            f"{version.encoding}"
        )
    print(f"spec check: OK ({args.spec})")
    return 0


def _dat_render(args) -> int:
    try:
        spec = dat.load_spec(args.spec)
    except dat.SpecError as exc:
        print(f"dat render: invalid spec:\n{exc}", file=sys.stderr)
        return 2
    try:
        config = _config(args)
    except ConfigError as exc:
        print(
            f"dat render: the store configuration names each terminal's department code, "
            f"and it cannot be read: {exc} (pass --config FILE or set POSFED_CONFIG)",
            file=sys.stderr,
        )
        return 2

    def terminal_of(path: Path):
        terminal_id = args.terminal
        if not terminal_id:
            try:
                doc = json.loads(path.read_bytes())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"not a JSON receipt ({exc})") from None
            terminal_id = doc.get("terminalId") if isinstance(doc, dict) else None
            if not isinstance(terminal_id, str) or not terminal_id:
                raise ValueError("the receipt has no terminalId; pass --terminal ID")
        if terminal_id not in config.terminal_ids:
            ids = config.terminal_ids
            known = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
            raise ValueError(
                f"terminal {terminal_id!r} is not in the store configuration "
                f"{config.config_path} (known: {known}); pass --config for its store"
            )
        return config.terminal(terminal_id)

    from posfed_pipeline.core.stages import processing

    out = Path(args.out)
    failed = 0
    for name in args.receipts:
        path = Path(name)
        try:
            terminal = terminal_of(path)
            receipt = parsing.read_receipt_file(path, terminal)
            # The pipeline's own verdict first: a receipt it would quarantine is not rendered.
            batch = processing.IntakeResult(receipts=[receipt])
            report = processing.validate(
                config, terminal, batch, quarantine=False, check_age=False, spec=spec
            )
            if report.invalid:
                failed += 1
                problems = "; ".join(str(p) for p in report.invalid[0][1])
                print(f"dat render: {name}: invalid, not rendered: {problems}", file=sys.stderr)
                continue
            rendered = dat.render_receipt(receipt, terminal, spec)
            print(dat.write_dat(out, rendered, spec, receipt.business_day))
        except (OSError, ValueError) as exc:  # IntakeError, DatRenderError, ConfigError included
            failed += 1
            print(f"dat render: {name}: cannot render: {exc}", file=sys.stderr)
    return 1 if failed else 0


def _version_for_file(spec: dat.DatSpec, args) -> dat.LayoutVersion:
    """--date if given, else the day the file's date folder names, else the newest version."""
    from datetime import date

    if args.date:
        try:
            day = date.fromisoformat(args.date)
        except ValueError:
            raise ValueError(f"--date {args.date!r} is not a date YYYY-MM-DD") from None
        return spec.version_for(day)
    for version in reversed(spec.versions):
        day = version.day_from_path(args.file)
        if day is not None:
            return spec.version_for(day)
    return spec.versions[-1]


def _dat_inputs(command: str, args) -> tuple[bytes, dat.LayoutVersion] | None:
    """The file's bytes and the spec version to read it with; None (reported) if unusable."""
    try:
        spec = dat.load_spec(args.spec)
        version = _version_for_file(spec, args)
        return Path(args.file).read_bytes(), version
    except dat.SpecError as exc:
        print(f"{command}: invalid spec:\n{exc}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"{command}: {args.file}: {exc}", file=sys.stderr)
    return None


def _dat_parse(args) -> int:
    inputs = _dat_inputs("dat parse", args)
    if inputs is None:
        return 2
    content, version = inputs
    try:
        records = dat.parse_dat(content, version)
    except dat.DatFormatError as exc:
        for problem in exc.problems:
            print(f"dat parse: {args.file}: {problem}", file=sys.stderr)
        return 1
    print(json.dumps(records, indent=2, ensure_ascii=False))
    return 0


def _dat_check(args) -> int:
    inputs = _dat_inputs("dat check", args)
    if inputs is None:
        return 2
    content, version = inputs
    problems = dat.check_dat(content, version)
    for problem in problems:
        print(f"dat check: {args.file}: {problem}", file=sys.stderr)
    if not problems:
        print(f"dat check: {args.file}: OK (version from {version.effective_from})")
    return 1 if problems else 0


# --- receipt ----------------------------------------------------------------------------------


def _add_receipt(commands) -> None:
    receipt = commands.add_parser("receipt", help="check receipt files").add_subparsers(
        dest="receipt_command", required=True, metavar="ACTION"
    )
    validate = receipt.add_parser(
        "validate",
        help="the pipeline's verdict on receipt files, with reasons; exit 1 if any is invalid",
    )
    validate.add_argument(
        "--terminal",
        help="terminal whose format and rules apply (default: the terminal folder the file is "
        "in, else the receipt's own terminalId)",
    )
    validate.add_argument(
        "--json", action="store_true", help='print a list of {"file", "valid", "errors"}'
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.set_defaults(handler=_receipt_validate)


def _receipt_validate(args) -> int:
    from posfed_pipeline.core.model.receipt import Problem
    from posfed_pipeline.core.stages import processing
    from posfed_pipeline.core.state.inbox import printable_name
    from posfed_pipeline.core.state.ledger import ledger_path, open_ledger

    config = _config(args)
    chosen = config.terminal(args.terminal) if args.terminal else None  # unknown: exit 2
    spec = dat.load_spec(config.dat_spec)
    # The store's ledger, if this is its server: a receipt id it holds with other content is
    # refused by the pipeline, so here too. Only read.
    ledger = open_ledger(config.home) if ledger_path(config.home).exists() else None
    verdicts: dict[str, tuple[str | None, list[Problem]]] = {}
    by_terminal: dict[str, dict[Path, str]] = {}
    for name in args.files:
        path = Path(name)
        not_a_file = _not_a_regular_file(path)
        if not_a_file:
            verdicts[name] = (None, [Problem("file", printable_name(name), not_a_file)])
            continue
        terminal_id = chosen.id if chosen else _terminal_of_file(config, path)
        if terminal_id is None:
            rule = "cannot tell which terminal this file is from; pass --terminal ID"
            verdicts[name] = (None, [Problem("terminalId", "unknown", rule)])
            continue
        by_terminal.setdefault(terminal_id, {})[path] = name

    # The pipeline's stages, without moving any file (processing.judge); a batch at a time in
    # which no two files share a name (reports name files, not paths).
    # A file of several transactions (POSLog) has a verdict per transaction: "<file>#<n>".
    transaction_names: dict[str, str] = {}  # "<file>#<n>" -> "transaction 2 (SequenceNumber …)"
    for terminal_id, names in by_terminal.items():
        terminal = config.terminal(terminal_id)
        for group in _batches_of_distinct_names(names):
            judgement = processing.judge(config, terminal, list(group), spec=spec, ledger=ledger)
            batch, report = judgement.intake, judgement.validation
            by_name = {path.name: name for path, name in group.items()}

            def shown(file_name: str, by_name=by_name) -> str:
                """The argument a reported name came from; "<file>#<n>": a transaction's."""
                if file_name in by_name:
                    return by_name[file_name]
                base, _, index = file_name.rpartition("#")
                return f"{by_name[base]}#{index}"

            for key, label in batch.transactions.items():
                transaction_names[shown(key)] = label
            for rejected_name, problems in batch.rejected:
                verdicts[shown(rejected_name)] = (terminal_id, problems)
            for receipt, problems in report.invalid:
                verdicts[_shown_name(batch, group, receipt)] = (terminal_id, problems)
            for receipt, reason in judgement.conflicts:
                problem = Problem("receiptId", receipt.receipt_id, reason)
                verdicts[_shown_name(batch, group, receipt)] = (terminal_id, [problem])
            for receipt in report.valid:
                verdicts[_shown_name(batch, group, receipt)] = (terminal_id, [])
            for missing in batch.missing:
                problem = Problem("file", printable_name(missing), "vanished while reading")
                verdicts[by_name[missing]] = (terminal_id, [problem])
            for changed in batch.deferred:
                rule = "changed while it was read (still being written?): run this again"
                verdicts[by_name[changed]] = (terminal_id, [Problem("file", changed, rule)])
            for held, why in batch.held:
                problem = Problem("file", printable_name(held), why)
                verdicts[by_name[held]] = (terminal_id, [problem])

    order = {name: n for n, name in enumerate(dict.fromkeys(args.files))}

    def in_file_order(name: str) -> tuple[int, int]:
        if name in order:
            return order[name], 0
        file_name, _, index = name.rpartition("#")
        return order[file_name], int(index)

    results = [(name, *verdicts[name]) for name in sorted(verdicts, key=in_file_order)]
    if args.json:
        listing = [
            {
                "file": printable_name(name),
                "terminal": terminal_id,
                **({"transaction": transaction_names[name]} if name in transaction_names else {}),
                "valid": not problems,
                "errors": [p.as_dict() for p in problems],
            }
            for name, terminal_id, problems in results
        ]
        print(json.dumps(listing, indent=2, ensure_ascii=False))
    else:
        for name, terminal_id, problems in results:
            where = f" ({terminal_id})" if terminal_id else ""
            if name in transaction_names:
                where += f" {transaction_names[name]}"
            print(f"{printable_name(name)}{where}: {'INVALID' if problems else 'valid'}")
            for problem in problems:
                print(
                    printable_name(f"  - {problem.field}: {problem.rule} (value: {problem.value})")
                )
        invalid = sum(1 for _, _, problems in results if problems)
        print(f"receipt validate: {len(results) - invalid} valid, {invalid} invalid")
    return 1 if any(problems for _, _, problems in results) else 0


def _batches_of_distinct_names(names: dict[Path, str]) -> list[dict[Path, str]]:
    """``names`` (path -> as given) split so that no batch holds two files of one name."""
    batches: list[dict[Path, str]] = []
    for path, name in names.items():
        batch = next((b for b in batches if all(p.name != path.name for p in b)), None)
        if batch is None:
            batch = {}
            batches.append(batch)
        batch[path] = name
    return batches


def _not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` cannot be validated as a file (None: it can), as the pipeline would see
    it in an inbox: a symlink is never followed there, nor anything but a regular file read."""
    import stat

    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return f"cannot be examined: {exc.strerror}"
    if stat.S_ISLNK(mode):
        return "a symbolic link: posfed never follows one in an inbox (validate its target)"
    if not stat.S_ISREG(mode):
        return "not a regular file: posfed never opens one in an inbox"
    return None


def _shown_name(batch, names: dict[Path, str], receipt) -> str:
    from posfed_pipeline.core.stages import processing

    name = names[batch.path_of(receipt)]
    part = batch.parts.get(id(receipt))
    return processing.part_name(name, part) if part else name


def _terminal_of_file(config: PosfedConfig, path: Path) -> str | None:
    """The terminal folder a file sits in (inbox, archive, quarantine), else its terminalId."""
    places = {Path(os.path.abspath(path)), path.resolve()}  # as written, and through links
    for terminal in config.terminals:
        if any(place.is_relative_to(terminal.folder) for place in places):
            return terminal.id
    try:
        data = path.read_bytes()[: parsing.MAX_FILE_BYTES]
    except OSError:
        return None
    # Read the claim in each configured format; it counts only from a terminal of that format.
    for mapping in dict.fromkeys(t.mapping for t in config.terminals):
        claimed = parsing.claimed_terminal_id(data, mapping)
        if claimed in config.terminal_ids and config.terminal(claimed).mapping == mapping:
            return claimed
    return None


# --- quarantine -------------------------------------------------------------------------------


def _add_quarantine(commands) -> None:
    group = commands.add_parser(
        "quarantine", help="rejected files: list, read why, re-queue once fixed, or discard"
    ).add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")
    listing = group.add_parser("list", help="quarantined files with their first reason")
    listing.add_argument("--terminal", help="only this terminal")
    listing.add_argument("--json", action="store_true", help="the reports as a JSON list")
    listing.set_defaults(handler=_quarantine_list)
    show = group.add_parser("show", help="a quarantined file's report and its history")
    show.add_argument("terminal", metavar="TERMINAL")
    show.add_argument("file", metavar="FILE", help="its name in the quarantine")
    show.set_defaults(handler=_quarantine_show)
    retry = group.add_parser(
        "retry", help="move files back into their inbox, to be processed again (logged)"
    )
    retry.add_argument("terminal", metavar="TERMINAL")
    retry.add_argument("files", nargs="*", metavar="FILE", help="names in the quarantine")
    retry.add_argument("--all", action="store_true", help="every file the terminal has there")
    retry.set_defaults(handler=_quarantine_retry)
    discard = group.add_parser(
        "discard",
        help="set files aside for good, with a reason (kept in quarantine/discarded/, logged)",
    )
    discard.add_argument("terminal", metavar="TERMINAL")
    discard.add_argument("files", nargs="+", metavar="FILE", help="names in the quarantine")
    discard.add_argument("--reason", required=True, help="why, for the history")
    discard.set_defaults(handler=_quarantine_discard)


def _quarantine_list(args) -> int:
    from posfed_pipeline.core.state import quarantine
    from posfed_pipeline.core.state.inbox import printable_name

    config = _config(args)
    terminals = [config.terminal(args.terminal)] if args.terminal else list(config.terminals)
    entries = [e for t in terminals for e in quarantine.quarantined_files(t)]
    not_taken = [(t.id, entry) for t in terminals for entry in _entries_not_taken(t)]
    if args.json:
        listing = [{"terminal": e.terminal, "name": e.name, **e.report} for e in entries]
        listing += [
            {
                "terminal": terminal_id,
                "name": printable_name(entry.name),
                "not_taken": entry.kind,
                "where": "inbox",
            }
            for terminal_id, entry in not_taken
        ]
        print(json.dumps(listing, indent=2, ensure_ascii=False))
        return 0
    for e in entries:
        when = e.report.get("quarantined_at", "?")
        print(f"{e.terminal}  {printable_name(e.name)}  {when}  {printable_name(e.first_problem)}")
    print(f"quarantine: {len(entries)} file(s)")
    if not_taken:
        for terminal_id, entry in not_taken:
            print(f"{terminal_id}  inbox/{entry.describe()}")
        print(
            f"inboxes: {len(not_taken)} entr{'y' if len(not_taken) == 1 else 'ies'} not taken "
            "(not regular files, or a writer's temporary name left behind): move or delete them"
        )
    return 0


def _entries_not_taken(terminal) -> list:
    """What the terminal's health check reports as left alone in its inbox."""
    import time

    from posfed_pipeline.core.operations import terminal_health
    from posfed_pipeline.core.state import inbox

    try:
        scan = inbox.scan_inbox_within(terminal, terminal_health.LISTING_TIMEOUT_SECONDS)
    except OSError:
        return []  # `posfed status` says the inbox cannot be listed
    limit = terminal.health.max_waiting_minutes * 60
    return terminal_health.entries_not_taken(scan, limit, time.time())


def _quarantine_show(args) -> int:
    from posfed_pipeline.core.state import quarantine

    terminal = _config(args).terminal(args.terminal)
    try:
        entry = quarantine.find(terminal, args.file)
    except FileNotFoundError as exc:
        print(f"posfed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(entry.report, indent=2, ensure_ascii=False))
    print("history:")
    original = entry.report.get("file", entry.name)
    for event in quarantine.history(terminal, original):
        when = event.get("quarantined_at") or event.get("at")
        if event["event"] == "renamed":  # its name could not be carried: what it was called
            print(f"  {when}  renamed from {event.get('original_name')} ({event.get('reason')})")
            continue
        print(f"  {when}  {event['event']}  as {event.get('quarantined_as')}")
    return 0


def _quarantine_retry(args) -> int:
    import getpass

    from posfed_pipeline.core.state import quarantine

    terminal = _config(args).terminal(args.terminal)
    names = [e.name for e in quarantine.quarantined_files(terminal)] if args.all else args.files
    if not names:
        print("posfed: name the files to retry, or pass --all", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        try:
            back = quarantine.retry(terminal, name, by=getpass.getuser())
        except FileNotFoundError as exc:
            print(f"posfed: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{terminal.id}: {name} -> inbox/{back.name}")
    print(f"quarantine retry: {len(names) - failed} re-queued, {failed} not found")
    return 1 if failed else 0


def _quarantine_discard(args) -> int:
    import getpass

    from posfed_pipeline.core.state import quarantine

    terminal = _config(args).terminal(args.terminal)
    failed = 0
    for name in args.files:
        try:
            moved = quarantine.discard(terminal, name, reason=args.reason, by=getpass.getuser())
        except FileNotFoundError as exc:
            print(f"posfed: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{terminal.id}: {name} -> quarantine/{quarantine.DISCARDED_FOLDER}/{moved.name}")
    print(f"quarantine discard: {len(args.files) - failed} set aside, {failed} not found")
    return 1 if failed else 0


# --- backup ---------------------------------------------------------------------------------


# --- status -----------------------------------------------------------------------------------


def _add_status(commands) -> None:
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

    from posfed_pipeline.core.operations.terminal_health import terminal_health
    from posfed_pipeline.core.state.ledger import open_ledger
    from posfed_pipeline.status import last_run_statuses, print_status

    config = _config(args)
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
    else:
        print_status(healths, last_runs)
    return 1 if args.check and not all(h.ok for h in healths) else 0


def _add_backup(commands) -> None:
    group = commands.add_parser(
        "backup", help="the store server's local state (ledger, inboxes, archive, ...) in a file"
    ).add_subparsers(dest="backup_command", required=True, metavar="ACTION")
    create = group.add_parser(
        "create", help="write a consistent backup while posfed runs (databases by SQLite's API)"
    )
    create.add_argument(
        "file",
        nargs="?",
        help="the .tar.gz to write (default: posfed-backup-<store>-<time>.tar.gz here)",
    )
    create.set_defaults(handler=_backup_create)
    restore = group.add_parser(
        "restore", help="restore a backup into the home folder (services stopped), verified"
    )
    restore.add_argument("file", help="a file written by `posfed backup create`")
    restore.add_argument(
        "--replace",
        action="store_true",
        help="the home folder is not empty: rename it to <home>.before-restore-<time> first",
    )
    restore.set_defaults(handler=_backup_restore)


def _backup_create(args) -> int:
    from posfed_pipeline.core.state import backup

    config = _config(args)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = Path(args.file or f"posfed-backup-{config.store_id}-{stamp}.tar.gz")

    def progress(files: int, name: str) -> None:
        print(f"\rbackup: {files} files ({name[-60:]})", end="", file=sys.stderr, flush=True)

    try:
        done = backup.create_backup(config.home, target, progress=progress)
    except backup.BackupError as exc:
        print(f"backup create: {exc}", file=sys.stderr)
        return 2
    print(
        f"\rbackup create: {done.path}: {done.files} files ({done.databases} databases), "
        f"{done.bytes / 1e6:.1f} MB of {config.home}"
    )
    return 0


def _backup_restore(args) -> int:
    from posfed_pipeline.core.state import backup, claims

    config = _config(args)
    claim_table = claims.claim_table_path(config.home)
    if claim_table.exists() and claims.ClaimTable(claim_table).alive():
        print(
            "backup restore: posfed's fast path is running on this home; stop the services "
            "(posfed-fastpath, the daemon, the webserver, the code server; or posfed demo) first",
            file=sys.stderr,
        )
        return 2
    try:
        done = backup.restore_backup(Path(args.file), config.home, replace=args.replace)
    except backup.BackupError as exc:
        print(f"backup restore: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, backup.BackupDamaged) else 2
    if done.moved_aside:
        print(f"backup restore: the previous {config.home} is kept as {done.moved_aside}")
    print(
        f"backup restore: {done.files} files ({done.databases} databases) verified and "
        f"restored into {done.home}; start the services again"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
