"""Odd and hostile inbox entries, as tills, people and old SMB clients leave them, each with
the verdict posfed must give it.

The end-to-end test on the real fast path (posfed_pipeline_tests/test_odd_entries.py) drops them
while valid receipts keep arriving; ``dev/benchmarks/bench_odd_entries.py`` drops them into a
running store (``make demo``) and times each verdict. docs/terminals.md has the table.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from posfed_pipeline.core.config import POSLOG_FORMAT
from posfed_pipeline.core.intake.poslog import write_poslog
from posfed_pipeline.core.model.receipt import Receipt, canonical_json
from posfed_pipeline.core.model.terminal import Terminal

BILLED = "billed"  # accepted, its .dat written (under a safe name where its own was not)
QUARANTINED = "quarantined"  # moved to quarantine/ beside <file>.error.json
REPORTED = "reported"  # left alone, never followed or opened; said where operators look


@dataclass(frozen=True)
class OddEntry:
    kind: str  # what it is, as the table says it
    verdict: str
    reason: str  # what the reason says (quarantined) or how it shows (reported)
    # Writes the entry into an inbox from a valid receipt of that terminal; returns its name.
    make: Callable[[Terminal, Receipt], bytes]
    waits_for_grace: bool = False  # unreadable: left for its writer's grace first
    poslog: bool = False  # for a POSLog till


def _write(terminal: Terminal, name: bytes, data: bytes) -> bytes:
    path = os.path.join(os.fsencode(terminal.inbox), name)
    with open(path, "wb") as handle:  # as a till does: open, write, close
        handle.write(data)
    return name


def _json(receipt: Receipt) -> bytes:
    return canonical_json(receipt).encode()


def _valid(terminal: Terminal, receipt: Receipt) -> bytes:
    """The receipt as this terminal's till writes it."""
    if terminal.input_format == POSLOG_FORMAT:
        return write_poslog([receipt], terminal.workstation_id or terminal.id)
    return _json(receipt)


def _suffix(terminal: Terminal) -> bytes:
    return b".xml" if terminal.input_format == POSLOG_FORMAT else b".json"


def _doc(receipt: Receipt, **changes) -> bytes:
    doc = json.loads(canonical_json(receipt))
    doc.update(changes)
    return json.dumps(doc).encode()


def _make_node(terminal: Terminal, name: bytes, make: Callable[[bytes], None]) -> bytes:
    make(os.path.join(os.fsencode(terminal.inbox), name))
    return name


