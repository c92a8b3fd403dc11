"""The central database, fed from the store's local ledger (store-and-forward).

    validated_receipts ─▶ central_db_receipts      (central_db_sync_job)

A sync run drains the ledger's outbox into the central database and reports what it stored;
its ``central_db_lag`` check says how far behind the central database is (warn past a minute,
fail past fifteen, by default). Runs come from ``central_db_sync_sensor`` (every daemon tick,
the catch-up path) and from the fast path's trigger (right after receipt runs). Only one sync
runs at a time per store (the ledger's sync slot), and after a failure the next waits 1 s, 2 s,
4 s … capped: a central database that is away costs one short failed run now and then, never
a .dat file.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from sqlalchemy.engine import Engine

from posfed_pipeline.core import central_db
from posfed_pipeline.core.base.clock import SYSTEM_CLOCK, Clock
from posfed_pipeline.core.central_db.timeouts import DeadlineExceeded
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.stages import sync
from posfed_pipeline.core.state import claims
from posfed_pipeline.core.state.ledger import Ledger, SyncState, open_ledger
from posfed_pipeline.defs.markdown import md_table
from posfed_pipeline.defs.partitions import lineage_only_dep
from posfed_pipeline.defs.resources import CentralDbResource
from posfed_pipeline.names import (
    CENTRAL_DB_RECEIPTS,
    FAILURE_KIND_TAG,
    LAG_CHECK,
    LANE_TAG,
    RECEIPTS_GROUP,
    RUN_KEY_TAG,
    SYNC_JOB,
    SYNC_LANE,
    SYNC_PASS_PREFIX,
    SYNC_SENSOR,
    VALIDATED_RECEIPTS,
)

# A slot taken for a run that never appeared belongs to a launcher that died first.
ORPHAN_SLOT_SECONDS = 30.0
# A sync pass stops after SyncPolicy.max_pass_seconds (120 s) plus a last call's timeout.
SYNC_PASS_LONGEST_SECONDS = 180.0
# The sensor is the catch-up path: while the fast path lives it syncs, and the sensor only
# looks. Every tick is two writes to the daemon's storage (~40 ms of CPU with the code
# server's share), so a tick a second was the store's largest fixed cost; within 5 s of a
# receipt run is soon enough when the fast path is down, and back-off waits round up to it.
SYNC_SENSOR_INTERVAL_SECONDS = 5


def sync_run_key() -> str:
    return f"central_db_sync:{time.time_ns()}"


def sync_run_tags() -> dict[str, str]:
    return {LANE_TAG: SYNC_LANE}


def slot_holder_done(
    instance: dg.DagsterInstance, home: Path | None = None, clock: Clock = SYSTEM_CLOCK
):
    """For ``Ledger.take_sync_slot``: has the run holding the slot ended? (Or the fast path's
    sync pass: ``home`` is the store's, where the trigger's heartbeat is.)"""

    def done(run_key: str, taken_at: float) -> bool:
        if run_key.startswith(SYNC_PASS_PREFIX):
            return _sync_pass_done(home, taken_at, clock)
        records = instance.get_run_records(
            filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1
        )
        orphaned = clock.time() - taken_at > ORPHAN_SLOT_SECONDS
        if not records:
            return orphaned  # its launcher died before creating the run
        run = records[0].dagster_run
        # Created but never launched (the launch failed): nobody will ever run it.
        return run.is_finished or (orphaned and run.status == dg.DagsterRunStatus.NOT_STARTED)

    return done


def _sync_pass_done(home: Path | None, taken_at: float, clock: Clock) -> bool:
    """A pass runs on the live trigger's background worker, and gives the slot back when done
    (a worker that dies is reported to the trigger, which gives it back). So the slot is a
    leftover when no trigger lives, or one started since, or after the longest a pass takes."""
    if clock.time() - taken_at > SYNC_PASS_LONGEST_SECONDS or home is None:
        return True
    table = claims.ClaimTable(claims.claim_table_path(home))
    started = table.beat_at(claims.TRIGGER_STARTED)
    return not table.alive() or (started is not None and started > taken_at)


sync_job = dg.define_asset_job(
    SYNC_JOB,
    selection=dg.AssetSelection.assets(CENTRAL_DB_RECEIPTS),
    executor_def=dg.in_process_executor,
    tags=sync_run_tags(),
    description="Store what the store's ledger accepted in the central database.",
)


def definitions(config: PosfedConfig, clock: Clock) -> dg.Definitions:
    """The sync asset and its lag check, its job, and the sensor that launches it."""
    return dg.Definitions(
        assets=[_central_db_receipts(config, clock)],
        jobs=[sync_job],
        sensors=[_sync_sensor(config, clock)],
    )


def _central_db_receipts(config: PosfedConfig, clock: Clock) -> dg.AssetsDefinition:
    policy = config.sync

    @dg.asset(
        key=CENTRAL_DB_RECEIPTS,
        deps=[lineage_only_dep(VALIDATED_RECEIPTS)],
        group_name=RECEIPTS_GROUP,
        kinds={"sqlalchemy"},
        description="Receipt, line and ingest-ledger rows in the central database, "
        "fed from the store's local ledger in bulk, idempotently, in receipt order per terminal.",
        check_specs=[
            dg.AssetCheckSpec(
                LAG_CHECK,
                asset=CENTRAL_DB_RECEIPTS,
                description=f"The central database is at most {policy.warn_after_seconds:g} s "
                f"behind the store's ledger (warns beyond; fails past "
                f"{policy.fail_after_seconds:g} s or when it refuses a receipt).",
            )
        ],
    )
    def central_db_receipts(context: dg.AssetExecutionContext, central_db: CentralDbResource):
        yield from sync_outbox(context, central_db, config, clock)

    return central_db_receipts


@dataclass
class SyncPassOutcome:
    """What one sync pass did: what it stored, the sync state after it, its error if any."""

    done: sync.SyncPass
    state: SyncState
    error: Exception | None
    previous_error: str | None
    now: float


def run_sync_pass(
    ledger: Ledger,
    get_engine: Callable[[], Engine],
    policy: sync.SyncPolicy,
    run_key: str | None,
    clock: Clock = SYSTEM_CLOCK,
) -> SyncPassOutcome:
    """The ledger's outbox into the central database, its outcome recorded in the ledger (the
    slot given back, the back-off after a failure). A sync run's step and the fast path's sync
    pass (``fastpath.sync_pass``) both run this; an error is returned, not raised."""
    previous_error = ledger.sync_state().last_error
    error: Exception | None = None
    done = sync.SyncPass()
    try:
        engine = get_engine()
        sync.check_central_schema(engine, policy)
        done = sync.sync_pending(ledger, engine, policy)
    except Exception as exc:  # judged by the caller, once the ledger knows
        error = exc
    now = clock.time()
    state = ledger.finish_sync(
        run_key, error=str(error) if error else None, backoff=policy.backoff_seconds, now=now
    )
    return SyncPassOutcome(done, state, error, previous_error, now)


def sync_outbox(
    context: dg.AssetExecutionContext,
    resource: CentralDbResource,
    config: PosfedConfig,
    clock: Clock,
):
    """A sync run: the ledger's outbox into the central database, then the lag check."""
    ledger = open_ledger(config.home)
    outcome = run_sync_pass(
        ledger, resource.get_engine, config.sync, context.run.tags.get(RUN_KEY_TAG), clock
    )
    if outcome.error is None:
        yield dg.MaterializeResult(metadata=pass_metadata(outcome.done))
    yield lag_check_result(ledger, config.sync, outcome.state, now=outcome.now)
    if outcome.error is not None:
        raise _sync_failure(
            context,
            outcome.error,
            outcome.state,
            repeated=str(outcome.error) == outcome.previous_error,
            now=outcome.now,
        )


