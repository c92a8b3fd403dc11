"""``posfed metrics``: the store's figures for Prometheus (``posfed_pipeline.metrics``), served
over HTTP, or printed once."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from posfed_pipeline.cli.common import EXIT_OK, EXIT_USAGE, store_config
from posfed_pipeline.core.config.metrics_settings import parse_listen


def add_parser(commands) -> None:
    metrics = commands.add_parser(
        "metrics",
        help="serve the store's metrics in the Prometheus text format ([metrics] in posfed.toml)",
    )
    metrics.add_argument(
        "--listen", help="host:port to serve /metrics on (default: [metrics] listen)"
    )
    metrics.add_argument(
        "--print",
        action="store_true",
        help="read the store once, print the metrics and exit (nothing is served)",
    )
    metrics.set_defaults(handler=_metrics)


def _metrics(args) -> int:
    from posfed_pipeline.metrics.service import Metrics, serve

    config = store_config(args)
    # The instance the store's processes use; never created here (this command only reads).
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or config.home / "dagster_home")
    if args.print:
        metrics = Metrics(config, dagster_home, say=lambda line: print(line, file=sys.stderr))
        try:
            metrics.read()
            sys.stdout.write(metrics.text().decode())
        finally:
            metrics.close()
        return EXIT_OK
    try:
        host, port = parse_listen(args.listen) if args.listen else (None, None)
    except ValueError as exc:
        print(f"posfed metrics: --listen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if host is None and not config.metrics.enabled:
        where = config.config_path or "the store file"
        print(f"posfed metrics: [metrics] enabled = false in {where}; not serving")
        return EXIT_OK
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    host = host or config.metrics.host
    port = port or config.metrics.port
    try:
        serve(config, dagster_home, stop=stop, host=host, port=port)
    except OSError as exc:
        print(f"posfed metrics: cannot listen on {host} port {port}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
