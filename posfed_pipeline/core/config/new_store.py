"""A new store's file (``posfed init``): a commented ``posfed.toml`` from a few facts (the store's
id and time zone, its tills and their departments, where its state lives), written as the demo
store's posfed.toml is: every table present, each key explained, the keys left at their
defaults commented out with the default shown (read from the file model, so it cannot drift)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from posfed_pipeline.core.config.alert_settings import AlertsTable
from posfed_pipeline.core.config.schema import (
    STORE_ID_PATTERN,
    IntakeTable,
    PathsTable,
    RetentionTable,
    StoreTable,
)
from posfed_pipeline.core.config.sync_policy import SyncTable
from posfed_pipeline.core.model.settings import default_of
from posfed_pipeline.core.model.terminal import (
    DEPARTMENT_PATTERN,
    RECEIPT_ID_PREFIX_PATTERN,
    TERMINAL_ID_PATTERN,
    DeliveryRules,
    HealthRules,
    zone,
)

TERMINAL_FORM = "ID:DEPARTMENT[:PREFIX]"
TENANT_FORM = "DEPARTMENT=NAME"
COMMENT_COLUMN = 35  # where a key's comment starts, as in the demo store's posfed.toml
LINE_WIDTH = 96


@dataclass(frozen=True)
class NewTerminal:
    id: str
    department: str
    receipt_id_prefix: str = ""


@dataclass(frozen=True)
class NewStore:
    """What ``posfed init`` is told; the rest of the file is posfed's defaults, commented."""

    store_id: str
    timezone: str
    terminals: tuple[NewTerminal, ...]
    name: str | None = None
    tenants: Mapping[str, str] = field(default_factory=dict)  # department -> business
    home: str = default_of(PathsTable, "home")
    env_file: str | None = None  # the file beside it holding the central database's URL


def terminal_from_text(text: str) -> NewTerminal:
    """``bakery_1:10`` or ``bakery_1:10:1`` (its receipt numbers begin with 1)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ValueError(f"{text!r} is not {TERMINAL_FORM} (e.g. bakery_1:10 or bakery_2:10:2)")
    terminal_id, department, prefix = (*parts, "")[:3]
    if not TERMINAL_ID_PATTERN.match(terminal_id):
        raise ValueError(
            f"{text!r}: the id {terminal_id!r} must start with a letter and use only letters, "
            "digits and '_' (at most 32)"
        )
    if not DEPARTMENT_PATTERN.match(department):
        raise ValueError(f"{text!r}: the department {department!r} must be 1-8 letters or digits")
    if len(parts) == 3 and not (prefix and RECEIPT_ID_PREFIX_PATTERN.match(prefix)):
        raise ValueError(
            f"{text!r}: the receipt number prefix {prefix!r} must be 1-16 letters or digits"
        )
    return NewTerminal(terminal_id, department, prefix)


def tenant_from_text(text: str) -> tuple[str, str]:
    """``10=Bakkerij De Korenschoof``: the business behind department 10."""
    department, equals, name = text.partition("=")
    department, name = department.strip(), name.strip()
    if not equals or not department or not name:
        raise ValueError(f"{text!r} is not {TENANT_FORM} (e.g. '10=Bakkerij De Korenschoof')")
    return department, name


def check_new_store(store: NewStore) -> None:
    """What the file model would refuse, said in the options' words (ValueError)."""
    if not STORE_ID_PATTERN.match(store.store_id):
        raise ValueError(
            f"store id {store.store_id!r} must be 1-32 letters, digits, '.', '-' or '_', starting "
            "with a letter or digit: it is part of every key in the central database"
        )
    zone(store.timezone)  # "unknown timezone 'Europe/Amsterdm' (did you mean Europe/Amsterdam?)"
    if not store.terminals:
        raise ValueError(f"no terminals: name each till with --terminal {TERMINAL_FORM}")
    ids = [t.id for t in store.terminals]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"terminal {', '.join(twice)} is given more than once")
    departments = {t.department for t in store.terminals}
    for department in store.tenants:
        if department not in departments:
            raise ValueError(
                f"a tenant for department {department!r}, which no terminal has "
                f"(departments: {', '.join(sorted(departments))})"
            )


