"""The demo's simulated tills: realistic receipts dropped into terminal inboxes at a chosen rate
(``posfed demo``; posfed-dev's ``posfed simulate``, bench and chaos drive them too).

Receipts follow each department's catalogue (weighed items in kilograms for the butcher,
fishmonger, cheese and greengrocer counters), carry valid EAN-13 codes and exact totals. A
weighed item carries its scale's label, a GS1 element string with the weight and the amount
payable, as a DataBar scanner reads it.
Files are written the way a legacy POS writes them: straight into the inbox, in one go.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from biip.checksums import gs1_standard_check_digit

from posfed_pipeline.core.config import POSLOG_FORMAT, PosfedConfig
from posfed_pipeline.core.intake.poslog import write_poslog
from posfed_pipeline.core.model.receipt import Receipt, ReceiptItem, canonical_json, round_cents
from posfed_pipeline.core.model.terminal import Terminal

# (description, unit price, weighed?) per department kind, keyed by terminal id prefix.
CATALOGUE: dict[str, list[tuple[str, str, bool]]] = {
    "bakery": [
        ("Volkorenbrood", "2.95", False),
        ("Croissant", "1.15", False),
        ("Krentenbol", "0.65", False),
        ("Appeltaart punt", "3.25", False),
    ],
    "butcher": [
        ("Rundergehakt", "11.90", True),
        ("Kipfilet", "12.49", True),
        ("Speklappen", "8.75", True),
        ("Rookworst", "3.29", False),
    ],
    "deli": [
        ("Hummus", "2.49", False),
        ("Olijven gemengd", "19.90", True),
        ("Serranoham", "4.35", False),
        ("Tapenade", "3.10", False),
    ],
    "fishmonger": [
        ("Zalmfilet", "24.90", True),
        ("Kibbeling", "6.50", False),
        ("Gerookte makreel", "17.80", True),
        ("Haring", "2.75", False),
    ],
    "greengrocer": [
        ("Appels Elstar", "2.99", True),
        ("Bananen", "1.89", True),
        ("Tomaten tros", "3.49", True),
        ("Basilicum", "1.29", False),
    ],
    "cheese": [
        ("Gouda belegen", "16.90", True),
        ("Brie de Meaux", "29.50", True),
        ("Geitenkaas", "4.25", False),
    ],
    "patisserie": [
        ("Éclair au chocolat", "3.90", False),
        ("Tarte citron", "4.50", False),
        ("Macaron", "1.60", False),
    ],
    "wine": [
        ("Côtes du Rhône", "9.95", False),
        ("Rioja Crianza", "12.50", False),
        ("Prosecco", "8.99", False),
    ],
    "flowers": [("Tulpen bos", "4.99", False), ("Rozen 10 st.", "9.95", False)],
    "coffee": [
        ("Espressobonen 500g", "8.45", False),
        ("Cappuccino", "3.20", False),
        ("Thee Earl Grey", "3.65", False),
    ],
}
DEFAULT_CATALOGUE = [("Artikel", "1.00", False)]


def ean13(seed: int) -> str:
    body = f"87{seed % 10**10:010d}"
    return f"{body}{gs1_standard_check_digit(body)}"


def scale_label(gtin13: str, weight: Decimal, amount: Decimal) -> str:
    """A scale's GS1 label: (01) the item, (3103) net kg to the gram, (3922) amount payable."""
    # 392n holds at least its n decimals and one unit digit: 0.05 is 005.
    return f"(01)0{gtin13}(3103){int(weight * 1000):06d}(3922){int(amount * 100):03d}"


@dataclass
class ReceiptSimulator:
    terminals: list[Terminal]
    seed: int | None = None
    scale_labels: bool = True  # weighed items carry a scale label, not a plain EAN-13

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)

    def make_receipt(self, terminal: Terminal, when: datetime | None = None) -> Receipt:
        kind = terminal.id.rsplit("_", 1)[0]
        catalogue = CATALOGUE.get(kind, DEFAULT_CATALOGUE)
        items = []
        for _ in range(self.random.randint(1, 5)):
            index = self.random.randrange(len(catalogue))
            description, price, weighed = catalogue[index]
            quantity = (
                Decimal(self.random.randint(80, 1500)) / 1000
                if weighed
                else Decimal(self.random.randint(1, 4))
            )
            code = ean13(zlib.crc32(f"{kind}:{index}".encode()))
            if weighed and self.scale_labels:
                code = scale_label(code, quantity, round_cents(Decimal(price) * quantity))
            items.append(ReceiptItem(code, description, Decimal(price), quantity))
        moment = (when or datetime.now(terminal.timezone)).astimezone(terminal.timezone)
        # 12 characters (the seed layout's field), starting with the terminal's own prefix.
        prefix = terminal.receipt_id_prefix
        number = uuid.UUID(int=self.random.getrandbits(128)).hex.upper()[: 12 - len(prefix)]
        return Receipt(
            receipt_id=prefix + number,
            terminal_id=terminal.id,
            department_code=terminal.department,
            items=tuple(items),
            total=sum((round_cents(i.price * i.quantity) for i in items), Decimal("0.00")),
            timestamp=moment.replace(microsecond=0),
        )

    def drop(self, terminal: Terminal, receipt: Receipt | None = None) -> Path:
        """The receipt as the terminal's till writes it: posfed JSON, or a POSLog file."""
        receipt = receipt or self.make_receipt(terminal)
        if terminal.input_format == POSLOG_FORMAT:
            path = terminal.inbox / f"{receipt.receipt_id}.xml"
            path.write_bytes(write_poslog([receipt], terminal.workstation_id or terminal.id))
            return path
        path = terminal.inbox / f"{receipt.receipt_id}.json"
        path.write_text(canonical_json(receipt), encoding="utf-8")
        return path

    def run(
        self,
        *,
        rate: float,
        duration: float,
        on_drop: Callable[[Path], None] | None = None,
    ) -> int:
        """Drop receipts on random terminals at ``rate`` per second for ``duration`` seconds."""
        sent = 0
        for _ in self._ticks(rate, duration):
            path = self.drop(self.random.choice(self.terminals))
            sent += 1
            if on_drop:
                on_drop(path)
        return sent

    @staticmethod
    def _ticks(rate: float, duration: float) -> Iterator[float]:
        interval = 1.0 / rate
        start = time.monotonic()
        next_at = start
        while duration <= 0 or next_at - start < duration:
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield next_at
            next_at += interval


def receipt_json(receipt: Receipt) -> dict:
    return json.loads(canonical_json(receipt))


def drop_until(config: PosfedConfig, rate: float, stop: threading.Event) -> None:
    """The demo's tills (``posfed demo``): a receipt on a random terminal at ``rate`` per
    second until ``stop``."""
    simulator = ReceiptSimulator(list(config.terminals))
    if stop.wait(8):  # let the webserver and daemon come up first
        return
    while not stop.wait(1.0 / rate):
        simulator.drop(simulator.random.choice(simulator.terminals))
