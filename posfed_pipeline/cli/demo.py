"""``posfed demo`` (the embedded demo under its supervisor) and ``posfed fastpath`` (the
event-driven trigger and warm run workers, one of the demo's services and a production unit)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from posfed_pipeline.cli.common import (
    EXIT_OK,
    EXIT_UNTESTED_DAGSTER,
    EXIT_USAGE,
    EXIT_VERDICT,
    store_config,
)
from posfed_pipeline.core.config import DEFAULT_CONFIG_FILE, PosfedConfig
from posfed_pipeline.dagster_home import prepare_instance
from posfed_pipeline.fastpath import compatibility


def positive_rate(text: str) -> float:
    """``--rate``: receipts per second, more than none and finite (0 or less would make the
    tills either stop at once or write without pause)."""
    import argparse
    import math

    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (rate > 0 and math.isfinite(rate)):
        raise argparse.ArgumentTypeError(f"{text}: must be more than 0 receipts per second")
    return rate


def add_parser(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the embedded demo (UI, daemon, fast path, simulator), restarting what dies",
        description="Run the demo store: Dagster's UI and daemon, the fast path and simulated "
        "tills, each restarted if it dies, until Ctrl-C or SIGTERM. In a folder without "
        "posfed.toml (and no --config or POSFED_CONFIG), the demo store posfed ships is "
        "written there first (posfed.toml and dat_specs/, to read and edit); an existing "
        "posfed.toml is used as it is, never replaced. The simulated tills write made-up "
        "receipts into the demo store's inboxes only (its [store] id and name say which it "
        "is), unless --simulator says otherwise.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="webserver address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=3000, help="webserver port (default 3000)")
    demo.add_argument(
        "--rate", type=positive_rate, default=0.2, help="simulated receipts per second (> 0)"
    )
    tills = demo.add_mutually_exclusive_group()
    tills.add_argument(
        "--no-simulator", action="store_true", help="no simulated tills: only watch the inboxes"
    )
    tills.add_argument(
        "--simulator",
        action="store_true",
        help="simulated tills even on a store that is not the demo store (made-up sales: never "
        "on a store whose .dat files reach the billing software)",
    )
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

    fast = commands.add_parser(
        "fastpath",
        help="the event-driven trigger and warm run workers",
        description="The event-driven trigger and warm run workers. On a Dagster release "
        "posfed is not tested on it exits with status 3, saying why and how to allow it "
        '(docs/deployment.md, "Upgrading Dagster under a running store").',
    )
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
    from posfed_pipeline.processes import services
    from posfed_pipeline.processes.supervisor import AlreadySupervised, Supervisor, listen_problem

    # Before anything starts: a demo whose UI cannot listen would run without one.
    problem = listen_problem(args.host, args.port)
    if problem:
        hint = " (another posfed demo or Dagster UI?)" if problem.endswith("in use") else ""
        print(
            f"posfed demo: {problem}{hint}; start with --port N to use another port",
            file=sys.stderr,
        )
        return EXIT_USAGE
    _write_demo_store_if_none(args)
    config = store_config(args)
    metrics = _metrics_address(config)
    fastpath, dagster_note = demo_fast_path(not args.no_fastpath, compatibility.check())
    if dagster_note:
        print(f"posfed demo: {dagster_note}", file=sys.stderr)
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
            fastpath=fastpath,
            workers=args.workers,
            metrics=metrics,
        ),
        label="posfed demo",
        state_file=services.state_file(dagster_home),
    )
    try:
        supervisor.claim()
    except AlreadySupervised as refused:
        print(f"posfed demo: {refused}", file=sys.stderr)
        return EXIT_USAGE
    print(f"posfed demo: {len(config.terminals)} terminals, state in {config.home}")
    print(f"posfed demo: open http://{args.host}:{args.port} (Ctrl-C stops everything)")
    if metrics is not None:
        print(f"posfed demo: metrics for Prometheus at http://{config.metrics.listen}/metrics")
    # Flushed: also when the console is a log file, these lines come before the services'.
    sys.stdout.flush()
    stop = threading.Event()
    if not args.no_simulator:
        _start_demo_tills(config, args.rate, stop, anywhere=args.simulator)
    try:
        # Until Ctrl-C or SIGTERM (also when started in the background, which ignores SIGINT);
        # a service that dies meanwhile is restarted, the others go on.
        supervisor.serve()
    finally:
        stop.set()
    return EXIT_OK


def _metrics_address(config: PosfedConfig) -> tuple[str, int] | None:
    """Where ``posfed metrics`` is to listen, or None: switched off, or its port is taken (the
    demo runs without it and says so: metrics are never a reason not to run a store)."""
    from posfed_pipeline.processes.supervisor import listen_problem

    if not config.metrics.enabled:
        return None
    problem = listen_problem(config.metrics.host, config.metrics.port)
    if problem:
        print(
            f"posfed demo: no metrics: {problem} (another posfed demo?); set [metrics] listen "
            "in posfed.toml to another port, or enabled = false"
        )
        return None
    return config.metrics.host, config.metrics.port


def demo_fast_path(
    wanted: bool, dagster_releases: compatibility.DagsterCompatibility
) -> tuple[bool, str | None]:
    """Whether the demo starts the fast path, and what to tell the user about Dagster: on a
    release posfed is not tested on it runs without (unless allowed), saying so at start-up."""
    if not wanted or dagster_releases.tested:
        return wanted, None
    return dagster_releases.fast_path_allowed, dagster_releases.message()


def _fastpath(args) -> int:
    import logging

    from posfed_pipeline.fastpath.pool import AlreadyServing
    from posfed_pipeline.fastpath.service import UntestedDagster, serve_forever
    from posfed_pipeline.processes.exiting import exit_at_once

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl SQLiteImpl." etc.
    config = store_config(args)
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
        return EXIT_VERDICT
    except UntestedDagster as refused:
        print(f"posfed fastpath: {refused}", file=sys.stderr)
        return EXIT_UNTESTED_DAGSTER
    # Stopped: the workers are gone and everything is committed; a scan thread stuck on a
    # hung share is left behind with the rest of the process.
    exit_at_once(EXIT_OK)
    return EXIT_OK


def _write_demo_store_if_none(args) -> None:
    """No store named and none here: the demo store posfed ships, written into this folder
    (an installed wheel's first `posfed demo`). A store file that exists is never touched."""
    from posfed_pipeline.demo import write_demo_store

    if args.config or os.environ.get("POSFED_CONFIG"):
        return
    here = Path.cwd()
    if os.path.lexists(here / DEFAULT_CONFIG_FILE):
        return
    store = write_demo_store(here)
    names = dict.fromkeys(_first_part(path, here) for path in store.written)
    print(
        f"posfed demo: no {DEFAULT_CONFIG_FILE} here, so the demo store is written into {here}: "
        f"{', '.join(names)} (yours to read and edit; used as they are from now on)"
    )


def _first_part(path: Path, folder: Path) -> str:
    first = path.relative_to(folder).parts[0]
    return first + "/" if (folder / first).is_dir() else first


def _start_demo_tills(
    config: PosfedConfig, rate: float, stop: threading.Event, *, anywhere: bool
) -> None:
    """Simulated tills for the demo store only, unless asked for (``anywhere``): on another
    store they would write made-up sales into real inboxes, and so into the billing software's
    .dat files."""
    from posfed_pipeline.demo import is_demo_store
    from posfed_pipeline.demo.tills import drop_until

    if not (anywhere or is_demo_store(config)):
        inbox = config.terminals[0].inbox if config.terminals else config.home
        print(
            f"posfed demo: no simulated tills ({config.store_id} is not the demo store; "
            f"--simulator runs them all the same); drop receipt files into an inbox such as "
            f"{inbox}"
        )
        return
    threading.Thread(target=drop_until, args=(config, rate, stop), daemon=True).start()
