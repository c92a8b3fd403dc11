"""The tools' ``posfed`` commands (``bench``, ``chaos``), registered with the product's command
line through the ``posfed.commands`` entry points (pyproject.toml)."""

from __future__ import annotations


def add_bench(commands) -> None:
    from posfed_pipeline.tools.bench import add_arguments

    bench = commands.add_parser(
        "bench", help="benchmark file-to-.dat latency in a temp store (naive vs posfed)"
    )
    add_arguments(bench)
    bench.set_defaults(handler=_bench)


def _bench(args) -> int:
    if args.stores:
        from posfed_pipeline.tools import bench_stores

        return bench_stores.main(args)
    from posfed_pipeline.tools import bench

    return bench.main(args)


# --- chaos ------------------------------------------------------------------------------------


def add_chaos(commands) -> None:
    from posfed_pipeline.tools.chaos import add_arguments

    chaos = commands.add_parser(
        "chaos",
        help="run the real pipeline under faults (kills, power cut, DB outage, bad files) "
        "and reconcile; exits 1 if anything was lost or duplicated",
    )
    add_arguments(chaos)
    chaos.set_defaults(handler=_chaos)


def _chaos(args) -> int:
    from posfed_pipeline.tools import chaos

    return chaos.main(args)
