"""The ``[metrics]`` table: where ``posfed metrics`` serves the Prometheus text format, and how
often it reads the store. Plain settings; the reading is ``operations.store_metrics``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, field_validator

from posfed_pipeline.core.model.settings import TABLE, default_of

# host:port, the host a name, an IPv4 address or a bracketed IPv6 address ("[::1]:9464").
_LISTEN = re.compile(
    r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d{1,5})\Z"
)


def parse_listen(value: str) -> tuple[str, int]:
    """("127.0.0.1", 9464) from "127.0.0.1:9464"; ValueError if it is not host:port."""
    match = _LISTEN.match(value)
    port = int(match["port"]) if match else 0
    if match is None or not 0 < port < 65536:
        raise ValueError(
            f'listen must be host:port, e.g. "127.0.0.1:9464" or "[::1]:9464" (got {value!r})'
        )
    return match["v6"] or match["host"], port


class MetricsTable(BaseModel):
    """``[metrics]``: the Prometheus endpoint (``posfed metrics``, one of ``posfed demo``'s
    services and a unit of its own in production): receipts, .dat latency, the outbox, each
    terminal's health, failed runs and restarts, read from the store without writing to it."""

    model_config = TABLE

    enabled: bool = Field(
        True, strict=True, description="serve metrics (false: `posfed demo` leaves it out)"
    )
    listen: str = Field(
        "127.0.0.1:9464",
        description="host:port of http://host:port/metrics (9464: the OpenTelemetry "
        'Prometheus exporter\'s port); "0.0.0.0:9464" lets another machine scrape it',
    )
    refresh_seconds: float = Field(
        5.0,
        strict=True,
        ge=0.5,
        le=300,
        description="the store is read this often (the ledger incrementally); a scrape is "
        "answered from the last reading",
    )
    health_seconds: float = Field(
        30.0,
        strict=True,
        ge=1,
        le=3600,
        description="each terminal's health (its inbox and quarantine listed, as `posfed "
        "status` does) is judged this often",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: Any) -> Any:
        parse_listen(value)
        return value


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = default_of(MetricsTable, "enabled")
    host: str = "127.0.0.1"
    port: int = 9464
    refresh_seconds: float = default_of(MetricsTable, "refresh_seconds")
    health_seconds: float = default_of(MetricsTable, "health_seconds")

    @classmethod
    def from_table(cls, table: MetricsTable) -> MetricsSettings:
        host, port = parse_listen(table.listen)
        return cls(
            enabled=table.enabled,
            host=host,
            port=port,
            refresh_seconds=table.refresh_seconds,
            health_seconds=table.health_seconds,
        )

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
