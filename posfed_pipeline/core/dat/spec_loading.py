"""Loading a spec file and checking it against the JSON schema and the engine's rules: every
problem reported with its place."""

from __future__ import annotations

import json
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from posfed_pipeline.core.dat.layout import DatSpec, LayoutVersion
from posfed_pipeline.core.dat.paths import _NAME_VALUES
from posfed_pipeline.core.dat.patterns import _date_format_width
from posfed_pipeline.core.dat.text import _charset
from posfed_pipeline.core.dat.vocabulary import (
    _ACCEPTS,
    _FOLDER_LITERAL_OK,
    _FOLDER_TOKEN_RE,
    _NAME_LITERAL_OK,
    _NUMERIC,
    _OPTIONS,
    _PLACEHOLDER_RE,
    _RESERVED_FIELD_NAMES,
    _TOKEN_RE,
    _TYPE_OPTIONS,
    DATE_TOKENS,
    DEFAULT_DATE_FOLDER,
    DEFAULT_FILE_NAME,
    ITEM_SOURCES,
    LINE_ENDINGS,
    RECORD_KINDS,
    SOURCES,
    SPEC_SCHEMA_PATH,
    FieldSpec,
    SpecError,
)


@cache
def _spec_schema() -> dict:
    return json.loads(SPEC_SCHEMA_PATH.read_text(encoding="utf-8"))


def load_spec(path: str | Path) -> DatSpec:
    """Read, schema-check and compile a spec; ``SpecError`` lists every problem found."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: not valid JSON: {exc}") from None
    return spec_from_dict(raw, path)


def spec_from_dict(raw: dict, path: Path) -> DatSpec:
    validator = jsonschema.Draft202012Validator(_spec_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise SpecError(
            [f"{path}: {_schema_place(raw, e.absolute_path)}{e.message}" for e in errors]
        )
    problems: list[str] = []
    versions = []
    for index, raw_version in enumerate(raw["versions"]):
        version = _version(raw_version, f"{path}: versions[{index}]", problems)
        if version is not None:
            versions.append(version)
    days = sorted(str(v.get("effective_from")) for v in raw["versions"])
    for earlier, later in zip(days, days[1:], strict=False):
        if earlier == later:
            problems.append(f"{path}: two versions share effective_from {earlier}")
    if problems:
        raise SpecError(problems)
    versions.sort(key=lambda v: v.effective_from)
    return DatSpec(name=raw["name"], path=path, versions=tuple(versions))


def _schema_place(raw: Any, where) -> str:
    """A JSON-schema error's location in words: ``versions[0], record item, field price: ``."""
    rest = list(where)
    words: list[str] = []
    if rest[:1] == ["versions"] and len(rest) >= 2:
        version, rest = rest[1], rest[2:]
        words.append(f"versions[{version}]")
        if rest[:1] == ["records"] and len(rest) >= 2:
            words.append(f"record {rest[1]}")
            if len(rest) >= 3:
                name = _get(raw, "versions", version, "records", rest[1], rest[2], "name")
                words.append(f"field {name}" if isinstance(name, str) else f"field #{rest[2] + 1}")
            rest = rest[3:]
    place = ": ".join(filter(None, [", ".join(words), "/".join(map(str, rest))]))
    return f"{place}: " if place else ""


def _get(raw: Any, *keys) -> Any:
    for key in keys:
        try:
            raw = raw[key]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def _version(raw: dict, where: str, problems: list[str]) -> LayoutVersion | None:
    found = len(problems)
    try:
        effective = date.fromisoformat(raw["effective_from"])
    except ValueError:
        problems.append(f"{where}: effective_from {raw['effective_from']!r} is not a date")
        effective = date.min
    where = f"{where} (from {raw['effective_from']})"
    encoding = raw.get("encoding", "ascii")
    transliterate = raw.get("transliterate", True)
    records: dict[str, tuple[FieldSpec, ...]] = {}
    for kind in RECORD_KINDS:
        fields = raw["records"].get(kind)
        records[kind] = (
            ()
            if fields is None
            else _fields(fields, f"{where}, record {kind}", kind, encoding, problems)
        )
    file_name = raw.get("file_name", DEFAULT_FILE_NAME)
    date_folder = raw.get("date_folder", DEFAULT_DATE_FOLDER)
    for reason in (_file_name_problem(file_name), _date_folder_problem(date_folder)):
        if reason:
            problems.append(f"{where}: {reason}")
    if len(problems) > found:
        return None
    return LayoutVersion(
        effective_from=effective,
        encoding=encoding,
        line_ending=LINE_ENDINGS[raw.get("line_ending", "CRLF")],
        file_name=file_name,
        date_folder=date_folder,
        header=records["header"],
        item=records["item"],
        footer=records["footer"],
        transliterate=transliterate,
    )


def _fields(
    raw_fields: list[dict], where: str, kind: str, encoding: str, problems: list[str]
) -> tuple[FieldSpec, ...]:
    fields: list[FieldSpec] = []
    position = 1
    names: set[str] = set()
    for raw in raw_fields:
        place = f"{where}, field {raw['name']}"
        spec, reasons = _field(raw, position, kind, encoding)
        if raw["name"] in names:
            reasons.insert(0, "the field name appears twice in this record")
        names.add(raw["name"])
        problems.extend(f"{place}: {reason}" for reason in reasons)
        if spec is not None and not reasons:
            fields.append(spec)
        position += raw["length"]
    return tuple(fields)


