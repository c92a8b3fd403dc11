"""One file sensor per terminal: new, completely written inbox files become short runs.

The cursor remembers which file versions (name, size, mtime) were launched, and under which run
key, so a file is never launched twice while its run may still take it. A file that is still in
the inbox after its run *failed* (database down, disk full, a crash) is launched again, after a
delay that doubles per attempt: nothing is lost and no operator has to act. Entries leave the
cursor once their file has left the inbox. Each tick launches at most one run per (terminal,
business day), carrying all of that day's new files.
"""

import json
import time

import dagster as dg

from posfed_pipeline.core import inbox, intake
from posfed_pipeline.core.config import PosfedConfig, Terminal
from posfed_pipeline.defs.assets import ReceiptBatchConfig, receipt_op_config
from posfed_pipeline.defs.partitions import terminal_day_key

TERMINAL_TAG = "posfed/terminal"
_FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def inbox_sensor_name(terminal: Terminal) -> str:
    return f"{terminal.id}_inbox_sensor"


def build_inbox_sensor(config: PosfedConfig, terminal: Terminal, job) -> dg.SensorDefinition:
    """``job``: the receipts asset job (as returned by ``define_asset_job``)."""
    name = inbox_sensor_name(terminal)

    @dg.sensor(
        name=name,
        job=job,
        # The daemon evaluates sensors every 5 s at best; ask for every loop.
        minimum_interval_seconds=1,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Watches {terminal.inbox} ({terminal.tenant}, department "
        f"{terminal.department}) and launches a run per business day for new receipt files.",
    )
    def _inbox_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        # signature -> [run key, attempt]
        launched: dict[str, list] = json.loads(context.cursor)["launched"] if context.cursor else {}
        try:
            scan = inbox.scan_inbox(
                terminal, stability_seconds=config.stability_seconds, now=time.time()
            )
        except OSError as exc:
            # This terminal's problem only: say it on its own sensor, keep the cursor.
            return dg.SensorResult(skip_reason=f"inbox {terminal.inbox} unreadable: {exc}")

        new = [f for f in scan.ready if f.signature not in launched]
        retry_by_attempt: dict[int, list[inbox.InboxFile]] = {}
        failed_keys = _failed_run_keys(context.instance, name, launched, scan.ready, config)
        for item in scan.ready:
            entry = launched.get(item.signature)
            if entry and entry[0] in failed_keys:
                retry_by_attempt.setdefault(entry[1] + 1, []).append(item)

        def day_of(item: inbox.InboxFile):
            return intake.business_day_of_file(item.path, terminal)

        batches = inbox.plan_batches(terminal, new, day_of)
        for attempt, files in sorted(retry_by_attempt.items()):
            batches += inbox.plan_batches(terminal, files, day_of, attempt=attempt)

        present = {f.signature for f in scan.ready + scan.settling}
        cursor = {sig: entry for sig, entry in launched.items() if sig in present}
        for batch in batches:
            for item in batch.files:
                cursor[item.signature] = [batch.run_key, batch.attempt]
        run_requests = [
            dg.RunRequest(
                run_key=batch.run_key,
                partition_key=terminal_day_key(terminal.id, batch.business_day),
                run_config=receipt_op_config(ReceiptBatchConfig(files=batch.file_names)),
                tags={TERMINAL_TAG: terminal.id},
            )
            for batch in batches
        ]
        skip_reason = None
        if not run_requests:
            waiting = len(scan.ready) - len(new)
            skip_reason = (
                f"{len(scan.settling)} file(s) still being written"
                if scan.settling
                else f"{waiting} file(s) waiting on their run"
                if waiting
                else "no new receipt files"
            )
        return dg.SensorResult(
            run_requests=run_requests,
            cursor=json.dumps({"launched": cursor}),
            skip_reason=skip_reason,
        )

    return _inbox_sensor


def _failed_run_keys(
    instance: dg.DagsterInstance,
    sensor_name: str,
    launched: dict[str, list],
    ready: list[inbox.InboxFile],
    config: PosfedConfig,
) -> set[str]:
    """Run keys of this sensor whose run failed long enough ago to launch their files again.

    Only files still in the inbox after launch are looked at: normally none, as a successful
    run moves every file it carries.
    """
    pending = {tuple(launched[f.signature]) for f in ready if f.signature in launched}
    failed: set[str] = set()
    now = time.time()
    for run_key, attempt in pending:
        records = instance.get_run_records(
            filters=dg.RunsFilter(
                tags={"dagster/run_key": run_key, "dagster/sensor_name": sensor_name}
            ),
            limit=1,
        )
        if not records:
            continue  # requested but not created yet
        record = records[0]
        if record.dagster_run.status not in _FAILED:
            continue
        ended = record.end_time or now
        if now - ended >= inbox.retry_delay_seconds(attempt + 1, config.relaunch_after_seconds):
            failed.add(run_key)
    return failed
