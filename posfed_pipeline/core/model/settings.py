"""How a table of the store file is declared: each key once, with its type, default, range and
doc line (pydantic), and the domain types read their defaults from there."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# A table of the store file: a misspelt key is refused (it would silently mean its default),
# and nothing changes a loaded configuration behind the loader's back.
TABLE = ConfigDict(extra="forbid", frozen=True)
# The same for the tables whose model is itself the domain type (a pydantic dataclass, frozen
# on its decorator): dataclasses.replace keeps working on them, and validates again.
RULES = ConfigDict(extra="forbid")


def declared_fields(model: type) -> dict[str, Any]:
    """The declared keys of a table model (a BaseModel or a pydantic dataclass)."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return dict(model.model_fields)
    fields = getattr(model, "__pydantic_fields__", None) if isinstance(model, type) else None
    return dict(fields or {})


def default_of(model: type, key: str) -> Any:
    """The default a table model declares for ``key``: a domain type's default, said once."""
    return declared_fields(model)[key].get_default(call_default_factory=True)
