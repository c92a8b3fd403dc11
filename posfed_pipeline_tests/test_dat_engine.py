"""The fiscal .dat engine: specs, rendering, the reverse parser and the byte-for-byte check."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from posfed_pipeline.core import dat
from posfed_pipeline.core.model.receipt import Receipt, ReceiptItem
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.core.stages import processing

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC_PATH = REPO_ROOT / "dat_specs" / "scon_default.json"
EXAMPLE_SPEC_PATH = REPO_ROOT / "dat_specs" / "example_header_footer_cp1252.json"
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
CENT = Decimal("0.01")


# --- helpers ----------------------------------------------------------------------------------


def make_terminal(id="bakery_1", department="10", tenant="Bakkerij", tz=AMSTERDAM) -> Terminal:
    return Terminal(id, department, tenant, Path("/nonexistent/inbox"), tz)


def make_item(barcode="8712345678906", description="Volkorenbrood", price="2.95", quantity="1"):
    return ReceiptItem(barcode, description, Decimal(price), Decimal(quantity))


def make_receipt(
    items=None, *, receipt_id="R0001", when=None, terminal=None, total=None
) -> Receipt:
    terminal = terminal or make_terminal()
    items = tuple(items or (make_item(),))
    return Receipt(
        receipt_id=receipt_id,
        terminal_id=terminal.id,
        department_code=terminal.department,
        items=items,
        total=sum((i.amount for i in items), Decimal("0.00")) if total is None else total,
        timestamp=when or datetime(2026, 3, 1, 10, 15, tzinfo=AMSTERDAM),
    )


def spec_doc(item, header=None, footer=None, **version) -> dict:
    records = {"item": item}
    if header:
        records["header"] = header
    if footer:
        records["footer"] = footer
    return {
        "name": "test",
        "versions": [{"effective_from": "2020-01-01", "records": records, **version}],
    }


def make_spec(doc: dict) -> dat.DatSpec:
    return dat.spec_from_dict(doc, Path("test_spec.json"))


def one_field_spec(field: dict, **version) -> dat.DatSpec:
    return make_spec(spec_doc([{"name": "f", **field}], **version))


def render_field(field: dict, value_item: ReceiptItem | None = None, **version) -> str:
    """The single field's text when rendering one item."""
    spec = one_field_spec(field, **version)
    rendered = dat.render_receipt(make_receipt([value_item or make_item()]), make_terminal(), spec)
    ending = spec.versions[0].line_ending
    return rendered.content[: -len(ending)].decode(spec.versions[0].encoding)


@pytest.fixture(scope="module")
def default_spec() -> dat.DatSpec:
    return dat.load_spec(DEFAULT_SPEC_PATH)


@pytest.fixture(scope="module")
def example_spec() -> dat.DatSpec:
    return dat.load_spec(EXAMPLE_SPEC_PATH)


# --- the default spec -------------------------------------------------------------------------


def test_default_spec_renders_the_seed_layout_byte_for_byte(default_spec):
    receipt = make_receipt(
        [
            make_item("8712345678906", "Volkorenbrood", "2.95", "1"),
            make_item("4006381333931", "Croissant", "1.15", "3"),
        ]
    )
    rendered = dat.render_receipt(receipt, make_terminal(), default_spec)
    assert rendered.relative_path == Path("20260301/scon10R0001.dat")
    assert rendered.content == (
        b"0010R0001       0018712345678906Volkorenbrood       000100000000295000000295010326\r\n"
        b"0010R0001       0024006381333931Croissant           000300000000115000000345010326\r\n"
    )
    version = default_spec.versions[0]
    assert version.width("item") == 82
    assert [r["amount"] for r in dat.parse_dat(rendered.content, version)] == ["2.95", "3.45"]


def test_default_spec_file_is_documented_field_by_field():
    readme = (REPO_ROOT / "dat_specs" / "README.md").read_text(encoding="utf-8")
    raw = json.loads(DEFAULT_SPEC_PATH.read_text(encoding="utf-8"))
    for field in raw["versions"][0]["records"]["item"]:
        assert f"`{field['name']}`" in readme
        assert field.get("description"), field["name"]


def test_rendering_is_deterministic(default_spec, example_spec):
    receipt = make_receipt([make_item(description="Éclair ☕"), make_item(quantity="0.455")])
    for spec in (default_spec, example_spec):
        first = dat.render_receipt(receipt, make_terminal(), spec)
        second = dat.render_receipt(copy.deepcopy(receipt), make_terminal(), spec)
        assert first.content == second.content
        assert first.relative_path == second.relative_path


def test_returns_render_with_a_sign_and_parse_back(default_spec):
    receipt = make_receipt([make_item(price="2.95", quantity="-1.5")])
    rendered = dat.render_receipt(receipt, make_terminal(), default_spec)
    line = rendered.content.decode("ascii")
    assert line[52:59] == "-001500"  # quantity
    assert line[67:76] == "-00000443"  # amount: -4.425 half-up (away from zero) is -4.43
    record = dat.parse_dat(rendered.content, default_spec.versions[0])[0]
    assert (record["quantity"], record["price"], record["amount"]) == ("-1.500", "2.95", "-4.43")


