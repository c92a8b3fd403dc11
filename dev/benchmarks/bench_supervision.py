"""A running demo's processes killed one kind at a time: how soon receipts get their .dat
again, and how soon the killed process is back.

    make demo                                        # in another terminal (or posfed demo)
    .venv/bin/python dev/benchmarks/bench_supervision.py [--config posfed.toml] [--repeat 3]

For each kind (a warm run worker, the daemon, the webserver, the code server, the fast path) it
waits until the store is quiet and whole, sends `kill -9` to one process of that kind (its pid
from the supervisor's ``services.json``; a worker is one of the fast path's children), and at
once drops a receipt on the next terminal, then one every 0.5 s for 5 s. It reports:

- kill -> .dat: from the kill to the .dat of the first receipt sent after it (the receipt a
  cashier waits for while the process is dead);
- worst close -> .dat of the receipts sent in those 5 s;
- back: from the kill until the supervisor has a new process of that kind running, and it
  serves again (the UI answers; the code server's socket answers; the fast path's workers are
  warm, asked over its socket; the daemon: a new pid, running).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import time
import urllib.request
from pathlib import Path

from posfed_pipeline.core import dat
from posfed_pipeline.core.config import load_config
from posfed_pipeline.demo.tills import ReceiptSimulator
from posfed_pipeline.fastpath.launcher import ask_pool, default_socket_path
from posfed_pipeline.processes import services
from posfed_pipeline.processes.supervisor import children, read_state, unix_socket_answers

KINDS = ("warm worker", "daemon", "webserver", "code-server", "fastpath")
FOLLOW_SECONDS = 5.0


def _state(dagster_home: Path) -> dict:
    for _ in range(20):
        try:
            return read_state(services.state_file(dagster_home))["services"]
        except (OSError, ValueError):  # being replaced
            time.sleep(0.05)
    raise SystemExit(f"no services.json under {dagster_home}: is `posfed demo` running?")


def _workers(dagster_home: Path) -> set[int]:
    fastpath = _state(dagster_home)["fastpath"]["pid"]
    found = set()
    for pid in children(fastpath):
        try:
            if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.add(pid)
        except OSError:
            continue
    return found


def _serving(kind: str, dagster_home: Path, port: int, workers: int) -> bool:
    if kind == "webserver":
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    if kind == "code-server":
        return unix_socket_answers(services.code_server_socket_path(dagster_home))
    if kind in ("fastpath", "warm worker"):
        try:
            stats = ask_pool({"op": "stats"}, default_socket_path()) or {}
        except Exception:
            return False
        return stats.get("ready") == workers
    return _state(dagster_home)["daemon"]["state"] == "running"


def one_kill(kind: str, args, config, dagster_home: Path, simulator, spec) -> dict:
    deadline = time.monotonic() + 120
    while not all(_serving(k, dagster_home, args.port, args.workers) for k in KINDS):
        if time.monotonic() > deadline:
            raise SystemExit("the store is not whole: is every service of the demo running?")
        time.sleep(0.5)
    time.sleep(2)  # quiet
    if kind == "warm worker":
        victim = min(_workers(dagster_home))
    else:
        victim = _state(dagster_home)[kind]["pid"]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    sent = []
    n = 0
    while time.time() - killed_at < FOLLOW_SECONDS:
        terminal = config.terminals[n % len(config.terminals)]
        receipt = simulator.make_receipt(terminal)
        path = simulator.drop(terminal, receipt)
        target = config.dat_dir / dat.render_receipt(receipt, terminal, spec).relative_path
        sent.append((path.stat().st_mtime, target))
        n += 1
        time.sleep(0.5)
    back_at = None
    done: dict[Path, float] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (back_at is None or len(done) < len(sent)):
        for _, target in sent:
            if target not in done and target.exists():
                done[target] = target.stat().st_ctime
        if back_at is None:
            replaced = (
                victim not in _workers(dagster_home)
                if kind == "warm worker"
                else _state(dagster_home)[kind]["pid"] != victim
            )
            if replaced and _serving(kind, dagster_home, args.port, args.workers):
                back_at = time.time()
        time.sleep(0.05)
    first_closed, first_target = sent[0]
    return {
        "kind": kind,
        "kill_to_dat_s": round(done[first_target] - killed_at, 2) if first_target in done else None,
        "worst_close_to_dat_s": round(max(done[t] - closed for closed, t in sent if t in done), 2)
        if done
        else None,
        "unbilled": len(sent) - len(done),
        "back_s": round(back_at - killed_at, 2) if back_at else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="the demo's posfed.toml (default: as posfed)")
    parser.add_argument("--port", type=int, default=3000, help="the demo's web UI port")
    parser.add_argument("--workers", type=int, default=2, help="the demo's warm workers")
    parser.add_argument("--repeat", type=int, default=3, help="kills per kind")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args()
    config = load_config(args.config)
    dagster_home = config.home / "dagster_home"
    os.environ.setdefault("DAGSTER_HOME", str(dagster_home))
    spec = dat.load_spec(config.dat_spec)
    simulator = ReceiptSimulator(list(config.terminals), seed=int(time.time()))
    results = []
    for _ in range(args.repeat):
        for kind in KINDS:
            result = one_kill(kind, args, config, dagster_home, simulator, spec)
            print(json.dumps(result))
            results.append(result)
    print(
        "\n| killed | kill -> .dat of the next receipt | worst close -> .dat (5 s after) "
        "| back serving |"
    )
    print("|---|---|---|---|")
    for kind in KINDS:
        rows = [r for r in results if r["kind"] == kind]

        def spread(key: str, rows=rows) -> str:
            values = [r[key] for r in rows if r[key] is not None]
            missing = len(rows) - len(values)
            text = f"{statistics.median(values):.2f} s (max {max(values):.2f})" if values else "-"
            return text + (f", {missing} never" if missing else "")

        print(
            f"| {kind} | {spread('kill_to_dat_s')} | {spread('worst_close_to_dat_s')} "
            f"| {spread('back_s')} |"
        )
    unbilled = sum(r["unbilled"] for r in results)
    print(f"\nreceipts sent after a kill and never billed: {unbilled}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
