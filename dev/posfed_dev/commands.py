"""The development package's ``posfed`` commands (``bench``, ``chaos``, ``simulate``), joined to
the product's command line through the ``posfed.commands`` entry points (dev/pyproject.toml)."""

from __future__ import annotations

import sys
from pathlib import Path

from posfed_pipeline.core.config import load_config


def add_bench(commands) -> None:
    from posfed_dev.bench import add_arguments

    bench = commands.add_parser(
        "bench", help="benchmark file-to-.dat latency in a temp store (naive vs posfed)"
    )
    add_arguments(bench)
    bench.set_defaults(handler=_bench)


def _bench(args) -> int:
    if args.central_url and not args.stores:
        print("posfed bench: --central-url goes with --stores K", file=sys.stderr)
        return 2
    if args.stores:
        from posfed_dev import bench_stores

        return bench_stores.main(args)
    from posfed_dev import bench

    return bench.main(args)


# --- chaos ------------------------------------------------------------------------------------


def add_chaos(commands) -> None:
    from posfed_dev.chaos import add_arguments

    chaos = commands.add_parser(
        "chaos",
        help="run the real pipeline under faults (kills, power cut, DB outage, bad files) "
        "and reconcile; exits 1 if anything was lost or duplicated",
    )
    add_arguments(chaos)
    chaos.set_defaults(handler=_chaos)


def _chaos(args) -> int:
    from posfed_dev import chaos

    return chaos.main(args)


# --- simulate ---------------------------------------------------------------------------------


def add_simulate(commands) -> None:
    sim = commands.add_parser("simulate", help="drop simulated receipts into terminal inboxes")
    sim.add_argument("--terminals", type=int, default=None, help="use the first N terminals")
    sim.add_argument("--rate", type=float, default=1.0, help="receipts per second (default 1)")
    sim.add_argument("--duration", type=float, default=10.0, help="seconds (0: until Ctrl-C)")
    sim.add_argument("--seed", type=int, default=None)
    sim.set_defaults(handler=_simulate)


def _simulate(args) -> int:
    from posfed_pipeline.demo.tills import ReceiptSimulator

    config = load_config(args.config)
    config.ensure_folders()
    available = len(config.terminals)
    if args.terminals is not None and not 1 <= args.terminals <= available:
        print(
            f"posfed simulate: --terminals must be 1 to {available} (the store's terminals)",
            file=sys.stderr,
        )
        return 2
    terminals = list(config.terminals[: args.terminals or available])
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