def test_identifiers_are_never_cut(default_spec):
    receipt = make_receipt(receipt_id="R" * 13)
    too_long = r"receipt R{13}.*field receipt_id.*longer than 12"
    with pytest.raises(dat.DatRenderError, match=too_long):
        dat.render_receipt(receipt, make_terminal(), default_spec)
    with pytest.raises(dat.DatRenderError, match="field department"):
        dat.render_receipt(make_receipt(), make_terminal(department="ABCDEFGH"), default_spec)


def test_more_than_999_lines_is_an_error_not_a_cut(default_spec):
    receipt = make_receipt([make_item()] * 1000)
    with pytest.raises(dat.DatRenderError, match="item line 1000.*field line_no.*does not fit"):
        dat.render_receipt(receipt, make_terminal(), default_spec)


# --- money, quantities, integers, signs -------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "expected"),
    [
        ("0.29", "000029"),
        ("4.35", "000435"),
        ("1.15", "000115"),
        ("1.005", "000101"),
        ("0.125", "000013"),
        ("0", "000000"),
        ("9999.99", "999999"),
    ],
)
def test_money_is_decimal_times_100_half_up(price, expected):
    field = {"source": "item.price", "type": "money", "length": 6}
    assert render_field(field, make_item(price=price)) == expected


@pytest.mark.parametrize("price", [0.29, 4.35, 1.15, 0.57, 1.005, 2.675])
def test_float_prices_are_read_as_written_not_as_binary(price):
    # float(0.29) * 100 == 28.999999999999996: never let a float near the arithmetic.
    assert int(price * 100) != int(Decimal(str(price)) * 100) or price in (1.005, 2.675)
    spec = one_field_spec({"source": "item.price", "type": "money", "length": 6})
    item = ReceiptItem("8712345678906", "x", price, Decimal(1))  # a float slipped in
    rendered = dat.render_receipt(make_receipt([item], total=Decimal(0)), make_terminal(), spec)
    minor = (Decimal(str(price)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    assert rendered.content == f"{int(minor):06d}\r\n".encode()


@pytest.mark.parametrize(
    ("field", "positive", "negative"),
    [
        ({"sign": "leading"}, "000123", "-00123"),
        ({"sign": "leading", "pad": " "}, "   123", "  -123"),
        ({"sign": "leading", "pad": " ", "align": "left"}, "123   ", "-123  "),
        ({"sign": "trailing"}, "00123 ", "00123-"),
        ({"sign": "trailing", "pad": " "}, "  123 ", "  123-"),
        ({"sign": "trailing", "pad": " ", "align": "left"}, "123   ", "123  -"),
        ({"sign": "none"}, "000123", None),
        ({"sign": "none", "pad": "*"}, "***123", None),
    ],
)
def test_sign_modes_render_and_parse_back(field, positive, negative):
    field = {"source": "computed.line_amount", "type": "money", "length": 6, **field}
    spec = one_field_spec(field)
    version = spec.versions[0]
    assert render_field(field, make_item(price="1.23", quantity="1")) == positive
    assert dat.parse_dat(f"{positive}\r\n".encode(), version)[0]["f"] == "1.23"
    if negative is None:
        with pytest.raises(dat.DatRenderError, match="negative.*sign: none"):
            render_field(field, make_item(price="1.23", quantity="-1"))
        assert dat.check_dat(b"-00123\r\n", version)
    else:
        assert render_field(field, make_item(price="1.23", quantity="-1")) == negative
        assert dat.parse_dat(f"{negative}\r\n".encode(), version)[0]["f"] == "-1.23"


@pytest.mark.parametrize(
    ("field", "item", "message"),
    [
        (
            {"source": "item.price", "type": "money", "length": 4},
            make_item(price="100.00"),
            r"field f: amount 100.00 \(10000 in minor units\) does not fit in 4",
        ),
        (
            {"source": "computed.line_amount", "type": "money", "length": 4},
            make_item(price="10.00", quantity="-1"),
            "does not fit in 4",
        ),
        (
            {"source": "computed.line_amount", "type": "money", "length": 4, "sign": "trailing"},
            make_item(price="10.00", quantity="1"),
            "does not fit in 4",
        ),
        (
            {"source": "item.quantity", "type": "quantity", "length": 4},
            make_item(quantity="10"),
            "quantity 10 does not fit in 4",
        ),
        (
            {"source": "item.quantity", "type": "quantity", "length": 7, "decimals": 2},
            make_item(quantity="0.455"),
            "more than 2 decimals",
        ),
        (
            {"source": "computed.line_number", "type": "integer", "length": 1},
            None,
            None,
        ),  # fits: line 1
        (
            {"source": "item.barcode", "type": "integer", "length": 12},
            make_item(barcode="8712345678906"),
            "value 8712345678906 does not fit in 12",
        ),
        (
            {"source": "item.description", "type": "integer", "length": 12},
            make_item(description="12a"),
            "'12a' is not a whole number",
        ),
    ],
)
def test_numbers_that_do_not_fit_are_errors_never_cut(field, item, message):
    if message is None:
        assert render_field(field) == "1"
        return
    with pytest.raises(dat.DatRenderError, match=message):
        render_field(field, item)


def test_quantity_with_implied_decimals():
    field = {"source": "item.quantity", "type": "quantity", "length": 7, "decimals": 3}
    assert render_field(field, make_item(quantity="0.455")) == "0000455"
    assert render_field(field, make_item(quantity="12")) == "0012000"
    field["decimals"] = 0
    assert render_field(field, make_item(quantity="3.000")) == "0000003"


# --- text and encodings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "text", "expected"),
    [
        ("ascii", "Éclair au chocolat", "Eclair au chocolat"),
        ("ascii", "Côtes du Rhône", "Cotes du Rhone"),
        ("ascii", "Straße Œuf", "Strasse OEuf"),
        ("ascii", "2 € “best”", '2 EUR "best"'),
        ("ascii", "Kaffee ☕ 🥐", "Kaffee ? ?"),
        ("ascii", "tab\there\nnew\r\x85line", "tab here new  line"),
        ("ascii", "zero\u200bwidth soft\u00adhyphen", "zerowidth softhyphen"),
        ("ascii", "e\u0301clair", "eclair"),
        ("cp1252", "Éclair 2 € “best”", "Éclair 2 € “best”"),
        ("cp1252", "e\u0301clair Ł", "éclair L"),
        ("latin-1", "2 € Œuf", "2 EUR OEuf"),
        ("iso-8859-15", "2 € Œuf", "2 € Œuf"),
        ("cp850", "Éclair ß ½", "Éclair ß ½"),
        ("cp437", "Éclair Ø", "Éclair O"),
    ],
)
def test_transliteration(encoding, text, expected):
    assert dat.transliterate(text, encoding) == expected
    field = {"source": "item.description", "type": "text", "length": 40}
    rendered = render_field(field, make_item(description=text), encoding=encoding)
    assert rendered == expected.ljust(40)


def test_without_transliteration_an_unencodable_character_is_an_error_naming_the_field():
    field = {"name": "description", "source": "item.description", "type": "text", "length": 20}
    spec = make_spec(spec_doc([field], encoding="ascii", transliterate=False))
    ok = make_receipt([make_item(description="Plain text")])
    assert dat.render_receipt(ok, make_terminal(), spec).content == b"Plain text          \r\n"
    bad = make_receipt([make_item(), make_item(description="Éclair")])
    with pytest.raises(
        dat.DatRenderError,
        match=r"receipt R0001, item line 2 .*field description: character 'É' \(U\+00C9\) "
        r"cannot be written in ascii and this spec version does not transliterate",
    ):
        dat.render_receipt(bad, make_terminal(), spec)
    cp1252 = make_spec(spec_doc([field], encoding="cp1252", transliterate=False))
    assert dat.render_receipt(bad, make_terminal(), cp1252).content.count(b"\xc9clair") == 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(st.characters(codec=None), max_size=60),
    encoding=st.sampled_from(dat.ENCODINGS),
    pad=st.sampled_from([" ", "_", "."]),
    align=st.sampled_from(["left", "right"]),
)
def test_every_line_has_the_spec_byte_width_in_every_encoding(text, encoding, pad, align):
    spec = make_spec(
        spec_doc(
            [
                {
                    "name": "a",
                    "source": "item.description",
                    "type": "text",
                    "length": 17,
                    "pad": pad,
                    "align": align,
                },
                {"name": "b", "source": "item.barcode", "type": "text", "length": 13},
            ],
            encoding=encoding,
        )
    )
    version = spec.versions[0]
    receipt = make_receipt([make_item(description=text), make_item(description=text[::-1])])
    content = dat.render_receipt(receipt, make_terminal(), spec).content
    lines = content.split(b"\r\n")
    assert lines[-1] == b""
    assert [len(line) for line in lines[:-1]] == [30, 30]
    assert dat.check_dat(content, version) == []
    parsed = dat.parse_dat(content, version)[0]["a"]
    expected = dat.transliterate(text, encoding)[:17]
    assert parsed == (expected.rstrip(pad) if align == "left" else expected.lstrip(pad))


