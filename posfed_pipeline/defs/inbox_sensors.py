"""One file sensor per terminal: new, completely written inbox files become short runs.

Every launcher (this sensor, and the event-driven trigger of ``posfed_pipeline.fastpath``)
*claims* the file versions (name, size, mtime) a run will carry before creating it, in the
store's claim table; a version is claimed once, so a file is never launched twice, whichever
launcher sees it first. The sensor is the guaranteed catch-up path: it takes whatever is ready
and unclaimed, and re-launches files still in the inbox whose run failed (after a delay that
doubles per attempt) or whose claim never got a run (a launcher crashed in between): nothing is
lost and no operator has to act. Each tick launches at most one run per (terminal, business
day), and at most a run's worth of new files (the oldest): a flooded inbox is worked off run by
run. An inbox that does not list within 5 s (a hung share) is reported on its own sensor.
While the trigger is alive (its heartbeat in the claim table), the sensor leaves new files to it
for ``catchup_grace_seconds`` (10 s), so it never competes with the trigger's batching.
The cursor keeps, for the UI, which files this sensor launched and under which run key.
"""

import json
import math
from collections import defaultdict
from dataclasses import replace

import dagster as dg

from posfed_pipeline.core.base.clock import Clock
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.core.stages import launching
from posfed_pipeline.core.state import claims, inbox
from posfed_pipeline.defs.partitions import terminal_day_key
from posfed_pipeline.defs.receipts import ReceiptBatchConfig, receipt_op_config, receipts_job
from posfed_pipeline.names import (
    BACKLOG_TAG,
    RUN_KEY_TAG,
    SENSOR_NAME_TAG,
    TERMINAL_TAG,
    inbox_sensor_name,
)
from posfed_pipeline.run_tags import BACKLOG_FILES

# The daemon's sensor loop runs every 5 s; 4 keeps every loop's tick (at 5, a loop that comes a
# few milliseconds early would be skipped, and the next tick be 10 s away).
DAEMON_LOOP_SECONDS = 5
# A tick gives up on an inbox that does not list within this (a hung share): the tick says so,
# and the sensors of the other terminals, which share the code server's threads, go on.
LISTING_TIMEOUT_SECONDS = 5.0
# A claim with no run after this long belongs to a launcher that died before creating it.
ORPHAN_CLAIM_SECONDS = 30.0
# ...unless the live trigger made it: its checkout processes files without a run of their own
# (a flooded inbox's batches may wait minutes for a worker), and hands any batch that fails to a
# run itself. Its claims are the sensor's once its heartbeat stops, and those of a trigger
# before it (killed mid-checkout) are as soon as ORPHAN_CLAIM_SECONDS have passed.
CHECKOUT_CLAIM_SECONDS = 600.0


# The inbox sensors of a store together tick at most this often: a tick costs the daemon and
# the code server ~18 ms of CPU, nearly all of it Dagster's own bookkeeping (the sensor's state
# written twice, a tick record created and updated), whatever the sensor returns. Up to 21
# terminals each ticks every 30 s; 200 terminals tick every ~4.8 minutes each, so that an idle
# store server costs under 0.05 cores. The trigger takes files within milliseconds: the sensors
# are the catch-up path for when it is down (the supervisor restarts it within seconds).
STORE_TICKS_PER_SECOND = 0.7


def catchup_interval(config: PosfedConfig) -> int:
    """``[intake] catchup_interval_seconds`` (or longer, with many terminals:
    ``STORE_TICKS_PER_SECOND``) as the sensor's minimum interval: a second under a multiple of
    the daemon's loop, so no loop that comes a little early skips a tick."""
    wanted = max(config.catchup_interval_seconds, len(config.terminals) / STORE_TICKS_PER_SECOND)
    loops = max(1, math.ceil(wanted / DAEMON_LOOP_SECONDS - 1e-9))
    return loops * DAEMON_LOOP_SECONDS - 1


def run_request_for(terminal: Terminal, batch: inbox.PlannedBatch) -> dg.RunRequest:
    """The run a batch becomes, identical whichever launcher creates it."""
    tags = {TERMINAL_TAG: terminal.id}
    if len(batch.files) >= BACKLOG_FILES:
        tags[BACKLOG_TAG] = "true"  # the warm pool runs it at a lower CPU priority
    return dg.RunRequest(
        run_key=batch.run_key,
        partition_key=terminal_day_key(terminal.id, batch.business_day),
        run_config=receipt_op_config(
            ReceiptBatchConfig(files=batch.file_names, attempt=batch.attempt)
        ),
        tags=tags,
    )