def store_file_text(store: NewStore) -> str:
    """The commented posfed.toml of ``store`` (check_new_store first)."""
    if store.env_file:
        database = (
            f"POSFED_DB_URL and POSFED_DB_PASSWORD in {store.env_file} beside this file: load it "
            f"before a posfed command (`set -a; . ./{store.env_file}; set +a`), or name it in "
            "the services' EnvironmentFile= (docs/deployment.md)."
        )
    else:
        database = "POSFED_DB_URL and POSFED_DB_PASSWORD in the environment (docs/database.md)."
    lines: list[str] = [
        *_comment(
            f"posfed.toml of store {store.store_id}, written by `posfed init`. Every table and "
            "key is in docs/configuration.md (posfed's repository); `posfed config check` says "
            "whether posfed can start on this file. A key commented out shows its default (or "
            "an example): uncomment it to change it. Adding a terminal is adding a "
            "[[terminals]] entry: its sensor and partitions follow."
        ),
        "",
        "[store]",
        *_key("id", store.store_id, "unique in the chain: part of every central database key"),
        *(
            _key("name", store.name, "the store's name (default: its id)")
            if store.name
            else _unset("name", "Main Street", "the store's name (default: its id)")
        ),
        *_key("timezone", store.timezone, "the business day is this zone's local date"),
        *_unset(
            "weighed_departments",
            ["20", "40"],
            "scale labels in these departments' tills must agree with their line (a terminal "
            "may say check_labels = true/false itself)",
        ),
        *_unset(
            "gs1_region",
            "de",
            "how in-store codes (prefix 02, 20-29) carry price, weight or count: de, dk, ee, fi, "
            "gb, lt, lv, no, se",
        ),
        *_unset(
            "partitions_start",
            "2026-01-01",
            "the first day the Dagster UI offers for backfills; unset: the store's first "
            "business day",
        ),
        *_default(
            StoreTable,
            "partition_window_months",
            "terminal x day partitions: the months before this one (0: all days)",
        ),
        "",
        "[paths]",
        *_key(
            "home",
            store.home,
            "all state (inboxes, archive, .dat files, the ledger), relative to this file's "
            "folder; POSFED_HOME overrides",
        ),
        *_default(PathsTable, "terminals", "<home>/terminals/<id>/{inbox,archive,quarantine}"),
        *_default(PathsTable, "dat", "<home>/dat/YYYYMMDD/*.dat for the billing software"),
        "",
        *_comment(
            "The central database is never named in this file, so its credentials never are: "
            f"{database} Unset: the embedded SQLite database <home>/central.db."
        ),
        "",
        "[intake]",
        *_default(IntakeTable, "stability_seconds", "a file is read once unchanged this long"),
        *_default(IntakeTable, "max_clock_skew_seconds", "receipts may be this far in the future"),
        *_default(IntakeTable, "max_age_days", "older receipts are rejected (not in a backfill)"),
        *_default(
            IntakeTable,
            "incomplete_grace_seconds",
            "an unparsable file this fresh may still be being written: it waits",
        ),
        *_default(
            IntakeTable,
            "catchup_interval_seconds",
            "each terminal's sensor (the catch-up path) ticks this often",
        ),
        "",
        *_comment(
            "How the tills deliver (docs/terminals.md). Any key may also be set on one "
            "[[terminals]] entry, which wins."
        ),
        "[delivery]",
        *_default(
            DeliveryRules,
            "watch",
            '"poll": an inbox on a network mount (inotify sees nothing there)',
        ),
        *_default(
            DeliveryRules, "poll_interval_seconds", 'with watch = "poll": how often it is listed'
        ),
        *_unset("ignore", ["~$*", "*.bak"], "names never read (besides .tmp, .part, .partial)"),
        *_unset("ready_marker", ".ok", "a till that writes <name>.ok when a file is complete"),
        *_unset(
            "batch_marker",
            "endofday.trg",
            "or: a till that drops this file when a batch is complete (one or the other)",
        ),
        "",
        *_comment(
            "When a terminal needs a look: its check on terminal_inboxes turns red, an alert "
            "goes out, `posfed status` lists it. Any key may also be set on one [[terminals]] "
            "entry."
        ),
        "[health]",
        *_unset("opening_hours", "07:00-21:00", "unset: always open"),
        *_default(HealthRules, "open_days", ""),
        *_unset("quiet_after_minutes", 30, "no receipt this long while open (unset: not checked)"),
        *_default(HealthRules, "max_waiting_minutes", "a file still in the inbox after this"),
        *_default(HealthRules, "max_quarantined_per_day", "more files quarantined in a day"),
        "",
        "[dat]",
        *_unset(
            "spec",
            "dat_specs/scon_default.json",
            "the .dat layout, relative to this file; unset: the one posfed ships (its format: "
            "dat_specs/README.md in posfed's repository)",
        ),
        "",
        "[retention]",
        *_default(
            RetentionTable, "keep_days", "older archive/.dat day folders become YYYYMMDD.tar.gz"
        ),
        "",
        *_comment(
            "The central database is fed from the store's ledger (store-and-forward): the "
            "checkout never waits for it. `posfed db status` and the central_db_lag check "
            "report the lag."
        ),
        "[sync]",
        *_default(SyncTable, "batch_size", "deliveries per transaction"),
        *_default(
            SyncTable, "backoff_cap_seconds", "retries after 1 s, 2 s, 4 s ... at most this apart"
        ),
        *_default(
            SyncTable, "call_timeout_seconds", "a transaction unanswered is cut off and retried"
        ),
        *_default(SyncTable, "min_interval_seconds", "the fast path syncs at most this often"),
        *_default(SyncTable, "warn_after_seconds", "the lag check warns past this..."),
        *_default(SyncTable, "fail_after_seconds", "...and fails (and alerts) past this"),
        "",
        *_comment(
            "Alerts: a failed run, or a central database more than fail_after_seconds behind. "
            "The SMTP password comes from POSFED_SMTP_PASSWORD only."
        ),
        "[alerts]",
        *_unset("email_to", ["ops@example.com"], ""),
        *_unset("email_from", f"posfed@{store.store_id}.example.com", ""),
        *_unset("smtp_host", "smtp.example.com", ""),
        *_unset("smtp_port", 587, ""),
        *_unset("smtp_security", "starttls", "none | starttls | ssl"),
        *_unset("smtp_user", "posfed", ""),
        *_unset("webhook_url", "https://hooks.example.com/posfed", "a JSON POST per alert"),
        *_default(AlertsTable, "timeout_seconds", "how long one e-mail or POST may take"),
        "",
        *_comment(
            "The tills, one [[terminals]] entry each: its id (it names the terminal's sensor "
            "and partitions), its department (the code the billing software files its sales "
            "under) and tenant (the business behind it; default: the department). An entry may "
            'also say its format ("posfed-json", the default; "arts-poslog"; or the name of a '
            "[mappings.<name>] table for another vendor's files: docs/vendors.md), "
            "allow_returns = true, its inbox (default: <home>/terminals/<id>/inbox) and any "
            "[delivery] or [health] key for itself. Two tills of one department number their "
            "receipts each with its own receipt_id_prefix, so that their .dat file names never "
            "coincide: one file is one sale."
        ),
    ]
    for terminal in store.terminals:
        lines += ["", "[[terminals]]", f"id = {_toml(terminal.id)}"]
        lines.append(f"department = {_toml(terminal.department)}")
        tenant = store.tenants.get(terminal.department)
        if tenant:
            lines.append(f"tenant = {_toml(tenant)}")
        if terminal.receipt_id_prefix:
            lines.append(f"receipt_id_prefix = {_toml(terminal.receipt_id_prefix)}")
    return "\n".join(lines) + "\n"


