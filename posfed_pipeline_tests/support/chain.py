"""A chain in a test: stores with the same terminal ids, each selling through posfed's real
stages into its own ledger (``process_batch``) and feeding one central database with its real
sync (``sync_pending``); what each sold, to the cent, to check the central database against."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from posfed_pipeline.core import central_db
from posfed_pipeline.core.config import PosfedConfig, config_from_dict
from posfed_pipeline.core.dat import load_spec
from posfed_pipeline.core.stages.processing import process_batch
from posfed_pipeline.core.stages.sync import SyncPass, sync_pending
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.demo.tills import ReceiptSimulator
from posfed_pipeline_tests.support.stores import store_config_dict

# The demo's twenty terminals (ten tenants, two tills each): every store has the same ids.
KINDS = [
    ("bakery", "10", "Bakkerij De Korenschoof"),
    ("butcher", "20", "Slagerij Van Dijk"),
    ("deli", "30", "Delicatessen Mondo"),
    ("fishmonger", "40", "Visspecialist Noordzee"),
    ("greengrocer", "50", "Groentehal Verhoef"),
    ("cheese", "60", "Kaashandel Gouda"),
    ("patisserie", "70", "Patisserie Lune"),
    ("wine", "80", "Wijnhuis Rive Gauche"),
    ("flowers", "90", "Bloemenhuis Flora"),
    ("coffee", "95", "Koffiebar Bonen"),
]
TERMINALS = [
    {
        "id": f"{kind}_{n}",
        "department": department,
        "tenant": tenant,
        "receipt_id_prefix": str(n),
        "allow_returns": True,
    }
    for kind, department, tenant in KINDS
    for n in (1, 2)
]


def store_id(number: int) -> str:
    return f"store-{number:03d}"


def chain_store(
    root: Path,
    number: int,
    db_url: str,
    *,
    timezone: str = "Europe/Amsterdam",
    terminals: list[dict] = TERMINALS,
) -> PosfedConfig:
    """Store ``number`` of the chain (``store-001`` …) under ``root``, feeding ``db_url``."""
    raw = store_config_dict(root / store_id(number), terminals=terminals)
    raw["store"]["id"] = store_id(number)
    raw["store"]["timezone"] = timezone
    raw["store"]["weighed_departments"] = ["20", "30", "40", "50", "60"]
    raw["sync"] = {"batch_size": 7}  # many small transactions, interleaved across stores
    config = replace(config_from_dict(raw, base_dir=root), db_url=db_url)
    config.ensure_folders()
    return config


@dataclass
class Sold:
    """What a store's tills sold, as accepted by its ledger: per (tenant, business day)."""

    receipts: dict[tuple[str, date], int] = field(default_factory=lambda: defaultdict(int))
    net: dict[tuple[str, date], Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    last_sold_at: datetime | None = None

    def of_day(self, day: date) -> dict[str, tuple[int, Decimal]]:
        return {t: (n, self.net[(t, d)]) for (t, d), n in self.receipts.items() if d == day}


def sell(config: PosfedConfig, times: Iterable[datetime], *, seed: int, sold: Sold | None = None):
    """On every terminal, one receipt at each of ``times`` (aware), accepted through posfed's
    stages into the store's ledger (and its .dat written); returns what was sold."""
    sold = sold if sold is not None else Sold()
    times = list(times)
    simulator = ReceiptSimulator(list(config.terminals), seed=seed)
    spec = load_spec(config.dat_spec)
    ledger = open_ledger(config.home)
    try:
        for terminal in config.terminals:
            paths = []
            for at in times:
                receipt = simulator.make_receipt(terminal, at)
                paths.append(simulator.drop(terminal, receipt))
                key = (terminal.tenant, receipt.business_day)
                sold.receipts[key] += 1
                sold.net[key] += receipt.total
                if sold.last_sold_at is None or receipt.timestamp > sold.last_sold_at:
                    sold.last_sold_at = receipt.timestamp
            result = process_batch(config, terminal, paths, ledger=ledger, spec=spec)
            assert len(result.acceptance.inserted) == len(paths), [
                (r.file, [str(p) for p in r.problems]) for r in result.rejections()
            ]
    finally:
        ledger.close()
    return sold


def feed(config: PosfedConfig, db_url: str | None = None) -> SyncPass:
    """The store's sync: its ledger's outbox into the central database, as a sync run does."""
    engine = central_db.make_engine(db_url or config.db_url)
    ledger = open_ledger(config.home)
    try:
        return sync_pending(ledger, engine, config.sync)
    finally:
        ledger.close()
        engine.dispose()
