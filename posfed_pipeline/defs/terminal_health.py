"""Each terminal's health in the UI: a check per terminal on the ``terminal_inboxes`` asset.

A terminal that goes quiet while its store is open, whose inbox holds a file older than its
limit, or whose quarantine grows past its limit (``[health]``, per terminal) turns its check
red (ERROR). The ``terminal_health_sensor`` evaluates every terminal each minute and records
an evaluation when a terminal's verdict changes (runless: no run, no worker), and alerts
through ``[alerts]`` when one goes bad. The same checks run on demand from the asset page.
"""

import dagster as dg

from posfed_pipeline.core.base.clock import Clock
from posfed_pipeline.core.config import PosfedConfig
from posfed_pipeline.core.operations.alerts import Alert, AlertOutbox, alert_outbox_path
from posfed_pipeline.core.operations.terminal_health import TerminalHealth, terminal_health
from posfed_pipeline.core.state.ledger import open_ledger
from posfed_pipeline.names import (
    HEALTH_SENSOR,
    TERMINAL_HEALTH_CHECKS_OP,
    TERMINAL_INBOXES,
    TERMINALS_GROUP,
    health_check_name,
)

HEALTH_INTERVAL_SECONDS = 60


def health_metadata(health: TerminalHealth) -> dict:
    return {
        "tenant": dg.MetadataValue.text(health.tenant),
        "last_receipt_at": dg.MetadataValue.text(
            f"{health.last_receipt_at:%Y-%m-%d %H:%M:%S %Z}" if health.last_receipt_at else "never"
        ),
        "waiting_files": dg.MetadataValue.int(health.waiting_files or 0),
        "oldest_waiting_seconds": dg.MetadataValue.float(health.oldest_waiting_seconds or 0.0),
        "quarantined_today": dg.MetadataValue.int(health.quarantined_today),
        "open_now": dg.MetadataValue.bool(health.open_now),
        # Plain text (never Markdown): an error may quote a path or a name from the share.
        "problems": dg.MetadataValue.text("; ".join(health.problems) or "none"),
    }


def definitions(config: PosfedConfig, clock: Clock) -> dg.Definitions:
    """The ``terminal_inboxes`` asset, its per-terminal checks, and the sensor evaluating them."""
    inboxes = dg.AssetSpec(
        TERMINAL_INBOXES,
        description="The terminals' inbox folders, where the tills deliver receipt files. "
        "One check per terminal says whether it is delivering ([health] in posfed.toml).",
        group_name=TERMINALS_GROUP,
        kinds={"file"},
    )
    return dg.Definitions(
        assets=[inboxes],
        asset_checks=[_health_checks(config, clock)],
        sensors=[_health_sensor(config, clock)],
    )


def _health_checks(config: PosfedConfig, clock: Clock) -> dg.AssetChecksDefinition:
    specs = [
        dg.AssetCheckSpec(
            health_check_name(t.id),
            asset=TERMINAL_INBOXES,
            description=f"{t.id} ({t.tenant}) delivers: not quiet while open, no file waiting "
            "too long, quarantine within its daily limit.",
        )
        for t in config.terminals
    ]

    @dg.multi_asset_check(specs=specs, name=TERMINAL_HEALTH_CHECKS_OP)
    def terminal_health_checks():
        yield from evaluate_terminals(config, clock)

    return terminal_health_checks


def evaluate_terminals(config: PosfedConfig, clock: Clock):
    """Every terminal's check, evaluated now (the asset page's "Execute checks")."""
    ledger = open_ledger(config.home)
    for terminal in config.terminals:
        health = terminal_health(terminal, ledger, clock.now())
        yield dg.AssetCheckResult(
            asset_key=TERMINAL_INBOXES,
            check_name=health_check_name(terminal.id),
            passed=health.ok,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata=health_metadata(health),
        )


def _health_sensor(config: PosfedConfig, clock: Clock) -> dg.SensorDefinition:
    @dg.sensor(
        name=HEALTH_SENSOR,
        minimum_interval_seconds=HEALTH_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Every minute: is each terminal delivering? Records a check evaluation "
        "on terminal_inboxes when a terminal's verdict changes, and alerts when one goes bad.",
    )
    def terminal_health_sensor(context: dg.SensorEvaluationContext):
        return health_tick(context, config, clock)

    return terminal_health_sensor


def health_tick(
    context: dg.SensorEvaluationContext, config: PosfedConfig, clock: Clock
) -> dg.SensorResult:
    """A health sensor tick: an evaluation per terminal whose verdict changed; alerts."""
    previous = dict(item.split("=", 1) for item in (context.cursor or "").split(",") if item)
    verdicts: dict[str, str] = {}
    events = []
    alerts = []
    ledger = open_ledger(config.home)  # one per tick: opening one takes the write lock
    for terminal in config.terminals:
        try:
            health = terminal_health(terminal, ledger, clock.now())
        except Exception as exc:  # one terminal's trouble never hides the others'
            context.log.warning(f"{terminal.id}: health not evaluated: {exc}")
            verdicts[terminal.id] = previous.get(terminal.id, "")
            continue
        verdict = "ok" if health.ok else "bad"
        verdicts[terminal.id] = verdict
        if previous.get(terminal.id) == verdict:
            continue  # unchanged: the UI still shows the last evaluation
        events.append(
            dg.AssetCheckEvaluation(
                asset_key=dg.AssetKey(TERMINAL_INBOXES),
                check_name=health_check_name(terminal.id),
                passed=health.ok,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata=health_metadata(health),
            )
        )
        if not health.ok:
            alerts.append(quiet_terminal_alert(config, health))
    if alerts and config.alerts.enabled:
        outbox = AlertOutbox(alert_outbox_path(config.home))
        for alert in alerts:
            outbox.add(config.alerts, alert)
        outbox.flush(config.alerts)
    bad = sorted(t for t, v in verdicts.items() if v == "bad")
    return dg.SensorResult(
        asset_events=events,
        cursor=",".join(f"{t}={v}" for t, v in verdicts.items()),
        skip_reason=None
        if events
        else (f"needing a look: {', '.join(bad)}" if bad else "every terminal delivering"),
    )


def quiet_terminal_alert(config: PosfedConfig, health: TerminalHealth) -> Alert:
    return Alert(
        subject=f"{config.store_name}: terminal {health.terminal_id} needs a look",
        body=f"Terminal {health.terminal_id} ({health.tenant}):\n"
        + "".join(f"  - {problem}\n" for problem in health.problems)
        + "\n`posfed status` lists every terminal.",
        kind="terminal_health",
        store_id=config.store_id,
        details=(("terminal", health.terminal_id), ("problems", "; ".join(health.problems))),
    )
