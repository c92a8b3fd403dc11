"""How the store's ledger feeds the central register: batch sizes, back-off, timeouts, lag
thresholds (``[sync]``), and the store id every row of the register carries. Plain settings,
no database: loading the configuration does not import SQLAlchemy."""

from __future__ import annotations

from dataclasses import dataclass

from posfed_pipeline.core.model.store import DEFAULT_STORE_ID


@dataclass(frozen=True)
class SyncPolicy:
    # The store whose receipts these are: part of every key in the central register
    # ([store] id), so terminal ids need only be unique within a store.
    store_id: str = DEFAULT_STORE_ID
    batch_size: int = 500
    backoff_base_seconds: float = 1.0
    # Capped well below a minute: once the database is back, the next attempt comes soon.
    backoff_cap_seconds: float = 30.0
    # One transaction (checkout, queries, commit) may take this long before it is cut off.
    call_timeout_seconds: float = 20.0
    # A sync pass stops after this long even with work left (the next pass continues).
    max_pass_seconds: float = 120.0
    # The fast path launches a sync at most this often: each is a Dagster run (~0.1 CPU-s),
    # so under load fewer, bigger syncs leave the CPU to the checkout.
    min_interval_seconds: float = 3.0
    warn_after_seconds: float = 60.0
    fail_after_seconds: float = 900.0

    def backoff_seconds(self, failures: int) -> float:
        """Wait after ``failures`` failed attempts in a row: 1 s, 2 s, 4 s … capped."""
        if failures <= 0:
            return 0.0
        return min(self.backoff_base_seconds * 2 ** (failures - 1), self.backoff_cap_seconds)
