"""One sale, one .dat file: terminals whose file names could coincide are refused at start-up,
and terminals told apart by their receipt-number prefixes each get their own files."""

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posfed_pipeline.core.config import ConfigError, check_at_start, config_from_dict
from posfed_pipeline.core.dat import load_spec, spec_from_dict
from posfed_pipeline.core.dat.names import dat_name_clashes, name_pattern, patterns_overlap
from posfed_pipeline.core.model.terminal import Terminal
from posfed_pipeline.definitions import build_definitions
from posfed_pipeline_tests.support.daemon import run_as_the_daemon_would, tick_sensor
from posfed_pipeline_tests.support.receipts import drop_receipt, receipt_doc
from posfed_pipeline_tests.support.repo import REPO_ROOT
from posfed_pipeline_tests.support.stores import store_config_dict, write_store_config

BAKERIES = [
    {"id": "bakery_1", "department": "10", "tenant": "Bakkerij"},
    {"id": "bakery_2", "department": "10", "tenant": "Bakkerij"},
]


def _spec(file_name: str):
    raw = json.loads((REPO_ROOT / "dat_specs" / "scon_default.json").read_text())
    raw["versions"][0]["file_name"] = file_name
    return spec_from_dict(raw, Path("test.json"))


def _terminal(terminal_id: str, department: str = "10", prefix: str = "") -> Terminal:
    return Terminal(
        id=terminal_id,
        department=department,
        tenant="t",
        inbox=Path("/nonexistent"),
        timezone=None,  # type: ignore[arg-type]  # names never look at it
        receipt_id_prefix=prefix,
    )


def _clash(template: str, one: Terminal, other: Terminal) -> bool:
    return bool(dat_name_clashes([one, other], _spec(template)))


def test_the_seed_layout_cannot_tell_two_terminals_of_one_department_apart():
    seed = "scon{department}{receiptId}.dat"
    assert _clash(seed, _terminal("bakery_1"), _terminal("bakery_2"))
    assert not _clash(seed, _terminal("bakery_1", "10"), _terminal("butcher_1", "20"))
    # Department 1 and department 10: scon1 + 0C1 is scon10 + C1.
    assert _clash(seed, _terminal("a", "1"), _terminal("b", "10"))


def test_prefixes_tell_terminals_apart_only_when_none_starts_another():
    seed = "scon{department}{receiptId}.dat"
    assert not _clash(seed, _terminal("bakery_1", prefix="1"), _terminal("bakery_2", prefix="2"))
    assert _clash(seed, _terminal("bakery_1", prefix="1"), _terminal("bakery_2", prefix="12"))
    assert _clash(seed, _terminal("bakery_1", prefix="1"), _terminal("bakery_2"))


def test_the_terminal_in_the_name_tells_them_apart_ignoring_case():
    assert not _clash("{terminalId}-{receiptId}.dat", _terminal("bakery_1"), _terminal("bakery_2"))
    # A Windows import folder does not tell Bakery_1 from bakery_1.
    assert _clash("{terminalId}-{receiptId}.dat", _terminal("Bakery_1"), _terminal("bakery_1"))
    # A receipt id starts with a letter or digit: till + _2C1 cannot be a name of till_2's.
    assert not _clash("{terminalId}{receiptId}.dat", _terminal("till"), _terminal("till_2"))
    assert _clash("{terminalId}{receiptId}.dat", _terminal("till"), _terminal("till2"))
    # No department, no terminal: every pair of terminals shares names.
    assert _clash("{receiptId}.dat", _terminal("a", "10"), _terminal("b", "20"))


# Receipt ids start with a letter or digit (core.receipt's RECEIPT_ID_PATTERN).
_ID = st.tuples(st.sampled_from("aB1"), st.text(alphabet="aB1-_", max_size=3)).map("".join)
_PIECE = st.sampled_from(["{receiptId}", "{department}", "{terminalId}", "x", ".", "_", "1"])


@settings(max_examples=300, deadline=None)
@given(
    pieces=st.lists(_PIECE, min_size=1, max_size=5),
    departments=st.tuples(st.sampled_from(["1", "10", "2"]), st.sampled_from(["1", "10", "2"])),
    prefixes=st.tuples(st.sampled_from(["", "1", "12", "B"]), st.sampled_from(["", "1", "b"])),
    ids=st.tuples(_ID, _ID),
)
def test_two_names_that_coincide_are_always_reported(pieces, departments, prefixes, ids):
    """Whatever the template: if two concrete names are equal, the patterns overlap."""
    from posfed_pipeline.core.dat import name_template_parts

    template = "s" + "".join(pieces) + ("" if "{receiptId}" in pieces else "{receiptId}")
    version = _spec(template).versions[0]
    one = _terminal("t_a", departments[0], prefixes[0])
    other = _terminal("t_b", departments[1], prefixes[1])

    def render(terminal: Terminal, receipt_id: str) -> str:
        values = {"department": terminal.department, "terminalId": terminal.id}
        values["receiptId"] = terminal.receipt_id_prefix + receipt_id
        return "".join(values[p] if key else p for p, key in name_template_parts(version)).lower()

    if render(one, ids[0]) == render(other, ids[1]):
        assert patterns_overlap(name_pattern(version, one), name_pattern(version, other))