def test_a_non_ascii_pad_keeps_byte_widths():
    field = {"source": "item.description", "type": "text", "length": 10, "pad": "·"}
    spec = one_field_spec(field, encoding="cp1252")
    content = dat.render_receipt(make_receipt(), make_terminal(), spec).content
    assert content == "Volkorenbr\r\n".encode("cp1252")
    short = make_receipt([make_item(description="Brood")])
    content = dat.render_receipt(short, make_terminal(), spec).content
    assert content == "Brood·····\r\n".encode("cp1252") and len(content) == 12
    assert dat.parse_dat(content, spec.versions[0])[0]["f"] == "Brood"


def test_text_is_cut_to_its_length():
    field = {"source": "item.description", "type": "text", "length": 8}
    assert render_field(field, make_item(description="Appeltaart punt")) == "Appeltaa"
    field["truncate"] = False
    with pytest.raises(dat.DatRenderError, match="longer than 8"):
        render_field(field, make_item(description="Appeltaart punt"))


def test_constants_and_fillers():
    fields = [
        {"name": "kind", "source": "constant", "type": "constant", "length": 3, "value": "D"},
        {
            "name": "zeros",
            "source": "constant",
            "type": "constant",
            "length": 6,
            "value": "0010",
            "align": "right",
            "pad": "0",
        },
        {"name": "filler", "source": "constant", "type": "constant", "length": 4},
        {"name": "id", "source": "receipt.receipt_id", "type": "text", "length": 6},
    ]
    spec = make_spec(spec_doc(fields))
    content = dat.render_receipt(make_receipt(), make_terminal(), spec).content
    assert content == b"D  000010    R0001 \r\n"
    record = dat.parse_dat(content, spec.versions[0])[0]
    assert record == {"record": "item", "kind": "D", "zeros": "0010", "filler": "", "id": "R0001"}
    problems = dat.check_dat(b"X  000010    R0001 \r\n", spec.versions[0])
    assert problems == ["line 1 (item), field kind (bytes 1-3): 'X  ' is not the constant 'D  '"]
    assert dat.check_dat(b"D  001010    R0001 \r\n", spec.versions[0])


