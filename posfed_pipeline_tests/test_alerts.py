"""Alerts reach an operator: a real local SMTP server (aiosmtpd) and a real HTTP webhook."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
from posfed_dev.faults import free_port

from posfed_pipeline.core.base.clock import ManualClock
from posfed_pipeline.core.config import ConfigError, config_from_dict
from posfed_pipeline.core.operations.alerts import (
    Alert,
    AlertDeliveryError,
    AlertOutbox,
    AlertSettings,
    alert_outbox_path,
    send_alert,
)
from posfed_pipeline.core.stages import sync
from posfed_pipeline.core.state.ledger import DeliveredReceipt, open_ledger
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline.defs.alerts import run_failure_alert
from posfed_pipeline.names import LAG_ALERT_SENSOR, RUN_FAILURE_SENSOR
from posfed_pipeline_tests.support.receipts import make_receipt
from posfed_pipeline_tests.support.stores import store_config_dict


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args):
        pass


@pytest.fixture
def webhook():
    _Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/posfed", _Hook.received
    server.shutdown()


def _alerting_config(tmp_path, monkeypatch, **alerts):
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    raw = store_config_dict(tmp_path / "posfed")
    raw["store"]["name"] = "Markt Zuid"
    raw["alerts"] = alerts
    raw["sync"] = {"warn_after_seconds": 1, "fail_after_seconds": 2}
    config = config_from_dict(raw, base_dir=tmp_path)
    config.ensure_folders()
    return config


def test_an_alert_goes_out_by_email_and_webhook(smtp_server, webhook):
    controller, inbox = smtp_server
    url, posted = webhook
    settings = AlertSettings(
        email_to=("ops@example.com", "store@example.com"),
        email_from="posfed@store-001.example",
        smtp_host="127.0.0.1",
        smtp_port=controller.port,
        webhook_url=url,
    )
    alert = Alert("central database behind", "Nothing is lost.", "sync_lag", "store-001")

    assert send_alert(settings, alert) == ["email", "webhook"]

    [message] = inbox.messages
    assert message["Subject"] == "[posfed] central database behind"
    assert message["X-Posfed-Alert"] == "sync_lag"
    assert "Nothing is lost." in message.get_content()
    assert inbox.envelopes == [
        ("posfed@store-001.example", ["ops@example.com", "store@example.com"])
    ]
    assert posted == [alert.as_json()]


def test_an_undeliverable_alert_is_an_error_not_silence(webhook):
    url, posted = webhook
    settings = AlertSettings(
        email_to=("ops@example.com",),
        smtp_host="127.0.0.1",
        smtp_port=free_port(),  # nobody listens
        webhook_url=url,
        timeout_seconds=2,
    )
    with pytest.raises(AlertDeliveryError, match="e-mail via 127.0.0.1"):
        send_alert(settings, Alert("s", "b", "run_failure"))
    assert len(posted) == 1  # the channel that works still got it


def test_alert_settings_are_checked(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="email_to"):
        _alerting_config(tmp_path, monkeypatch, email_to=["not-an-address"])
    with pytest.raises(ConfigError, match="POSFED_SMTP_PASSWORD"):
        _alerting_config(tmp_path, monkeypatch, email_to=["a@b.c"], smtp_password="x")
    with pytest.raises(ConfigError, match="smtp_security"):
        _alerting_config(tmp_path, monkeypatch, email_to=["a@b.c"], smtp_security="tls1")


def test_a_failed_run_is_mailed_to_the_operator(smtp_server, tmp_path, monkeypatch):
    controller, inbox = smtp_server
    config = _alerting_config(
        tmp_path,
        monkeypatch,
        email_to=["ops@example.com"],
        smtp_port=controller.port,
        smtp_host="127.0.0.1",
    )
    defs = build_definitions(config)
    sensor = defs.resolve_sensor_def(RUN_FAILURE_SENSOR)
    with dg.instance_for_test() as instance:
        job = defs.resolve_job_def("retention_job")
        run = instance.create_run_for_job(job, tags={"dagster/partition": "2026-11-20"})
        instance.report_run_failed(run, "the archive disk is full")
        failed = instance.get_run_by_id(run.run_id)
        [event] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        context = dg.build_run_status_sensor_context(
            sensor_name=RUN_FAILURE_SENSOR,
            dagster_instance=instance,
            dagster_run=failed,
            dagster_event=event.dagster_event,
        ).for_run_failure()
        sensor(context)

    [message] = inbox.messages
    assert message["Subject"] == "[posfed] Markt Zuid: run of retention_job for 2026-11-20 failed"
    assert "the archive disk is full" in message.get_content()


def test_a_sync_that_failed_only_because_the_database_was_away_is_not_mailed(config):
    # The lag alert speaks for an outage; one mail per failed attempt would be noise.
    run = dg.DagsterRun(
        job_name="central_db_sync_job", run_id="r1", tags={"posfed/sync_failure": "transient"}
    )
    assert run_failure_alert(config, run, "out of reach") is None
    permanent = dg.DagsterRun(
        job_name="central_db_sync_job", run_id="r2", tags={"posfed/sync_failure": "permanent"}
    )
    assert run_failure_alert(config, permanent, "no schema") is not None


@pytest.mark.slow
def test_the_lag_alert_is_sent_once_when_it_fails_and_once_when_it_recovers(
    smtp_server, webhook, tmp_path, monkeypatch
):
    controller, inbox = smtp_server
    url, posted = webhook
    config = _alerting_config(
        tmp_path,
        monkeypatch,
        email_to=["ops@example.com"],
        smtp_host="127.0.0.1",
        smtp_port=controller.port,
        webhook_url=url,
    )
    clock = ManualClock()
    sensor = build_definitions(config, clock=clock).resolve_sensor_def(LAG_ALERT_SENSOR)
    ledger = open_ledger(config.home)
    receipt = make_receipt("L1")
    ledger.accept(
        [DeliveredReceipt(receipt, "L1.json:1:1")], tenant="Bakkerij", now=clock.time() - 5
    )
    ledger.mark_emitted([(receipt, "x")])
    assert sync.lag_level(ledger.lag(), config.sync, clock.time()) is sync.LagLevel.FAIL

    with dg.instance_for_test() as instance:

        def tick(cursor):
            context = dg.build_sensor_context(instance=instance, cursor=cursor)
            sensor(context)
            return context.cursor

        cursor = tick(None)
        cursor = tick(cursor)  # still failing: no second alert
        assert len(inbox.messages) == 1
        # Draining: the lag passes through WARN on its way back; still the same outage.
        ledger.resync(now=clock.time())
        clock.advance(1.1)  # past warn_after_seconds (1 s), short of fail_after_seconds (2 s)
        assert sync.lag_level(ledger.lag(), config.sync, clock.time()) is sync.LagLevel.WARN
        cursor = tick(cursor)
        assert len(inbox.messages) == 1
        ledger.mark_synced([e.seq for e in ledger.outbox()])
        cursor = tick(cursor)
        assert cursor == "ok"

    assert [m["X-Posfed-Alert"] for m in inbox.messages] == ["sync_lag", "sync_recovered"]
    assert "Markt Zuid: central database behind" in inbox.messages[0]["Subject"]
    assert "The checkout is not affected" in inbox.messages[0].get_content()
    assert [p["kind"] for p in posted] == ["sync_lag", "sync_recovered"]


def test_an_alert_the_mail_server_could_not_take_is_delivered_later(
    smtp_server, tmp_path, monkeypatch
):
    controller, inbox = smtp_server
    down = free_port()
    config = _alerting_config(
        tmp_path,
        monkeypatch,
        email_to=["ops@example.com"],
        smtp_host="127.0.0.1",
        smtp_port=down,
        timeout_seconds=2,
    )
    outbox = AlertOutbox(alert_outbox_path(config.home))
    outbox.add(config.alerts, Alert("run failed", "the archive disk is full", "run_failure"))
    with pytest.raises(AlertDeliveryError):
        outbox.flush(config.alerts)
    assert outbox.pending() == 1

    # The mail server is back (same settings, its real port): the lag sensor's next tick
    # delivers what was owed.
    fixed = replace(config, alerts=replace(config.alerts, smtp_port=controller.port))
    with dg.instance_for_test() as instance:
        build_definitions(fixed).resolve_sensor_def(LAG_ALERT_SENSOR)(
            dg.build_sensor_context(instance=instance)
        )
    assert outbox.pending() == 0
    assert [m["Subject"] for m in inbox.messages] == ["[posfed] run failed"]