def _socket(terminal: Terminal, name: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(os.path.join(os.fsencode(terminal.inbox), name))
    return name


def _tomorrow(receipt: Receipt) -> str:
    return (receipt.timestamp + timedelta(days=1)).isoformat()


def _outside_link(terminal: Terminal, name: bytes) -> bytes:
    target = terminal.folder / "outside-the-inbox.json"
    target.write_text(json.dumps({"not": "for posfed"}))
    os.symlink(target, os.path.join(os.fsencode(terminal.inbox), name))
    return name


def _poslog_changed(suffix: bytes, old: bytes, new: bytes) -> Callable[[Terminal, Receipt], bytes]:
    """An entry maker: the till's POSLog export of the receipt, ``old`` replaced by ``new``
    once, written as ``<receipt id><suffix>``."""

    def make(terminal: Terminal, receipt: Receipt) -> bytes:
        export = write_poslog([receipt], terminal.workstation_id or terminal.id)
        return _write(terminal, _id(receipt) + suffix, export.replace(old, new, 1))

    return make


def _id(receipt: Receipt) -> bytes:
    return receipt.receipt_id.encode()


ENTRIES: tuple[OddEntry, ...] = (
    OddEntry(
        "name not UTF-8 (Latin-1 from an old SMB client)",
        BILLED,
        "renamed: undecodable bytes as %XX; the history keeps the original",
        lambda t, r: _write(t, b"re\xe7u-" + _id(r) + _suffix(t), _valid(t, r)),
    ),
    OddEntry(
        "name of 230 bytes (legal, near the 255-byte limit)",
        BILLED,
        "renamed: cut to 200 bytes with a digest",
        lambda t, r: _write(
            t, _id(r) + b"-" + b"L" * (224 - len(_id(r))) + _suffix(t), _valid(t, r)
        ),
    ),
    OddEntry(
        "name with control characters",
        BILLED,
        "renamed: control characters as %XX",
        lambda t, r: _write(t, b"tab\there\x1b-" + _id(r) + _suffix(t), _valid(t, r)),
    ),
    OddEntry(
        "JSON nested 100,000 levels deep",
        QUARANTINED,
        "nested too deeply",
        lambda t, r: _write(t, _id(r) + b"-deep.json", b"[" * 100_000 + b"]" * 100_000),
    ),
    OddEntry(
        "JSON with a key twice (two totals)",
        QUARANTINED,
        "must not repeat",
        lambda t, r: _write(t, _id(r) + b"-twice.json", _json(r)[:-1] + b', "total": "0.01"}'),
    ),
    OddEntry(
        "receipt dated tomorrow (a till clock a day ahead)",
        QUARANTINED,
        "in the future",
        lambda t, r: _write(t, _id(r) + b"-tomorrow.json", _doc(r, timestamp=_tomorrow(r))),
    ),
    OddEntry(
        "receipt dated 2099",
        QUARANTINED,
        "in the future",
        lambda t, r: _write(
            t, _id(r) + b"-2099.json", _doc(r, timestamp="2099-06-01T10:00:00+00:00")
        ),
    ),
    OddEntry(
        "receipt id too long for the .dat layout",
        QUARANTINED,
        "cannot be rendered",
        lambda t, r: _write(
            t, _id(r) + b"-longid.json", _doc(r, receiptId=r.receipt_id + "X" * 20)
        ),
    ),
    OddEntry(
        "truncated JSON (its writer died mid-file)",
        QUARANTINED,
        "not valid JSON",
        lambda t, r: _write(t, _id(r) + b"-cut.json", _json(r)[:40]),
        waits_for_grace=True,
    ),
    OddEntry(
        "empty file",
        QUARANTINED,
        "file is empty",
        lambda t, r: _write(t, _id(r) + b"-empty.json", b""),
        waits_for_grace=True,
    ),
    OddEntry(
        "bytes that are not text",
        QUARANTINED,
        "not UTF-8",
        lambda t, r: _write(t, _id(r) + b"-binary.json", bytes(range(128, 256)) * 8),
        waits_for_grace=True,
    ),
    OddEntry(
        "directory",
        REPORTED,
        "health check, posfed status, posfed quarantine list, the sensor's tick",
        lambda t, r: _make_node(t, _id(r) + b"-folder.json", os.mkdir),
    ),
    OddEntry(
        "symlink to a receipt outside the inbox",
        REPORTED,
        "health check, posfed status, posfed quarantine list, the sensor's tick",
        lambda t, r: _outside_link(t, _id(r) + b"-link.json"),
    ),
    OddEntry(
        "FIFO",
        REPORTED,
        "health check, posfed status, posfed quarantine list, the sensor's tick",
        lambda t, r: _make_node(t, _id(r) + b"-fifo.json", os.mkfifo),
    ),
    OddEntry(
        "socket",
        REPORTED,
        "health check, posfed status, posfed quarantine list, the sensor's tick",
        lambda t, r: _socket(t, _id(r) + b"-sock"),
    ),
    OddEntry(
        "POSLog with a DTD",
        QUARANTINED,
        "DTD or entities is refused",
        _poslog_changed(b"-dtd.xml", b"?>", b"?><!DOCTYPE POSLog [<!ELEMENT POSLog ANY>]>"),
        poslog=True,
    ),
    OddEntry(
        "POSLog sale nested 100,000 levels deep",
        QUARANTINED,
        "nested too deeply",
        _poslog_changed(
            b"-deep.xml", b"<LineItem>", b"<LineItem>" + b"<x>" * 100_000 + b"</x>" * 100_000
        ),
        poslog=True,
    ),
    OddEntry(
        "POSLog file whose only sale is bad",
        QUARANTINED,
        "total",
        _poslog_changed(b"-onebad.xml", b"TransactionGrandAmount", b"Subtotal"),
        poslog=True,
    ),
)


def entries_for(terminal: Terminal) -> list[OddEntry]:
    """The entries that make sense for a terminal's format (names and kinds: every format)."""
    poslog = terminal.input_format == POSLOG_FORMAT
    return [
        e
        for e in ENTRIES
        if e.poslog == poslog or e.verdict == REPORTED or (poslog and e.verdict == BILLED)
    ]
