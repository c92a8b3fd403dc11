"""A POS terminal as posfed knows it, and how it delivers its files and when it counts as gone
quiet; with the store file's keys for these, each declared once (type, default, range, doc).

Tills deliver in their own ways (docs/terminals.md): a plain write, a temp name then a
rename, a pre-sized file filled in, appends closed per line, a ``<name>.ok`` marker per file or
one batch trigger file (``endofday.trg``) for all. ``DeliveryRules`` says which files of an
inbox are complete; ``HealthRules`` when a terminal that sends nothing needs a look. Both are
the models of ``[delivery]`` / ``[health]`` themselves, and a ``[[terminals]]`` entry may set
the same keys for itself (``TerminalEntry`` takes them by these models' declarations).
"""

from __future__ import annotations

import codecs
import difflib
import fnmatch
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass as table_dataclass

from posfed_pipeline.core.model.input_mapping import InputMapping
from posfed_pipeline.core.model.settings import RULES, TABLE, declared_fields, default_of

CANONICAL_FORMAT = "posfed-json"
WATCH_MODES = ("events", "poll")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
VARIABLE_MEASURE_PREFIXES = tuple(str(p) for p in range(20, 30))
# Terminal ids become Dagster sensor names and partition keys: keep them to that alphabet.
TERMINAL_ID_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
DEPARTMENT_PATTERN = re.compile(r"^[A-Za-z0-9]{1,8}$")
RECEIPT_ID_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9]{0,16}$")
_HOURS = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


def text(value: object) -> object:
    """TOML numbers where text is meant (``department = 10``) read as their text, as always."""
    return (
        str(value)
        if isinstance(value, str | int | float) and not isinstance(value, bool)
        else value
    )


def zone(value: object) -> ZoneInfo:
    """An IANA time zone by its name (``Europe/Amsterdam``); a misspelt one is named with the
    zone it most likely meant."""
    if isinstance(value, ZoneInfo):
        return value
    try:
        return ZoneInfo(str(value))
    except (ZoneInfoNotFoundError, ValueError):
        guesses = difflib.get_close_matches(str(value), available_timezones(), n=1)
        meant = (
            f" (did you mean {guesses[0]}?)"
            if guesses
            else " (an IANA time zone such as Europe/Amsterdam)"
        )
        raise ValueError(f"timezone: unknown timezone {value!r}{meant}") from None


def encoding(value: object) -> str | None:
    if value is None:
        return None
    try:
        return codecs.lookup(str(value)).name
    except LookupError:
        raise ValueError(f"encoding_fallback {value!r} is not a known encoding") from None


Zone = Annotated[ZoneInfo, BeforeValidator(zone)]
Encoding = Annotated[str | None, BeforeValidator(encoding)]


@table_dataclass(frozen=True, config=RULES)
class DeliveryRules:
    """``[delivery]``: how a terminal's files arrive and when one is complete."""

    watch: Annotated[
        Literal["events", "poll"],
        Field(
            description='"events": inotify tells the trigger when a file is closed or renamed '
            "into the inbox (a local folder, or a Samba share served by this machine). "
            '"poll": the inbox is listed every poll_interval_seconds (a mounted network share, '
            "where inotify sees no remote writes)"
        ),
    ] = "events"
    poll_interval_seconds: Annotated[
        float,
        Field(
            strict=True,
            ge=0.05,
            le=600,
            description='with watch = "poll": how often the inbox is listed',
        ),
    ] = 1.0
    stability_seconds: Annotated[
        float,
        Field(
            strict=True,
            ge=0,
            le=600,
            description="a file no event announced is taken once its size and mtime have been "
            "unchanged this long ([intake] stability_seconds, if set, is the store-wide value)",
        ),
    ] = 0.3
    ignore: Annotated[
        tuple[str, ...],
        Field(description='glob patterns of names that are never receipts, e.g. ["*.bak", "~$*"]'),
    ] = ()
    ready_marker: Annotated[
        str | None,
        Field(
            description='a file is complete once "<name><ready_marker>" exists (e.g. ".ok"): '
            "markers, not time"
        ),
    ] = None
    batch_marker: Annotated[
        str | None,
        Field(
            description="files are complete once this file appears (e.g. endofday.trg); every "
            "file written before it goes together"
        ),
    ] = None

    @field_validator("ignore", mode="before")
    @classmethod
    def _globs(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple) or not all(isinstance(p, str) and p for p in value):
            raise ValueError('ignore must list glob patterns, e.g. ["*.bak", "~$*"]')
        return tuple(value)

    @field_validator("ready_marker", "batch_marker", mode="before")
    @classmethod
    def _marker(cls, value: Any, info: Any) -> Any:
        if value is None or value == "":
            return None
        if not isinstance(value, str) or any(c in value for c in "/\\\0") or value in (".", ".."):
            raise ValueError(
                f"{info.field_name} must be a plain file name or suffix (got {value!r})"
            )
        if info.field_name == "ready_marker" and not value.startswith("."):
            raise ValueError(f'ready_marker must be a suffix such as ".ok" (got {value!r})')
        return value

    @model_validator(mode="after")
    def _one_marker(self) -> DeliveryRules:
        if self.ready_marker and self.batch_marker:
            raise ValueError(
                "ready_marker and batch_marker: choose one (a till uses one or the other)"
            )
        return self

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