def test_a_store_whose_terminals_could_share_a_dat_is_refused_saying_what_to_change(tmp_path):
    raw = store_config_dict(tmp_path / "posfed", terminals=BAKERIES)
    with pytest.raises(ConfigError) as refused:
        check_at_start(config_from_dict(raw, base_dir=tmp_path))  # the step after loading
    message = str(refused.value)
    assert "bakery_1 and bakery_2, both department 10" in message
    assert "scon{department}{receiptId}.dat" in message
    assert "receipt_id_prefix" in message and "{terminalId}" in message

    # posfed itself does not start on it: the CLI exits 2 with the same reason.
    config_path = write_store_config(
        tmp_path / "store.toml", tmp_path / "posfed", terminals=BAKERIES
    )
    started = subprocess.run(
        [sys.executable, "-m", "posfed_pipeline.cli", "--config", str(config_path), "db", "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 2
    assert "bakery_1 and bakery_2" in started.stderr


def test_the_demo_store_tells_every_pair_of_terminals_apart():
    from posfed_pipeline.core.config import load_config

    config = load_config(REPO_ROOT / "posfed.toml")
    assert dat_name_clashes(config.terminals, load_spec(config.dat_spec)) == []
    departments = [t.department for t in config.terminals]
    assert len(set(departments)) < len(departments)  # it does have shared departments


@pytest.mark.slow
def test_two_terminals_of_one_department_each_get_their_own_dat_for_the_same_sale(tmp_path):
    """Through the sensors and runs: both tills sold receipt number C0001 with the same loaf."""
    terminals = [
        {**BAKERIES[0], "receipt_id_prefix": "1"},
        {**BAKERIES[1], "receipt_id_prefix": "2"},
    ]
    config = config_from_dict(
        store_config_dict(tmp_path / "posfed", terminals=terminals), base_dir=tmp_path
    )
    config.ensure_folders()
    when = "2026-11-20T10:15:00+01:00"
    drop_receipt(config.terminal("bakery_1").inbox, receipt_doc("1C0001", timestamp=when))
    drop_receipt(
        config.terminal("bakery_2").inbox, receipt_doc("2C0001", "bakery_2", timestamp=when)
    )
    # A till whose numbering was not set up: refused for its own reason, nobody else's.
    drop_receipt(
        config.terminal("bakery_2").inbox, receipt_doc("C0002", "bakery_2", timestamp=when)
    )
    defs = build_definitions(config)
    job = defs.resolve_job_def("receipts_job")

    with dg.instance_for_test() as instance:
        for terminal in ("bakery_1", "bakery_2"):
            sensor = defs.resolve_sensor_def(f"{terminal}_inbox_sensor")
            for request in tick_sensor(sensor, None, instance).run_requests:
                run_as_the_daemon_would(job, request, instance, sensor.name)

    day = config.dat_dir / "20261120"
    assert sorted(p.name for p in day.iterdir()) == ["scon101C0001.dat", "scon102C0001.dat"]
    assert (day / "scon101C0001.dat").read_bytes()[4:16] == b"1C0001      "
    report = json.loads(
        (config.terminal("bakery_2").quarantine / "C0002.json.error.json").read_text()
    )
    assert report["problems"][0]["field"] == "receiptId"
    assert "must begin with '2'" in report["problems"][0]["rule"]
    assert not any(config.terminal("bakery_1").quarantine.iterdir())


def test_a_prefix_that_is_not_letters_and_digits_is_refused(tmp_path):
    terminals = [{**BAKERIES[0], "receipt_id_prefix": "../1"}]
    with pytest.raises(ConfigError, match="receipt_id_prefix '../1' must be at most 16 letters"):
        config_from_dict(
            store_config_dict(tmp_path / "posfed", terminals=terminals), base_dir=tmp_path
        )


def test_the_check_covers_every_version_of_the_spec(tmp_path):
    raw = json.loads((REPO_ROOT / "dat_specs" / "scon_default.json").read_text())
    later = json.loads(json.dumps(raw["versions"][0]))
    later["effective_from"] = "2027-01-01"
    later["file_name"] = "scon{department}{receiptId}.dat"
    raw["versions"][0]["file_name"] = "{terminalId}{receiptId}.dat"
    raw["versions"].append(later)
    spec = spec_from_dict(raw, Path("two.json"))
    clashes = dat_name_clashes([_terminal("bakery_1"), _terminal("bakery_2")], spec)
    assert [c.split("version from ")[1][:10] for c in clashes] == ["2027-01-01"]
