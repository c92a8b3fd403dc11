"""File names and date folders: where a receipt's .dat file goes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, tzinfo
from pathlib import Path
from typing import Protocol

from posfed_pipeline.core.dat.vocabulary import (
    _NAME_VALUE_UNSAFE,
    _PLACEHOLDER_RE,
    MAX_FILE_NAME_BYTES,
    DatRenderError,
)
from posfed_pipeline.core.model.receipt import Receipt
from posfed_pipeline.core.model.terminal import Terminal


class _NamedVersion(Protocol):
    """What this module reads of a ``layout.LayoutVersion`` (layout imports this module)."""

    @property
    def _name_parts(self) -> list[tuple[str, bool]]: ...

    @property
    def _folder_format(self) -> Callable[..., str]: ...


_NAME_VALUES: dict[str, Callable[[Receipt, Terminal, date], str]] = {
    "department": lambda r, t, day: t.department,
    "receiptId": lambda r, t, day: r.receipt_id,
    "receipt_id": lambda r, t, day: r.receipt_id,
    "terminalId": lambda r, t, day: t.id,
    "terminal_id": lambda r, t, day: t.id,
    "date": lambda r, t, day: f"{day.year:04d}{day.month:02d}{day.day:02d}",
}


def _compile_file_name(template: str) -> list[tuple[str, bool]]:
    pieces = _PLACEHOLDER_RE.split(template)  # literal, key, literal, key, ...
    return [(piece, i % 2 == 1) for i, piece in enumerate(pieces) if piece]


def name_template_parts(version: _NamedVersion) -> list[tuple[str, bool]]:
    """The version's file-name template as (literal text or placeholder name, is placeholder)."""
    return list(version._name_parts)


def dat_relative_path(receipt: Receipt, terminal: Terminal, version: _NamedVersion) -> Path:
    """``<date folder>/<file name>``; nothing from a receipt can steer it elsewhere."""
    day = local_time(receipt.timestamp, terminal.timezone).date()
    return _relative_path(receipt, terminal, version, day)


def _relative_path(receipt: Receipt, terminal: Terminal, version: _NamedVersion, day: date) -> Path:
    name = "".join(
        _NAME_VALUE_UNSAFE.sub("_", _NAME_VALUES[p](receipt, terminal, day)) if is_key else p
        for p, is_key in version._name_parts
    )
    if len(name.encode("utf-8")) > MAX_FILE_NAME_BYTES:
        raise DatRenderError(f"file name {name[:40]}... is longer than {MAX_FILE_NAME_BYTES} bytes")
    return Path(f"{version._folder_format(day)}/{name}")


def local_time(moment: datetime, zone: tzinfo) -> datetime:
    """``moment`` on the terminal's clock (a naive timestamp already is)."""
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment.astimezone(zone)