def definitions(config: PosfedConfig, clock: Clock) -> dg.Definitions:
    """One inbox sensor per terminal, launching the receipts job."""
    return dg.Definitions(sensors=[_sensor_of(config, t, clock) for t in config.terminals])


def _sensor_of(config: PosfedConfig, terminal: Terminal, clock: Clock) -> dg.SensorDefinition:
    @dg.sensor(
        name=inbox_sensor_name(terminal.id),
        job=receipts_job,
        minimum_interval_seconds=catchup_interval(config),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Watches {terminal.inbox} ({terminal.tenant}, department "
        f"{terminal.department}) and launches a run per business day for new receipt files.",
    )
    def _inbox_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        return inbox_tick(context, config, terminal, clock)

    return _inbox_sensor


def inbox_tick(
    context: dg.SensorEvaluationContext, config: PosfedConfig, terminal: Terminal, clock: Clock
) -> dg.SensorResult:
    """An inbox sensor tick: runs for the ready files nobody launched, and for those owed
    another attempt; the cursor keeps which files it launched under which run key."""
    now = clock.time()
    try:
        scan = inbox.scan_inbox_within(terminal, LISTING_TIMEOUT_SECONDS, now=now)
    except OSError as exc:
        # This terminal's problem only: say it on its own sensor, keep the cursor.
        return dg.SensorResult(skip_reason=f"inbox {terminal.inbox} unreadable: {exc}")
    claim_table = claims.ClaimTable(claims.claim_table_path(config.home))
    days = launching.PartitionDays.of(config, now)
    # Names the claim table and a run's config cannot hold are made safe first, as the
    # trigger does: the scan then holds the files as they are named now.
    scan = replace(scan, ready=launching.give_safe_names(terminal, scan.ready))
    every_claim = claim_table.claims_of(terminal.id)
    claimed = {
        f.signature: every_claim[f.signature] for f in scan.ready if f.signature in every_claim
    }
    unclaimed = [f for f in scan.ready if f.signature not in every_claim]
    trigger_alive = claim_table.alive()
    batches = _new_batches(
        context, config, terminal, claim_table, unclaimed, days, trigger_alive, now
    )
    # Files a run left for a later look: when due (the trigger, when up, relaunches them
    # the moment they are, and is given that long first).
    due_by = now - (config.catchup_grace_seconds if trigger_alive else 0.0)
    deferred = {s: c for s, c in claimed.items() if c.retry_at is not None}
    batches += launching.relaunch_due(claim_table, terminal, scan.ready, deferred, days, due_by)
    claimed = {s: c for s, c in claimed.items() if c.retry_at is None}
    batches += _relaunch_batches(
        # Lazily: building the instance from its ref costs more than the rest of a quiet
        # tick, and a quiet tick (no claimed file waiting) needs no run records.
        lambda: context.instance,
        inbox_sensor_name(terminal.id),
        claim_table,
        terminal,
        scan,
        claimed,
        config,
        lambda item: days.day_of(terminal, item),
        now,
        # Only the live trigger's own claims: one that died with files in its checkout left
        # claims older than the live one's start.
        checkout_since=claim_table.beat_at(claims.TRIGGER_STARTED) if trigger_alive else None,
    )
    present = {f.signature for f in scan.ready + scan.settling}
    claim_table.release_absent(terminal.id, present)
    run_requests = [run_request_for(terminal, batch) for batch in batches]
    return dg.SensorResult(
        run_requests=run_requests,
        cursor=_cursor(context.cursor, present, batches),
        skip_reason=None
        if run_requests
        else _skip_reason(scan, len(claimed) + len(deferred), trigger_alive),
    )


def _new_batches(
    context: dg.SensorEvaluationContext,
    config: PosfedConfig,
    terminal: Terminal,
    claim_table: claims.ClaimTable,
    unclaimed: list[inbox.InboxFile],
    days: launching.PartitionDays,
    trigger_alive: bool,
    now: float,
) -> list[inbox.PlannedBatch]:
    """Ready files no launcher claimed yet, claimed for this tick's runs."""
    if trigger_alive:
        # The event-driven trigger is up and takes files within milliseconds, batching a
        # busy terminal's files into its next run: catch up only on what it left behind,
        # and not while it works through a backlog of this terminal (its next run takes
        # the next files).
        cutoff_ns = (now - config.catchup_grace_seconds) * 1e9
        unclaimed = [f for f in unclaimed if f.mtime_ns <= cutoff_ns]
        if unclaimed and _has_unfinished_run(context.instance, terminal):
            unclaimed = []
    # A run's worth per tick, oldest first: a flooded inbox is worked off run by run.
    return launching.claim_ready(claim_table, terminal, unclaimed[: inbox.MAX_FILES_PER_RUN], days)


def _cursor(previous: str | None, present: set[str], batches: list[inbox.PlannedBatch]) -> str:
    """Which files still in the inbox this sensor launched, under which run key (for the UI)."""
    launched = json.loads(previous)["launched"] if previous else {}
    cursor = {sig: entry for sig, entry in launched.items() if sig in present}
    for batch in batches:
        for item in batch.files:
            cursor[item.signature] = [batch.run_key, batch.attempt]
    return json.dumps({"launched": cursor})


def _skip_reason(scan: inbox.InboxScan, waiting: int, trigger_alive: bool) -> str:
    skip_reason = (
        f"{len(scan.settling)} file(s) still being written"
        if scan.settling
        else f"{waiting} file(s) waiting on their run"
        if waiting
        else "no new receipt files (the fast path launches runs for new files itself; "
        "this sensor catches what it leaves)"
        if trigger_alive
        else "no new receipt files"
    )
    odd = [entry.describe() for entry in scan.skipped if entry.not_regular]
    if odd:
        skip_reason += (
            f"; {len(odd)} inbox entr{'y' if len(odd) == 1 else 'ies'} not taken (not "
            "regular files, never followed or opened): " + ", ".join(odd[:5])
        )
    return skip_reason


def _has_unfinished_run(instance: dg.DagsterInstance, terminal: Terminal) -> bool:
    unfinished = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
    ]
    only_its_runs = dg.RunsFilter(tags={TERMINAL_TAG: terminal.id}, statuses=unfinished)
    return instance.get_runs_count(filters=only_its_runs) > 0