# --- dates, times and timezones ---------------------------------------------------------------


def test_dates_and_times_render_in_the_terminal_timezone(default_spec, example_spec):
    late_utc = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)  # 00:30 on 2 March in Amsterdam
    receipt = make_receipt(when=late_utc)
    rendered = dat.render_receipt(receipt, make_terminal(), default_spec)
    assert rendered.relative_path == Path("20260302/scon10R0001.dat")
    assert rendered.content.decode()[76:82] == "020326"
    header = dat.parse_dat(
        dat.render_receipt(receipt, make_terminal(), example_spec).content,
        example_spec.versions[-1],
    )[0]
    assert (header["date"], header["time"]) == ("2026-03-02", "00:30")

    new_york = make_terminal(tz=ZoneInfo("America/New_York"))  # 18:30 on 1 March
    rendered = dat.render_receipt(receipt, new_york, example_spec)
    assert rendered.content.startswith(b"H202603011830")
    assert rendered.relative_path.parent == Path("2026-03-01")

    naive = make_receipt(when=datetime(2026, 3, 1, 23, 30))  # the terminal's own clock
    assert dat.render_receipt(naive, make_terminal(), default_spec).content[76:82] == b"010326"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("ddMMyy", "010326"),
        ("yyyyMMdd", "20260301"),
        ("dd.MM.yyyy", "01.03.2026"),
        ("HHmm", "0905"),
        ("HH:mm:ss", "09:05:07"),
        ("yyMMddHHmm", "2603010905"),
    ],
)
def test_date_formats(fmt, expected):
    spec = one_field_spec(
        {"source": "receipt.timestamp", "type": "date", "format": fmt, "length": len(expected)}
    )
    receipt = make_receipt(when=datetime(2026, 3, 1, 9, 5, 7, tzinfo=AMSTERDAM))
    content = dat.render_receipt(receipt, make_terminal(), spec).content
    assert content == f"{expected}\r\n".encode()
    assert dat.check_dat(content, spec.versions[0]) == []


# --- file names and folders -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "folder", "expected"),
    [
        ("scon{department}{receiptId}.dat", "YYYYMMDD", "20260301/scon10R0001.dat"),
        ("scon{department}{receipt_id}.dat", "YYYYMMDD", "20260301/scon10R0001.dat"),
        (
            "{date}_{terminalId}_{receiptId}.txt",
            "YYYY/MM/DD",
            "2026/03/01/20260301_bakery_1_R0001.txt",
        ),
        ("{terminal_id}-{receiptId}", "dat-YYYY-MM-DD", "dat-2026-03-01/bakery_1-R0001"),
    ],
)
def test_file_name_templates(template, folder, expected):
    field = {"source": "item.barcode", "type": "text", "length": 13}
    spec = one_field_spec(field, file_name=template, date_folder=folder)
    rendered = dat.render_receipt(make_receipt(), make_terminal(), spec)
    assert rendered.relative_path == Path(expected)
    assert spec.versions[0].day_from_path(Path("/out") / expected) == date(2026, 3, 1)


def test_nothing_from_a_receipt_can_steer_the_path(tmp_path, default_spec):
    receipt = make_receipt(receipt_id="../../etc/x")  # intake forbids this; the engine too
    rendered = dat.render_receipt(receipt, make_terminal(), default_spec)
    assert rendered.relative_path == Path("20260301/scon10______etc_x.dat")
    out = tmp_path / "out"
    written = dat.write_dat(out, rendered, default_spec, receipt.business_day)
    assert written.parent == (out / "20260301").resolve()
    assert sorted(p.name for p in out.rglob("*")) == ["20260301", "scon10______etc_x.dat"]


