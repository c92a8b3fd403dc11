"""How a terminal delivers its files, and when it counts as gone quiet.

Tills deliver in their own ways (docs/terminals.md): a plain write, a temp name then a
rename, a pre-sized file filled in, appends closed per line, a ``<name>.ok`` marker per file or
one batch trigger file (``endofday.trg``) for all. ``DeliveryRules`` says which files of an
inbox are complete; ``HealthRules`` when a terminal that sends nothing needs a look.

Set store-wide in ``[delivery]`` / ``[health]`` of the store file, and per terminal with the
same keys on its ``[[terminals]]`` entry.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import datetime, time

WATCH_MODES = ("events", "poll")
DELIVERY_KEYS = (
    "watch",
    "poll_interval_seconds",
    "stability_seconds",
    "ignore",
    "ready_marker",
    "batch_marker",
)
HEALTH_KEYS = (
    "opening_hours",
    "open_days",
    "quiet_after_minutes",
    "max_waiting_minutes",
    "max_quarantined_per_day",
)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class DeliveryRules:
    # "events": inotify tells the trigger when a file is closed or renamed into the inbox (a
    # local folder, or a Samba share served by this machine). "poll": the inbox is listed every
    # poll_interval_seconds (a mounted network share, where inotify sees no remote writes).
    watch: str = "events"
    poll_interval_seconds: float = 1.0
    # A file no event announced is taken once unchanged this long.
    stability_seconds: float = 0.3
    ignore: tuple[str, ...] = ()  # glob patterns of names that are never receipts
    # A file is complete once "<name><ready_marker>" exists (e.g. ".ok"): markers, not time.
    ready_marker: str | None = None
    # Files are complete once this file appears; every file written before it goes together.
    batch_marker: str | None = None

    @property
    def closes_mean_complete(self) -> bool:
        """Whether a close or rename event is the completeness signal (no marker expected)."""
        return self.ready_marker is None and self.batch_marker is None

    def is_marker(self, name: str) -> bool:
        return (self.ready_marker is not None and name.endswith(self.ready_marker)) or (
            self.batch_marker is not None and name == self.batch_marker
        )

    def is_ignored(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.ignore)


@dataclass(frozen=True)
class HealthRules:
    opening_hours: tuple[time, time] | None = None  # None: always open
    open_days: tuple[str, ...] = WEEKDAYS
    quiet_after_minutes: float | None = None  # None: a silent terminal is not flagged
    max_waiting_minutes: float = 5.0  # the oldest file still in the inbox
    max_quarantined_per_day: int = 3

    def is_open(self, at: datetime) -> bool:
        """Whether the store is open at ``at`` (local time). Hours past midnight belong to
        the day the opening began ("22:00-06:00" on a Friday runs into Saturday morning)."""
        if self.opening_hours is None:
            return WEEKDAYS[at.weekday()] in self.open_days
        opens, closes = self.opening_hours
        now = at.time()
        if opens == closes:  # "00:00-24:00": all day
            return WEEKDAYS[at.weekday()] in self.open_days
        if opens < closes:
            return opens <= now < closes and WEEKDAYS[at.weekday()] in self.open_days
        if now >= opens:
            return WEEKDAYS[at.weekday()] in self.open_days
        return now < closes and WEEKDAYS[(at.weekday() - 1) % 7] in self.open_days


def delivery_rules(table: dict, defaults: DeliveryRules) -> DeliveryRules:
    """Rules from a ``[delivery]`` table or a terminal's keys over ``defaults``; ValueError
    names the key."""
    watch = table.get("watch", defaults.watch)
    if watch not in WATCH_MODES:
        raise ValueError(f"watch must be one of {', '.join(WATCH_MODES)} (got {watch!r})")
    poll = _number(table, "poll_interval_seconds", defaults.poll_interval_seconds, 0.05, 600)
    stability = _number(table, "stability_seconds", defaults.stability_seconds, 0, 600)
    ignore = table.get("ignore", list(defaults.ignore))
    if not isinstance(ignore, list) or not all(isinstance(p, str) and p for p in ignore):
        raise ValueError('ignore must list glob patterns, e.g. ["*.bak", "~$*"]')
    ready_marker = _marker(table, "ready_marker", defaults.ready_marker)
    if ready_marker is not None and not ready_marker.startswith("."):
        raise ValueError(f'ready_marker must be a suffix such as ".ok" (got {ready_marker!r})')
    batch_marker = _marker(table, "batch_marker", defaults.batch_marker)
    if ready_marker and batch_marker:
        raise ValueError("ready_marker and batch_marker: choose one (a till uses one or the other)")
    return DeliveryRules(watch, poll, stability, tuple(ignore), ready_marker, batch_marker)


def health_rules(table: dict, defaults: HealthRules) -> HealthRules:
    hours = defaults.opening_hours
    if "opening_hours" in table:
        hours = _opening_hours(table["opening_hours"])
    days = table.get("open_days", list(defaults.open_days))
    if not isinstance(days, list) or not days or any(d not in WEEKDAYS for d in days):
        raise ValueError(f"open_days must list days among {', '.join(WEEKDAYS)}")
    quiet = defaults.quiet_after_minutes
    if "quiet_after_minutes" in table:
        quiet = _number(table, "quiet_after_minutes", 0, 1, 7 * 24 * 60)
    waiting = _number(table, "max_waiting_minutes", defaults.max_waiting_minutes, 0.1, 24 * 60)
    quarantined = table.get("max_quarantined_per_day", defaults.max_quarantined_per_day)
    if type(quarantined) is not int or quarantined < 0:
        raise ValueError("max_quarantined_per_day must be a whole number, 0 or more")
    return HealthRules(hours, tuple(days), quiet, waiting, quarantined)


def _number(table: dict, key: str, default: float, low: float, high: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ValueError(f"{key} must be a number from {low:g} to {high:g}")
    return float(value)


def _marker(table: dict, key: str, default: str | None) -> str | None:
    value = table.get(key, default)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or any(c in value for c in "/\\\0") or value in (".", ".."):
        raise ValueError(f"{key} must be a plain file name or suffix (got {value!r})")
    return value


def _opening_hours(value: object) -> tuple[time, time] | None:
    if value in (None, "", "always"):
        return None
    match = _HOURS.match(str(value))
    if not match:
        raise ValueError(f'opening_hours must read like "07:00-21:00" (got {value!r})')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    try:
        return time(h1, m1), time(h2 % 24, m2)
    except ValueError:
        raise ValueError(f"opening_hours {value!r}: not a time of day") from None
