"""``posfed spec check`` and ``posfed dat render|parse|check``: exit codes and output."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from posfed_pipeline.cli import main

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_CONFIG = REPO_ROOT / "posfed.toml"
DEFAULT_SPEC = REPO_ROOT / "dat_specs" / "scon_default.json"
EXAMPLE_SPEC = REPO_ROOT / "dat_specs" / "example_header_footer_cp1252.json"
POSFED = Path(sys.executable).with_name("posfed")  # the console script of this venv

EXPECTED_DAT = (
    b"0010R0001       0018712345678906Volkorenbrood       000100000000295000000295010326\r\n"
    b"0010R0001       0024006381333931Croissant           000300000000115000000345010326\r\n"
)


def write_receipt(
    folder: Path,
    receipt_id="R0001",
    terminal_id="bakery_1",
    department="10",
    timestamp="2026-03-01T10:15:00+01:00",
    items=None,
    total=None,
) -> Path:
    if total is None:
        total = (
            "6.40"
            if items is None
            else str(
                sum(Decimal(str(i["price"])) * i["quantity"] for i in items).quantize(
                    Decimal("0.01")
                )
            )
        )
    doc = {
        "receiptId": receipt_id,
        "terminalId": terminal_id,
        "departmentCode": department,
        "items": items
        or [
            {
                "barcode": "8712345678906",
                "description": "Volkorenbrood",
                "price": "2.95",
                "quantity": 1,
            },
            {"barcode": "4006381333931", "description": "Croissant", "price": 1.15, "quantity": 3},
        ],
        "total": total,
        "timestamp": timestamp,
    }
    path = folder / f"{receipt_id}.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch, tmp_path):
    # Tests pass --config explicitly; nothing from the developer's shell or cwd leaks in.
    monkeypatch.delenv("POSFED_CONFIG", raising=False)
    monkeypatch.delenv("POSFED_HOME", raising=False)
    monkeypatch.chdir(tmp_path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# --- spec check -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [DEFAULT_SPEC, EXAMPLE_SPEC])
def test_spec_check_accepts_the_shipped_specs(capsys, spec):
    code, out, err = run(capsys, "spec", "check", spec)
    assert code == 0, err
    assert f"spec check: OK ({spec})" in out


def test_spec_check_reports_every_reason(capsys, tmp_path):
    raw = json.loads(DEFAULT_SPEC.read_text(encoding="utf-8"))
    item = raw["versions"][0]["records"]["item"]
    item[6]["start"] = 58  # price overlaps quantity
    item[8]["format"] = "DDMMYY"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw), encoding="utf-8")
    code, out, err = run(capsys, "spec", "check", bad)
    assert code == 1
    assert "INVALID" in err and "(2 problem(s))" in err
    assert (
        f"{bad}: versions[0] (from 2020-01-01), record item, field price: starts at 58 but "
        "overlaps the previous field (expected 60)"
    ) in err
    assert "record item, field date: format 'DDMMYY'" in err
    assert "OK" not in out


def test_spec_check_missing_file(capsys, tmp_path):
    code, _, err = run(capsys, "spec", "check", tmp_path / "nope.json")
    assert code == 1 and "no such spec file" in err


# --- dat render -------------------------------------------------------------------------------


def test_render_with_the_repo_config_writes_exact_bytes(capsys, tmp_path):
    receipt = write_receipt(tmp_path)
    out_dir = tmp_path / "out"
    code, out, err = run(
        capsys,
        "--config",
        REPO_CONFIG,
        "dat",
        "render",
        "--spec",
        DEFAULT_SPEC,
        receipt,
        "--out",
        out_dir,
    )
    assert code == 0, err
    target = out_dir / "20260301" / "scon10R0001.dat"
    assert out.splitlines() == [str(target.resolve())]
    assert target.read_bytes() == EXPECTED_DAT
    # Deterministic: rendering again rewrites identical bytes; --config also after `render`.
    code, out, _ = run(
        capsys,
        "dat",
        "render",
        "--config",
        REPO_CONFIG,
        "--spec",
        DEFAULT_SPEC,
        "--out",
        out_dir,
        receipt,
    )
    assert code == 0 and target.read_bytes() == EXPECTED_DAT


def test_render_uses_posfed_config_from_the_environment(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("POSFED_CONFIG", str(REPO_CONFIG))
    receipt = write_receipt(tmp_path, terminal_id="butcher_1", department="20")
    code, out, err = run(
        capsys, "dat", "render", "--spec", DEFAULT_SPEC, receipt, "--out", tmp_path / "out"
    )
    assert code == 0, err
    assert out.strip().endswith("20260301/scon20R0001.dat")


def test_render_without_a_config_explains_what_is_missing(capsys, tmp_path):
    receipt = write_receipt(tmp_path)
    code, out, err = run(
        capsys, "dat", "render", "--spec", DEFAULT_SPEC, receipt, "--out", tmp_path / "out"
    )
    assert code == 2 and out == ""
    assert "department code" in err and "--config" in err


def test_render_reports_each_receipt_it_cannot_render_and_goes_on(capsys, tmp_path):
    unknown = write_receipt(tmp_path, receipt_id="R0002", terminal_id="cashdesk_9")
    too_long = write_receipt(tmp_path, receipt_id="R1234567890123")  # 14 > the 12-byte field
    huge = write_receipt(
        tmp_path,
        receipt_id="R0003",
        items=[
            {
                "barcode": "8712345678906",
                "description": "Gold",
                "price": "1000000.00",
                "quantity": 1,
            }
        ],
    )
    wrong_total = write_receipt(tmp_path, receipt_id="R0004", total="9.99")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    good = write_receipt(tmp_path)
    missing = tmp_path / "missing.json"
    code, out, err = run(
        capsys,
        "--config",
        REPO_CONFIG,
        "dat",
        "render",
        "--spec",
        DEFAULT_SPEC,
        "--out",
        tmp_path / "out",
        unknown,
        too_long,
        huge,
        wrong_total,
        broken,
        good,
        missing,
    )
    assert code == 1
    assert out.strip().endswith("20260301/scon10R0001.dat")  # the good one still rendered
    lines = err.splitlines()
    assert len(lines) == 6, err
    assert (
        f"{unknown}: cannot render: terminal 'cashdesk_9' is not in the store configuration "
        f"{REPO_CONFIG}"
    ) in lines[0] and "known: bakery_1" in lines[0]
    assert "field receipt_id" in lines[1] and "longer than 12" in lines[1]
    assert "receipt R0003, item line 1" in lines[2] and "field price" in lines[2]
    assert "does not fit in 8" in lines[2]
    # The pipeline's verdict comes first: a receipt it would quarantine is never rendered.
    assert f"{wrong_total}: invalid, not rendered: total=" in lines[3]
    assert "total must equal the sum of the line amounts" in lines[3]
    assert f"{broken}: cannot render: not a JSON receipt" in lines[4]
    assert f"{missing}: cannot render" in lines[5]
    assert not list((tmp_path / "out").rglob("*R0004*"))
    assert not list((tmp_path / "out").rglob("*R0003*"))


def test_render_with_an_invalid_spec_is_a_usage_error(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "versions": []}')
    code, _, err = run(
        capsys,
        "--config",
        REPO_CONFIG,
        "dat",
        "render",
        "--spec",
        bad,
        write_receipt(tmp_path),
        "--out",
        tmp_path / "out",
    )
    assert code == 2 and "invalid spec" in err


# --- dat parse and dat check ------------------------------------------------------------------


@pytest.fixture
def rendered(capsys, tmp_path) -> Path:
    receipt = write_receipt(tmp_path)
    code, out, _ = run(
        capsys,
        "--config",
        REPO_CONFIG,
        "dat",
        "render",
        "--spec",
        DEFAULT_SPEC,
        receipt,
        "--out",
        tmp_path / "out",
    )
    assert code == 0
    return Path(out.strip())


def test_parse_prints_records_as_json_with_money_in_major_units(capsys, rendered):
    code, out, err = run(capsys, "dat", "parse", "--spec", DEFAULT_SPEC, rendered)
    assert code == 0, err
    records = json.loads(out)
    assert records[1] == {
        "record": "item",
        "department": "10",
        "receipt_id": "R0001",
        "line_no": 2,
        "barcode": "4006381333931",
        "description": "Croissant",
        "quantity": "3.000",
        "price": "1.15",
        "amount": "3.45",
        "date": "2026-03-01",
    }


def test_check_accepts_a_conforming_file(capsys, rendered):
    code, out, err = run(capsys, "dat", "check", "--spec", DEFAULT_SPEC, rendered)
    assert code == 0, err
    assert out.strip() == f"dat check: {rendered}: OK (version from 2020-01-01)"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (
            lambda c: c.replace(b"00000115", b"   00115"),
            "line 2 (item), field price (bytes 60-67): '   00115' is not a number",
        ),
        (
            lambda c: c.replace(b"000300000000115", b"-00000000000115"),
            "line 2 (item), field quantity (bytes 53-59): '-000000' is not in the form the engine "
            "writes ('0000000')",
        ),
        (lambda c: c.replace(b"\r\n", b"\n"), "does not end with the spec's line ending"),
        (
            lambda c: c.replace(b"Croissant  ", b"Croissant "),
            "line 2 (item): 81 bytes, expected 82",
        ),
        (
            lambda c: c.replace(b"Croissant", b"Crois\xe9ant"),
            "line 2 (item), field description: byte 38 (0xE9) is not valid ascii",
        ),
    ],
)
def test_check_rejects_with_line_and_field_reasons(capsys, rendered, mutate, reason):
    rendered.write_bytes(mutate(rendered.read_bytes()))
    code, out, err = run(capsys, "dat", "check", "--spec", DEFAULT_SPEC, rendered)
    assert code == 1
    assert reason in err, err
    assert "OK" not in out
    code, out, err = run(capsys, "dat", "parse", "--spec", DEFAULT_SPEC, rendered)
    assert code == 1 and out == "" and reason in err


def test_parse_and_check_usage_errors(capsys, rendered, tmp_path):
    code, _, err = run(capsys, "dat", "check", "--spec", DEFAULT_SPEC, tmp_path / "none.dat")
    assert code == 2 and "none.dat" in err
    code, _, err = run(
        capsys, "dat", "check", "--spec", DEFAULT_SPEC, "--date", "01-03-2026", rendered
    )
    assert code == 2 and "is not a date YYYY-MM-DD" in err
    code, _, err = run(capsys, "dat", "parse", "--spec", tmp_path / "nope.json", rendered)
    assert code == 2 and "no such spec file" in err


def test_example_spec_picks_each_files_version_from_its_folder(capsys, tmp_path):
    old = write_receipt(tmp_path, receipt_id="OLD1", timestamp="2025-06-30T18:00:00+02:00")
    new = write_receipt(tmp_path, receipt_id="NEW1", timestamp="2026-03-01T23:30:00Z")
    code, out, err = run(
        capsys,
        "--config",
        REPO_CONFIG,
        "dat",
        "render",
        "--spec",
        EXAMPLE_SPEC,
        old,
        new,
        "--out",
        tmp_path / "out",
    )
    assert code == 0, err
    old_dat, new_dat = (Path(line) for line in out.splitlines())
    assert old_dat.relative_to((tmp_path / "out").resolve()) == Path("2025-06-30/bakery_1-OLD1.dat")
    assert new_dat.parent.name == "2026-03-02"  # 23:30 UTC is 00:30 in Amsterdam
    assert old_dat.read_bytes().count(b"\r\n") == 4 and b"\r" not in new_dat.read_bytes()
    for path, version in ((old_dat, "2025-01-01"), (new_dat, "2026-01-01")):
        code, out, err = run(capsys, "dat", "check", "--spec", EXAMPLE_SPEC, path)
        assert code == 0, err
        assert f"version from {version}" in out
    code, out, _ = run(capsys, "dat", "parse", "--spec", EXAMPLE_SPEC, new_dat)
    header, *_, footer = json.loads(out)
    assert (header["date"], header["time"], header["item_count"]) == ("2026-03-02", "00:30", 2)
    assert footer == {
        "record": "footer",
        "record_type": "T",
        "item_count": 2,
        "total": "6.40",
        "tenant": "Bakkerij De Korenschoof",
    }
    # Forcing the other version is a verdict against the file, with reasons.
    code, _, err = run(
        capsys, "dat", "check", "--spec", EXAMPLE_SPEC, "--date", "2025-06-30", new_dat
    )
    assert code == 1 and "does not end with the spec's line ending b'\\r\\n'" in err


# --- the console script -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not POSFED.exists(), reason="posfed console script not installed")
def test_console_script_exit_codes(tmp_path):
    receipt = write_receipt(tmp_path)

    def posfed(*argv):
        return subprocess.run(
            [str(POSFED), *map(str, argv)], capture_output=True, text=True, cwd=tmp_path, timeout=60
        )

    assert posfed("spec", "check", DEFAULT_SPEC).returncode == 0
    rendered = posfed(
        "--config",
        REPO_CONFIG,
        "dat",
        "render",
        "--spec",
        DEFAULT_SPEC,
        receipt,
        "--out",
        tmp_path / "out",
    )
    assert rendered.returncode == 0, rendered.stderr
    path = Path(rendered.stdout.strip())
    assert path.read_bytes() == EXPECTED_DAT
    assert posfed("dat", "check", "--spec", DEFAULT_SPEC, path).returncode == 0
    path.write_bytes(path.read_bytes().replace(b"0010R0001", b"0010R0002", 1))
    assert posfed("dat", "check", "--spec", DEFAULT_SPEC, path).returncode == 0  # still valid
    path.write_bytes(path.read_bytes()[:-1])
    checked = posfed("dat", "check", "--spec", DEFAULT_SPEC, path)
    assert checked.returncode == 1 and "line ending" in checked.stderr
