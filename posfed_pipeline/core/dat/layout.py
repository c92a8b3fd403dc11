"""A spec and its versions, each compiled once at load into formatter and parser closures."""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from posfed_pipeline.core.dat.compiled import _RecordPlan
from posfed_pipeline.core.dat.paths import _compile_file_name
from posfed_pipeline.core.dat.patterns import _brace_escape, _translate
from posfed_pipeline.core.dat.vocabulary import (
    _FOLDER_TOKEN_RE,
    _FOLDER_TOKENS,
    DatRenderError,
    FieldSpec,
)


@dataclass(frozen=True)
class LayoutVersion:
    effective_from: date
    encoding: str
    line_ending: bytes
    file_name: str
    date_folder: str
    header: tuple[FieldSpec, ...]
    item: tuple[FieldSpec, ...]
    footer: tuple[FieldSpec, ...]
    transliterate: bool = True
    # Compiled in __post_init__ (not arguments, not compared).
    _plans: dict[str, _RecordPlan] = field(init=False, repr=False, compare=False)
    _newline: str = field(init=False, repr=False, compare=False)
    _name_parts: list[tuple[str, bool]] = field(init=False, repr=False, compare=False)
    _folder_format: Callable[..., str] = field(init=False, repr=False, compare=False)
    _folder_regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compiled once per version: formatter and parser closures, file-name and folder parts.
        object.__setattr__(
            self,
            "_plans",
            {
                kind: _RecordPlan(fields, self.encoding, self.transliterate)
                for kind, fields in self.records()
            },
        )
        object.__setattr__(self, "_newline", self.line_ending.decode("ascii"))
        object.__setattr__(self, "_name_parts", _compile_file_name(self.file_name))
        folder = self.date_folder
        templates = {token: template for token, (template, _) in _FOLDER_TOKENS.items()}
        regexes = {token: regex for token, (_, regex) in _FOLDER_TOKENS.items()}
        folder_template = _translate(folder, _FOLDER_TOKEN_RE, templates, _brace_escape)
        folder_regex = _translate(folder, _FOLDER_TOKEN_RE, regexes, re.escape)
        object.__setattr__(self, "_folder_format", folder_template.format)
        object.__setattr__(self, "_folder_regex", re.compile(folder_regex))

    def records(self) -> list[tuple[str, tuple[FieldSpec, ...]]]:
        return [
            (k, v)
            for k, v in (("header", self.header), ("item", self.item), ("footer", self.footer))
            if v
        ]

    def width(self, kind: str) -> int:
        """The byte width of a line of record ``kind`` (line ending excluded)."""
        return self._plans[kind].width

    def day_from_path(self, path: str | Path) -> date | None:
        """The business day a file's date folder names under this version's pattern, if any."""
        folders = Path(path).resolve().parent.parts
        depth = self.date_folder.count("/") + 1
        if len(folders) < depth:
            return None
        match = self._folder_regex.fullmatch("/".join(folders[-depth:]))
        if not match:
            return None
        try:
            return date(int(match["Y"]), int(match["m"]), int(match["d"]))
        except ValueError:  # e.g. 20260231
            return None


@dataclass(frozen=True)
class DatSpec:
    name: str
    path: Path
    versions: tuple[LayoutVersion, ...]  # sorted by effective_from
    _days: list[date] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_days", [v.effective_from for v in self.versions])

    def version_for(self, business_day: date) -> LayoutVersion:
        """The version in force on ``business_day`` (the latest one that started on or before)."""
        index = bisect.bisect_right(self._days, business_day)
        if index == 0:
            raise DatRenderError(
                f"spec {self.name}: no version in force on {business_day.isoformat()} "
                f"(the first starts {self.versions[0].effective_from.isoformat()})"
            )
        return self.versions[index - 1]


@dataclass(frozen=True)
class RenderedDat:
    relative_path: Path  # <date folder>/<file name>
    content: bytes
    version: LayoutVersion | None = field(default=None, compare=False, repr=False)
