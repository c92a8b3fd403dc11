"""Odd inbox entries on a running store: how fast each gets its verdict, and whether valid
receipts keep their latency meanwhile.

    make demo                                           # in another terminal (or any store)
    .venv/bin/python dev/benchmarks/bench_odd_entries.py [--config posfed.toml] [--rounds 3]

Two phases of ``--seconds`` each, valid receipts at ``--rate`` per second spread over every
terminal: a quiet one, then one in which every odd entry of ``dev/posfed_dev/
odd_entries.py`` is dropped ``--rounds`` times on a JSON till and on a POSLog till. For each
kind: the time from the writer's close to its verdict (its .dat renamed into place; its
quarantine report written), the median and the worst; for valid receipts, close -> .dat
p50/p95/max on the tills that got odd entries and on the others, in both phases. Entries that
are not files get no verdict of their own: the terminal's health check lists them as soon as
they exist (what `posfed status` and the UI's check show), timed as one check. The entries
are removed afterwards and the quarantined files discarded ("bench_odd_entries"), so the
store is as it was, but for the receipts billed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from datetime import datetime
from pathlib import Path

from posfed_dev import odd_entries

from posfed_pipeline.core import dat
from posfed_pipeline.core.config import POSLOG_FORMAT, load_config
from posfed_pipeline.core.operations.terminal_health import terminal_health
from posfed_pipeline.core.state import quarantine
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.demo.tills import ReceiptSimulator


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    return (
        f"p50 {statistics.median(values):.3f} s, p95 {_percentile(values, 0.95):.3f} s, "
        f"max {max(values):.3f} s (n={len(values)})"
    )


class Watch:
    """Paths expected to appear, with the moment their writer closed the file."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, Path, float]] = []  # (label, path, closed at)
        self.found: list[tuple[str, float]] = []  # (label, seconds)

    def expect(self, label: str, path: Path, closed: float) -> None:
        self.waiting.append((label, path, closed))

    def poll(self) -> None:
        still = []
        for label, path, closed in self.waiting:
            try:
                # The .dat is renamed into place and a report linked in: ctime is that moment.
                at = path.stat().st_ctime
            except FileNotFoundError:
                still.append((label, path, closed))
                continue
            self.found.append((label, at - closed))
        self.waiting = still

    def of(self, label: str) -> list[float]:
        return [seconds for found, seconds in self.found if found == label]


def run(args) -> dict:
    config = load_config(args.config)
    spec = dat.load_spec(config.dat_spec)
    simulator = ReceiptSimulator(list(config.terminals), seed=args.seed)
    json_till = next(t for t in config.terminals if t.input_format != POSLOG_FORMAT)
    poslog_till = next((t for t in config.terminals if t.input_format == POSLOG_FORMAT), None)
    odd_tills = [t for t in (json_till, poslog_till) if t is not None]
    watch = Watch()
    made: list[tuple[odd_entries.OddEntry, object, bytes]] = []

    def send_valid(phase: str, terminal) -> None:
        receipt = simulator.make_receipt(terminal)
        path = simulator.drop(terminal, receipt)
        closed = path.stat().st_mtime
        where = "odd tills" if terminal in odd_tills else "other tills"
        target = config.dat_dir / dat.render_receipt(receipt, terminal, spec).relative_path
        watch.expect(f"valid/{phase}/{where}", target, closed)

    def phase(name: str, with_odd: bool) -> None:
        plan = [(e, t) for t in odd_tills for e in odd_entries.entries_for(t)] if with_odd else []
        drops = plan * args.rounds
        interval = 1.0 / args.rate
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < args.seconds:
            send_valid(name, config.terminals[n % len(config.terminals)])
            if drops and n % 2 == 0:  # an odd entry every other valid receipt
                entry, till = drops.pop()
                receipt = simulator.make_receipt(till)
                entry_name = entry.make(till, receipt)
                closed = time.time()
                made.append((entry, till, entry_name))
                if entry.verdict == odd_entries.BILLED:
                    target = config.dat_dir / dat.render_receipt(receipt, till, spec).relative_path
                    watch.expect(entry.kind, target, closed)
                elif entry.verdict == odd_entries.QUARANTINED:
                    report = till.quarantine / (entry_name.decode() + quarantine.REPORT_SUFFIX)
                    watch.expect(entry.kind, report, closed)
            n += 1
            watch.poll()
            time.sleep(max(0.0, started + n * interval - time.monotonic()))
        deadline = time.monotonic() + 60
        while watch.waiting and time.monotonic() < deadline:
            watch.poll()
            time.sleep(0.05)

    print(f"quiet phase: {args.seconds:g} s of valid receipts at {args.rate:g}/s")
    phase("quiet", with_odd=False)
    print(f"odd phase: the same, with {args.rounds} round(s) of every odd entry")
    phase("odd", with_odd=True)

    reported = {}
    for till in odd_tills:
        started = time.perf_counter()
        health = terminal_health(till, open_ledger(config.home), datetime.now().astimezone())
        reported[till.id] = {
            "check_seconds": round(time.perf_counter() - started, 3),
            "problems": list(health.problems),
        }
    rows = []
    for entry in dict.fromkeys(e for e, _, _ in made):
        times = watch.of(entry.kind)
        rows.append(
            {
                "kind": entry.kind,
                "verdict": entry.verdict,
                "why": entry.reason,
                "median_s": round(statistics.median(times), 3) if times else None,
                "max_s": round(max(times), 3) if times else None,
                "n": len(times),
            }
        )
    valid = {
        label: _summary(watch.of(label))
        for label in (
            "valid/quiet/odd tills",
            "valid/quiet/other tills",
            "valid/odd/odd tills",
            "valid/odd/other tills",
        )
    }
    never = [label for label, _, _ in watch.waiting]
    _clean_up(made, config)
    return {"entries": rows, "valid": valid, "reported": reported, "never": never}


def _clean_up(made, config) -> None:
    for entry, till, name in made:
        path = os.path.join(os.fsencode(till.inbox), name)
        if entry.verdict == odd_entries.REPORTED and os.path.lexists(path):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    for till in config.terminals:
        for entry in quarantine.quarantined_files(till):
            if entry.report.get("quarantined_at", "") >= _STARTED:
                quarantine.discard(till, entry.name, reason="bench_odd_entries", by="bench")
        (till.folder / "outside-the-inbox.json").unlink(missing_ok=True)


_STARTED = datetime.now().astimezone().isoformat(timespec="seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="the running store's posfed.toml (default: as posfed)")
    parser.add_argument("--seconds", type=float, default=60.0, help="per phase (default 60)")
    parser.add_argument("--rate", type=float, default=3.0, help="valid receipts per second")
    parser.add_argument("--rounds", type=int, default=3, help="times each odd entry is dropped")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    report = run(args)
    print("\n| entry | verdict | why / where | close -> verdict (median, max) |")
    print("|---|---|---|---|")
    for row in report["entries"]:
        timing = (
            f"{row['median_s']} s, {row['max_s']} s (n={row['n']})"
            if row["n"]
            else "listed by every health check"
        )
        print(f"| {row['kind']} | {row['verdict']} | {row['why']} | {timing} |")
    print()
    for label, text in report["valid"].items():
        print(f"{label}: {text}")
    for till, seen in report["reported"].items():
        print(f"health check of {till}: {seen['check_seconds']} s; {seen['problems']}")
    if report["never"]:
        print(f"NEVER GOT A VERDICT: {report['never']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
