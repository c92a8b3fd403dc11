"""``posfed bench --stores K``: K stores load one central database at once.

Each store is a process of its own, as a store server is a machine of its own: its tills sell
at ``rate`` receipts/s on random terminals; each sale goes through posfed's stages (read,
validate, .dat, the store's ledger: ``process_batch``, what the warm worker runs) and a sync
thread stores the ledger's outbox in the central database as the trigger's sync runs do: after new
sales, at most one pass every ``[sync] min_interval_seconds`` (3 s). The central database is a
PostgreSQL cluster of the benchmark's own (fsync on, as production).

Reported: receipts/s into the central database, its lag (accepted in the store's ledger
→ committed in the central database) per store and chain-wide, sync errors (deadlocks,
conflicts), what was lost or duplicated, each store's settlement and the chain's, checked to
the cent against what the tills sold, and the CPU of the stores and of the central
database's server.

Not in this benchmark: each store's Dagster processes (daemon, fast path); one store's cost is
``posfed bench``'s. On 2 cores K stores share the machine a chain would spread over K servers.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from posfed_dev.bench import Processes, make_store, summary
from posfed_dev.faults import ThrowawayPostgres
from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import load_config
from posfed_pipeline.core.operations import audit


@dataclass
class ChainSettings:
    stores: int = 10
    terminals: int = 20  # per store
    rate: float = 1.0  # receipts/s per store
    duration: float = 60.0
    seed: int = 1
    progress: bool = True
    # A PostgreSQL central database of the caller's to load (and keep, e.g. for `posfed
    # headoffice`) instead of a throwaway cluster's; its server's CPU is then not measured.
    central_url: str | None = None


DRAIN_SECONDS = 120.0  # after the sales, how long a store keeps syncing what is left


def run_store(config_path: str, register_url: str, settings: ChainSettings, out: str) -> None:
    """One store server: sell, process, sync, for ``settings.duration`` seconds. Writes what it
    sold and when each receipt reached its ledger to ``out`` (JSON)."""
    from posfed_pipeline.core.dat import load_spec
    from posfed_pipeline.core.stages.processing import process_batch
    from posfed_pipeline.core.stages.sync import sync_pending
    from posfed_pipeline.core.state.ledger import open_ledger
    from posfed_pipeline.demo.tills import ReceiptSimulator

    config = replace(load_config(Path(config_path)), db_url=register_url)
    number = int(config.store_id.rsplit("-", 1)[1])
    simulator = ReceiptSimulator(list(config.terminals), seed=settings.seed * 1000 + number)
    spec = load_spec(config.dat_spec)
    ledger = open_ledger(config.home)
    accepted: dict[str, float] = {}  # "terminal/receipt" -> seconds since epoch
    sold: dict[str, Decimal] = defaultdict(Decimal)
    counted: dict[str, int] = defaultdict(int)
    errors: list[str] = []  # sync passes that failed (and were retried)
    rejected: list[str] = []  # none expected: the simulator's receipts are valid
    synced = 0
    wake = threading.Event()
    done = threading.Event()

    def sync_loop() -> None:
        """As the trigger's sync runs: after new sales, at most one every
        ``[sync] min_interval_seconds``; an error is retried at the next turn."""
        nonlocal synced
        engine = central_db.make_engine(register_url)
        sync_ledger = open_ledger(config.home)
        gave_up_at = None
        try:
            while True:
                finishing = done.is_set()
                wake.wait(timeout=1.0)
                wake.clear()
                turn = time.monotonic()
                try:
                    synced += sync_pending(sync_ledger, engine, config.sync).receipts_inserted
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                if finishing and not sync_ledger.lag().pending_deliveries:
                    return
                if finishing:
                    gave_up_at = gave_up_at or turn + DRAIN_SECONDS
                    if turn > gave_up_at:
                        return  # what is left is reported as not in the central database
                time.sleep(max(0.0, turn + config.sync.min_interval_seconds - time.monotonic()))
        finally:
            sync_ledger.close()
            engine.dispose()

    syncer = threading.Thread(target=sync_loop, name="sync")
    syncer.start()
    interval = 1.0 / settings.rate
    started = time.monotonic()
    sale = 0
    while time.monotonic() - started < settings.duration:
        due = started + sale * interval
        time.sleep(max(0.0, due - time.monotonic()))
        terminal = simulator.random.choice(config.terminals)
        receipt = simulator.make_receipt(terminal, datetime.now(config.timezone))
        path = simulator.drop(terminal, receipt)
        result = process_batch(config, terminal, [path], ledger=ledger, spec=spec)
        if result.acceptance.inserted:
            accepted[f"{terminal.id}/{receipt.receipt_id}"] = time.time()
            sold[terminal.tenant] += receipt.total
            counted[terminal.tenant] += 1
        else:
            rejected.append(f"{path.name}: {[str(r) for r in result.rejections()]}")
        wake.set()
        sale += 1
    done.set()
    wake.set()
    syncer.join()
    ledger.close()
    Path(out).write_text(
        json.dumps(
            {
                "store_id": config.store_id,
                "config": config_path,
                "accepted": accepted,
                "sold": {t: str(v) for t, v in sold.items()},
                "counted": counted,
                "synced": synced,
                "errors": errors,
                "rejected": rejected,
            }
        )
    )


def run_chain_bench(settings: ChainSettings) -> dict:
    root = Path(tempfile.mkdtemp(prefix="posfed-chain-"))
    postgres = None if settings.central_url else ThrowawayPostgres(fsync=True)
    try:
        if postgres is not None:
            postgres.create()
            postgres.create_database("register")
            url = postgres.url("register")
        else:
            url = settings.central_url
        central_db.upgrade_database(central_db.make_engine(url))
        configs = []
        for number in range(1, settings.stores + 1):
            store_id = f"store-{number:03d}"
            config = make_store(root / store_id, settings.terminals, db_url=url, store_id=store_id)
            configs.append(config.config_path)
        processes = Processes(root, {})
        if postgres is not None:
            postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
            processes.track("register", postmaster)
        register_cpu_before = processes.cpu_by_process().get("register", 0.0)
        context = multiprocessing.get_context("spawn")
        outs = [root / f"store-{n:03d}.json" for n in range(1, settings.stores + 1)]
        workers = [
            context.Process(target=run_store, args=(str(path), url, settings, str(out)))
            for path, out in zip(configs, outs, strict=True)
        ]
        started = time.monotonic()
        cpu_before = _children_cpu()  # initdb and pg_ctl are children too
        for worker in workers:
            worker.start()
        _say(
            settings,
            f"{settings.stores} stores × {settings.terminals} terminals, "
            f"{settings.rate:g} receipts/s each, {settings.duration:g} s",
        )
        for worker in workers:
            worker.join(timeout=settings.duration + 600)
        wall = time.monotonic() - started
        store_cpu = _children_cpu() - cpu_before
        register_cpu = (
            processes.cpu_by_process().get("register", 0.0) - register_cpu_before
            if postgres is not None
            else None  # the caller's server: not ours to measure
        )
        failed = [w.exitcode for w in workers if w.exitcode != 0]
        if failed:
            raise RuntimeError(f"store processes failed: exit codes {failed} (see {root})")
        reports = [json.loads(out.read_text()) for out in outs]
        return _report(settings, url, reports, wall, store_cpu, register_cpu)
    finally:
        if postgres is not None:
            postgres.destroy()


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _report(
    settings: ChainSettings,
    url: str,
    reports: list[dict],
    wall: float,
    cpu: float,
    reg_cpu: float | None,
) -> dict:
    import sqlalchemy as sa

    engine = central_db.make_engine(url)
    ledger = central_db.IngestLedgerRow.__table__
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                ledger.c.store_id, ledger.c.terminal_id, ledger.c.receipt_id, ledger.c.loaded_at
            ).where(ledger.c.outcome == "inserted")
        ).all()
        held = connection.execute(
            sa.text(
                "SELECT store_id, COUNT(*), COUNT(DISTINCT (terminal_id, business_day, receipt_id))"
                " FROM pos_receipt GROUP BY store_id"
            )
        ).all()
    loaded = {(s, f"{t}/{r}"): central_db.as_utc(at).timestamp() for s, t, r, at in rows}
    per_store = {}
    all_lags: list[float] = []
    settled_exact = True
    for report in reports:
        store_id = report["store_id"]
        config = replace(load_config(Path(report["config"])), db_url=url)
        day = datetime.now(config.timezone).date()
        lags = [
            loaded[(store_id, key)] - at
            for key, at in report["accepted"].items()
            if (store_id, key) in loaded
        ]
        all_lags += lags
        settlements = audit.settle_day(config, engine, day)
        audit.store_settlements(engine, day, settlements, store_id)
        stored = {r["tenant"]: r for r in audit.stored_settlements(engine, day, store_id)}
        exact = all(
            stored[tenant]["net"] == Decimal(net)
            and stored[tenant]["receipts"] == report["counted"][tenant]
            for tenant, net in report["sold"].items()
        )
        settled_exact &= exact
        per_store[store_id] = {
            "accepted": len(report["accepted"]),
            "in_register": len(lags),
            "lag": summary(lags),
            "sync_errors": len(report["errors"]),
            "settlement_exact": exact,
        }
    chain = {row["tenant"]: row for row in audit.chain_settlements(engine, day)}  # one day
    sold: dict[str, Decimal] = defaultdict(Decimal)
    for report in reports:
        for tenant, net in report["sold"].items():
            sold[tenant] += Decimal(net)
    chain_exact = all(chain[t]["net"] == net for t, net in sold.items())
    engine.dispose()
    accepted = sum(len(r["accepted"]) for r in reports)
    return {
        "stores": settings.stores,
        "terminals_per_store": settings.terminals,
        "rate_per_store": settings.rate,
        "duration_s": settings.duration,
        "receipts": accepted,
        "in_register": len(all_lags),
        "lost": accepted - len(all_lags),
        "duplicated": sum(total - distinct for _, total, distinct in held),
        "register_receipts_per_s": round(len(all_lags) / wall, 1),
        "lag": summary(all_lags),
        "sync_errors": sum(len(r["errors"]) for r in reports),
        "rejected": sum(len(r["rejected"]) for r in reports),
        "error_samples": sorted({e for r in reports for e in r["errors"]})[:5],
        "settlement_exact_per_store": settled_exact,
        "chain_settlement_exact": chain_exact,
        "cpu_s": {
            "stores": round(cpu, 1),
            "register": round(reg_cpu, 1) if reg_cpu is not None else None,
        },
        "per_store": per_store,
        "p95_worst_store": max(
            (s["lag"]["p95"] for s in per_store.values() if s["lag"]["p95"] is not None),
            default=None,
        ),
    }


def format_chain_report(report: dict) -> str:
    lag = report["lag"]
    register_cpu = report["cpu_s"]["register"]
    lines = [
        f"{report['stores']} stores × {report['terminals_per_store']} terminals, "
        f"{report['rate_per_store']:g} receipts/s each, {report['duration_s']:g} s",
        f"  receipts {report['receipts']}, in the register {report['in_register']}, "
        f"lost {report['lost']}, duplicated {report['duplicated']}",
        f"  into the central database: {report['register_receipts_per_s']} receipts/s; lag p50 "
        f"{_s(lag['p50'])}, p95 {_s(lag['p95'])}, max {_s(lag['max'])} "
        f"(worst store's p95 {_s(report['p95_worst_store'])})",
        f"  rejected {report['rejected']}; sync errors (retried): {report['sync_errors']}"
        + "".join(f"\n    {e}" for e in report["error_samples"]),
        f"  settlements exact: per store {report['settlement_exact_per_store']}, "
        f"chain {report['chain_settlement_exact']}",
        f"  CPU-s: stores {report['cpu_s']['stores']}, "
        "central database "
        + (str(register_cpu) if register_cpu is not None else "not measured (--central-url)"),
    ]
    return "\n".join(lines)


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f} s"


def _say(settings: ChainSettings, text: str) -> None:
    if settings.progress:
        print(f"posfed bench: {text}", flush=True)


def main(args) -> int:
    """``posfed bench --stores K``."""
    duration = 60.0 if args.duration is None else args.duration
    if args.stores < 1 or args.terminals < 1 or args.rate <= 0 or duration <= 0:
        print(
            "posfed bench: --stores and --terminals must be at least 1, --rate and --duration "
            "positive",
            file=sys.stderr,
        )
        return 2
    settings = ChainSettings(
        stores=args.stores,
        terminals=args.terminals,
        rate=args.rate,
        duration=duration,
        seed=args.seed or 1,
        progress=not args.quiet,
        central_url=args.central_url,
    )
    report = run_chain_bench(settings)
    print(format_chain_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["lost"] == 0 and report["duplicated"] == 0 else 1
