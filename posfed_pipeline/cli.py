"""The ``posfed`` command line.

    posfed demo                      the embedded demo: Dagster UI + daemon + receipt simulator
    posfed simulate                  drop simulated receipts into the terminals' inboxes
    posfed db upgrade | status       central database schema and contents
    posfed spec check SPEC           validate a .dat layout spec
    posfed dat render|parse|check    the .dat engine by hand

Each command group registers itself in its own ``_add_*`` function below.
Exit codes: 0 success, 1 a verdict against the input, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from posfed_pipeline.core import dat, intake, store
from posfed_pipeline.core.config import ConfigError, PosfedConfig, load_config

REPO_ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posfed", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", help="store configuration (default: $POSFED_CONFIG or ./posfed.toml)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_simulate(commands)
    _add_db(commands)
    _add_spec_and_dat(commands)
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as exc:
        print(f"posfed: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _config(args) -> PosfedConfig:
    return load_config(args.config)


# --- demo -------------------------------------------------------------------------------------


def _add_demo(commands) -> None:
    demo = commands.add_parser("demo", help="run the embedded demo (Dagster UI, daemon, simulator)")
    demo.add_argument("--host", default="127.0.0.1", help="webserver address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=3000)
    demo.add_argument("--rate", type=float, default=0.5, help="simulated receipts per second")
    demo.add_argument("--no-simulator", action="store_true", help="only watch the inboxes")
    demo.set_defaults(handler=_demo)


def prepare_instance(config: PosfedConfig) -> Path:
    """Folders, schema and Dagster home for the embedded setup; returns DAGSTER_HOME."""
    config.ensure_folders()
    store.upgrade_database(store.make_engine(config.db_url))
    dagster_home = config.home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO_ROOT / "deploy" / "dagster.dev.yaml", dagster_home / "dagster.yaml")
    return dagster_home


def _demo(args) -> int:
    config = _config(args)
    dagster_home = prepare_instance(config)
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home))
    if config.config_path:
        env["POSFED_CONFIG"] = str(config.config_path)
    command = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-w",
        str(REPO_ROOT / "workspace.yaml"),
        "-h",
        args.host,
        "-p",
        str(args.port),
    ]
    print(f"posfed demo: {len(config.terminals)} terminals, state in {config.home}")
    print(f"posfed demo: open http://{args.host}:{args.port} (Ctrl-C stops everything)")
    dagster = subprocess.Popen(command, env=env, cwd=REPO_ROOT, start_new_session=True)
    stop = threading.Event()
    if not args.no_simulator:
        threading.Thread(
            target=_simulate_until, args=(config, args.rate, stop), daemon=True
        ).start()
    try:
        while dagster.poll() is None:
            time.sleep(0.5)
        return dagster.returncode or 0
    except KeyboardInterrupt:
        print("\nposfed demo: stopping (waiting for Dagster to shut down)...")
        stop.set()
        os.killpg(dagster.pid, signal.SIGINT)
        try:
            dagster.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(dagster.pid, signal.SIGKILL)
            dagster.wait()
        return 0


def _simulate_until(config: PosfedConfig, rate: float, stop: threading.Event) -> None:
    from posfed_pipeline.core.simulator import ReceiptSimulator

    simulator = ReceiptSimulator(list(config.terminals))
    time.sleep(8)  # let the webserver and daemon come up first
    while not stop.wait(1.0 / rate):
        simulator.drop(simulator.random.choice(simulator.terminals))


# --- simulate ---------------------------------------------------------------------------------


def _add_simulate(commands) -> None:
    sim = commands.add_parser("simulate", help="drop simulated receipts into terminal inboxes")
    sim.add_argument("--terminals", type=int, default=None, help="use the first N terminals")
    sim.add_argument("--rate", type=float, default=1.0, help="receipts per second (default 1)")
    sim.add_argument("--duration", type=float, default=10.0, help="seconds (0: until Ctrl-C)")
    sim.add_argument("--seed", type=int, default=None)
    sim.set_defaults(handler=_simulate)


def _simulate(args) -> int:
    from posfed_pipeline.core.simulator import ReceiptSimulator

    config = _config(args)
    config.ensure_folders()
    terminals = list(config.terminals[: args.terminals] if args.terminals else config.terminals)
    if args.rate <= 0:
        print("posfed simulate: --rate must be positive", file=sys.stderr)
        return 2
    expected = int(args.rate * args.duration) if args.duration > 0 else None
    sent = 0

    def progress(path: Path) -> None:
        nonlocal sent
        sent += 1
        total = f"/{expected}" if expected else ""
        print(
            f"\rsimulate: {sent}{total} receipts (last: {path.parent.parent.name}/{path.name})",
            end="",
            flush=True,
        )

    simulator = ReceiptSimulator(terminals, seed=args.seed)
    try:
        simulator.run(rate=args.rate, duration=args.duration, on_drop=progress)
    finally:
        print(f"\nsimulate: dropped {sent} receipts into {len(terminals)} terminal inboxes")
    return 0


# --- db ---------------------------------------------------------------------------------------


def _add_db(commands) -> None:
    db = commands.add_parser("db", help="central database").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    db.add_parser("upgrade", help="create or upgrade the schema (Alembic)").set_defaults(
        handler=_db_upgrade
    )
    db.add_parser("status", help="schema version and receipts per terminal and day").set_defaults(
        handler=_db_status
    )


def _db_upgrade(args) -> int:
    config = _config(args)
    engine = store.make_engine(config.db_url)
    store.upgrade_database(engine)
    print(
        f"db upgrade: {engine.url.render_as_string(hide_password=True)} "
        f"at revision {store.schema_revision(engine)}"
    )
    return 0


def _db_status(args) -> int:
    config = _config(args)
    engine = store.make_engine(config.db_url)
    print(f"database: {engine.url.render_as_string(hide_password=True)}")
    print(f"schema revision: {store.schema_revision(engine) or 'none (run posfed db upgrade)'}")
    rows = store.counts_by_terminal_day(engine) if store.schema_revision(engine) else []
    if rows:
        print(f"{'day':<12}{'terminal':<20}{'receipts':>10}{'total':>14}")
        for terminal_id, day, count, total in rows:
            print(f"{day!s:<12}{terminal_id:<20}{count:>10}{total!s:>14}")
    return 0


# --- spec and dat -----------------------------------------------------------------------------


def _add_spec_and_dat(commands) -> None:
    spec = commands.add_parser("spec", help=".dat layout specs").add_subparsers(
        dest="spec_command", required=True, metavar="ACTION"
    )
    check = spec.add_parser("check", help="validate a spec; exit 1 with the reasons")
    check.add_argument("spec")
    check.set_defaults(handler=_spec_check)

    datp = commands.add_parser("dat", help="render, parse and check .dat files").add_subparsers(
        dest="dat_command", required=True, metavar="ACTION"
    )
    render = datp.add_parser("render", help="render receipts to .dat files")
    render.add_argument("--spec", required=True)
    render.add_argument("--out", required=True)
    render.add_argument("--terminal", help="terminal id (default: the receipt's terminalId)")
    render.add_argument("receipts", nargs="+")
    render.set_defaults(handler=_dat_render)
    parse = datp.add_parser("parse", help="print a .dat file's records as JSON")
    parse.add_argument("--spec", required=True)
    parse.add_argument(
        "--date",
        help="business day YYYY-MM-DD selecting the spec version "
        "(default: the folder name, else the newest version)",
    )
    parse.add_argument("file")
    parse.set_defaults(handler=_dat_parse)
    dcheck = datp.add_parser("check", help="exit 0 if a .dat file conforms byte for byte")
    dcheck.add_argument("--spec", required=True)
    dcheck.add_argument("--date", help="business day YYYY-MM-DD (see parse)")
    dcheck.add_argument("file")
    dcheck.set_defaults(handler=_dat_check)


def _spec_check(args) -> int:
    try:
        spec = dat.load_spec(args.spec)
    except dat.SpecError as exc:
        print(f"spec check: INVALID: {exc}", file=sys.stderr)
        return 1
    for version in spec.versions:
        widths = ", ".join(
            f"{kind} {sum(f.length for f in fields)} bytes" for kind, fields in version.records()
        )
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
        print(f"dat render: {exc}", file=sys.stderr)
        return 2
    config = _config(args)
    out = Path(args.out)
    failed = 0
    for name in args.receipts:
        path = Path(name)
        try:
            terminal_id = args.terminal or json.loads(path.read_bytes()).get("terminalId")
            terminal = config.terminal(str(terminal_id))
            receipt = intake.read_receipt_file(path, terminal)
            rendered = dat.render_receipt(receipt, terminal, spec)
            print(dat.write_dat(out, rendered, spec, receipt.business_day))
        except (OSError, ValueError, AttributeError) as exc:
            failed += 1
            print(f"dat render: {name}: cannot render: {exc}", file=sys.stderr)
    return 1 if failed else 0


def _version_for_file(spec: dat.DatSpec, args) -> dat.LayoutVersion:
    from datetime import date, datetime

    if args.date:
        return spec.version_for(date.fromisoformat(args.date))
    folder = Path(args.file).resolve().parent.name
    try:
        return spec.version_for(datetime.strptime(folder, "%Y%m%d").date())
    except ValueError:
        return spec.versions[-1]


def _dat_parse(args) -> int:
    spec = dat.load_spec(args.spec)
    try:
        records = dat.parse_dat(Path(args.file).read_bytes(), _version_for_file(spec, args))
    except ValueError as exc:
        print(f"dat parse: {args.file}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(records, indent=2, ensure_ascii=False))
    return 0


def _dat_check(args) -> int:
    spec = dat.load_spec(args.spec)
    problems = dat.check_dat(Path(args.file).read_bytes(), _version_for_file(spec, args))
    for problem in problems:
        print(f"dat check: {args.file}: {problem}", file=sys.stderr)
    if not problems:
        print(f"dat check: {args.file}: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
