"""Validation: each business rule fails by name on a bad receipt and lets a good one pass."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from biip.checksums import gs1_standard_check_digit

from posfed_pipeline.core.intake.validation import BARCODE_RULE, validate_batch
from posfed_pipeline.core.model.receipt import Receipt, ReceiptItem, round_cents
from posfed_pipeline.core.model.terminal import VariableMeasureScheme

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
AMSTERDAM = ZoneInfo("Europe/Amsterdam")
BREAD = "8712345678906"
EMBEDDED_PRICE_RULE = "the price in this in-store barcode must equal the line's price or amount"


def item(barcode=BREAD, price="2.95", quantity="1", description="Volkorenbrood") -> ReceiptItem:
    return ReceiptItem(barcode, description, Decimal(price), Decimal(quantity))


def receipt(*items: ReceiptItem, total: str | None = None, receipt_id="R1", at=None) -> Receipt:
    items = items or (item(),)
    lines = sum((round_cents(i.price * i.quantity) for i in items), Decimal("0.00"))
    return Receipt(
        receipt_id=receipt_id,
        terminal_id="bakery_1",
        department_code="10",
        items=tuple(items),
        total=Decimal(total) if total is not None else lines,
        timestamp=at or NOW.astimezone(AMSTERDAM) - timedelta(hours=1),
    )


def problems_of(r: Receipt, **rules) -> set[tuple[str, str, str]]:
    report = validate_batch([r], now=NOW, **rules)
    return {(p.field, p.value, p.rule) for _, problems in report.invalid for p in problems}


def rules_of(r: Receipt, **rules) -> dict[str, str]:
    return {field: rule for field, _, rule in problems_of(r, **rules)}


def test_a_good_receipt_passes():
    report = validate_batch([receipt(item(), item("4006381333931", "1.15", "3"))], now=NOW)
    assert len(report.valid) == 1 and report.invalid == [] and report.pass_rate == 1.0


# --- barcodes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "barcode",
    ["4006381333931", "96385074", "036000291452", "2012345000018", "2801234012344"],
    ids=["EAN-13", "EAN-8", "UPC-A", "variable-measure-20", "variable-measure-28"],
)
def test_valid_gs1_codes_pass(barcode):
    assert rules_of(receipt(item(barcode))) == {}


def test_wrong_check_digit_names_the_expected_digit():
    assert problems_of(receipt(item("8712345678900"))) == {
        (
            "items[1].barcode",
            "8712345678900 (check digit 0, expected 6)",
            BARCODE_RULE,
        )
    }


@pytest.mark.parametrize(
    ("barcode", "reason"),
    [
        ("87123A5678906", "neither a GTIN"),
        ("8712345678906\n", "a control character"),
        ("８７１２３４５６７８９０６", "a character no barcode encodes"),  # full-width digits
        ("871234567890", "check digit 0, expected 4"),
        ("87123456789", "a GTIN has 8, 12, 13 or 14 digits, not 11"),
    ],
)
def test_malformed_barcodes_fail_with_one_reason(barcode, reason):
    report = validate_batch([receipt(item(barcode))], now=NOW)
    [(_, problems)] = report.invalid
    [problem] = problems
    assert (problem.field, problem.rule) == ("items[1].barcode", BARCODE_RULE)
    assert reason in problem.value


def gs1_check_digit(body: str) -> str:
    return str(gs1_standard_check_digit(body))


SCHEME = VariableMeasureScheme(price_prefixes=("22",), price_digits=5)


def variable_code(prefix: str, article: str, cents: int) -> str:
    body = f"{prefix}{article}{cents:05d}"
    return body + gs1_check_digit(body)


def test_embedded_price_matching_the_line_amount_passes():
    code = variable_code("22", "12345", 1190)  # 0.850 kg at 14.00/kg = 11.90
    assert rules_of(receipt(item(code, "14.00", "0.850")), variable_measure=SCHEME) == {}


def test_embedded_price_matching_the_unit_price_passes():
    code = variable_code("22", "12345", 1295)
    assert rules_of(receipt(item(code, "12.95", "1")), variable_measure=SCHEME) == {}


def test_embedded_price_differing_from_the_line_fails_with_both_figures():
    code = variable_code("22", "12345", 1190)
    assert problems_of(receipt(item(code, "14.00", "0.900")), variable_measure=SCHEME) == {
        (
            "items[1].barcode",
            f"{code} (carries 11.90; line price 14.00, amount 12.60)",
            EMBEDDED_PRICE_RULE,
        )
    }


def test_embedded_price_is_only_checked_where_the_scheme_says():
    other_prefix = variable_code("23", "12345", 1190)
    assert rules_of(receipt(item(other_prefix, "14.00", "0.900")), variable_measure=SCHEME) == {}
    mismatch = variable_code("22", "12345", 1190)
    assert rules_of(receipt(item(mismatch, "14.00", "0.900"))) == {}  # no scheme configured


def test_four_digit_price_scheme_reads_digits_9_to_12():
    scheme = VariableMeasureScheme(price_prefixes=("22",), price_digits=4)
    body = "2212345" + "7" + "0495"  # digit 8: the scale's price check digit
    code = body + gs1_check_digit(body)
    assert rules_of(receipt(item(code, "4.95", "1")), variable_measure=scheme) == {}
    assert rules_of(receipt(item(code, "5.95", "1")), variable_measure=scheme) == {
        "items[1].barcode": EMBEDDED_PRICE_RULE
    }


# --- prices, quantities, returns ----------------------------------------------------------------


def test_negative_price_fails():
    assert rules_of(receipt(item(price="-2.95"))) == {
        "items[1].price": "price must not be negative"
    }


def test_price_with_three_decimals_fails():
    assert problems_of(receipt(item(price="2.955"), total="2.96")) == {
        ("items[1].price", "2.955", "price must be below 10 million with at most 2 decimals")
    }


def test_price_with_trailing_zeros_is_exact_and_passes():
    assert rules_of(receipt(item(price="2.9500"))) == {}


def test_zero_quantity_fails():
    assert problems_of(receipt(item(quantity="0"), total="0.00")) == {
        ("items[1].quantity", "0", "quantity must not be zero")
    }


def test_quantity_decimals_follow_the_terminals_setting():
    weighed = receipt(item(price="11.90", quantity="0.8125"))
    assert rules_of(weighed) == {
        "items[1].quantity": "quantity must be below 10 million with at most 3 decimals"
    }
    assert rules_of(weighed, quantity_decimals=4) == {}
    assert rules_of(receipt(item(quantity="1.5")), quantity_decimals=0) == {
        "items[1].quantity": "quantity must be below 10 million with at most 0 decimals"
    }


def test_returns_fail_unless_the_terminal_allows_them():
    returned = receipt(item(), item(quantity="-1"))
    assert problems_of(returned) == {
        (
            "items[2].quantity",
            "-1",
            "returns (negative quantities) are not allowed on this terminal",
        )
    }
    assert rules_of(returned, allow_returns=True) == {}


def test_overlong_description_fails():
    assert rules_of(receipt(item(description="x" * 201))) == {
        "items[1].description": "description must be at most 200 characters"
    }


# --- totals -------------------------------------------------------------------------------------


def test_total_differing_from_the_lines_fails_with_both_sums():
    assert problems_of(receipt(item(), total="3.00")) == {
        (
            "total",
            "3.00 (lines sum to 2.95)",
            "total must equal the sum of the line amounts (price x quantity, half-up to cents)",
        )
    }


def test_line_amounts_round_half_up_to_cents():
    half = item(price="1.00", quantity="0.125")  # 0.125 -> 0.13, not banker's 0.12
    assert rules_of(receipt(half, total="0.13")) == {}
    assert "total" in rules_of(receipt(half, total="0.12"))
    refund = item(price="1.00", quantity="-0.125")  # -0.125 -> -0.13
    assert rules_of(receipt(refund, total="-0.13"), allow_returns=True) == {}


def test_total_with_three_decimals_fails():
    assert rules_of(receipt(total="2.950")) == {}
    assert rules_of(receipt(total="2.951")) == {
        "total": "total must be below 10 million with at most 2 decimals"
    }


# --- timestamps ---------------------------------------------------------------------------------


def test_timestamp_in_the_future_beyond_the_clock_skew_fails():
    assert rules_of(receipt(at=NOW + timedelta(minutes=4))) == {}
    assert problems_of(receipt(at=NOW + timedelta(minutes=6))) == {
        ("timestamp", "2026-11-20T12:06:00+00:00", "timestamp is more than 5 minutes in the future")
    }
    assert rules_of(receipt(at=NOW + timedelta(minutes=6)), max_clock_skew=timedelta(hours=1)) == {}


def test_timestamp_older_than_the_configured_age_fails():
    old = receipt(at=NOW - timedelta(days=46))
    assert rules_of(old) == {"timestamp": "timestamp is older than 45 days"}
    assert rules_of(old, max_age=timedelta(days=60)) == {}


# --- batches ------------------------------------------------------------------------------------


def test_receipt_id_is_checked_even_for_receipts_not_from_intake():
    assert problems_of(receipt(receipt_id="../R1")) == {
        (
            "receiptId",
            "../R1",
            "must be 1-64 letters, digits, '-' or '_' starting with a letter or digit "
            "(nothing path-like)",
        )
    }


def test_receipt_id_with_a_trailing_newline_fails():
    assert set(rules_of(receipt(receipt_id="R1\n"))) == {"receiptId"}


def test_receipt_without_items_fails():
    empty = Receipt("R1", "bakery_1", "10", (), Decimal("0.00"), NOW)
    assert rules_of(empty) == {"items": "a receipt needs at least one item"}


def test_every_failure_of_a_receipt_is_reported_at_once():
    bad = receipt(
        item("8712345678900"),
        item(price="-1.00"),
        item(quantity="0"),
        total="9.99",
        at=NOW + timedelta(days=1),
    )
    assert set(rules_of(bad)) == {
        "items[1].barcode",
        "items[2].price",
        "items[3].quantity",
        "total",
        "timestamp",
    }


def test_failures_are_attributed_to_the_right_receipt_of_a_batch():
    batch = [
        receipt(receipt_id="A"),
        receipt(item(), item("8712345678900"), receipt_id="B"),
        receipt(receipt_id="C", total="1.00"),
        receipt(receipt_id="D"),
    ]
    report = validate_batch(batch, now=NOW)
    assert [r.receipt_id for r in report.valid] == ["A", "D"]
    assert {r.receipt_id: [p.field for p in problems] for r, problems in report.invalid} == {
        "B": ["items[2].barcode"],
        "C": ["total"],
    }
    assert report.pass_rate == 0.5


def test_empty_batch_is_a_clean_report():
    report = validate_batch([], now=NOW)
    assert report.valid == [] and report.invalid == [] and report.pass_rate == 1.0