def pass_metadata(done: sync.SyncPass) -> dict:
    table = md_table(
        ["terminal", "day", "receipts"],
        [(t, day, count) for (t, day), count in sorted(done.by_terminal_day.items())],
        align="llr",
    )
    return {
        "deliveries_stored": done.deliveries,
        "receipts_inserted": done.receipts_inserted,
        "lines_inserted": done.lines_inserted,
        "already_stored": done.already_held,
        "refused": len(done.refused),
        "batches": done.batches,
        "seconds": dg.MetadataValue.float(round(done.seconds, 3)),
        "outbox_emptied": done.complete,
        "receipts_by_terminal_day": dg.MetadataValue.md(
            table if done.by_terminal_day else "Nothing new."
        ),
    }


def lag_check_result(
    ledger: Ledger, policy: sync.SyncPolicy, state=None, *, now: float | None = None
) -> dg.AssetCheckResult:
    """The ``central_db_lag`` check, as a sync run reports it."""
    return dg.AssetCheckResult(
        asset_key=CENTRAL_DB_RECEIPTS,
        check_name=LAG_CHECK,
        **_lag_check(ledger, policy, state, now),
    )


def lag_check_evaluation(
    ledger: Ledger, policy: sync.SyncPolicy, state=None, *, now: float | None = None
) -> dg.AssetCheckEvaluation:
    """The same check, as a sync pass without a run reports it."""
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(CENTRAL_DB_RECEIPTS),
        check_name=LAG_CHECK,
        **_lag_check(ledger, policy, state, now),
    )


