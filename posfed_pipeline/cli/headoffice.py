"""``posfed headoffice``: the head office view of a chain, a Dagster webserver and daemon of
its own (its own code location, instance and port) reading the central database; ``--check``
reads it once and prints each store's verdict instead."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

from posfed_pipeline.cli.common import EXIT_OK, EXIT_USAGE, EXIT_VERDICT
from posfed_pipeline.core import central_db
from posfed_pipeline.core.config.headoffice import (
    HEADOFFICE_CONFIG_ENV,
    HeadOfficeConfig,
    headoffice_database_url,
    load_headoffice_config,
)

DEFAULT_PORT = 3100


def add_parser(commands) -> None:
    office = commands.add_parser(
        "headoffice",
        help="the head office view of a chain: per store, last receipt and sync lag; "
        "settlements per tenant across stores; store-days not settled (its own Dagster UI)",
    )
    office.add_argument(
        "file",
        nargs="?",
        metavar="FILE",
        help=f"the head office configuration (default: ${HEADOFFICE_CONFIG_ENV} or "
        "./headoffice.toml); the central database: POSFED_DB_URL",
    )
    office.add_argument("--host", default="127.0.0.1", help="webserver address (default 127.0.0.1)")
    office.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"webserver port (default {DEFAULT_PORT})"
    )
    office.add_argument("--verbose", action="store_true", help="Dagster's info lines too")
    office.add_argument(
        "--check",
        action="store_true",
        help="load the code location, read the central database once and print each store's "
        "verdict, then exit (1 if a store needs a look or a closed day is not settled)",
    )
    office.set_defaults(handler=_headoffice)


def _headoffice(args) -> int:
    config = load_headoffice_config(args.file)
    db_url = headoffice_database_url()
    if args.check:
        return _check(config, db_url)
    return _serve(config, db_url, args)


def _serve(config: HeadOfficeConfig, db_url: str, args) -> int:
    from posfed_pipeline.dagster_home import render_instance_yaml
    from posfed_pipeline.processes import services
    from posfed_pipeline.processes.supervisor import AlreadySupervised, Supervisor, listen_problem

    problem = listen_problem(args.host, args.port)
    if problem:
        print(f"posfed headoffice: {problem}; start with --port N", file=sys.stderr)
        return EXIT_USAGE
    _say_schema(db_url)
    dagster_home = config.dagster_home
    render_instance_yaml(dagster_home, profile="headoffice")
    import dagster as dg

    # Dagster's storage created once, before the webserver and the daemon open it together.
    with dg.DagsterInstance.from_config(str(dagster_home)):
        pass
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home))
    if config.config_path is not None:
        env[HEADOFFICE_CONFIG_ENV] = str(config.config_path)
    supervisor = Supervisor(
        services.headoffice_services(
            dagster_home, env, host=args.host, port=args.port, verbose=args.verbose
        ),
        label="posfed headoffice",
        state_file=services.state_file(dagster_home),
    )
    try:
        supervisor.claim()
    except AlreadySupervised as refused:
        print(f"posfed headoffice: {refused}", file=sys.stderr)
        return EXIT_USAGE
    listed = ", ".join(config.store_ids) or "none listed"
    print(f"posfed headoffice: {config.name}: stores {listed}; state in {config.home}")
    print(f"posfed headoffice: open http://{args.host}:{args.port} (Ctrl-C stops everything)")
    supervisor.serve()
    return EXIT_OK


def _say_schema(db_url: str) -> None:
    """Whether the central database answers and has posfed's schema: said, never fatal (the
    view starts anyway, and its runs say what is wrong until it is fixed)."""
    engine = central_db.make_engine(db_url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        revision = central_db.schema_revision(engine)
    except central_db.DatabaseUnavailable as exc:
        print(f"posfed headoffice: warning: {exc}", file=sys.stderr)
        return
    finally:
        engine.dispose()
    if revision is None:
        print(
            f"posfed headoffice: warning: {where} has no posfed schema yet (`posfed db upgrade`)",
            file=sys.stderr,
        )
    else:
        print(f"posfed headoffice: central database {where} at revision {revision}")


def _check(config: HeadOfficeConfig, db_url: str) -> int:
    import dagster as dg

    from posfed_pipeline.core.operations import headoffice as watch
    from posfed_pipeline.headoffice.definitions import build_headoffice_definitions

    dg.Definitions.validate_loadable(build_headoffice_definitions(config, db_url))
    print(f"{config.name}: the code location loads ({len(config.stores)} stores listed)")
    engine = central_db.make_engine(db_url)
    now = datetime.now(UTC)
    try:
        stores = watch.watch_stores(config, engine, now)
        first, last = watch.settlement_window(config, now)
        unsettled, _ = watch.unsettled_days(config, engine, now, first=first, last=last)
    finally:
        engine.dispose()
    for activity in stores:
        problems = [*activity.not_sending, *activity.sync_behind]
        if not activity.store.listed:
            problems.insert(0, "not in the head office configuration")
        newest = (
            f"{activity.last_receipt_at:%Y-%m-%d %H:%M %Z}" if activity.last_receipt_at else "none"
        )
        print(
            f"  {activity.store.id}: {'open' if activity.open_now else 'closed'}, last receipt "
            f"{newest}, {activity.receipts_today} today: {'; '.join(problems) or 'ok'}"
        )
    for day in unsettled:
        print(f"  {day.store_id} {day.business_day}: not settled: {day.describe()}")
    if not unsettled:
        print(f"  every closed store-day with receipts since {first} is settled")
    needs_a_look = any(
        not (a.sending and a.sync_current and a.store.listed) for a in stores
    ) or bool(unsettled)
    return EXIT_VERDICT if needs_a_look else EXIT_OK