def test_write_is_atomic_checked_and_refuses_to_leave_the_folder(tmp_path, default_spec):
    receipt = make_receipt()
    rendered = dat.render_receipt(receipt, make_terminal(), default_spec)
    written = dat.write_dat(tmp_path, rendered, default_spec, receipt.business_day)
    assert written.read_bytes() == rendered.content
    assert [p.name for p in written.parent.iterdir()] == [written.name]  # no temp file left

    corrupt = dat.RenderedDat(Path("20260301/bad.dat"), b"garbage\r\n", rendered.version)
    with pytest.raises(dat.DatRenderError, match="does not re-parse.*82"):
        dat.write_dat(tmp_path, corrupt, default_spec, receipt.business_day)

    escape = dat.RenderedDat(Path("../escape.dat"), rendered.content, rendered.version)
    with pytest.raises(dat.DatRenderError, match="refusing to write outside"):
        dat.write_dat(tmp_path / "out", escape, default_spec, receipt.business_day)
    assert not (tmp_path / "escape.dat").exists()


def test_the_pipeline_writes_through_the_engine(config, default_spec):
    terminal = config.terminal("bakery_1")
    receipt = make_receipt(terminal=terminal)
    [written] = processing.emit(config, terminal, default_spec, [receipt]).written
    assert written == config.dat_dir / "20260301" / "scon10R0001.dat"
    assert written.read_bytes() == dat.render_receipt(receipt, terminal, default_spec).content


# --- versions ---------------------------------------------------------------------------------


def versioned_spec() -> dat.DatSpec:
    def version(day, width):
        return {
            "effective_from": day,
            "records": {
                "item": [
                    {
                        "name": "description",
                        "source": "item.description",
                        "type": "text",
                        "length": width,
                    }
                ]
            },
        }

    return make_spec(
        {"name": "versioned", "versions": [version("2026-03-01", 20), version("2026-01-01", 10)]}
    )


def test_the_version_in_force_on_the_business_day_is_used():
    spec = versioned_spec()
    assert [v.effective_from for v in spec.versions] == [date(2026, 1, 1), date(2026, 3, 1)]
    feb = make_receipt(when=datetime(2026, 2, 28, 23, 59, tzinfo=AMSTERDAM))
    mar = make_receipt(when=datetime(2026, 3, 1, 0, 0, tzinfo=AMSTERDAM))
    backfill_late_utc = make_receipt(when=datetime(2026, 2, 28, 23, 30, tzinfo=UTC))  # 1 March
    assert len(dat.render_receipt(feb, make_terminal(), spec).content) == 12
    assert len(dat.render_receipt(mar, make_terminal(), spec).content) == 22
    assert len(dat.render_receipt(backfill_late_utc, make_terminal(), spec).content) == 22
    with pytest.raises(dat.DatRenderError, match="no version in force on 2025-12-31"):
        dat.render_receipt(
            make_receipt(when=datetime(2025, 12, 31, 12, tzinfo=AMSTERDAM)), make_terminal(), spec
        )


def test_example_spec_switches_layout_on_its_effective_date(example_spec, tmp_path):
    old = make_receipt(when=datetime(2025, 12, 31, 18, 0, tzinfo=AMSTERDAM))
    new = make_receipt(when=datetime(2026, 1, 1, 9, 0, tzinfo=AMSTERDAM))
    old_dat = dat.render_receipt(old, make_terminal(), example_spec)
    new_dat = dat.render_receipt(new, make_terminal(), example_spec)
    assert old_dat.content.endswith(b"\r\n") and b"\r" not in new_dat.content
    assert old_dat.content.split(b"\r\n")[1].__len__() == 73
    assert new_dat.content.split(b"\n")[1].__len__() == 79
    for rendered, receipt in ((old_dat, old), (new_dat, new)):
        path = dat.write_dat(tmp_path, rendered, example_spec, receipt.business_day)
        version = example_spec.version_for(receipt.business_day)
        assert version.day_from_path(path) == receipt.business_day
        assert dat.check_dat(path.read_bytes(), version) == []
    assert dat.check_dat(old_dat.content, example_spec.versions[-1])  # wrong version: rejected


# --- spec errors ------------------------------------------------------------------------------

PRICE = {"name": "price", "source": "item.price", "type": "money", "length": 8}