def parse_opening_hours(value: Any) -> tuple[time, time] | None:
    """``"07:00-21:00"`` as (opens, closes); unset, ``""`` or ``"always"``: always open."""
    if isinstance(value, tuple):
        return value
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


def parse_open_days(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not value or any(d not in WEEKDAYS for d in value):
        raise ValueError(f"open_days must list days among {', '.join(WEEKDAYS)}")
    return tuple(value)


@table_dataclass(frozen=True, config=RULES)
class HealthRules:
    """``[health]``: when a terminal's silence or its backlog needs a look."""

    opening_hours: Annotated[
        tuple[time, time] | None,
        Field(
            description='when the store is open, e.g. "07:00-21:00" (unset or "always": '
            "always open)"
        ),
    ] = None
    open_days: Annotated[
        tuple[str, ...],
        Field(description="the days the store opens"),
    ] = WEEKDAYS
    quiet_after_minutes: Annotated[
        float | None,
        Field(
            strict=True,
            ge=1,
            le=7 * 24 * 60,
            description="no receipt this long while open "
            "needs a look (unset: a silent terminal is not flagged)",
        ),
    ] = None
    max_waiting_minutes: Annotated[
        float,
        Field(
            strict=True,
            ge=0.1,
            le=24 * 60,
            description="the oldest file still in the inbox may wait this long",
        ),
    ] = 5.0
    max_quarantined_per_day: Annotated[
        int,
        Field(
            strict=True, ge=0, description="more files quarantined in a day than this needs a look"
        ),
    ] = 3

    @field_validator("opening_hours", mode="before")
    @classmethod
    def _hours(cls, value: Any) -> Any:
        return parse_opening_hours(value)

    @field_validator("open_days", mode="before")
    @classmethod
    def _days(cls, value: Any) -> Any:
        return parse_open_days(value)

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

    def last_opening(self, local_now: datetime) -> datetime:
        """When the opening that ``local_now`` falls in began (midnight without hours; the
        evening before for hours past midnight): silence counts from there, not from the
        last receipt of the day before."""
        opens = self.opening_hours[0] if self.opening_hours else time(0, 0)
        opened = local_now.replace(hour=opens.hour, minute=opens.minute, second=0, microsecond=0)
        return opened if opened <= local_now else opened - timedelta(days=1)

    def silent_since(self, local_now: datetime, last_receipt_at: datetime | None) -> datetime:
        """When the present silence began: the later of the last receipt and the opening
        (last night's last receipt does not count against the morning). Open round the clock
        from the day before, midnight is no opening: the silence runs from the last receipt."""
        opened = self.last_opening(local_now)
        round_the_clock = self.opening_hours is None or (
            self.opening_hours[0] == self.opening_hours[1]
        )
        day_before = WEEKDAYS[(opened - timedelta(days=1)).weekday()]
        if last_receipt_at is not None and round_the_clock and day_before in self.open_days:
            return last_receipt_at
        return max(filter(None, [last_receipt_at, opened]), default=opened)


DELIVERY_KEYS = tuple(declared_fields(DeliveryRules))
HEALTH_KEYS = tuple(declared_fields(HealthRules))


@table_dataclass(frozen=True, config=RULES)
class VariableMeasureScheme:
    """``[store.variable_measure]``: in-store EAN-13 codes (prefix 20-29) whose digits before
    the check digit hold a price.

    ``price_digits`` 5: digits 8-12 are the price in cents; 4: digits 9-12 (digit 8 is then
    the scale's own price check digit, which posfed does not interpret).
    """

    price_prefixes: Annotated[
        tuple[str, ...],
        Field(description='prefixes whose codes carry a price, "20" to "29"'),
    ] = VARIABLE_MEASURE_PREFIXES
    price_digits: Annotated[
        int,
        Field(description="4 or 5: how many digits before the check digit are the price in cents"),
    ] = 5

    @field_validator("price_prefixes", mode="before")
    @classmethod
    def _prefixes(cls, value: Any) -> Any:
        if (
            not isinstance(value, list | tuple)
            or not value
            or any(str(p) not in VARIABLE_MEASURE_PREFIXES for p in value)
        ):
            raise ValueError('price_prefixes must list in-store prefixes "20" to "29"')
        return tuple(str(p) for p in value)

    @field_validator("price_digits", mode="before")
    @classmethod
    def _digits(cls, value: Any) -> Any:
        if type(value) is not int or value not in (4, 5):
            raise ValueError("price_digits must be 4 or 5")
        return value


def _switchable_scheme(value: Any) -> Any:
    # false on a terminal switches the store's scheme off for it; unset keeps the store's.
    if value is False:
        return None
    if not isinstance(value, dict | VariableMeasureScheme):
        raise ValueError(
            "variable_measure must be a table (or false on a terminal to switch it off)"
        )
    return value


def _receipt_number_pattern(value: Any) -> Any:
    if value is None or isinstance(value, re.Pattern):
        return value
    try:
        pattern = re.compile(str(value))
    except re.error as exc:
        raise ValueError(f"receipt_number_pattern {value!r}: {exc}") from None
    if pattern.groups != 1:
        raise ValueError(
            f"receipt_number_pattern {value!r} needs exactly one group, around the "
            'number: e.g. "1C(\\d+)" for 1C0001, 1C0002, ...'
        )
    return pattern


def _optional_text(value: Any, key: str) -> Any:
    if value is None:
        return None
    if not isinstance(value, str | int) or isinstance(value, bool) or not str(value).strip():
        raise ValueError(f"{key} must be a non-empty text or number")
    return str(value).strip()


class TerminalEntry(BaseModel):
    """One ``[[terminals]]`` entry: a till of one tenant. It may also set any ``[delivery]`` or
    ``[health]`` key for itself (kept in ``rule_keys``), which then wins over the store-wide
    table."""

    model_config = ConfigDict(**TABLE, arbitrary_types_allowed=True)
    # Keys declared by DeliveryRules and HealthRules that an entry may set for itself.
    shared_keys: ClassVar[tuple[str, ...]] = (*DELIVERY_KEYS, *HEALTH_KEYS)

    # Checked by their validators even when left out (validate_default): "id '' must start...".
    id: str = Field(
        "",
        validate_default=True,
        description="the terminal's id: a letter, then letters, digits or '_' (at most 32); it "
        "names the terminal's sensor and partitions",
    )
    department: str = Field(
        "",
        validate_default=True,
        description="the department code (1-8 letters or digits) the billing software files "
        "its sales under",
    )
    tenant: str | None = Field(None, description="the business behind it (default: the department)")
    inbox: str | None = Field(
        None, description="where its files arrive (default: <home>/<paths.terminals>/<id>/inbox)"
    )
    timezone: Zone | None = Field(None, description="its clock's zone (default: the store's)")
    format: str = Field(
        CANONICAL_FORMAT,
        description="the file format it writes: posfed-json, arts-poslog or a [mappings] name",
    )
    encoding_fallback: Encoding = Field(
        None, description="tried only when a file is not UTF-8 (default: its mapping's)"
    )
    quantity_decimals: int = Field(
        3, strict=True, ge=0, le=6, description="decimals of a quantity (weighed items: 3, grams)"
    )
    variable_measure: VariableMeasureScheme | None = Field(
        None,
        description="its own in-store price codes, or false for none (default: the "
        "store's [store.variable_measure])",
    )
    check_labels: bool | None = Field(
        None,
        strict=True,
        description="a price, amount or weight on a scale label must agree "
        "with its line (default: whether its department is one of [store] weighed_departments)",
    )
    workstation_id: str | None = Field(
        None, description="POSLog's WorkstationID for this till, when it is not the terminal's id"
    )
    allow_returns: bool = Field(False, strict=True, description="whether it may send returns")
    receipt_id_prefix: str = Field(
        "",
        description="its receipt numbers all begin with this (at most 16 letters or digits): "
        "what tells two terminals of one department apart in a .dat name",
    )
    receipt_number_pattern: re.Pattern[str] | None = Field(
        None,
        description="receipt ids numbered in sequence, the regex's one group the number "
        'e.g. "1C(\\d+)"; the daily reconciliation lists the numbers that never arrived',
    )
    rule_keys: dict[str, Any] = Field(
        default_factory=dict, exclude=True, description="its [delivery]/[health] keys, if any"
    )

    @model_validator(mode="before")
    @classmethod
    def _take_rule_keys(cls, data: Any) -> Any:
        # The rules' keys are declared once, by DeliveryRules and HealthRules; they are checked
        # merged over the store-wide tables (core.config.loading).
        if isinstance(data, dict) and "rule_keys" not in data:
            rules = cls.shared_keys
            data = {
                **{k: v for k, v in data.items() if k not in rules},
                "rule_keys": {k: v for k, v in data.items() if k in rules},
            }
        return data

    @field_validator("id", "department", "tenant", "receipt_id_prefix", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return text(value)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not TERMINAL_ID_PATTERN.match(value):
            raise ValueError(
                f"id {value!r} must start with a letter and use only letters, digits and '_' "
                "(at most 32)"
            )
        return value

    @field_validator("department")
    @classmethod
    def _department(cls, value: str) -> str:
        if not DEPARTMENT_PATTERN.match(value):
            raise ValueError(f"department {value!r} must be 1-8 letters or digits")
        return value

    @field_validator("tenant", mode="after")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("receipt_id_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not RECEIPT_ID_PREFIX_PATTERN.match(value):
            raise ValueError(f"receipt_id_prefix {value!r} must be at most 16 letters or digits")
        return value

    @field_validator("variable_measure", mode="before")
    @classmethod
    def _scheme(cls, value: Any) -> Any:
        return _switchable_scheme(value)

    @field_validator("workstation_id", mode="before")
    @classmethod
    def _workstation(cls, value: Any) -> Any:
        return _optional_text(value, "workstation_id")

    @field_validator("receipt_number_pattern", mode="before")
    @classmethod
    def _number_pattern(cls, value: Any) -> Any:
        return _receipt_number_pattern(value)


@dataclass(frozen=True)
class Terminal:
    """One POS terminal of one tenant (the independent business behind a department), as the
    loader builds it from its ``TerminalEntry`` and the store-wide tables."""

    id: str
    department: str
    tenant: str
    inbox: Path
    timezone: ZoneInfo
    input_format: str = default_of(TerminalEntry, "format")
    allow_returns: bool = default_of(TerminalEntry, "allow_returns")
    mapping: InputMapping | None = None  # None: the canonical posfed JSON
    encoding_fallback: str | None = None  # tried only when a file is not UTF-8
    quantity_decimals: int = default_of(TerminalEntry, "quantity_decimals")
    variable_measure: VariableMeasureScheme | None = None
    # How in-store codes (RCNs) read: a biip region code from [store] gs1_region, or None.
    gs1_region: str | None = None
    # A price, amount or weight on a scale label must agree with its line (core.validation).
    check_labels: bool = False
    # POSLog's WorkstationID for this till, when it is not the terminal's id.
    workstation_id: str | None = None
    # The terminal's own receipt numbers all begin with this (its number range): what tells two
    # terminals of one department apart in a .dat name like scon{department}{receiptId}.dat.
    receipt_id_prefix: str = default_of(TerminalEntry, "receipt_id_prefix")
    # Receipt ids numbered in sequence: the regex's one group is the number. The daily
    # reconciliation lists the numbers of a day that never arrived.
    receipt_number_pattern: re.Pattern[str] | None = None
    delivery: DeliveryRules = DeliveryRules()  # how its files arrive and when one is complete
    health: HealthRules = HealthRules()  # when its silence or its backlog needs a look

    @property
    def folder(self) -> Path:
        return self.inbox.parent

    @property
    def archive_root(self) -> Path:
        return self.folder / "archive"

    @property
    def quarantine(self) -> Path:
        return self.folder / "quarantine"

    def archive_dir(self, business_day: date) -> Path:
        return self.archive_root / business_day.strftime("%Y%m%d")