def _field(raw: dict, position: int, kind: str, encoding: str) -> tuple[FieldSpec | None, list]:
    """One field's spec and every reason it cannot be used."""
    reasons: list[str] = []
    name, source, ftype, length = raw["name"], raw["source"], raw["type"], raw["length"]
    if name in _RESERVED_FIELD_NAMES:
        reasons.append(f"the name {name!r} is reserved")
    start = raw.get("start")
    if start is not None and start != position:
        relation = "overlaps the previous field" if start < position else "leaves a gap"
        reasons.append(f"starts at {start} but {relation} (expected {position})")
    source_kind = SOURCES.get(source)
    if source_kind is None:
        reasons.append(f"unknown source {source!r} (known: {', '.join(sorted(SOURCES))})")
    elif source_kind not in _ACCEPTS[ftype]:
        if ftype == "constant" or source == "constant":
            reasons.append('a constant field needs both source "constant" and type "constant"')
        else:
            reasons.append(f"a {ftype} field cannot take source {source!r} ({source_kind})")
    if source in ITEM_SOURCES and kind != "item":
        reasons.append(f"source {source!r} exists only on item lines, not in the {kind} record")
    for option in sorted(set(raw) & _TYPE_OPTIONS):
        if option not in _OPTIONS[ftype]:
            reasons.append(f"option {option!r} does not apply to a {ftype} field")

    numeric = ftype in _NUMERIC
    left_default = ftype in ("text", "constant", "date", "time")
    align = raw.get("align", "left" if left_default else "right")
    pad = raw.get("pad", " " if left_default else "0")
    if pad not in _charset(encoding):
        reasons.append(f"pad {pad!r} is not a printable character of {encoding}")
    if numeric and (pad in "+-" or (pad.isdigit() and pad != "0")):
        reasons.append(f"pad {pad!r} would be read as part of the number")
    if numeric and pad == "0" and align == "left":
        reasons.append("a left-aligned number cannot be padded with '0' (it would change value)")
    sign = raw.get("sign", "leading")
    if numeric and sign == "trailing" and length < 2:
        reasons.append("a trailing sign needs a length of at least 2")
    fmt = raw.get("format", "")
    if ftype in ("date", "time"):
        reason = _date_format_problem(fmt, length)
        if reason:
            reasons.append(reason)
    value = raw.get("value", "")
    if ftype == "constant":
        if len(value) > length:
            reasons.append(f"value {value!r} is longer than the field ({length})")
        bad = [ch for ch in value if ch not in _charset(encoding)]
        if bad:
            reasons.append(
                f"value {value!r}: {bad[0]!r} is not a printable character of {encoding}"
            )
    if reasons:
        return None, reasons
    return FieldSpec(
        name=name,
        source=source,
        type=ftype,
        length=length,
        align=align,
        pad=pad,
        value=value,
        decimals=raw.get("decimals", {"money": 2, "quantity": 3}.get(ftype, 0)),
        format=fmt,
        sign=sign,
        truncate=raw.get("truncate", True),
        start=position,
    ), []


def _date_format_problem(fmt: str, length: int) -> str | None:
    if not fmt:
        return "a date or time field needs a format such as ddMMyy, yyyyMMdd or HHmm"
    literal = _TOKEN_RE.sub("", fmt)
    letters = sorted({ch for ch in literal if ch.isascii() and ch.isalpha()})
    if letters:
        return (
            f"format {fmt!r}: {''.join(letters)!r} is not a token "
            f"(use {', '.join(DATE_TOKENS)}; case matters)"
        )
    if not _TOKEN_RE.search(fmt):
        return f"format {fmt!r} has no date or time token"
    if not (literal.isascii() and literal.isprintable()):
        return f"format {fmt!r}: literal characters must be printable ASCII"
    width = _date_format_width(fmt)
    if width > length:
        return f"format {fmt!r} is {width} characters wide, the field only {length}"
    return None


def _file_name_problem(template: str) -> str | None:
    keys = _PLACEHOLDER_RE.findall(template)
    unknown = [k for k in keys if k not in _NAME_VALUES]
    if unknown:
        return (
            f"file_name {template!r}: unknown placeholder {{{unknown[0]}}} "
            f"(known: {', '.join('{' + k + '}' for k in _NAME_VALUES)})"
        )
    literal = "".join(_PLACEHOLDER_RE.split(template)[::2])
    if not _NAME_LITERAL_OK.match(literal):
        return (
            f"file_name {template!r}: literal text may only use letters, digits, '.', '_' "
            "and '-' (a file name, never a path)"
        )
    if template.startswith("."):
        return f"file_name {template!r} must not start with '.'"
    if not {"receiptId", "receipt_id"} & set(keys):
        return (
            f"file_name {template!r} must contain {{receiptId}} "
            "(otherwise receipts overwrite each other)"
        )
    return None


def _date_folder_problem(pattern: str) -> str | None:
    literal = _FOLDER_TOKEN_RE.sub("", pattern)
    if not _FOLDER_LITERAL_OK.match(literal):
        return (
            f"date_folder {pattern!r}: only YYYY, MM, DD, letters, digits, '_', '-' and "
            "'/' between folders"
        )
    if any(not segment for segment in pattern.split("/")):
        return f"date_folder {pattern!r}: empty folder name (leading, trailing or double '/')"
    if sorted(_FOLDER_TOKEN_RE.findall(pattern)) != ["DD", "MM", "YYYY"]:
        return f"date_folder {pattern!r} must contain YYYY, MM and DD, each once"
    return None
