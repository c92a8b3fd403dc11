"""Benchmark of the .dat engine: item lines rendered per second (a benchmark, not a test).

    .venv/bin/python dev/benchmarks/bench_dat.py [--spec SPEC.json] [--lines N] [--repeat R]

Receipts come from the simulator (seeded, so every run renders the same ones): 1-5 lines each,
weighed and counted items, accented descriptions (``Éclair``, ``Côtes du Rhône``), a share of
returns. Three figures, each the best of ``--repeat`` rounds:

- render: ``render_receipt`` alone (what the issue's >= 50,000 item lines/s target is about);
- render + check: plus the reverse parse of every file in memory (``check_dat``), which
  ``write_dat`` also does after writing;
- write: ``render_receipt`` + ``write_dat`` on disk (temp file, fsync, rename, re-read and
  re-parse), in files per second: bounded by fsync, so measured on fewer receipts.

``--min-rate N`` exits 1 if the render figure is below N lines/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))  # runnable without an installed package too

from posfed_pipeline.core import dat  # noqa: E402
from posfed_pipeline.core.config import load_config  # noqa: E402
from posfed_pipeline.core.model.receipt import Receipt  # noqa: E402
from posfed_pipeline.demo.tills import ReceiptSimulator  # noqa: E402


def make_receipts(lines: int, seed: int = 20260301) -> list[tuple[Receipt, object]]:
    config = load_config(REPO_ROOT / "posfed.toml")
    terminals = list(config.terminals)
    simulator = ReceiptSimulator(terminals, seed=seed)
    receipts: list[tuple[Receipt, object]] = []
    count = 0
    n = 0
    while count < lines:
        terminal = terminals[n % len(terminals)]
        receipt = simulator.make_receipt(terminal)
        receipt = dataclasses.replace(receipt, receipt_id=f"{receipt.receipt_id[:8]}{n:04d}"[-12:])
        if terminal.allow_returns and n % 10 == 0:  # a return: negative quantities
            items = tuple(dataclasses.replace(i, quantity=-i.quantity) for i in receipt.items)
            receipt = dataclasses.replace(
                receipt, items=items, total=sum((i.amount for i in items), Decimal("0.00"))
            )
        receipts.append((receipt, terminal))
        count += len(receipt.items)
        n += 1
    return receipts


def best_rate(run, units: int, repeat: int) -> tuple[float, float]:
    rates = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        rates.append(units / (time.perf_counter() - start))
    return max(rates), statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(REPO_ROOT / "dat_specs" / "scon_default.json"))
    parser.add_argument("--lines", type=int, default=100_000, help="item lines per round")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write-receipts", type=int, default=500, help="receipts for 'write'")
    parser.add_argument("--min-rate", type=float, default=0.0)
    args = parser.parse_args(argv)

    spec = dat.load_spec(args.spec)
    receipts = make_receipts(args.lines)
    lines = sum(len(r.items) for r, _ in receipts)
    print(
        f"bench_dat: spec {spec.name}, {len(receipts)} receipts, {lines} item lines per round, "
        f"best of {args.repeat}; Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )

    render = dat.render_receipt

    def render_all():
        for receipt, terminal in receipts:
            render(receipt, terminal, spec)

    rendered = [(render(r, t, spec), r) for r, t in receipts]

    def render_and_check_all():
        for receipt, terminal in receipts:
            out = render(receipt, terminal, spec)
            if dat.check_dat(out.content, out.version):
                raise SystemExit(f"bench_dat: {receipt.receipt_id} does not re-parse")

    best, median = best_rate(render_all, lines, args.repeat)
    print(f"render:          {best:>10,.0f} item lines/s (median {median:,.0f})")
    checked_best, checked_median = best_rate(render_and_check_all, lines, args.repeat)
    print(f"render + check:  {checked_best:>10,.0f} item lines/s (median {checked_median:,.0f})")

    sample = rendered[: args.write_receipts]
    with tempfile.TemporaryDirectory(prefix="bench_dat_") as out:

        def write_all():
            for item, receipt in sample:
                dat.write_dat(Path(out), item, spec, receipt.business_day)

        files_best, files_median = best_rate(write_all, len(sample), max(1, args.repeat // 2))
    print(
        f"write (fsync):   {files_best:>10,.0f} files/s      (median {files_median:,.0f}; "
        f"{len(sample)} receipts, disk-bound)"
    )

    if best < args.min_rate:
        print(f"bench_dat: render rate {best:,.0f} is below --min-rate {args.min_rate:,.0f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
