"""The ``[alerts]`` table: where an operator is told (e-mail, webhook) and how long a call may
take. Plain settings; sending is ``operations.alerts``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from posfed_pipeline.core.model.settings import TABLE, default_of
from posfed_pipeline.core.model.terminal import text

SMTP_SECURITY = ("none", "starttls", "ssl")
SMTP_PORTS = {"ssl": 465}  # any other security: 25


class AlertsTable(BaseModel):
    """``[alerts]``: a failed run, or a central database more than fail_after_seconds behind.
    The SMTP password comes from POSFED_SMTP_PASSWORD only."""

    model_config = TABLE

    email_to: tuple[str, ...] = Field(
        (), description='addresses to e-mail, e.g. ["ops@example.com"]'
    )
    email_from: str = Field("posfed@localhost", description="the sender of those e-mails")
    smtp_host: str = Field("localhost", description="the mail server")
    smtp_port: int | None = Field(
        None, strict=True, gt=0, lt=65536, description="its port (default: 465 with ssl, else 25)"
    )
    smtp_security: Literal["none", "starttls", "ssl"] = Field(
        "none", description="none | starttls | ssl"
    )
    smtp_user: str | None = Field(None, description="the SMTP user, if the server wants one")
    webhook_url: str | None = Field(None, description="an http(s) URL: a JSON POST per alert")
    timeout_seconds: float = Field(
        10.0, strict=True, gt=0, description="how long one e-mail or POST may take"
    )

    @field_validator("email_to", mode="before")
    @classmethod
    def _addresses(cls, value: Any) -> Any:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list | tuple) or not all(
            isinstance(a, str) and "@" in a for a in value
        ):
            raise ValueError('email_to must list e-mail addresses (["ops@example.com"])')
        return tuple(value)

    @field_validator("email_from", "smtp_host", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return text(value)

    @field_validator("smtp_port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> Any:
        if value is not None and (type(value) is not int or not 0 < value < 65536):
            raise ValueError("smtp_port must be a port number")
        return value

    @field_validator("webhook_url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        if value is not None and (
            not isinstance(value, str) or not value.startswith(("http://", "https://"))
        ):
            raise ValueError("webhook_url must be an http:// or https:// URL")
        return value


@dataclass(frozen=True)
class AlertSettings:
    email_to: tuple[str, ...] = default_of(AlertsTable, "email_to")
    email_from: str = default_of(AlertsTable, "email_from")
    smtp_host: str = default_of(AlertsTable, "smtp_host")
    smtp_port: int = 25
    smtp_security: str = default_of(AlertsTable, "smtp_security")  # none | starttls | ssl
    smtp_user: str | None = None
    webhook_url: str | None = None
    timeout_seconds: float = default_of(AlertsTable, "timeout_seconds")
    subject_prefix: str = "[posfed]"  # not a setting

    @classmethod
    def from_table(cls, table: AlertsTable) -> AlertSettings:
        port = table.smtp_port or SMTP_PORTS.get(table.smtp_security, 25)
        return cls(
            email_to=table.email_to,
            email_from=table.email_from,
            smtp_host=table.smtp_host,
            smtp_port=port,
            smtp_security=table.smtp_security,
            smtp_user=table.smtp_user,
            webhook_url=table.webhook_url,
            timeout_seconds=table.timeout_seconds,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.email_to or self.webhook_url)
