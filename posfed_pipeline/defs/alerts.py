"""Alerts: an operator is told when a run fails or the central database falls too far behind.

Both go through ``core.alerts`` (e-mail over SMTP, a webhook) as configured in ``[alerts]``.
A sync run that failed only because the central database was out of reach is not alerted on
its own (there is one every few seconds during an outage), nor a sync failing again with the
error already reported: the lag alert covers them, sent once when the lag crosses
``[sync] fail_after_seconds`` and once when it has fully recovered. Alerts go through the
store's alert outbox: one that cannot be delivered fails the sensor's tick (Dagster shows it)
and the lag sensor tries it again every 30 s until every channel took it.
"""

import dagster as dg

from posfed_pipeline.core.base.clock import Clock
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.operations.alerts import Alert, AlertOutbox, alert_outbox_path
from posfed_pipeline.core.stages import sync
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.names import (
    FAILURE_KIND_TAG,
    LAG_ALERT_SENSOR,
    PARTITION_TAG,
    RUN_FAILURE_SENSOR,
)

# The lag sensor's cursor: the failure was announced, and recovery not yet (a lag that drains
# through WARN on its way back is still the same outage).
ALERTED = "alerted"


def run_failure_alert(config: PosfedConfig, run: dg.DagsterRun, message: str) -> Alert | None:
    """The alert for a failed run, or None when another alert speaks for it."""
    if run.tags.get(FAILURE_KIND_TAG) in ("transient", "repeated"):
        return None
    partition = run.tags.get(PARTITION_TAG)
    where = f" for {partition}" if partition else ""
    return Alert(
        subject=f"{config.store_name}: run of {run.job_name}{where} failed",
        body=f"The Dagster run {run.run_id} of {run.job_name}{where} failed.\n\n{message}",
        kind="run_failure",
        store_id=config.store_id,
        details=(("run_id", run.run_id), ("job", run.job_name), ("partition", partition or "")),
    )


def lag_alert(
    config: PosfedConfig, level: sync.LagLevel, previous: str | None, now: float | None = None
) -> Alert | None:
    """An alert when the lag turns to FAIL, and one when it is OK again after that."""
    ledger = open_ledger(config.home)
    lag = ledger.lag()
    state = ledger.sync_state()
    details = (
        ("receipts_pending", str(lag.pending_receipts)),
        ("deliveries_pending", str(lag.pending_deliveries)),
        ("lag_seconds", f"{lag.age_seconds(now):.0f}"),
        ("refused_by_central_db", str(lag.parked)),
        ("last_error", state.last_error or ""),
    )
    if level is sync.LagLevel.FAIL and previous != ALERTED:
        return Alert(
            subject=f"{config.store_name}: central database behind by {lag.age_seconds(now):.0f} s",
            body="The central database is not receiving this store's receipts. The checkout "
            "is not affected (every .dat file is written), and nothing is lost: the store "
            "server keeps every receipt and sends it once the central database answers.\n\n"
            f"{sync.describe_lag(lag, now)}.",
            kind="sync_lag",
            store_id=config.store_id,
            details=details,
        )
    if level is sync.LagLevel.OK and previous == ALERTED:
        return Alert(
            subject=f"{config.store_name}: central database caught up",
            body="The central database holds every receipt this store accepted again.",
            kind="sync_recovered",
            store_id=config.store_id,
            details=details,
        )
    return None


def definitions(config: PosfedConfig, clock: Clock) -> dg.Definitions:
    """The run failure alert and the central database lag alert."""
    return dg.Definitions(sensors=[_run_failure_sensor(config), _lag_sensor(config, clock)])


def _outbox(config: PosfedConfig) -> AlertOutbox:
    return AlertOutbox(alert_outbox_path(config.home))


def _run_failure_sensor(config: PosfedConfig) -> dg.SensorDefinition:
    @dg.run_failure_sensor(
        name=RUN_FAILURE_SENSOR,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="E-mails (and/or posts to the webhook) when a run fails ([alerts]).",
    )
    def run_failure_alert_sensor(context: dg.RunFailureSensorContext):
        return alert_run_failure(context, config)

    return run_failure_alert_sensor


def alert_run_failure(
    context: dg.RunFailureSensorContext, config: PosfedConfig
) -> dg.SkipReason | None:
    settings = config.alerts
    if not settings.enabled:
        return dg.SkipReason("no [alerts] configured")
    alert = run_failure_alert(config, context.dagster_run, context.failure_event.message or "")
    if alert is None:
        return dg.SkipReason("another alert speaks for this failure (the lag alert)")
    alerts = _outbox(config)
    alerts.add(settings, alert)  # kept until delivered, whatever happens to this tick
    for sent in alerts.flush(settings):
        context.log.info(f"alert sent: {sent.subject}")
    return None


def _lag_sensor(config: PosfedConfig, clock: Clock) -> dg.SensorDefinition:
    @dg.sensor(
        name=LAG_ALERT_SENSOR,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts when the central database falls behind the store's ledger past "
        "[sync] fail_after_seconds, and again when it has caught up; retries undelivered alerts.",
    )
    def central_db_lag_alert_sensor(context: dg.SensorEvaluationContext):
        return lag_alert_tick(context, config, clock)

    return central_db_lag_alert_sensor


def lag_alert_tick(
    context: dg.SensorEvaluationContext, config: PosfedConfig, clock: Clock
) -> dg.SkipReason:
    settings = config.alerts
    now = clock.time()
    level = sync.lag_level(open_ledger(config.home).lag(), config.sync, now)
    if not settings.enabled:
        return dg.SkipReason(f"no [alerts] configured (lag: {level})")
    alert = lag_alert(config, level, context.cursor, now)
    alerts = _outbox(config)
    if alert is not None:
        alerts.add(settings, alert)
        context.update_cursor(ALERTED if alert.kind == "sync_lag" else str(level))
    sent = alerts.flush(settings)  # this one, and any an earlier tick could not deliver
    return dg.SkipReason(
        f"lag {level}" + (f"; sent: {', '.join(a.subject for a in sent)}" if sent else "")
    )