def _key(key: str, value: Any, comment: str) -> list[str]:
    return _explained(f"{key} = {_toml(value)}", comment)


def _unset(key: str, example: Any, comment: str) -> list[str]:
    return _explained(f"# {key} = {_toml(example)}", comment)


def _default(model: type, key: str, comment: str) -> list[str]:
    return _unset(key, default_of(model, key), comment)


def _explained(assignment: str, comment: str) -> list[str]:
    """The assignment, its comment from COMMENT_COLUMN on, wrapped under itself."""
    if not comment:
        return [assignment]
    start = max(COMMENT_COLUMN, len(assignment) + 2)
    width = max(LINE_WIDTH - start - 2, 30)
    first, *rest = _wrap(comment, width)
    return [f"{assignment:<{start - 1}} # {first}"] + [
        f"{'':<{COMMENT_COLUMN - 1}} # {line}" for line in _wrap(" ".join(rest), width)
    ]


def _comment(text: str) -> list[str]:
    return [f"# {line}" for line in _wrap(text, LINE_WIDTH - 2)]


def _wrap(text: str, width: int) -> list[str]:
    # Names and commands (posfed-json, `set -a; ...`) stay whole.
    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)


def _toml(value: Any) -> str:
    """A TOML value: JSON's strings, numbers and arrays are TOML's too."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, frozenset | set | tuple | list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)
