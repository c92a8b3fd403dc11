"""The store's first business day, recorded once in its home folder, so that every process
agrees on the partitions, today and after any restart."""

from __future__ import annotations

import contextlib
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from posfed_pipeline.core.base.fsutil import ContentConflict, write_once

FIRST_DAY_FILE = "first_business_day"  # in the home folder


def first_business_day(home: Path, dat_dir: Path, timezone: ZoneInfo) -> date:
    """The recorded day, else the oldest .dat day folder or today, recorded now."""
    record = home / FIRST_DAY_FILE
    try:
        return date.fromisoformat(record.read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    today = datetime.now(timezone).date()
    days = [today]
    if dat_dir.is_dir():
        for entry in dat_dir.iterdir():
            with contextlib.suppress(ValueError):
                days.append(datetime.strptime(entry.name[:8], "%Y%m%d").date())
    home.mkdir(parents=True, exist_ok=True)
    # The first process to ask records it (atomically); any other reads what it wrote.
    with contextlib.suppress(ContentConflict):
        write_once(record, f"{min(days).isoformat()}\n".encode())
    return date.fromisoformat(record.read_text().strip())
