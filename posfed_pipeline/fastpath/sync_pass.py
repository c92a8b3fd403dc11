"""The fast path's central database sync: a sync pass in the background worker, without a
Dagster run of its own.

A sync run costs ~60 ms of CPU in Dagster's bookkeeping around a pass that, at a few receipts
a time, costs a few; at one every 3 s that was a fifth of what a store spends at a receipt a
second. So the trigger hands the pass to the background worker (its lane, its low priority,
never a checkout worker's), which runs the very pass a sync run runs (``defs.central_db``)
and reports it as a sync run would, without the run: a materialization of
``central_db_receipts`` with the same metadata, and the ``central_db_lag`` check.

A pass that fails (the central database out of reach, a worker that died) is recorded in the
ledger as a failed run's would be (the back-off grows), and the trigger makes the next
attempts sync runs, as before the pass existed: each failure is a failed run in the UI, with
its reason, its alert and its back-off, until one succeeds.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import dagster as dg

from posfed_pipeline.core.config import PosfedConfig, load_config
from posfed_pipeline.core.state.ledger import Ledger, open_ledger
from posfed_pipeline.defs.central_db import lag_check_evaluation, pass_metadata, run_sync_pass
from posfed_pipeline.defs.resources import central_db_engine
from posfed_pipeline.names import CENTRAL_DB_RECEIPTS, SYNC_PASS_PREFIX

log = logging.getLogger("posfed.fastpath.sync_pass")

JOB_PREFIX = SYNC_PASS_PREFIX
KIND = "sync_pass"


@dataclass(frozen=True)
class SyncPassJob:
    """What the trigger hands the background worker: a pass. Its id is also the key the
    ledger's sync slot is held under."""

    job_id: str

    @classmethod
    def new(cls) -> SyncPassJob:
        return cls(f"{JOB_PREFIX}{uuid.uuid4().hex}")

    def to_message(self) -> dict:
        return {"kind": KIND, "job_id": self.job_id}

    @classmethod
    def from_message(cls, message: dict) -> SyncPassJob:
        return cls(message["job_id"])


def is_sync_pass(job_id: str | None) -> bool:
    return job_id is not None and job_id.startswith(JOB_PREFIX)


def is_sync_pass_message(message: dict) -> bool:
    return message.get("kind") == KIND


class SyncPassWorker:
    """A worker's sync state: the configuration and the ledger (the checkout's, in a warm
    worker), opened once; the engine is one per process and URL (``defs.resources``)."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        config: PosfedConfig | None = None,
        ledger: Ledger | None = None,
    ):
        self.instance = instance
        self.config = config or load_config()
        self.ledger: Ledger = ledger or open_ledger(self.config.home)

    def run(self, job: SyncPassJob) -> bool:
        """One pass, reported as a sync run reports it; False when it failed (recorded)."""
        policy = self.config.sync
        outcome = run_sync_pass(
            self.ledger, lambda: central_db_engine(self.config), policy, job.job_id
        )
        if outcome.error is None:
            self.instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    dg.AssetKey(CENTRAL_DB_RECEIPTS), metadata=pass_metadata(outcome.done)
                )
            )
        self.instance.report_runless_asset_event(
            lag_check_evaluation(self.ledger, policy, outcome.state, now=outcome.now)
        )
        if outcome.error is not None:
            log.warning(
                "the central database sync failed (%s failed in a row): %s; the next attempts "
                "are sync runs",
                outcome.state.failures,
                outcome.error,
            )
        return outcome.error is None