@pytest.mark.parametrize(
    ("item", "version", "message"),
    [
        (
            [{**PRICE, "start": 1}, {**PRICE, "name": "p2", "start": 5}],
            {},
            "record item, field p2: starts at 5 but overlaps the previous field (expected 9)",
        ),
        (
            [{**PRICE, "start": 1}, {**PRICE, "name": "p2", "start": 12}],
            {},
            "record item, field p2: starts at 12 but leaves a gap (expected 9)",
        ),
        ([{**PRICE, "length": 0}], {}, "record item, field price: length: 0 is less than"),
        ([{**PRICE, "type": "float"}], {}, "record item, field price: type: 'float' is not one of"),
        (
            [{**PRICE, "source": "item.colour"}],
            {},
            "record item, field price: unknown source 'item.colour'",
        ),
        (
            [{**PRICE, "source": "item.description"}],
            {},
            "field price: a money field cannot take source 'item.description'",
        ),
        ([PRICE, PRICE], {}, "field price: the field name appears twice"),
        ([{**PRICE, "name": "record"}], {}, "the name 'record' is reserved"),
        ([{**PRICE, "format": "ddMMyy"}], {}, "option 'format' does not apply to a money field"),
        ([{**PRICE, "align": "left"}], {}, "a left-aligned number cannot be padded with '0'"),
        ([{**PRICE, "pad": "9"}], {}, "pad '9' would be read as part of the number"),
        ([{**PRICE, "pad": "é"}], {}, "pad 'é' is not a printable character of ascii"),
        ([{**PRICE, "sign": "trailing", "length": 1}], {}, "a trailing sign needs a length"),
        (
            [
                {
                    "name": "d",
                    "source": "receipt.timestamp",
                    "type": "date",
                    "format": "DDMMYY",
                    "length": 6,
                }
            ],
            {},
            "field d: format 'DDMMYY': 'DY' is not a token",
        ),
        (
            [{"name": "d", "source": "receipt.timestamp", "type": "date", "length": 6}],
            {},
            "field d: a date or time field needs a format",
        ),
        (
            [
                {
                    "name": "d",
                    "source": "receipt.timestamp",
                    "type": "date",
                    "format": "yyyyMMdd",
                    "length": 6,
                }
            ],
            {},
            "format 'yyyyMMdd' is 8 characters wide, the field only 6",
        ),
        (
            [{"name": "c", "source": "constant", "type": "constant", "length": 2, "value": "ABC"}],
            {},
            "field c: value 'ABC' is longer than the field (2)",
        ),
        (
            [{"name": "c", "source": "constant", "type": "text", "length": 2}],
            {},
            'needs both source "constant" and type "constant"',
        ),
        (
            [{"name": "c", "source": "constant", "type": "constant", "length": 2, "value": "€"}],
            {},
            "'€' is not a printable character of ascii",
        ),
        ([PRICE], {"encoding": "utf-8"}, "versions[0]: encoding: 'utf-8' is not one of"),
        ([PRICE], {"transliterate": "yes"}, "versions[0]: transliterate: 'yes' is not of type"),
        ([PRICE], {"file_name": "x{receiptId}{colour}.dat"}, "unknown placeholder {colour}"),
        ([PRICE], {"file_name": "../{receiptId}.dat"}, "a file name, never a path"),
        ([PRICE], {"file_name": "scon{department}.dat"}, "must contain {receiptId}"),
        ([PRICE], {"date_folder": "../YYYYMMDD"}, "only YYYY, MM, DD"),
        ([PRICE], {"date_folder": "YYYYMM"}, "must contain YYYY, MM and DD"),
        ([PRICE], {"effective_from": "2026-13-01"}, "effective_from '2026-13-01' is not a date"),
    ],
)
def test_bad_specs_are_rejected_naming_file_record_and_field(item, version, message):
    with pytest.raises(dat.SpecError) as caught:
        make_spec(spec_doc(item, **version))
    assert any(message in problem for problem in caught.value.problems), caught.value.problems
    assert all(problem.startswith("test_spec.json: ") for problem in caught.value.problems)


def test_item_sources_are_rejected_in_header_and_footer():
    header = [{"name": "line", "source": "computed.line_number", "type": "integer", "length": 3}]
    footer = [{"name": "desc", "source": "item.description", "type": "text", "length": 3}]
    with pytest.raises(dat.SpecError) as caught:
        make_spec(spec_doc([PRICE], header=header, footer=footer))
    assert caught.value.problems == [
        "test_spec.json: versions[0] (from 2020-01-01), record header, field line: source "
        "'computed.line_number' exists only on item lines, not in the header record",
        "test_spec.json: versions[0] (from 2020-01-01), record footer, field desc: source "
        "'item.description' exists only on item lines, not in the footer record",
    ]


def test_every_problem_is_reported_at_once(tmp_path):
    doc = spec_doc([{**PRICE, "start": 2}, {**PRICE, "pad": "9"}])
    doc["versions"].append(copy.deepcopy(doc["versions"][0]))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(dat.SpecError) as caught:
        dat.load_spec(path)
    # Per version: a gap, a duplicate name, a numeric pad; then the shared date.
    assert len(caught.value.problems) == 7
    assert all(str(path) in problem for problem in caught.value.problems)


def test_top_level_schema_errors():
    with pytest.raises(dat.SpecError) as caught:
        make_spec({"versions": []})
    assert caught.value.problems == [
        "test_spec.json: 'name' is a required property",
        "test_spec.json: versions: [] should be non-empty",
    ]


