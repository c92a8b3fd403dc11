"""The configuration reference (docs/configuration.md), generated from the store file's model:
each key's type, default, range and doc line as declared in ``core.config.schema``, so the
document cannot drift from what the loader accepts (a test compares the two).

Regenerate: ``python -m posfed_pipeline.core.config.reference > docs/configuration.md``
"""

from __future__ import annotations

import inspect
import types
import typing
from datetime import time
from typing import Any

from pydantic.fields import FieldInfo

from posfed_pipeline.core.config.headoffice import HeadOfficeFile, StoreRules
from posfed_pipeline.core.config.schema import StoreFile
from posfed_pipeline.core.model.settings import declared_fields
from posfed_pipeline.core.model.terminal import DELIVERY_KEYS, HEALTH_KEYS

_HEADER = """\
# Configuration reference

<!-- Generated from posfed_pipeline/core/config/schema.py; do not edit by hand. Regenerate:
     python -m posfed_pipeline.core.config.reference > docs/configuration.md -->

The store file (`posfed.toml`, or the file `POSFED_CONFIG` names) has the tables below; an
unknown table or key is refused at load, naming the file, the table and the key. The
environment overrides what must not live in a file or differs per machine: `POSFED_HOME` (the
state folder), `POSFED_DB_URL` or `POSFED_DB_HOST/PORT/NAME/USER` with `POSFED_DB_PASSWORD`
(the central database), `POSFED_SMTP_PASSWORD` (alert e-mails). `posfed.toml` in the
repository is a commented example.
"""


def configuration_reference() -> str:
    parts = [_HEADER]
    for name, info in declared_fields(StoreFile).items():
        _section(parts, name, info, {"terminals": "[[terminals]]"})
        if name == "terminals":
            parts.append(
                "An entry may also set any `[delivery]` key ("
                + ", ".join(f"`{k}`" for k in DELIVERY_KEYS)
                + ") or `[health]` key ("
                + ", ".join(f"`{k}`" for k in HEALTH_KEYS)
                + ") for that terminal alone; it wins over the store-wide table.\n"
            )
        if name == "store":
            parts.append(
                "`[store.variable_measure]` takes `price_prefixes` (in-store prefixes "
                '"20" to "29", default all) and `price_digits` (4 or 5, default 5).\n'
            )
    parts.append(_HEADOFFICE_HEADER)
    shared = set(declared_fields(StoreRules))
    for name, info in declared_fields(HeadOfficeFile).items():
        leave_out = shared if name == "stores" else set()
        _section(parts, name, info, {"stores": "[[stores]]"}, level="###", leave_out=leave_out)
    return "\n".join(parts)


_HEADOFFICE_HEADER = """\
## The head office file (`headoffice.toml`)

`posfed headoffice` reads it (or the file `POSFED_HEADOFFICE_CONFIG` names): the chain's stores as
the head office watches them ([deployment.md](deployment.md#the-head-office-view)). The central
database comes from the environment, as for a store (`POSFED_DB_URL` or `POSFED_DB_*`).
`posfed_pipeline/profiles/headoffice.toml` is a commented example.
"""


def _section(
    parts: list[str],
    name: str,
    info: FieldInfo,
    titles: dict[str, str],
    *,
    level: str = "##",
    leave_out: set[str] | None = None,
) -> None:
    """A table's heading, doc line and keys (but ``leave_out``)."""
    model = _table_model(info.annotation)
    title = {"mappings": "[mappings.<name>]", **titles}.get(name)
    parts.append(f"{level} `{title or f'[{name}]'}`\n")
    doc = _one_line(inspect.getdoc(model) or "").replace("``", "`")
    parts.append(doc.split(": ", 1)[1] if doc.startswith("`[") else doc)
    parts.append("")
    rows = [
        (key, field)
        for key, field in declared_fields(model).items()
        if not field.exclude and key not in (leave_out or ())
    ]
    parts.append(_table(rows))


def _table(rows: list[tuple[str, FieldInfo]]) -> str:
    lines = ["| key | type | default | accepted | what it does |", "|---|---|---|---|---|"]
    for key, field in rows:
        default = (
            "*(required)*"
            if field.is_required()
            else _value(field.get_default(call_default_factory=True))
        )
        lines.append(
            f"| `{key}` | {_type(field.annotation)} | {default} | {_range(field)} | "
            f"{_cell(field.description or '')} |"
        )
    return "\n".join(lines) + "\n"


def _table_model(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return typing.get_args(annotation)[0]
    if origin is dict:
        return typing.get_args(annotation)[1]
    return annotation


def _type(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Annotated:
        return _type(typing.get_args(annotation)[0])
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return " \\| ".join(f'`"{a}"`' if isinstance(a, str) else f"`{a}`" for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return 'text ("07:00-21:00")'  # opening hours
    if origin in (tuple, list, frozenset, set):
        return f"list of {_type(args[0])}"
    if origin is dict:
        return "table"
    names = {"str": "text", "int": "whole number", "float": "number", "bool": "true/false"}
    name = getattr(annotation, "__name__", str(annotation))
    return names.get(
        name,
        {
            "ZoneInfo": "time zone",
            "date": "date",
            "time": 'time of day ("03:00")',
            "Pattern": "regex",
        }.get(name, "table"),
    )


def _range(field: FieldInfo) -> str:
    bounds = {
        type(m).__name__: getattr(m, type(m).__name__.lower())
        for m in field.metadata
        if type(m).__name__ in ("Ge", "Le", "Gt", "Lt")
    }
    low = f">= {bounds['Ge']}" if "Ge" in bounds else f"> {bounds['Gt']}" if "Gt" in bounds else ""
    high = f"<= {bounds['Le']}" if "Le" in bounds else f"< {bounds['Lt']}" if "Lt" in bounds else ""
    return ", ".join(part for part in (low, high) if part)


def _value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple | frozenset | list):
        return "`[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]`"
    if isinstance(value, time):
        return f'`"{value:%H:%M}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, dict):
        return ""
    return f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    print(configuration_reference(), end="")
