"""The ``[alerts]`` table: where an operator is told (e-mail, webhook) and how long a call may
take. Plain settings; sending is ``operations.alerts``."""

from __future__ import annotations

from dataclasses import dataclass

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
