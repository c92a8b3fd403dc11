"""Rendering a receipt into its .dat content, and writing it: temp + fsync + rename, never
overwriting different content."""

from __future__ import annotations

import functools
import os
from datetime import date
from pathlib import Path

from posfed_pipeline.core.base.fsutil import (
    ContentConflict,
    fsync_dir,
    synced_temp_copy,
    write_once,
)
from posfed_pipeline.core.dat.layout import DatSpec, RenderedDat
from posfed_pipeline.core.dat.parse import check_dat
from posfed_pipeline.core.dat.paths import _relative_path, local_time
from posfed_pipeline.core.dat.vocabulary import DatConflictError, DatRenderError
from posfed_pipeline.core.model.receipt import Receipt
from posfed_pipeline.core.model.terminal import Terminal


def render_receipt(receipt: Receipt, terminal: Terminal, spec: DatSpec) -> RenderedDat:
    """The receipt's .dat file under the spec version in force on its business day."""
    local = local_time(receipt.timestamp, terminal.timezone)
    day = local.date()
    version = spec.version_for(day)
    plans = version._plans
    lines: list[str] = []
    line_number = 0  # 0: the header, -1: the footer
    try:
        header = plans.get("header")
        if header is not None:
            lines.append("".join(header.receipt_level(receipt, terminal, local)))
        plan = plans["item"]
        segments = plan.receipt_level(receipt, terminal, local)
        parts = plan.item_parts
        join = "".join
        append = lines.append
        for line_number, item in enumerate(receipt.items, start=1):
            for i, part in parts:
                segments[i] = part(item, line_number)
            append(join(segments))
        line_number = -1
        footer = plans.get("footer")
        if footer is not None:
            lines.append("".join(footer.receipt_level(receipt, terminal, local)))
    except DatRenderError as exc:
        where = {0: "header", -1: "footer"}.get(line_number, f"item line {line_number}")
        raise DatRenderError(
            f"receipt {receipt.receipt_id}, {where} (spec {spec.name}, version from "
            f"{version.effective_from.isoformat()}): {exc}"
        ) from None
    newline = version._newline
    content = (newline.join(lines) + newline).encode(version.encoding)
    return RenderedDat(
        relative_path=_relative_path(receipt, terminal, version, day),
        content=content,
        version=version,
    )


def write_dat(out_dir: Path, rendered: RenderedDat, spec: DatSpec, business_day: date) -> Path:
    """Write atomically (temp + fsync + rename), then re-read and re-parse it against the spec."""
    target = _target(out_dir, rendered)
    version = rendered.version or spec.version_for(business_day)
    try:
        # A written .dat is final for the billing software: re-writing identical bytes is fine
        # (a re-delivery, a backfill), replacing a different file never is.
        write_once(target, rendered.content)
    except ContentConflict:
        raise _conflict(target) from None
    problems = check_dat(target.read_bytes(), version)
    if problems:
        raise DatRenderError(
            f"{target} does not re-parse against {spec.name}: {'; '.join(problems[:3])}"
        )
    return target


def stage_dat(
    out_dir: Path, rendered: RenderedDat, spec: DatSpec, business_day: date, *, sync: bool = True
):
    """Write the .dat under a hidden temp name beside its place, on disk (fsynced; ``sync``
    False: the caller makes a batch durable at once, ``fsutil.sync_files``), checked against
    its spec; ``publish_dat`` renames it into place.

    Returns (target, temp); temp is None if the target already holds exactly these bytes.
    Raises ``DatConflictError`` if it holds other bytes.
    """
    target = _target(out_dir, rendered)
    version = rendered.version or spec.version_for(business_day)
    problems = check_dat(rendered.content, version)
    if problems:
        raise DatRenderError(f"{target} would not parse against {spec.name}: {problems[0]}")
    if _same_or_conflict(target, rendered.content):
        return target, None
    return target, synced_temp_copy(target, rendered.content, sync=sync)


def publish_dat(temp: Path, target: Path, *, sync_folder: bool = True) -> None:
    """Rename a staged .dat into place (never over another file), durably (``sync_folder``
    False: the caller fsyncs the folder once for a batch)."""
    if target.exists():  # staged twice (a retried attempt): the name is this receipt's alone
        temp.unlink(missing_ok=True)
        return
    os.rename(temp, target)
    if sync_folder:
        fsync_dir(target.parent)


def _same_or_conflict(target: Path, content: bytes) -> bool:
    try:
        existing = target.read_bytes()
    except FileNotFoundError:
        return False
    if existing == content:
        return True
    raise _conflict(target)


def _target(out_dir: Path, rendered: RenderedDat) -> Path:
    """Where a .dat goes; nothing from a receipt can steer it out of the .dat folder."""
    out_dir = Path(out_dir)
    target = (out_dir / rendered.relative_path).resolve()
    if _resolved_root(str(out_dir)) not in target.parents:
        raise DatRenderError(f"refusing to write outside {out_dir}: {target}")
    return target


@functools.lru_cache(maxsize=16)
def _resolved_root(out_dir: str) -> Path:
    # The store's .dat folder, from its configuration (nothing a receipt says): resolved once
    # per process, not once per .dat (a backlog writes thousands a second).
    return Path(out_dir).resolve()


def _conflict(target: Path) -> DatConflictError:
    return DatConflictError(
        f"{target} already exists with other content (another receipt with the same file "
        "name: same department and receipt id?); not overwritten"
    )
