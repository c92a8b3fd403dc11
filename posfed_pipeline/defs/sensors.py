"""One file sensor per terminal: new, completely written inbox files become short runs.

The cursor remembers which file versions (name, size, mtime) were launched, so a file is never
launched twice; entries leave the cursor once their file has left the inbox. Each tick launches
at most one run per (terminal, business day), carrying all of that day's new files.
"""

import json
import time

import dagster as dg

from posfed_pipeline.core import inbox, intake
from posfed_pipeline.core.config import PosfedConfig, Terminal
from posfed_pipeline.defs.assets import ReceiptBatchConfig, receipt_op_config
from posfed_pipeline.defs.partitions import terminal_day_key

TERMINAL_TAG = "posfed/terminal"


def inbox_sensor_name(terminal: Terminal) -> str:
    return f"{terminal.id}_inbox_sensor"


def build_inbox_sensor(config: PosfedConfig, terminal: Terminal, job) -> dg.SensorDefinition:
    """``job``: the receipts asset job (as returned by ``define_asset_job``)."""

    @dg.sensor(
        name=inbox_sensor_name(terminal),
        job=job,
        # The daemon evaluates sensors every 5 s at best; ask for every loop.
        minimum_interval_seconds=1,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Watches {terminal.inbox} ({terminal.tenant}, department "
        f"{terminal.department}) and launches a run per business day for new receipt files.",
    )
    def _inbox_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        launched: set[str] = (
            set(json.loads(context.cursor)["launched"]) if context.cursor else set()
        )
        try:
            scan = inbox.scan_inbox(
                terminal, stability_seconds=config.stability_seconds, now=time.time()
            )
        except OSError as exc:
            # This terminal's problem only: say it on its own sensor, keep the cursor.
            return dg.SensorResult(skip_reason=f"inbox {terminal.inbox} unreadable: {exc}")
        new = [f for f in scan.ready if f.signature not in launched]
        batches = inbox.plan_batches(
            terminal, new, lambda f: intake.business_day_of_file(f.path, terminal)
        )
        present = {f.signature for f in scan.ready + scan.settling}
        cursor = sorted((launched & present) | {f.signature for f in new})
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
            skip_reason = (
                f"{len(scan.settling)} file(s) still being written"
                if scan.settling
                else "no new receipt files"
            )
        return dg.SensorResult(
            run_requests=run_requests,
            cursor=json.dumps({"launched": cursor}),
            skip_reason=skip_reason,
        )

    return _inbox_sensor
