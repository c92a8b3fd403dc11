"""Intake: every vendor format to the canonical receipt, and every bad file rejected by name."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posfed_pipeline.core.config import ConfigError, config_from_dict
from posfed_pipeline.core.intake.parsing import IntakeError, parse_receipt, read_receipt_file
from posfed_pipeline.core.intake.validation import validate_batch
from posfed_pipeline.core.model.receipt import ReceiptItem
from posfed_pipeline_tests.support.receipts import receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.stores import SHIPPED_MAPPINGS, store_config_dict

EXAMPLES = REPO_ROOT / "examples" / "vendors"


def vendor_config(tmp_path: Path, mappings: dict | None = None, **terminal_settings):
    """A store whose wine_2 reads Kassamaat JSON and flowers_2 CaissePro CSV (as shipped)."""
    raw = store_config_dict(
        tmp_path / "posfed",
        mappings=SHIPPED_MAPPINGS if mappings is None else mappings,
        terminals=[
            {"id": "bakery_1", "department": "10", **terminal_settings},
            {"id": "wine_2", "department": "80", "format": "kassamaat-json"},
            {"id": "flowers_2", "department": "90", "format": "caissepro-csv"},
        ],
    )
    return config_from_dict(raw, base_dir=tmp_path)


def rejection(data: bytes, terminal) -> set[tuple[str, str, str]]:
    with pytest.raises(IntakeError) as caught:
        parse_receipt(data, terminal)
    return {(p.field, p.value, p.rule) for p in caught.value.problems}


def rules_of(data: bytes, terminal) -> dict[str, str]:
    return {field: rule for field, _, rule in rejection(data, terminal)}


def encode(doc: dict) -> bytes:
    return json.dumps(doc).encode()


# --- the canonical format ---------------------------------------------------------------------


def test_canonical_receipt_is_read_with_exact_money(config):
    terminal = config.terminal("bakery_1")
    data = (
        b'{"receiptId": "R1", "terminalId": "bakery_1", "departmentCode": "10", '
        b'"items": [{"barcode": "8712345678906", "description": "Brood", "price": 0.1, '
        b'"quantity": 3}], "total": 0.30, "timestamp": "2026-11-20T10:15:00+01:00"}'
    )
    receipt = parse_receipt(data, terminal, source_file="R1.json")
    assert receipt.items == (ReceiptItem("8712345678906", "Brood", Decimal("0.1"), Decimal(3)),)
    assert receipt.total == Decimal("0.30") and isinstance(receipt.total, Decimal)
    assert receipt.timestamp.utcoffset() == timedelta(hours=1)
    assert receipt.source_file == "R1.json"


def test_utf8_with_byte_order_mark_is_accepted(config):
    terminal = config.terminal("bakery_1")
    doc = receipt_doc()
    doc["items"][0]["description"] = "Crème brûlée"
    receipt = parse_receipt(
        b"\xef\xbb\xbf" + json.dumps(doc, ensure_ascii=False).encode(), terminal
    )
    assert receipt.items[0].description == "Crème brûlée"


def test_cp1252_is_rejected_unless_the_terminal_allows_it(tmp_path):
    doc = receipt_doc()
    doc["items"][0]["description"] = "Crème brûlée"
    data = json.dumps(doc, ensure_ascii=False).encode("cp1252")

    strict = vendor_config(tmp_path).terminal("bakery_1")
    assert rules_of(data, strict) == {
        "file": "not UTF-8 text (this terminal has no encoding_fallback configured)"
    }
    lenient = vendor_config(tmp_path, encoding_fallback="cp1252").terminal("bakery_1")
    assert parse_receipt(data, lenient).items[0].description == "Crème brûlée"


def test_naive_timestamp_is_the_terminals_local_time(config):
    terminal = config.terminal("bakery_1")
    receipt = parse_receipt(encode(receipt_doc(timestamp="2026-07-01T23:30:00")), terminal)
    assert receipt.timestamp.isoformat() == "2026-07-01T23:30:00+02:00"
    assert str(receipt.business_day) == "2026-07-01"


def test_aware_timestamp_is_converted_to_the_terminals_zone(config):
    terminal = config.terminal("bakery_1")
    receipt = parse_receipt(encode(receipt_doc(timestamp="2026-07-01T22:30:00Z")), terminal)
    assert receipt.timestamp.isoformat() == "2026-07-02T00:30:00+02:00"
    assert str(receipt.business_day) == "2026-07-02"


@pytest.mark.parametrize(
    ("receipt_id", "rule"),
    [
        ("../../etc/passwd", "nothing path-like"),
        ("a/b", "nothing path-like"),
        ("a\\b", "nothing path-like"),
        ("..", "nothing path-like"),
        ("R 1", "nothing path-like"),
        ("-R1", "nothing path-like"),
        ("R" * 65, "nothing path-like"),
        ("R1\n", "nothing path-like"),
        ("R\x001", "must not contain NUL"),
        ("", "must not be empty"),
    ],
)
def test_receipt_ids_that_could_act_as_a_path_are_rejected(config, receipt_id, rule):
    terminal = config.terminal("bakery_1")
    problems = rejection(encode(receipt_doc(receipt_id)), terminal)
    assert [p for p in problems if p[0] == "receiptId" and rule in p[2]], problems


def test_receipt_id_of_letters_digits_dash_underscore_is_accepted(config):
    terminal = config.terminal("bakery_1")
    assert parse_receipt(encode(receipt_doc("KM-2026_0001")), terminal).receipt_id == "KM-2026_0001"


def test_receipt_claiming_another_terminal_is_rejected(config):
    problems = rejection(encode(receipt_doc(terminal_id="butcher_1")), config.terminal("bakery_1"))
    assert problems == {("terminalId", "butcher_1", "file arrived from terminal bakery_1")}


def test_receipt_claiming_another_department_is_rejected(config):
    problems = rejection(encode(receipt_doc(department="20")), config.terminal("bakery_1"))
    assert problems == {("departmentCode", "20", "terminal bakery_1 belongs to department 10")}


def test_every_problem_of_a_file_is_reported_at_once(config):
    doc = receipt_doc(timestamp="yesterday")
    del doc["total"]
    doc["items"][0]["price"] = "two euros"
    doc["items"][1] = "croissant"
    assert rules_of(encode(doc), config.terminal("bakery_1")) == {
        "total": "is required",
        "timestamp": "is not a date-time in ISO 8601",
        "items[1].price": "must be a number",
        "items[2]": "must be an object",
    }


def test_numeric_barcode_is_rejected_because_leading_zeros_matter(config):
    doc = receipt_doc()
    doc["items"][0]["barcode"] = 4006381333931
    assert rules_of(encode(doc), config.terminal("bakery_1")) == {
        "items[1].barcode": "must be a string (leading zeros matter)"
    }


@pytest.mark.parametrize(
    ("literal", "rule"),
    [
        ("NaN", "must be a finite number"),
        ("Infinity", "must be a finite number"),
        ("-Infinity", "must be a finite number"),
        ("1e999999", "is implausibly large (10 million or more)"),
        ("9" * 5000, "is implausibly large (10 million or more)"),
        ('"12,50"', "must be a number"),
        ("true", "must be a number, not true/false"),
        ("null", "must be a number, not null"),
        ("[1]", "must be a number, not list"),
    ],
)
def test_unusable_numbers_are_rejected_by_name(config, literal, rule):
    data = encode(receipt_doc(total="TOTAL")).replace(b'"TOTAL"', literal.encode())
    assert rules_of(data, config.terminal("bakery_1")) == {"total": rule}


def test_timestamp_outside_any_plausible_year_is_rejected(config):
    data = encode(receipt_doc(timestamp="0001-01-01T00:00:00+05:00"))
    assert rules_of(data, config.terminal("bakery_1")) == {
        "timestamp": "must be in the years 2000-2099"
    }


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        (b"", "file is empty"),
        (b"  \n", "file is empty"),
        (b'{"receiptId": "R1", "items": [', "not valid JSON"),
        (b"receipt R1, 2 items", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"[" * 100_000, "JSON nested too deeply"),
    ],
)
def test_empty_truncated_and_non_json_files_are_rejected(config, data, rule):
    (problem,) = rejection(data, config.terminal("bakery_1"))
    assert problem[0] == "file" and rule in problem[2]


def test_oversized_file_is_rejected_before_reading(config, tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 1_000_001)
    with pytest.raises(IntakeError) as caught:
        read_receipt_file(path, config.terminal("bakery_1"))
    assert caught.value.problems[0].rule == "larger than 1000000 bytes"


# --- vendor mappings --------------------------------------------------------------------------


def test_json_vendor_mapping_yields_the_canonical_receipt(tmp_path):
    terminal = vendor_config(tmp_path).terminal("wine_2")
    receipt = read_receipt_file(EXAMPLES / "kassamaat.json", terminal)
    assert (receipt.receipt_id, receipt.terminal_id, receipt.department_code) == (
        "KM-2026-000481",
        "wine_2",
        "80",
    )
    assert receipt.timestamp.isoformat() == "2026-11-20T14:05:00+01:00"
    assert receipt.total == Decimal("63.84")
    assert receipt.items == (
        ReceiptItem("8712345600013", "Rioja Crianza", Decimal("12.50"), Decimal(2)),
        ReceiptItem("8712345600020", "Prosecco", Decimal("8.99"), Decimal(1)),
        ReceiptItem("8712345600037", "Côtes du Rhône", Decimal("9.95"), Decimal(3)),
    )
    assert validate_batch([receipt], max_age=timedelta(days=36500)).invalid == []


def test_csv_vendor_mapping_yields_the_canonical_receipt(tmp_path):
    terminal = vendor_config(tmp_path).terminal("flowers_2")
    receipt = read_receipt_file(EXAMPLES / "caissepro.csv", terminal)  # UTF-8 with BOM
    assert (receipt.receipt_id, receipt.terminal_id, receipt.department_code) == (
        "T000481",
        "flowers_2",
        "90",
    )
    assert receipt.timestamp.isoformat() == "2026-11-20T16:42:00+01:00"
    assert receipt.total == Decimal("32.88")
    assert receipt.items == (
        ReceiptItem("8712345600044", "Tulpen bos", Decimal("4.99"), Decimal(2)),
        # An empty QTE cell takes the mapping's default.
        ReceiptItem("8712345600051", "Rozen 10 st.", Decimal("9.95"), Decimal(1)),
        ReceiptItem(
            "2201234012953", "Pivoines rosées (bouquet pesé)", Decimal("12.95"), Decimal(1)
        ),
    )
    assert validate_batch([receipt], max_age=timedelta(days=36500)).invalid == []


def test_csv_mapping_reads_windows_1252_when_it_configures_the_fallback(tmp_path):
    terminal = vendor_config(tmp_path).terminal("flowers_2")
    receipt = read_receipt_file(EXAMPLES / "caissepro-cp1252.csv", terminal)
    assert receipt.items[2].description == "Pivoines rosées (bouquet pesé)"

    mappings = json.loads(json.dumps(SHIPPED_MAPPINGS))
    del mappings["caissepro-csv"]["encoding_fallback"]
    strict = vendor_config(tmp_path, mappings).terminal("flowers_2")
    rules = rules_of((EXAMPLES / "caissepro-cp1252.csv").read_bytes(), strict)
    assert rules == {"file": "not UTF-8 text (this terminal has no encoding_fallback configured)"}


CSV_HEADER = "TICKET;CAISSE;RAYON;DATE_HEURE;EAN;LIBELLE;PRIX_UNIT;QTE;TOTAL_TICKET\n"


def test_csv_receipt_fields_must_agree_on_every_row(tmp_path):
    terminal = vendor_config(tmp_path).terminal("flowers_2")
    data = (
        CSV_HEADER
        + "T1;flowers_2;90;20/11/2026 16:42;8712345600044;Tulpen;4,99;1;9,94\n"
        + "T2;flowers_2;90;20/11/2026 16:42;8712345600051;Rozen;4,95;1;9,94\n"
    ).encode()
    assert rejection(data, terminal) == {
        ("receiptId (column TICKET)", "T1 / T2", "must be the same on every row of a receipt")
    }


def test_csv_problems_name_the_vendors_line_and_column(tmp_path):
    terminal = vendor_config(tmp_path).terminal("flowers_2")
    data = (
        CSV_HEADER
        + "T1;flowers_2;90;20/11/2026 16:42;8712345600044;Tulpen;4.99;1;4,99\n"
        + "T1;flowers_2;90;20/11/2026 16:42;;Rozen;4,95;x;4,99\n"
    ).encode()
    assert rules_of(data, terminal) == {
        "items[1].price (line 2, column PRIX_UNIT)": "must use ',' as the decimal separator",
        "items[2].barcode (line 3, column EAN)": "is required",
        "items[2].quantity (line 3, column QTE)": "must be a number",
    }


def test_csv_missing_columns_and_ragged_rows_are_rejected(tmp_path):
    terminal = vendor_config(tmp_path).terminal("flowers_2")
    assert rejection(b"TICKET;EAN\nT1;8712345600044\n", terminal) >= {
        ("header", "TOTAL_TICKET", "column missing from the CSV header (line 1)")
    }
    ragged = (CSV_HEADER + "T1;flowers_2;90\n").encode()
    assert rejection(ragged, terminal) == {("line 2", "3 cells", "the header has 9 columns")}
    assert rules_of(CSV_HEADER.encode(), terminal) == {
        "items": "a CSV receipt needs one row per item"
    }


def test_mapped_receipt_claiming_another_terminal_is_rejected(tmp_path):
    terminal = vendor_config(tmp_path).terminal("wine_2")
    doc = json.loads((EXAMPLES / "kassamaat.json").read_text())
    doc["bon"]["kassa"] = "wine_1"
    doc["bon"]["afdeling"] = "10"
    assert rejection(encode(doc), terminal) == {
        ("terminalId (bon.kassa)", "wine_1", "file arrived from terminal wine_2"),
        ("departmentCode (bon.afdeling)", "10", "terminal wine_2 belongs to department 80"),
    }


def test_mapped_json_problems_name_the_vendors_path(tmp_path):
    terminal = vendor_config(tmp_path).terminal("wine_2")
    doc = json.loads((EXAMPLES / "kassamaat.json").read_text())
    del doc["regels"][1]["artikel"]["ean"]
    doc["bon"]["tijdstip"] = "20-11-2026"
    assert rules_of(encode(doc), terminal) == {
        "items[2].barcode (regels[1].artikel.ean)": "is required",
        "timestamp (bon.tijdstip)": "is not a date-time in the format %Y-%m-%d %H:%M:%S",
    }


def test_mapping_without_terminal_fields_takes_the_terminals_own(tmp_path):
    mappings = json.loads(json.dumps(SHIPPED_MAPPINGS))
    del mappings["kassamaat-json"]["fields"]["terminalId"]
    del mappings["kassamaat-json"]["fields"]["departmentCode"]
    terminal = vendor_config(tmp_path, mappings).terminal("wine_2")
    receipt = read_receipt_file(EXAMPLES / "kassamaat.json", terminal)
    assert (receipt.terminal_id, receipt.department_code) == ("wine_2", "80")


def test_json_paths_may_index_into_lists(tmp_path):
    mappings = {
        "listed": {
            "kind": "json",
            "fields": {
                "receiptId": "[0].id",
                "timestamp": "[0].at",
                "total": "[0].sum",
                "items": "[1]",
                "barcode": "codes[0]",
                "description": "name",
                "price": "price",
            },
            "defaults": {"quantity": "1"},
        }
    }
    raw = store_config_dict(
        tmp_path / "posfed",
        mappings=mappings,
        terminals=[{"id": "bakery_1", "department": "10", "format": "listed"}],
    )
    terminal = config_from_dict(raw, base_dir=tmp_path).terminal("bakery_1")
    doc = [
        {"id": "L1", "at": "2026-11-20T10:00:00", "sum": "2.95"},
        [{"codes": ["8712345678906"], "name": "Brood", "price": "2.95"}],
    ]
    receipt = parse_receipt(encode(doc), terminal)
    assert receipt.items == (ReceiptItem("8712345678906", "Brood", Decimal("2.95"), Decimal(1)),)


def shipped(name: str, **changes) -> dict:
    mapping = json.loads(json.dumps(SHIPPED_MAPPINGS[name]))
    mapping.update(changes)
    return mapping


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (shipped("kassamaat-json", kind="xml"), "kind must be one of json, csv"),
        (
            shipped(
                "kassamaat-json",
                fields={**SHIPPED_MAPPINGS["kassamaat-json"]["fields"], "tip": "x"},
            ),
            "fields.tip is not a canonical field",
        ),
        (
            shipped(
                "kassamaat-json",
                fields={**SHIPPED_MAPPINGS["kassamaat-json"]["fields"], "total": "a..b"},
            ),
            "fields.total: path 'a..b' is malformed",
        ),
        (
            shipped(
                "kassamaat-json",
                fields={
                    "total": "a",
                    "barcode": "b",
                    "price": "c",
                    "description": "d",
                    "quantity": "e",
                },
            ),
            "no source for receiptId, timestamp, items",
        ),
        (
            shipped("caissepro-csv", defaults={"total": "0"}),
            "defaults.total: only description, quantity may have a default",
        ),
        (shipped("caissepro-csv", encoding_fallback="klingon"), "not a known encoding"),
        (shipped("caissepro-csv", delimiter=";;"), "delimiter must be one character"),
        (shipped("caissepro-csv", separator=";"), "unknown setting(s) separator"),
        (shipped("caissepro-csv", decimal_separator="'"), "decimal_separator must be"),
    ],
)
def test_bad_mappings_are_refused_at_config_load(tmp_path, mapping, message):
    with pytest.raises(ConfigError) as caught:
        vendor_config(tmp_path, {"vendor": mapping})
    assert message in str(caught.value) and "[mappings.vendor]" in str(caught.value)


def test_bad_variable_measure_scheme_is_refused(tmp_path):
    raw = store_config_dict(tmp_path / "posfed")
    raw["store"]["variable_measure"] = {"price_prefixes": ["19"], "price_digits": 5}
    with pytest.raises(ConfigError, match="price_prefixes must list in-store prefixes"):
        config_from_dict(raw, base_dir=tmp_path)
    raw["store"]["variable_measure"] = {"price_digits": 6}
    with pytest.raises(ConfigError, match="price_digits must be 4 or 5"):
        config_from_dict(raw, base_dir=tmp_path)


def test_terminal_format_must_name_a_mapping(tmp_path):
    raw = store_config_dict(
        tmp_path / "posfed", terminals=[{"id": "bakery_1", "department": "10", "format": "xml"}]
    )
    with pytest.raises(ConfigError, match="format 'xml' is neither built in nor a"):
        config_from_dict(raw, base_dir=tmp_path)


# --- robustness: any bytes give a receipt or an IntakeError, nothing else -----------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
field_values = json_values | st.sampled_from(
    ["8712345678906", "2.95", "1e999999", "1e999999999", "9e-999999999", "NaN"]
    + ["2026-11-20T10:00:00", "bakery_1", "10", "\ud800"]
)


def survives(data: bytes, terminal) -> None:
    """Intake either yields a receipt validation can judge, or reasons that can be written."""
    try:
        receipt = parse_receipt(data, terminal)
    except IntakeError as exc:
        assert exc.problems
        json.dumps([p.as_dict() for p in exc.problems], ensure_ascii=False).encode("utf-8")
        return
    report = validate_batch([receipt], now=datetime(2026, 11, 20, tzinfo=UTC))
    for _, problems in report.invalid:
        json.dumps([p.as_dict() for p in problems], ensure_ascii=False).encode("utf-8")


fuzz = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(data=st.binary(max_size=300))
def test_any_bytes_are_a_receipt_or_an_intake_error(tmp_path_factory, data):
    config = vendor_config(tmp_path_factory.mktemp("fuzz"))
    for terminal in config.terminals:
        survives(data, terminal)


@pytest.mark.slow
@fuzz
@given(doc=json_values)
def test_any_json_is_a_receipt_or_an_intake_error(tmp_path_factory, doc):
    config = vendor_config(tmp_path_factory.mktemp("fuzz"))
    for terminal in config.terminals:
        survives(json.dumps(doc).encode(), terminal)


@pytest.mark.slow
@fuzz
@given(
    replacements=st.dictionaries(
        st.sampled_from(["receiptId", "terminalId", "departmentCode", "total", "timestamp"]),
        field_values,
    ),
    item_replacements=st.dictionaries(
        st.sampled_from(["barcode", "description", "price", "quantity"]), field_values
    ),
)
def test_receipts_with_wrong_types_are_rejected_not_crashed(
    tmp_path_factory, replacements, item_replacements
):
    terminal = vendor_config(tmp_path_factory.mktemp("fuzz")).terminal("bakery_1")
    doc = receipt_doc(timestamp="2026-11-20T10:00:00+01:00")
    doc.update(replacements)
    doc["items"][0].update(item_replacements)
    survives(json.dumps(doc).encode(), terminal)


@fuzz
@given(
    cells=st.lists(
        st.lists(st.text(alphabet=';,"\n\r x1.9é\x00', max_size=12), min_size=1, max_size=10),
        max_size=4,
    )
)
def test_any_csv_is_a_receipt_or_an_intake_error(tmp_path_factory, cells):
    terminal = vendor_config(tmp_path_factory.mktemp("fuzz")).terminal("flowers_2")
    body = "\n".join(";".join(row) for row in cells)
    survives((CSV_HEADER + body).encode("utf-8"), terminal)


# --- adversarial inputs: each is rejected (or judged) quickly, none crashes --------------------


def _adversarial_inputs() -> dict[str, bytes]:
    doc = json.dumps(receipt_doc(timestamp="2026-11-20T10:00:00+01:00"))
    many_items = receipt_doc(timestamp="2026-11-20T10:00:00+01:00")
    many_items["items"] = many_items["items"] * 600
    return {
        "deep nesting": b"[" * 200_000 + b"]" * 200_000,
        "deep object nesting": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "huge exponent price": doc.replace('"2.95"', "1e999999999").encode(),
        "huge exponent quantity": doc.replace('"quantity": 1', '"quantity": 9e-999999999').encode(),
        "900k-digit number": doc.replace('"2.95"', "9" * 900_000).encode(),
        "900 KB description": doc.replace("Volkorenbrood", "x" * 900_000).encode(),
        "1200 items": json.dumps(many_items).encode(),
        "NUL bytes": b"\x00" * 1000,
        "lone surrogates": doc.replace("Croissant", "\\ud800\\udfff\\udc00").encode(),
        "BOM then garbage": b"\xef\xbb\xbf\xff\xfe",
        "only whitespace": b" \n\t" * 1000,
    }


@pytest.mark.parametrize("name", sorted(_adversarial_inputs()))
def test_adversarial_input_is_a_clear_rejection_not_a_crash(tmp_path, name):
    terminal = vendor_config(tmp_path).terminal("bakery_1")
    data = _adversarial_inputs()[name]
    survives(data, terminal)
    try:
        receipt = parse_receipt(data, terminal)
    except IntakeError as exc:
        assert all(str(p) for p in exc.problems)
        return
    report = validate_batch([receipt], now=datetime(2026, 11, 20, tzinfo=UTC))
    assert report.invalid, f"{name} should not pass validation"
