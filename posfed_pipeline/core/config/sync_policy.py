"""How the store's ledger feeds the central database: batch sizes, back-off, timeouts, lag
thresholds (``[sync]``), and the store id every row of the central database carries. Plain settings,
no database: loading the configuration does not import SQLAlchemy."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, Field, model_validator

from posfed_pipeline.core.model.settings import TABLE, default_of
from posfed_pipeline.core.model.store import DEFAULT_STORE_ID


class SyncTable(BaseModel):
    """``[sync]``: the central database is fed from the store's ledger (store-and-forward)."""

    model_config = TABLE

    batch_size: int = Field(
        500, strict=True, ge=1, le=10_000, description="deliveries per transaction"
    )
    backoff_cap_seconds: float = Field(
        30.0,
        strict=True,
        gt=0,
        description="retries after 1 s, 2 s, 4 s ... at most this far "
        "apart (well below a minute: once the database is back, the next attempt comes soon)",
    )
    call_timeout_seconds: float = Field(
        20.0,
        strict=True,
        gt=0,
        description="one transaction (checkout, queries, commit) still "
        "unanswered after this is cut off and retried",
    )
    min_interval_seconds: float = Field(
        3.0,
        strict=True,
        gt=0,
        description="the fast path syncs at most this often (a pass on its background "
        "worker, or a sync run after a failed one): under load fewer, bigger syncs leave the "
        "CPU to the checkout",
    )
    warn_after_seconds: float = Field(
        60.0, strict=True, gt=0, description="the central_db_lag check warns past this lag..."
    )
    fail_after_seconds: float = Field(
        900.0, strict=True, gt=0, description="...and fails (and alerts) past this one"
    )

    @model_validator(mode="after")
    def _fail_after_warn(self) -> SyncTable:
        if self.fail_after_seconds <= self.warn_after_seconds:
            raise ValueError("fail_after_seconds must be more than warn_after_seconds")
        return self


@dataclass(frozen=True)
class SyncPolicy:
    # The store whose receipts these are: part of every key in the central database
    # ([store] id), so terminal ids need only be unique within a store.
    store_id: str = DEFAULT_STORE_ID
    batch_size: int = default_of(SyncTable, "batch_size")
    backoff_base_seconds: float = 1.0  # not a setting
    backoff_cap_seconds: float = default_of(SyncTable, "backoff_cap_seconds")
    call_timeout_seconds: float = default_of(SyncTable, "call_timeout_seconds")
    # A sync pass stops after this long even with work left (the next pass continues).
    max_pass_seconds: float = 120.0  # not a setting
    min_interval_seconds: float = default_of(SyncTable, "min_interval_seconds")
    warn_after_seconds: float = default_of(SyncTable, "warn_after_seconds")
    fail_after_seconds: float = default_of(SyncTable, "fail_after_seconds")

    def backoff_seconds(self, failures: int) -> float:
        """Wait after ``failures`` failed attempts in a row: 1 s, 2 s, 4 s … capped."""
        if failures <= 0:
            return 0.0
        return min(self.backoff_base_seconds * 2 ** (failures - 1), self.backoff_cap_seconds)
