"""``posfed receipt validate``: the pipeline's verdict on files, without moving them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posfed_pipeline.cli import main
from posfed_pipeline.core.intake.validation import BARCODE_RULE
from posfed_pipeline_tests.support.receipts import receipt_doc
from posfed_pipeline_tests.support.repo import DEFAULT_SPEC, REPO_ROOT

EXAMPLES = REPO_ROOT / "examples" / "vendors"


@pytest.fixture
def store_file(tmp_path, monkeypatch) -> Path:
    """The shipped posfed.toml, state in a temp folder, wine_2 and flowers_2 on vendor formats."""
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.delenv("POSFED_DB_URL", raising=False)
    text = (REPO_ROOT / "posfed.toml").read_text()
    # Those tills number their receipts their vendor's way: KM-2026-000481, T000481.
    for terminal, vendor, prefix in (
        ("wine_2", "kassamaat-json", "KM"),
        ("flowers_2", "caissepro-csv", "T"),
    ):
        start = text.index(f'id = "{terminal}"\n')
        end = text.index('format = "posfed-json"', start)
        text = text[:end] + text[end:].replace("posfed-json", vendor, 1)
        text = text[:start] + text[start:].replace(
            'receipt_id_prefix = "2"', f'receipt_id_prefix = "{prefix}"', 1
        )
    text = text.replace('home = ".posfed"', f'home = "{tmp_path / "state"}"')
    text = text.replace('spec = "dat_specs/scon_default.json"', f'spec = "{DEFAULT_SPEC}"')
    text = text.replace("max_age_days = 45", "max_age_days = 36500")  # the samples stay valid
    path = tmp_path / "posfed.toml"
    path.write_text(text)
    return path


def run(store_file: Path, capsys, *args: str) -> tuple[int, str]:
    code = main(["--config", str(store_file), "receipt", "validate", *args])
    return code, capsys.readouterr().out


def write(tmp_path: Path, name: str, doc: dict | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    return path


def test_valid_file_exits_0(store_file, tmp_path, capsys):
    good = write(tmp_path, "good.json", receipt_doc("1R1"))
    code, out = run(store_file, capsys, str(good))
    assert code == 0
    assert f"{good} (bakery_1): valid" in out


def test_any_invalid_file_exits_1_with_its_reasons(store_file, tmp_path, capsys):
    good = write(tmp_path, "good.json", receipt_doc("1R1"))
    bad = receipt_doc("1R2", total="99.99")
    bad["items"][0]["barcode"] = "8712345678900"
    bad_path = write(tmp_path, "bad.json", bad)
    code, out = run(store_file, capsys, str(good), str(bad_path))
    assert code == 1
    assert f"{bad_path} (bakery_1): INVALID" in out
    assert f"items[1].barcode: {BARCODE_RULE}" in out
    assert "total: total must equal the sum of the line amounts" in out
    assert "1 valid, 1 invalid" in out


def test_json_output_lists_every_file_with_its_errors(store_file, tmp_path, capsys):
    good = write(tmp_path, "good.json", receipt_doc("1R1"))
    truncated = write(tmp_path, "cut.json", b'{"receiptId": "1R2", "ite')
    code, out = run(
        store_file, capsys, "--json", "--terminal", "bakery_1", str(good), str(truncated)
    )
    assert code == 1
    listing = json.loads(out)
    assert [(e["file"], e["valid"]) for e in listing] == [
        (str(good), True),
        (str(truncated), False),
    ]
    assert listing[0]["errors"] == []
    (error,) = listing[1]["errors"]
    assert error["field"] == "file" and error["rule"].startswith("not valid JSON")


def test_terminal_option_applies_that_terminals_rules(store_file, tmp_path, capsys):
    returned = receipt_doc("1R1", "butcher_1", "20")
    returned["items"][0]["quantity"] = -1
    returned["total"] = str(-2.95 + 3.45)
    path = write(tmp_path, "return.json", returned)
    assert run(store_file, capsys, "--terminal", "butcher_1", str(path))[0] == 0
    code, out = run(store_file, capsys, "--terminal", "bakery_1", str(path))
    assert code == 1
    assert "terminalId: file arrived from terminal bakery_1" in out


def test_unknown_terminal_option_is_a_usage_error(store_file, tmp_path, capsys):
    path = write(tmp_path, "good.json", receipt_doc("1R1"))
    assert (
        main(["--config", str(store_file), "receipt", "validate", "--terminal", "nope", str(path)])
        == 2
    )
    assert "unknown terminal 'nope'" in capsys.readouterr().err


def test_file_of_an_unknown_terminal_asks_for_the_terminal_option(store_file, tmp_path, capsys):
    path = write(tmp_path, "stray.json", receipt_doc("1R1", terminal_id="kiosk_9"))
    code, out = run(store_file, capsys, "--json", str(path))
    assert code == 1
    assert json.loads(out)[0]["errors"] == [
        {
            "field": "terminalId",
            "value": "unknown",
            "rule": "cannot tell which terminal this file is from; pass --terminal ID",
        }
    ]


def test_vendor_files_are_read_in_their_terminals_format(store_file, capsys):
    files = [str(EXAMPLES / n) for n in ("kassamaat.json", "caissepro.csv", "caissepro-cp1252.csv")]
    code, out = run(store_file, capsys, "--json", *files)
    verdicts = {entry["file"]: entry for entry in json.loads(out)}
    assert verdicts[files[1]]["valid"] and verdicts[files[2]]["valid"], out
    assert verdicts[files[1]]["terminal"] == "flowers_2"
    # Read in its format, and valid but for the .dat layout: the default spec's receipt
    # number holds 12 characters, KM-2026-000481 has 14. The pipeline would quarantine it for
    # that, so the command says so too (one verdict everywhere).
    [error] = verdicts[files[0]]["errors"]
    assert verdicts[files[0]]["terminal"] == "wine_2"
    assert error["rule"].startswith("cannot be rendered") and "longer than 12" in error["rule"]
    assert code == 1


def test_file_in_a_terminal_folder_is_judged_for_that_terminal_and_not_moved(
    store_file, tmp_path, capsys
):
    inbox = tmp_path / "state" / "terminals" / "flowers_2" / "inbox"
    inbox.mkdir(parents=True)
    path = inbox / "ticket.csv"
    shutil.copyfile(EXAMPLES / "caissepro.csv", path)
    code, out = run(store_file, capsys, str(path))
    assert code == 0, out
    assert "(flowers_2): valid" in out
    assert path.exists() and list((inbox.parent).iterdir()) == [inbox]


def test_missing_file_is_invalid(store_file, tmp_path, capsys):
    code, out = run(store_file, capsys, str(tmp_path / "absent.json"))
    assert code == 1
    assert "file: no such file" in out
