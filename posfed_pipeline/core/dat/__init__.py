"""The fiscal .dat engine: fixed-width files for the legacy central billing software.

Layouts are data (JSON specs in ``dat_specs/``, format in ``dat_specs/README.md``), never code.
A spec holds one or more *versions*, each in force from its ``effective_from`` date, so a
backfill of last month renders last month's layout. A version has an optional ``header``
record, one ``item`` record per receipt line and an optional ``footer`` record; each record is
an ordered list of fixed-width fields.

Rendering is exact: money is ``Decimal`` scaled to minor units half-up, a number that does not
fit its field is an error (never cut), text is transliterated (or refused, per spec version) and
truncated so that every line has the spec's byte width in the target encoding. Dates and times
are rendered in the terminal's timezone. The reverse parser checks a file byte for byte: every
field must be exactly what the renderer would have written for the value it holds.

Each version is compiled once, at load time, into per-field formatter and parser closures; a
receipt's header-level fields are formatted once per receipt, only item fields once per line.

Rooms: ``vocabulary`` (what a spec may say, the errors, a field's spec), ``spec_loading``,
``layout`` (a spec's versions, compiled at load), ``compiled`` (field formatters and parsers),
``patterns`` (date and folder patterns), ``text`` (encodings, transliteration), ``paths``
(file names and date folders), ``render`` (a receipt to its .dat, written safely), ``parse``
(a .dat back to its fields). The names below are the package's API: ``dat.render_receipt``.
"""

from posfed_pipeline.core.dat.layout import DatSpec, LayoutVersion, RenderedDat
from posfed_pipeline.core.dat.parse import check_dat, parse_dat
from posfed_pipeline.core.dat.paths import dat_relative_path, local_time, name_template_parts
from posfed_pipeline.core.dat.render import publish_dat, render_receipt, stage_dat, write_dat
from posfed_pipeline.core.dat.spec_loading import load_spec, spec_from_dict
from posfed_pipeline.core.dat.text import transliterate
from posfed_pipeline.core.dat.vocabulary import (
    ENCODINGS,
    SPEC_SCHEMA_PATH,
    DatConflictError,
    DatFormatError,
    DatRenderError,
    FieldSpec,
    SpecError,
)

__all__ = [
    "DatConflictError",
    "DatFormatError",
    "DatRenderError",
    "DatSpec",
    "ENCODINGS",
    "FieldSpec",
    "LayoutVersion",
    "RenderedDat",
    "SPEC_SCHEMA_PATH",
    "SpecError",
    "check_dat",
    "dat_relative_path",
    "load_spec",
    "local_time",
    "name_template_parts",
    "parse_dat",
    "publish_dat",
    "render_receipt",
    "spec_from_dict",
    "stage_dat",
    "transliterate",
    "write_dat",
]