def _relaunch_batches(
    instance_of,
    sensor_name: str,
    claim_table: claims.ClaimTable,
    terminal: Terminal,
    scan: inbox.InboxScan,
    claimed: dict[str, claims.Claim],
    config: PosfedConfig,
    day_of,
    now: float,
    *,
    checkout_since: float | None = None,
) -> list[inbox.PlannedBatch]:
    """Files still in the inbox whose run finished without moving them (it failed, or found
    them still being written), or whose claim never became a run.

    Only files still in the inbox after being claimed are looked at: normally none, as a
    successful run moves every file it carries.
    """
    by_key: dict[str, list[claims.Claim]] = defaultdict(list)
    for claim in claimed.values():
        by_key[claim.run_key].append(claim)
    files = {f.signature: f for f in scan.ready}
    batches = []
    # A claim younger than the relaunch delay cannot be owed a relaunch yet (its run, if it
    # failed, ended even more recently): skip the run lookup, the common case under load.
    too_young = min(config.relaunch_after_seconds, ORPHAN_CLAIM_SECONDS)
    for run_key, key_claims in by_key.items():
        if now - max(c.claimed_at for c in key_claims) < too_young:
            continue
        attempt = key_claims[0].attempt
        records = instance_of().get_run_records(
            filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: sensor_name}),
            limit=1,
        )
        if records:
            record = records[0]
            # Unfinished: still running, or, if its worker or launcher died, soon failed by
            # Dagster's run monitoring (dagster.yaml: run_monitoring), which ends every run.
            if not record.dagster_run.is_finished:
                continue
            # A failed run, or a successful one that left files behind (still being written
            # when it read them): both are owed another attempt once the delay has passed.
            ended = record.end_time or now
            delay = inbox.retry_delay_seconds(attempt + 1, config.relaunch_after_seconds)
            if now - ended < delay:
                continue
        else:
            first = min(c.claimed_at for c in key_claims)
            live_checkout = checkout_since is not None and first >= checkout_since
            if now - first < (CHECKOUT_CLAIM_SECONDS if live_checkout else ORPHAN_CLAIM_SECONDS):
                continue  # its launcher is probably creating the run (or checking out) now
        for planned in inbox.plan_batches(
            terminal, [files[c.signature] for c in key_claims], day_of, attempt=attempt + 1
        ):
            handed = launching.hand_over(claim_table, terminal, planned, key_claims)
            if handed is not None:  # the trigger may have taken them a moment ago
                batches.append(handed)
    return batches
