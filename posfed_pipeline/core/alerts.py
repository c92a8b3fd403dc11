"""Telling an operator: e-mail over SMTP and/or a JSON webhook, each call bounded.

Configured in the store file's ``[alerts]`` table; the SMTP password only ever comes from the
environment (``POSFED_SMTP_PASSWORD``). An alert that cannot be delivered is reported to the
caller (``AlertDeliveryError``), never swallowed: the caller logs it and tries again later.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

SMTP_SECURITY = ("none", "starttls", "ssl")


@dataclass(frozen=True)
class AlertSettings:
    email_to: tuple[str, ...] = ()
    email_from: str = "posfed@localhost"
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_security: str = "none"  # none | starttls | ssl
    smtp_user: str | None = None
    webhook_url: str | None = None
    timeout_seconds: float = 10.0
    subject_prefix: str = "[posfed]"

    @property
    def enabled(self) -> bool:
        return bool(self.email_to or self.webhook_url)


@dataclass(frozen=True)
class Alert:
    subject: str
    body: str
    kind: str  # run_failure | sync_lag | sync_recovered
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


class AlertDeliveryError(RuntimeError):
    """No configured channel took the alert; the message says which failed and why."""


def send_alert(settings: AlertSettings, alert: Alert) -> list[str]:
    """Deliver ``alert`` on every configured channel; returns the channels that took it.

    Raises ``AlertDeliveryError`` if a channel failed (after trying all of them).
    """
    delivered, failures = [], []
    if settings.email_to:
        try:
            _send_email(settings, alert)
            delivered.append("email")
        except (OSError, smtplib.SMTPException) as exc:
            failures.append(f"e-mail via {settings.smtp_host}:{settings.smtp_port}: {exc}")
    if settings.webhook_url:
        try:
            _post_webhook(settings, alert)
            delivered.append("webhook")
        except OSError as exc:  # urllib's URLError and HTTPError are OSErrors
            failures.append(f"webhook {settings.webhook_url}: {exc}")
    if failures:
        raise AlertDeliveryError("; ".join(failures))
    return delivered


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
