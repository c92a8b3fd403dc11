"""What the Dagster daemon does, in this process: a sensor's tick, and its run requests run with
the tags the daemon gives them."""

from __future__ import annotations

import dagster as dg

from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.names import RECEIPTS_JOB


def tick_sensor(
    sensor: dg.SensorDefinition, cursor: str | None, instance: dg.DagsterInstance | None = None
) -> dg.SensorResult:
    if instance is not None:
        return sensor(dg.build_sensor_context(cursor=cursor, instance=instance))
    with dg.instance_for_test() as fresh:
        return sensor(dg.build_sensor_context(cursor=cursor, instance=fresh))


def run_as_the_daemon_would(
    job: dg.JobDefinition, request: dg.RunRequest, instance: dg.DagsterInstance, sensor_name: str
) -> dg.ExecuteInProcessResult:
    """A sensor's run request executed with the run key and sensor tags the daemon gives it."""
    return job.execute_in_process(
        run_config=request.run_config,
        partition_key=request.partition_key,
        tags={
            **request.tags,
            "dagster/run_key": request.run_key,
            "dagster/sensor_name": sensor_name,
        },
        instance=instance,
        raise_on_error=False,
    )


def sensor_and_runs(config, terminal_id="bakery_1") -> None:
    """What the daemon does: the terminal's sensor ticks, its run requests run."""
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def(f"{terminal_id}_inbox_sensor")
    with dg.instance_for_test() as instance:
        for request in tick_sensor(sensor, None, instance).run_requests:
            result = run_as_the_daemon_would(
                defs.resolve_job_def(RECEIPTS_JOB), request, instance, sensor.name
            )
            assert result.success
