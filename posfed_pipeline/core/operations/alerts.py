"""Telling an operator: e-mail over SMTP and/or a JSON webhook, each call bounded.

Configured in the store file's ``[alerts]`` table; the SMTP password only ever comes from the
environment (``POSFED_SMTP_PASSWORD``). Alerts go through an outbox on the store server's disk
(``AlertOutbox``): one that cannot be delivered on a channel (the mail server is down) stays
there and is tried again on the next flush, and a channel that took it is not sent it twice.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import time
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from posfed_pipeline.core.base.errors import PosfedError
from posfed_pipeline.core.base.sqlite import SQLiteFile
from posfed_pipeline.core.config.alert_settings import AlertSettings


@dataclass(frozen=True)
class Alert:
    subject: str
    body: str
    kind: str  # run_failure | sync_lag | sync_recovered | terminal_health
    store_id: str = ""
    details: tuple[tuple[str, str], ...] = ()

    def as_json(self) -> dict:
        return {
            "kind": self.kind,
            "store": self.store_id,
            "subject": self.subject,
            "body": self.body,
            "details": dict(self.details),
        }


class AlertDeliveryError(PosfedError, RuntimeError):
    """No configured channel took the alert; the message says which failed and why."""


def channels(settings: AlertSettings) -> list[str]:
    return (["email"] if settings.email_to else []) + (["webhook"] if settings.webhook_url else [])


def deliver(
    settings: AlertSettings, alert: Alert, on: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """Deliver ``alert`` on the given channels (default: all configured): (took it, failures)."""
    delivered, failures = [], []
    for channel in channels(settings) if on is None else on:
        try:
            if channel == "email":
                _send_email(settings, alert)
            else:
                _post_webhook(settings, alert)
            delivered.append(channel)
        except (OSError, smtplib.SMTPException) as exc:  # urllib's errors are OSErrors
            where = (
                f"e-mail via {settings.smtp_host}:{settings.smtp_port}"
                if channel == "email"
                else f"webhook {settings.webhook_url}"
            )
            failures.append(f"{where}: {exc}")
    return delivered, failures


def send_alert(settings: AlertSettings, alert: Alert) -> list[str]:
    """Deliver ``alert`` on every configured channel now; returns the channels that took it.

    Raises ``AlertDeliveryError`` if a channel failed (after trying all of them).
    """
    delivered, failures = deliver(settings, alert)
    if failures:
        raise AlertDeliveryError("; ".join(failures))
    return delivered


class AlertOutbox:
    """Alerts owed to a channel, in a small SQLite file beside the store's ledger."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # FULL: an alert handed to the outbox survives a power cut. SQLite's rollback journal,
        # not WAL, and a connection per use, as it always had: a handful of rows, written now
        # and then, need no reader-writer concurrency nor a connection held open between uses.
        self._db = SQLiteFile(
            self.path, busy_timeout=10, synchronous="FULL", wal=False, per_thread=False
        )
        self._db.prepare(
            [
                "CREATE TABLE IF NOT EXISTS alert (id INTEGER PRIMARY KEY, created_at REAL, "
                "alert TEXT NOT NULL, channels TEXT NOT NULL, attempts INTEGER DEFAULT 0, "
                "last_error TEXT)"
            ],
            atomic=False,
        )

    def add(self, settings: AlertSettings, alert: Alert) -> None:
        with self._db.write() as connection:
            connection.execute(
                "INSERT INTO alert (created_at, alert, channels) VALUES (?, ?, ?)",
                (time.time(), json.dumps(alert.as_json()), ",".join(channels(settings))),
            )

    def pending(self) -> int:
        with self._db.session() as connection:
            return connection.execute("SELECT COUNT(*) FROM alert").fetchone()[0]

    def flush(self, settings: AlertSettings) -> list[Alert]:
        """Try every owed alert on the channels still owed it; returns the alerts that are now
        delivered everywhere. Raises ``AlertDeliveryError`` if any is still owed."""
        done, failures = [], []
        with self._db.session() as connection:
            rows = connection.execute(
                "SELECT id, alert, channels FROM alert ORDER BY id"
            ).fetchall()
        for alert_id, document, owed in rows:
            alert = _alert_from_json(json.loads(document))
            delivered, errors = deliver(settings, alert, [c for c in owed.split(",") if c])
            left = [c for c in owed.split(",") if c and c not in delivered]
            with self._db.write() as connection:
                if left:
                    connection.execute(
                        "UPDATE alert SET channels = ?, attempts = attempts + 1, last_error = ? "
                        "WHERE id = ?",
                        (",".join(left), "; ".join(errors), alert_id),
                    )
                else:
                    connection.execute("DELETE FROM alert WHERE id = ?", (alert_id,))
            if left:
                failures += errors
            else:
                done.append(alert)
        if failures:
            raise AlertDeliveryError("; ".join(failures))
        return done


def alert_outbox_path(home: Path) -> Path:
    return home / "alerts.db"


def _alert_from_json(document: dict) -> Alert:
    return Alert(
        subject=document["subject"],
        body=document["body"],
        kind=document["kind"],
        store_id=document.get("store", ""),
        details=tuple(document.get("details", {}).items()),
    )


def _send_email(settings: AlertSettings, alert: Alert) -> None:
    message = EmailMessage()
    message["Subject"] = f"{settings.subject_prefix} {alert.subject}".strip()
    message["From"] = settings.email_from
    message["To"] = ", ".join(settings.email_to)
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain="posfed")
    message["X-Posfed-Alert"] = alert.kind
    lines = [alert.body, ""] + [f"{key}: {value}" for key, value in alert.details]
    message.set_content("\n".join(lines).rstrip() + "\n")
    timeout = settings.timeout_seconds
    client: smtplib.SMTP
    if settings.smtp_security == "ssl":
        client = smtplib.SMTP_SSL(
            settings.smtp_host,
            settings.smtp_port,
            timeout=timeout,
            context=ssl.create_default_context(),
        )
    else:
        client = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
    with client:
        if settings.smtp_security == "starttls":
            client.starttls(context=ssl.create_default_context())
        password = os.environ.get("POSFED_SMTP_PASSWORD")
        if settings.smtp_user and password:
            client.login(settings.smtp_user, password)
        client.send_message(message)


def _post_webhook(settings: AlertSettings, alert: Alert) -> None:
    request = urllib.request.Request(
        settings.webhook_url or "",
        data=json.dumps(alert.as_json()).encode("utf-8"),
        headers={"Content-Type": "application/json", "User-Agent": "posfed-alerts"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=settings.timeout_seconds) as response:
        response.read(1024)
