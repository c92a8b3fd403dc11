"""A configuration posfed cannot use, said as the operator reads the file: the file, the table
(``[intake]``, ``terminals[3]``, ``[mappings.vendor]``), the key and what would be accepted."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from posfed_pipeline.core.base.errors import PosfedError
from posfed_pipeline.core.model.settings import declared_fields

Location = tuple[str | int, ...]


class ConfigError(PosfedError, ValueError):
    """The configuration file is missing or says something posfed cannot use."""


def place_of(location: Location) -> str:
    """``("terminals", 3)`` -> ``terminals[3]``; ``("mappings", "v")`` -> ``[mappings.v]``."""
    if not location:
        return ""
    if any(isinstance(step, int) for step in location):
        return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in location).lstrip(".")
    return f"[{'.'.join(str(s) for s in location)}]"


def refused(
    error: ValidationError,
    model: type,
    where: str,
    *,
    at: Location = (),
) -> ConfigError:
    """pydantic's findings about ``model`` (validated at ``at`` of the file) as one ConfigError:
    each problem on its own line, unknown keys together with the keys that are known."""
    lines: list[str] = []
    unknown: dict[Location, list[str]] = {}
    for problem in error.errors():
        location = tuple(problem["loc"])
        if problem["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            unknown.setdefault(at + location[:-1], []).append(str(location[-1]))
            continue
        line = _problem(problem, model, location, at)
        if line not in lines:
            lines.append(line)
    for table, keys in unknown.items():
        owner = _model_at(model, table[len(at) :])
        # A terminal entry also takes the [delivery]/[health] keys (TerminalEntry.shared_keys).
        known = {*declared_fields(owner), *getattr(owner, "shared_keys", ())} - {"rule_keys"}
        what = "section" if not table else "setting"
        lines.insert(0, _unknown(table, sorted(keys), sorted(known), what))
    return ConfigError("\n".join(f"{where}: {line}" if line else where for line in lines))


def _unknown(location: Location, keys: list[str], known: list[str], what: str) -> str:
    """A misspelt key would silently mean its default, and credentials must not sit here."""
    hint = ""
    if location == ("alerts",) and any("password" in k for k in keys):
        hint = " (the SMTP password comes from POSFED_SMTP_PASSWORD only)"
    elif any(k == "database" or "db" in k or "password" in k for k in keys):
        hint = (
            " (the central database is set through the environment only: POSFED_DB_URL or "
            "POSFED_DB_HOST/PORT/NAME/USER, and POSFED_DB_PASSWORD; credentials never go in "
            "this file)"
        )
    guesses = [g for k in keys for g in difflib.get_close_matches(k, known, n=1)]
    meant = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
    place = f"{place_of(location)}: " if location else ""
    return f"{place}unknown {what}(s) {', '.join(keys)}{meant}; known: {', '.join(known)}{hint}"


def _problem(problem: Any, model: type, location: Location, at: Location) -> str:
    """One finding: a validator's own sentence names its key; otherwise the sentence is made
    from the key's declaration (type and range), as a person would write it."""
    full = at + location
    if problem["type"] == "value_error":
        sentence = str(problem["ctx"]["error"])
        # A key's validator names its key first; a table's own check (loc: the table) does not.
        names_key = bool(location) and sentence.startswith(str(location[-1]))
        table = full[:-1] if names_key else full
    else:
        table, key = full[:-1], full[-1]
        info = _field_at(model, location)
        sentence = f"{key} {_expected(info, problem)}"
    place = place_of(table)
    if not place:
        return sentence
    # "[intake] max_age_days ..." as in the file's table; "terminals[0]: quantity_decimals ...".
    return f"{place}{': ' if any(isinstance(s, int) for s in table) else ' '}{sentence}"


def _expected(info: FieldInfo | None, problem: Any) -> str:
    if problem["type"] == "missing":
        return "must be set"
    if info is None:
        return _lower(problem["msg"])
    kind = _plain(info.annotation)
    bounds = {
        type(m).__name__.lower(): getattr(m, type(m).__name__.lower())
        for m in info.metadata
        if type(m).__name__ in ("Ge", "Le", "Gt", "Lt")
    }
    low, high = bounds.get("ge"), bounds.get("le")
    if kind is bool:
        return "must be true or false"
    if kind is int:
        if low is not None and high is not None:
            return f"must be a whole number from {low} to {high}"
        if low is not None:
            return f"must be a whole number, {low} or more"
        return "must be a whole number"
    if kind is float:
        if low is not None and high is not None:
            return f"must be a number from {low:g} to {high:g}"
        if bounds.get("gt") == 0:
            return "must be a positive number"
        return "must be a number"
    if typing.get_origin(kind) is Literal:
        choices = ", ".join(map(str, typing.get_args(kind)))
        return f"must be one of {choices} (got {problem['input']!r})"
    if isinstance(kind, type) and (
        issubclass(kind, BaseModel) or hasattr(kind, "__pydantic_fields__")
    ):
        return "must be a table"
    if kind is str:
        return "must be text"
    return _lower(problem["msg"])


def _lower(message: str) -> str:
    return message[:1].lower() + message[1:]


def _plain(annotation: Any) -> Any:
    """``X | None`` -> ``X``; ``Annotated[X, ...]`` -> ``X``."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _plain(members[0])
    return annotation


def _model_at(model: type, location: Location) -> type:
    """The table model found at ``location`` inside ``model`` (list indexes, dict keys)."""
    current: Any = model
    for step in location:
        origin = typing.get_origin(current)
        if origin in (tuple, list):
            current = typing.get_args(current)[0]
        elif origin is dict:
            current = typing.get_args(current)[1]
        elif isinstance(step, str) and step in declared_fields(current):
            current = _plain(declared_fields(current)[step].annotation)
    return current


def _field_at(model: type, location: Location) -> FieldInfo | None:
    if not location or not isinstance(location[-1], str):
        return None
    owner = _model_at(model, location[:-1])
    return declared_fields(owner).get(location[-1]) if isinstance(owner, type) else None