def _lag_check(ledger: Ledger, policy: sync.SyncPolicy, state, now: float | None) -> dict:
    lag = ledger.lag()
    level = sync.lag_level(lag, policy, now)
    state = state or ledger.sync_state()
    metadata = {
        "lag_seconds": dg.MetadataValue.float(round(lag.age_seconds(now), 1)),
        "receipts_pending": lag.pending_receipts,
        "deliveries_pending": lag.pending_deliveries,
        "refused_by_central_db": lag.parked,
        "failed_attempts_in_a_row": state.failures,
        "summary": dg.MetadataValue.text(sync.describe_lag(lag, now)),
    }
    if state.last_error:
        metadata["last_error"] = dg.MetadataValue.text(state.last_error[:500])
    if lag.parked:
        metadata["refused"] = dg.MetadataValue.md(
            md_table(["terminal", "day", "receipt", "why"], ledger.parked_entries(20))
        )
    return {
        "passed": level is sync.LagLevel.OK,
        "severity": dg.AssetCheckSeverity.WARN
        if level is sync.LagLevel.WARN
        else dg.AssetCheckSeverity.ERROR,
        "metadata": metadata,
    }


def is_out_of_reach(error: BaseException) -> bool:
    return isinstance(error, DeadlineExceeded) or central_db.is_transient_error(error)


def _sync_failure(context, error: Exception, state, *, repeated: bool, now: float) -> dg.Failure:
    transient = is_out_of_reach(error)
    kind = "transient" if transient else "repeated" if repeated else "permanent"
    context.instance.add_run_tags(context.run.run_id, {FAILURE_KIND_TAG: kind})
    retry_in = max(0.0, state.next_attempt_at - now)
    what = (
        "the central database is out of reach"
        if transient
        else "the central database refused the sync"
    )
    return dg.Failure(
        description=f"{what}: {error}. Nothing is lost: the receipts stay in the store's "
        f"ledger and their .dat files are written; the next attempt is in {retry_in:.0f} s "
        f"({state.failures} failed in a row).",
        metadata={"transient": transient, "failed_attempts_in_a_row": state.failures},
        allow_retries=False,
    )


def _sync_sensor(config: PosfedConfig, clock: Clock) -> dg.SensorDefinition:
    @dg.sensor(
        name=SYNC_SENSOR,
        job=sync_job,
        minimum_interval_seconds=SYNC_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Launches a sync of the ledger's outbox into the central database whenever "
        "it holds something, one at a time, backing off after failures.",
    )
    def central_db_sync_sensor(context: dg.SensorEvaluationContext):
        return sync_tick(context, config, clock)

    return central_db_sync_sensor


def sync_tick(
    context: dg.SensorEvaluationContext, config: PosfedConfig, clock: Clock
) -> dg.RunRequest | dg.SkipReason:
    """A sync sensor tick: a sync run when the outbox holds something the trigger leaves."""
    ledger = open_ledger(config.home)
    lag = ledger.lag()
    now = clock.time()
    if not ledger.has_outbox():
        return dg.SkipReason(sync.describe_lag(lag, now))
    trigger_alive = claims.ClaimTable(claims.claim_table_path(config.home)).alive()
    if trigger_alive and lag.age_seconds(now) < config.catchup_grace_seconds:
        return dg.SkipReason("the fast path's trigger syncs fresh receipts")
    run_key = sync_run_key()
    holder_done = slot_holder_done(context.instance, config.home, clock)
    if not ledger.take_sync_slot(run_key, holder_done=holder_done, now=now):
        state = ledger.sync_state()
        if state.next_attempt_at > now:
            return dg.SkipReason(
                f"backing off after {state.failures} failed attempt(s): next in "
                f"{state.next_attempt_at - now:.0f} s ({state.last_error})"
            )
        return dg.SkipReason("a sync is in flight")
    return dg.RunRequest(run_key=run_key, tags=sync_run_tags())
