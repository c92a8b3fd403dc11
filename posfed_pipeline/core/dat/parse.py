"""Reading a .dat file back: every field must be exactly what the renderer would write."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from posfed_pipeline.core.dat.vocabulary import DatFormatError

if TYPE_CHECKING:
    from posfed_pipeline.core.dat.layout import LayoutVersion


def check_dat(content: bytes, version: LayoutVersion) -> list[str]:
    """Every way ``content`` departs from ``version``, line and field named; [] if it conforms."""
    return _scan(content, version)[1]


def parse_dat(content: bytes, version: LayoutVersion) -> list[dict[str, Any]]:
    """The file's records (``record``: header/item/footer, then field name -> value).

    Money and quantities come back as strings in major units ("2.95", "1.500"), integers as
    ints, text as written (pad removed), dates and times as ISO 8601 where the format holds a
    whole date or time. Raises ``DatFormatError`` if the file does not conform.
    """
    records, problems = _scan(content, version)
    if problems:
        raise DatFormatError(problems)
    return records


def _record_kinds(version: LayoutVersion, count: int) -> list[str]:
    kinds = ["item"] * count
    if version.header and count:
        kinds[0] = "header"
    if version.footer and count > (1 if version.header else 0):
        kinds[-1] = "footer"
    return kinds


def _scan(content: bytes, version: LayoutVersion) -> tuple[list[dict[str, Any]], list[str]]:
    ending = version.line_ending
    if not content.endswith(ending):
        return [], [f"file does not end with the spec's line ending {ending!r}"]
    lines = content[: -len(ending)].split(ending)
    kinds = _record_kinds(version, len(lines))
    needed = 1 + bool(version.header) + bool(version.footer)
    problems: list[str] = []
    if len(lines) < needed:
        problems.append(
            f"file has {len(lines)} line(s); this layout needs "
            f"{'a header, ' if version.header else ''}at least one item line"
            f"{' and a footer' if version.footer else ''}"
        )
    records: list[dict[str, Any]] = []
    item_count = kinds.count("item")
    for number, (line, kind) in enumerate(zip(lines, kinds, strict=True), start=1):
        where = f"line {number} ({kind})"
        plan = version._plans[kind]
        if len(line) != plan.width:
            problems.append(f"{where}: {len(line)} bytes, expected {plan.width}")
            continue
        if b"\r" in line or b"\n" in line:
            problems.append(f"{where}: stray line-break byte inside the line")
            continue
        try:
            text = line.decode(version.encoding)
        except UnicodeDecodeError as exc:
            f = next(f for f, a, b, _ in plan.parsers if a <= exc.start < b)
            problems.append(
                f"{where}, field {f.name}: byte {exc.start + 1} "
                f"(0x{line[exc.start]:02X}) is not valid {version.encoding}"
            )
            continue
        values: dict[str, Any] = {"record": kind}
        for f, a, b, parse in plan.parsers:
            try:
                values[f.name] = parse(text[a:b])
            except ValueError as exc:
                problems.append(f"{where}, field {f.name} (bytes {a + 1}-{b}): {exc}")
        for name, source in plan.structural:
            if source == "computed.line_number":
                expected, what = number - bool(version.header), "item line"
            else:
                expected, what = item_count, "item count"
            if name in values and values[name] != expected:
                problems.append(
                    f"{where}, field {name}: {values[name]} but the file's {what} is {expected}"
                )
        records.append(values)
    return records, problems