def test_unreadable_spec_files(tmp_path):
    with pytest.raises(dat.SpecError, match="no such spec file"):
        dat.load_spec(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(dat.SpecError, match="not valid JSON"):
        dat.load_spec(tmp_path / "broken.json")


def test_shipped_specs_are_valid(default_spec, example_spec):
    assert default_spec.name == "scon-default"
    assert [kind for kind, _ in example_spec.versions[0].records()] == ["header", "item", "footer"]


# --- the byte-for-byte check ------------------------------------------------------------------


@pytest.fixture
def good(default_spec) -> bytes:
    receipt = make_receipt([make_item(), make_item("4006381333931", "Croissant", "1.15", "3")])
    return dat.render_receipt(receipt, make_terminal(), default_spec).content


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda c: c.replace(b"\r\n", b"\n"), "does not end with the spec's line ending"),
        (lambda c: c[:-2], "does not end with the spec's line ending"),
        (lambda c: c.replace(b"Croissant ", b"Croissant"), "line 2 (item): 81 bytes, expected 82"),
        (lambda c: c.replace(b"000000345", b"000000 345"[1:].rjust(9)), "field amount"),
        (lambda c: c.replace(b"00000115", b"   00115"), "line 2 (item), field price (bytes 60-67)"),
        (lambda c: c.replace(b"0003000", b"-000000"), "not in the form the engine writes"),
        (
            lambda c: c.replace(b"Croissant", b"Crois\xe9ant"),
            "line 2 (item), field description: byte 38 (0xE9) is not valid ascii",
        ),
        (lambda c: c.replace(b"Croissant", b"Crois\rant"), "stray line-break byte"),
        (lambda c: c.replace(b"Croissant", b"Crois\x07ant"), "field description"),
        (lambda c: c.replace(b"010326\r\n0010", b"280226\r\n0010"), None),  # a valid date
        (lambda c: c.replace(b"010326\r\n0010", b"320226\r\n0010"), "does not match ddMMyy"),
        (
            lambda c: c.replace(b"R0001       002", b"R0001       007"),
            "line 2 (item), field line_no: 7 but the file's item line is 2",
        ),
        (lambda c: c.replace(b"0010R0001       002", b"0010R0001       0a2"), "is not a number"),
    ],
)
def test_check_reports_line_and_field(good, default_spec, mutate, problem):
    version = default_spec.versions[0]
    assert dat.check_dat(good, version) == []
    bad = mutate(good)
    problems = dat.check_dat(bad, version)
    if problem is None:
        assert problems == []
        return
    assert any(problem in p for p in problems), problems
    with pytest.raises(dat.DatFormatError):
        dat.parse_dat(bad, version)


def test_check_needs_header_and_footer_where_the_layout_has_them(example_spec):
    version = example_spec.versions[-1]
    content = dat.render_receipt(
        make_receipt(when=datetime(2026, 3, 1, tzinfo=AMSTERDAM)), make_terminal(), example_spec
    ).content
    assert dat.check_dat(content, version) == []
    header, item, footer, end = content.split(b"\n")
    assert dat.check_dat(b"\n".join([item, footer, end]), version)[0] == (
        "file has 2 line(s); this layout needs a header, at least one item line and a footer"
    )
    assert dat.check_dat(b"\n".join([header, item, item, footer, end]), version) == [
        "line 1 (header), field item_count: 1 but the file's item count is 2",
        "line 3 (item), field line: 1 but the file's item line is 2",
        "line 4 (footer), field item_count: 1 but the file's item count is 2",
    ]


# --- property-based round trips ---------------------------------------------------------------

MONEY_EXAMPLES = [Decimal(p) for p in ("0.29", "4.35", "1.15", "0.57", "2.675", "1.005")]
prices = st.one_of(
    st.sampled_from(MONEY_EXAMPLES),
    st.integers(0, 999_999).map(lambda c: Decimal(c).scaleb(-2)),
    st.decimals(min_value=0, max_value=9999, places=3),
)
# Bounded so that every line amount fits both example layouts (overflow has its own test).
quantities = st.one_of(
    st.integers(1, 99).map(Decimal),  # pieces
    st.integers(1, 9_999).map(lambda g: Decimal(g).scaleb(-3)),  # kilograms to the gram
    st.integers(-99_999, -1).map(lambda g: Decimal(g).scaleb(-3)),  # returns
)
barcodes = st.sampled_from(
    ["8712345678906", "4006381333931", "96385074", "036000291452", "0712345678911"]
)
descriptions = st.one_of(
    st.text(max_size=45),
    st.sampled_from(["Éclair au chocolat", "Côtes du Rhône", "Straße", "Kaffee ☕", "x" * 80, ""]),
)
items = st.builds(ReceiptItem, barcodes, descriptions, prices, quantities)
moments = st.datetimes(
    min_value=datetime(2025, 1, 2),
    max_value=datetime(2027, 12, 31),
    timezones=st.sampled_from([UTC, AMSTERDAM, ZoneInfo("Asia/Tokyo")]),
)
receipt_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,11}", fullmatch=True)


@st.composite
def receipts(draw) -> Receipt:
    lines = tuple(draw(st.lists(items, min_size=1, max_size=8)))
    return Receipt(
        receipt_id=draw(receipt_ids),
        terminal_id="butcher_1",
        department_code="20",
        items=lines,
        total=sum((i.amount for i in lines), Decimal("0.00")),
        timestamp=draw(moments),
    )


BUTCHER = make_terminal("butcher_1", "20", "Slagerij Van Dijk")


def _half_up(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(receipt=receipts())
def test_round_trip_default_spec(receipt):
    spec = dat.load_spec(DEFAULT_SPEC_PATH)
    rendered = dat.render_receipt(receipt, BUTCHER, spec)
    version = rendered.version
    local = receipt.timestamp.astimezone(AMSTERDAM)
    assert rendered.relative_path == Path(local.strftime("%Y%m%d")) / (
        f"scon20{receipt.receipt_id}.dat"
    )
    lines = rendered.content.split(b"\r\n")
    assert lines[-1] == b"" and all(len(line) == 82 for line in lines[:-1])
    records = dat.parse_dat(rendered.content, version)
    assert len(records) == len(receipt.items)
    for n, (record, item) in enumerate(zip(records, receipt.items, strict=True), start=1):
        assert record["department"] == "20"
        assert record["receipt_id"] == receipt.receipt_id
        assert record["line_no"] == n
        assert record["barcode"].rjust(13, "0") == item.barcode.rjust(13, "0")
        assert record["description"] == dat.transliterate(item.description, "ascii")[:20].rstrip()
        assert Decimal(record["quantity"]) == item.quantity
        assert Decimal(record["price"]) == _half_up(item.price)
        assert Decimal(record["amount"]) == item.amount
        assert record["date"] == local.date().isoformat()


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(receipt=receipts())
def test_round_trip_example_spec_with_header_and_footer(receipt):
    spec = dat.load_spec(EXAMPLE_SPEC_PATH)
    rendered = dat.render_receipt(receipt, BUTCHER, spec)
    version = rendered.version
    local = receipt.timestamp.astimezone(AMSTERDAM)
    assert version is spec.version_for(local.date())
    newline = version.line_ending
    lines = rendered.content.split(newline)
    widths = (
        [version.width("header")]
        + [version.width("item")] * len(receipt.items)
        + [version.width("footer")]
    )
    assert [len(line) for line in lines[:-1]] == widths and lines[-1] == b""
    header, *lines_, footer = dat.parse_dat(rendered.content, version)
    assert header["date"] == local.date().isoformat()
    assert header.get("time", local.strftime("%H:%M")) == local.strftime("%H:%M")
    assert header["receipt_id"] == receipt.receipt_id
    assert header["item_count"] == footer["item_count"] == len(receipt.items)
    width = 30 if local.year >= 2026 else 24
    for n, (record, item) in enumerate(zip(lines_, receipt.items, strict=True), start=1):
        assert record["line"] == n
        assert (
            record["description"] == dat.transliterate(item.description, "cp1252")[:width].rstrip()
        )
        assert Decimal(record["quantity"]) == item.quantity
        assert Decimal(record["unit_price"]) == _half_up(item.price)
        assert Decimal(record["amount"]) == item.amount
        assert record["barcode"] == item.barcode
    assert Decimal(footer["total"]) == receipt.lines_total
    assert footer["tenant"] == "Slagerij Van Dijk"


@settings(max_examples=100, deadline=None)
@given(
    receipt=receipts(),
    price=st.decimals(min_value=Decimal("1000000"), max_value=Decimal("1e8"), places=2),
)
def test_overflow_raises_never_cuts(receipt, price):
    spec = dat.load_spec(DEFAULT_SPEC_PATH)
    big = ReceiptItem("8712345678906", "Big", price, Decimal(1))
    receipt = Receipt(
        receipt.receipt_id,
        "butcher_1",
        "20",
        (*receipt.items, big),
        receipt.total + price,
        receipt.timestamp,
    )
    with pytest.raises(
        dat.DatRenderError,
        match=rf"item line {len(receipt.items)} .*field price: .*does not fit in 8",
    ):
        dat.render_receipt(receipt, BUTCHER, spec)


@settings(max_examples=100, deadline=None)
@given(price=st.floats(min_value=0, max_value=9999.99, allow_nan=False).map(lambda f: round(f, 2)))
def test_float_and_decimal_prices_render_alike(price):
    assume(price == float(repr(price)))
    spec = one_field_spec({"source": "item.price", "type": "money", "length": 8})
    as_float = ReceiptItem("8712345678906", "x", price, Decimal(1))
    as_decimal = ReceiptItem("8712345678906", "x", Decimal(repr(price)), Decimal(1))
    assert (
        dat.render_receipt(make_receipt([as_float], total=0), make_terminal(), spec).content
        == dat.render_receipt(make_receipt([as_decimal]), make_terminal(), spec).content
    )


def test_business_day_and_version_agree_across_midnight(default_spec):
    # The folder, the date field and the version all use the terminal's local day.
    spec = versioned_spec()
    moment = datetime(2026, 2, 28, 23, 30, tzinfo=UTC)
    for offset in range(0, 120, 15):
        receipt = make_receipt(when=moment + timedelta(minutes=offset))
        rendered = dat.render_receipt(receipt, make_terminal(), spec)
        day = (moment + timedelta(minutes=offset)).astimezone(AMSTERDAM).date()
        assert rendered.version is spec.version_for(day)
        assert rendered.relative_path.parent == Path(day.strftime("%Y%m%d"))
